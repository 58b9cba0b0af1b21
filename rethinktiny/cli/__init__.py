"""`rethinktiny <group> [<command>] ...`: the one console script.

The table below holds each group's module itself (litgpt-style), so a missing module fails when
this package is imported, not when a user types the command. The group modules import only
argparse and light rethinktiny modules at the top; each command imports what it needs (torch,
InternEvo) when it runs, so `rethinktiny vocab ...` never pays for imports it does not use.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Callable

from rethinktiny.cli import (arch, config, convert, data, demo, distill, evaluate, inherit, multiround, resample, train,
                             vocab)
from rethinktiny.errors import UserError

# name -> (module with `configure(parser)`, one-line help)
COMMANDS: dict[str, tuple[ModuleType, str]] = {
    "data": (data, "train a tokenizer; write InternEvo tokenized data"),
    "vocab": (vocab, "compact tokenizer: count, merge, prune, inspect"),
    "inherit": (inherit, "build a small model's weights from a large checkpoint"),
    "resample": (resample, "score batches with a frozen model, keep the hard ones"),
    "multiround": (multiround, "train several rounds, resampling between them"),
    "convert": (convert, "Hugging Face export (to-hf) and import (from-hf)"),
    "eval": (evaluate, "held-out loss and perplexity"),
    "arch": (arch, "depth/width/expansion explorer for a parameter budget"),
    "config": (config, "write InternEvo config files for presets"),
    "train": (train, "launch InternEvo training (same as start_finetune.py)"),
    "distill": (distill, "teacher cache for distillation (distill=dict(cache=...) in the config)"),
    "demo": (demo, "`make demo`: the whole recipe on a real teacher and a small corpus, CPU"),
}


def build_parser(argv_group: str | None = None) -> argparse.ArgumentParser:
    """The `rethinktiny` parser with every group; only `argv_group`'s own flags are declared.

    Args:
        argv_group: the group named on the command line, or None (top-level help).
    """
    parser = argparse.ArgumentParser(prog="rethinktiny", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="group", metavar="<group>")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        group_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == argv_group:  # declaring every group's flags would cost time on every call
            module.configure(group_parser)
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
