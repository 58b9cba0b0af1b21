"""The flags of the rank entry points that `rethinktiny.launch.rank_command` starts under torchrun
or srun (training, resample scoring, the teacher cache). They are internal: users run
`start_finetune.py`, `rethinktiny resample` or `rethinktiny distill cache`, which build these
command lines. Kept here so that every argument parser lives in `cli/`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def training_rank_args(argv: list[str] | None = None) -> argparse.Namespace:
    """`python -m rethinktiny.internevo.train` (one training rank)."""
    from rethinktiny.launch import DEFAULT_MASTER_PORT

    parser = argparse.ArgumentParser(description="rethinktiny training entry (one rank)")
    parser.add_argument("--config", required=True, help="InternEvo Python config file")
    parser.add_argument("--launcher", choices=["torch", "slurm"], default="torch")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MASTER_PORT", DEFAULT_MASTER_PORT)),
                        help="master port (slurm launcher; torchrun sets MASTER_PORT itself)")
    parser.add_argument("--seed", type=int, default=1024)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.total_steps=40 (repeatable)")
    return parser.parse_args(argv)


def scoring_rank_args(argv: list[str] | None = None) -> argparse.Namespace:
    """`python -m rethinktiny.resample.worker` (one scoring rank)."""
    parser = argparse.ArgumentParser(description="score one rank's share of the batches")
    parser.add_argument("--plan", required=True, help="plan.json in the scores folder")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return parser.parse_args(argv)


def cache_rank_args(argv: list[str] | None = None) -> argparse.Namespace:
    """`python -m rethinktiny.distill.build` (one teacher-cache rank)."""
    parser = argparse.ArgumentParser(description="one teacher-cache rank")
    parser.add_argument("--cache", required=True, type=Path)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return parser.parse_args(argv)
