"""The seed's export command, kept working:

    python tools/transformers/convert2hf.py --src_folder origin_ckpt/ --tgt_folder hf_ckpt/ --tokenizer tokenizer_path/

A thin wrapper over `rethinktiny.convert.export.to_hf` (same as `rethinktiny convert to-hf`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without install


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src_folder", required=True, help="InternEvo checkpoint (step folder or its parent)")
    parser.add_argument("--tgt_folder", required=True, help="output Hugging Face folder")
    parser.add_argument("--tokenizer", required=True, help="SentencePiece model file or folder with tokenizer.model")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--max_shard", default="5GB", help="largest safetensors shard")
    parser.add_argument("--config", help="InternEvo config file (default: the checkpoint's model_config)")
    parser.add_argument("--force", action="store_true", help="replace an existing --tgt_folder")
    args = parser.parse_args(argv)
    from rethinktiny.cli import run_command

    return run_command(_export, args)


def _export(args: argparse.Namespace) -> None:
    from rethinktiny.convert.export import to_hf

    dst = to_hf(args.src_folder, args.tgt_folder, tokenizer=args.tokenizer, dtype=args.dtype,
                max_shard_size=args.max_shard, config=args.config, force=args.force)
    print(f"wrote Hugging Face model to {dst}")


if __name__ == "__main__":
    sys.exit(main())
