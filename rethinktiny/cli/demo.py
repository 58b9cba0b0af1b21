"""rethinktiny demo run | samples  (`make demo` is `python -m rethinktiny.demo`, the same as `demo run`)"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    from rethinktiny.demo.pipeline import DEFAULT_TEACHER, SCALES
    from rethinktiny.demo.samples import NEW_TOKENS

    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    p = sub.add_parser("run", help="the paper's recipe on a real teacher and a small corpus (`make demo`)")
    p.add_argument("--sample", type=Path, default=Path("data/sample"),
                   help="folder with train.jsonl and valid.jsonl (default: data/sample of the current folder)")
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="one sub-folder per step, report.md")
    p.add_argument("--scale", choices=sorted(SCALES), default="demo", help="demo: ~10 minutes; smoke: the test's")
    p.add_argument("--teacher", default=str(DEFAULT_TEACHER),
                   help=f"HF teacher folder (default {DEFAULT_TEACHER}), or 'self' to train a miniature one")
    p.add_argument("--force", action="store_true", help="redo finished steps")
    p.set_defaults(func=run_command)

    p = sub.add_parser("samples", help="greedy samples of models through transformers, as one JSON file")
    p.add_argument("--new-tokens", type=int, default=NEW_TOKENS,
                   help=f"greedy tokens per prompt (default {NEW_TOKENS})")
    p.add_argument("out", type=Path, help="samples JSON to write")
    p.add_argument("models", nargs="+", metavar="LABEL MODEL",
                   help="label and model of each column: HF folder or FILE.gguf::TOKENIZER_FOLDER")
    p.set_defaults(func=samples_command)


def run_command(args: argparse.Namespace) -> int:
    from rethinktiny.demo.pipeline import run_demo

    return run_demo(args.sample, args.out, args.scale, args.teacher, args.force)


def samples_command(args: argparse.Namespace) -> None:
    from rethinktiny.demo.samples import write_samples
    from rethinktiny.errors import UserError

    if len(args.models) % 2:
        raise UserError("models come as LABEL MODEL pairs")
    write_samples(args.out, list(zip(args.models[::2], args.models[1::2])), args.new_tokens)
