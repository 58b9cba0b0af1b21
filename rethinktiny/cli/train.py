"""rethinktiny train: the launcher of start_finetune.py (same flags, same behaviour)."""

from __future__ import annotations

import argparse

from rethinktiny import launcher


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    launcher.add_arguments(parser)
    parser.set_defaults(func=launcher.launch)
