"""rethinktiny convert to-hf | to-gguf | from-hf | from-gguf"""

from __future__ import annotations

import argparse

from rethinktiny.dtypes import dtype_argument, dtype_help


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    p = sub.add_parser("to-hf", help="InternEvo checkpoint -> Hugging Face LlamaForCausalLM folder")
    p.add_argument("--src", required=True,
                   help="checkpoint step folder with model_tp*_pp*.pt, or its parent (latest step)")
    p.add_argument("--dst", required=True, help="output HF folder")
    p.add_argument("--tokenizer", help="SentencePiece model file/folder, or HF tokenizer.json folder (copied)")
    p.add_argument("--config", help="InternEvo config file (default: the checkpoint's model_config)")
    p.add_argument("--dtype", default="auto", type=dtype_argument(keep=True),
                   help=f"weight dtype of the export: {dtype_help(keep=True)} (auto: the checkpoint's)")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (e.g. 5GB, 500MB)")
    p.add_argument("--max-position-embeddings", type=int, default=None,
                   help="context length written to config.json (default: the training data.seq_len, from "
                        "--config or the step folder's saved training config)")
    p.add_argument("--no-bos-token", dest="add_bos_token", action="store_false",
                   help="the HF tokenizer does not prepend <s> (default: it does, as every training "
                        "document starts with <s>)")
    # Kept so old commands still run: prepending <s> is the default now.
    p.add_argument("--add-bos-token", dest="add_bos_token", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="replace an existing --dst")
    p.set_defaults(func=_to_hf)

    p = sub.add_parser("to-gguf", help="InternEvo checkpoint -> llama.cpp GGUF file (LLaMA architecture)")
    p.add_argument("--src", required=True,
                   help="checkpoint step folder with model_tp*_pp*.pt, or its parent (latest step)")
    p.add_argument("--dst", required=True, help="output folder (gets model.gguf and manifest.json)")
    p.add_argument("--tokenizer", required=True,
                   help="the model's tokenizer: SentencePiece model file/folder, or HF folder with tokenizer.json")
    p.add_argument("--outtype", default="f16", help="f32, f16 (default) or q8_0")
    p.add_argument("--config", help="InternEvo config file (default: the checkpoint's model_config)")
    p.add_argument("--context-length", type=int, default=None,
                   help="llama.context_length (default: the training data.seq_len, from --config or the "
                        "step folder's saved training config)")
    p.add_argument("--name", help="general.name (default: the model config's name)")
    p.add_argument("--force", action="store_true", help="replace an existing --dst")
    p.set_defaults(func=_to_gguf)

    p = sub.add_parser("from-hf", help="Hugging Face LLaMA folder -> InternEvo model-only checkpoint")
    p.add_argument("--src", required=True, help="HF model folder (config.json + safetensors or .bin)")
    p.add_argument("--dst", required=True, help="output folder (model_tp0_pp0.pt + model_config.json)")
    p.add_argument("--dtype", default="auto", type=dtype_argument(keep=True),
                   help=f"weight dtype of the checkpoint: {dtype_help(keep=True)} (auto: the HF files')")
    p.add_argument("--force", action="store_true", help="replace an existing --dst")
    p.set_defaults(func=_from_hf)

    p = sub.add_parser("from-gguf", help="GGUF file (llama/qwen2; F32, F16, Q8_0, Q4_0, Q4_1, ...) -> InternEvo "
                                         "model-only checkpoint")
    p.add_argument("--src", required=True, help="the .gguf file")
    p.add_argument("--dst", required=True, help="output folder (model_tp0_pp0.pt + model_config.json)")
    p.add_argument("--dtype", default="auto", type=dtype_argument(keep=True),
                   help=f"weight dtype of the checkpoint: {dtype_help(keep=True)} (auto: float16 when every "
                        "tensor is F16, else float32; quantized tensors are dequantized)")
    p.add_argument("--force", action="store_true", help="replace an existing --dst")
    p.set_defaults(func=_from_gguf)


def _to_hf(args: argparse.Namespace) -> None:
    from rethinktiny.convert.export import to_hf

    dst = to_hf(args.src, args.dst, tokenizer=args.tokenizer, dtype=args.dtype,
                max_shard_size=args.max_shard_size, config=args.config,
                max_position_embeddings=args.max_position_embeddings, add_bos_token=args.add_bos_token,
                force=args.force)
    print(f"wrote Hugging Face model to {dst}")


def _to_gguf(args: argparse.Namespace) -> None:
    import json
    import sys

    from rethinktiny.convert.gguf_export import to_gguf

    path = to_gguf(args.src, args.dst, tokenizer=args.tokenizer, outtype=args.outtype, config=args.config,
                   context_length=args.context_length, name=args.name, force=args.force)
    for note in json.loads((path.parent / "manifest.json").read_text())["notes"]:
        print(f"warning: {note}", file=sys.stderr)
    print(f"wrote GGUF model to {path}")


def _from_hf(args: argparse.Namespace) -> None:
    from rethinktiny.convert.import_hf import from_hf

    dst = from_hf(args.src, args.dst, dtype=args.dtype, force=args.force)
    print(f"wrote InternEvo checkpoint to {dst}")


def _from_gguf(args: argparse.Namespace) -> None:
    from rethinktiny.convert.gguf_read import from_gguf

    dst = from_gguf(args.src, args.dst, dtype=args.dtype, force=args.force)
    print(f"wrote InternEvo checkpoint to {dst}")
