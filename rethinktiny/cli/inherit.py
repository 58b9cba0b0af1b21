"""rethinktiny inherit --src SRC --target PRESET|CONFIG.py --dst FOLDER [...]"""

from __future__ import annotations

import argparse

from rethinktiny.dtypes import dtype_argument, dtype_help


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True,
                        help="InternEvo checkpoint folder (ours, LLAMA2 or INTERNLM2; any tp/pp), Hugging Face folder "
                             "(llama, mistral, qwen2, internlm2) or .gguf file (llama, qwen2)")
    parser.add_argument("--target", required=True, help="preset name or InternEvo config file (model=dict(...))")
    parser.add_argument("--dst", required=True, help="output model-only folder (InternEvo ckpt_type='inherited')")
    parser.add_argument("--layers", default="first-last",
                        help="first-last | uniform | block-influence | comma-separated source layers (default first-last)")
    parser.add_argument("--width", default="l2", help="l1 | l2 | activation | taylor | learnable | random (default l2)")
    parser.add_argument("--calib", default=None,
                        help="InternEvo tokenized folder, or jsonl text tokenized with the source's tokenizer")
    parser.add_argument("--calib-tokenizer", default=None,
                        help="tokenizer of a jsonl --calib: SentencePiece or HF folder (default: next to --src)")
    parser.add_argument("--calib-tokens", type=int, default=16384, help="calibration tokens (default 16384)")
    parser.add_argument("--calib-seq-len", type=int, default=512, help="tokens per calibration row (default 512)")
    parser.add_argument("--token-map", default=None, help="token_map.json: new id i takes old row token_map[i]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--src-config", default=None,
                        help="shape of an InternEvo source without model_config.json (preset or config file)")
    parser.add_argument("--dtype", default="source", type=dtype_argument(keep=True),
                        help=f"output dtype: {dtype_help(keep=True)} (auto, or source: the source's)")
    parser.add_argument("--learn-steps", type=int, default=300, help="optimisation steps for --width learnable")
    parser.add_argument("--micro-rows", type=int, default=4, help="calibration rows per forward/backward call")
    parser.add_argument("--force", action="store_true", help="replace an existing --dst")
    parser.set_defaults(func=_inherit)


def _inherit(args: argparse.Namespace) -> None:
    from rethinktiny.inherit.apply import inherit

    dst = inherit(args.src, args.target, args.dst, layers=args.layers, width=args.width, calib=args.calib,
                  calib_tokens=args.calib_tokens, calib_seq_len=args.calib_seq_len, token_map=args.token_map,
                  seed=args.seed, force=args.force, src_config=args.src_config, dtype=args.dtype,
                  learn_steps=args.learn_steps, micro_rows=args.micro_rows,
                  calib_tokenizer=args.calib_tokenizer)
    print(f"wrote {dst} (inherit_report.json has the kept layers and indices)")
