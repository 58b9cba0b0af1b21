"""`rethinktiny <group> [<command>] ...`: the one console script.

The table below maps each top-level name to the module that declares its arguments and the typed
function it calls. Modules are imported only when their group is used, so `rethinktiny vocab ...`
never pays for torch or InternEvo imports it does not need.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

from rethinktiny.errors import UserError

# name -> (module with `configure(parser)`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("rethinktiny.cli.data", "train a tokenizer; write InternEvo tokenized data"),
    "vocab": ("rethinktiny.cli.vocab", "compact tokenizer: count, merge, prune, inspect"),
    "inherit": ("rethinktiny.cli.inherit", "build a small model's weights from a large checkpoint"),
    "resample": ("rethinktiny.cli.resample", "score batches with a frozen model, keep the hard ones"),
    "multiround": ("rethinktiny.cli.multiround", "train several rounds, resampling between them"),
    "convert": ("rethinktiny.cli.convert", "Hugging Face export (to-hf) and import (from-hf)"),
    "eval": ("rethinktiny.cli.evaluate", "held-out loss and perplexity"),
    "arch": ("rethinktiny.cli.arch", "depth/width/expansion explorer for a parameter budget"),
    "config": ("rethinktiny.cli.config", "write InternEvo config files for presets"),
    "train": ("rethinktiny.cli.train", "launch InternEvo training (same as start_finetune.py)"),
}


def build_parser(argv_group: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rethinktiny", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="group", metavar="<group>")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        group_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == argv_group:  # only import the module of the group actually used
            importlib.import_module(module_name).configure(group_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    group = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(group).parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        build_parser(group).parse_args([*argv, "--help"])
    return run_command(func, args)


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a command handler as a process would: a UserError is one line on stderr and exit 2.

    Shared by `rethinktiny` and the seed-compatible scripts under tools/.
    """
    try:
        result = func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
