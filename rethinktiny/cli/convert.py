"""rethinktiny convert to-hf | from-hf"""

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
    p.add_argument("--max-position-embeddings", type=int, default=2048,
                   help="context length written to config.json")
    p.add_argument("--add-bos-token", action="store_true",
                   help="the HF tokenizer prepends <s> (default: ids equal SentencePiece's encode)")
    p.add_argument("--force", action="store_true", help="replace an existing --dst")
    p.set_defaults(func=_to_hf)

    p = sub.add_parser("from-hf", help="Hugging Face LLaMA folder -> InternEvo model-only checkpoint")
    p.add_argument("--src", required=True, help="HF model folder (config.json + safetensors or .bin)")
    p.add_argument("--dst", required=True, help="output folder (model_tp0_pp0.pt + model_config.json)")
    p.add_argument("--dtype", default="auto", type=dtype_argument(keep=True),
                   help=f"weight dtype of the checkpoint: {dtype_help(keep=True)} (auto: the HF files')")
    p.add_argument("--force", action="store_true", help="replace an existing --dst")
    p.set_defaults(func=_from_hf)


def _to_hf(args: argparse.Namespace) -> None:
    from rethinktiny.convert.export import to_hf

    dst = to_hf(args.src, args.dst, tokenizer=args.tokenizer, dtype=args.dtype,
                max_shard_size=args.max_shard_size, config=args.config,
                max_position_embeddings=args.max_position_embeddings, add_bos_token=args.add_bos_token,
                force=args.force)
    print(f"wrote Hugging Face model to {dst}")


def _from_hf(args: argparse.Namespace) -> None:
    from rethinktiny.convert.import_hf import from_hf

    dst = from_hf(args.src, args.dst, dtype=args.dtype, force=args.force)
    print(f"wrote InternEvo checkpoint to {dst}")
