"""rethinktiny multiround --config CFG --rounds 3 --ratio 0.5"""

from __future__ import annotations

import argparse

from rethinktiny.cli.resample import add_sampling_arguments
from rethinktiny.cli.train import add_launch_arguments, add_training_arguments, launch_options


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="InternEvo config file (round 1 trains it on all data)")
    parser.add_argument("--rounds", type=int, required=True, help="number of rounds (the paper: 2)")
    add_sampling_arguments(parser, ratio_required=False)
    parser.add_argument("--work", help="output folder (default: outputs/multiround/<config name>)")
    parser.add_argument("--data", help="full training data folder (default: the config's data.train_folder)")
    parser.add_argument("--mode", choices=["sampler", "copy"], default="sampler",
                        help="sampler: train on the original folder with data.sampler='multi_round' (nothing "
                             "copied); copy: write the chosen batches as a new data folder")
    parser.add_argument("--round-steps", type=int, nargs="+", default=[], metavar="STEPS",
                        help="training steps of rounds 1, 2, ... (default: the config's total_steps for round 1, "
                             "times the kept fraction for later rounds)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    add_training_arguments(parser)
    add_launch_arguments(parser)
    parser.set_defaults(func=_multiround)


def _multiround(args: argparse.Namespace) -> None:
    from rethinktiny.resample.multiround import multiround, summary_table

    results = multiround(args.config, args.rounds, ratio=args.ratio, num_batches=args.num_batches, work=args.work,
                         data=args.data, mode=args.mode, seed=args.seed, temperature=args.temperature,
                         batch_ranks=args.batch_ranks, round_steps=args.round_steps, overrides=args.overrides,
                         launch=launch_options(args), progress=args.progress,
                         allow_unknown_keys=args.allow_unknown_keys, ignore_memory_plan=args.ignore_memory_plan,
                         max_batches=args.max_batches, fraction=args.fraction, reference=args.reference,
                         floor=args.floor)
    print(summary_table(results))
