"""rethinktiny resample --config CFG --ckpt CKPT --data TRAIN --dst NEW (--ratio R | --num-batches N0)"""

from __future__ import annotations

import argparse

from rethinktiny.cli.train import add_launch_arguments, launch_options
from rethinktiny.resample.sampling import DEFAULT_FLOOR


def add_sampling_arguments(parser: argparse.ArgumentParser, ratio_required: bool = True) -> None:
    amount = parser.add_mutually_exclusive_group(required=ratio_required)
    amount.add_argument("--ratio", type=float, help="keep round(ratio * N) of the N batches, ratio in (0, 1]")
    amount.add_argument("--num-batches", type=int, help="keep N0 batches")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="p_i ~ exp(loss_i / T); 1 is the paper's rule, large T tends to uniform")
    parser.add_argument("--batch-ranks", type=int, default=1,
                        help="data-parallel ranks one batch spans (1: a batch is micro_num packed rows, one "
                             "rank's optimizer step)")
    subset = parser.add_mutually_exclusive_group()
    subset.add_argument("--max-batches", type=int,
                        help="score only a seeded random subset of this many batches; the draw is among them")
    subset.add_argument("--fraction", type=float, help="score only this fraction of the batches (seeded, random)")
    parser.add_argument("--reference", metavar="MODEL",
                        help="also score every batch with this checkpoint (same vocabulary) and draw by the excess "
                             "loss (scored - reference)")
    parser.add_argument("--floor", type=float, default=DEFAULT_FLOOR,
                        help=f"with --reference: p = (1 - eps) softmax + eps / N, so no batch's probability "
                             f"collapses to zero (default {DEFAULT_FLOOR})")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="InternEvo config file of the training run")
    parser.add_argument("--ckpt", required=True, help="frozen model: InternEvo step folder or its save folder")
    parser.add_argument("--data", help="tokenized training data folder (default: the config's data.train_folder)")
    parser.add_argument("--dst", required=True, help="output folder")
    add_sampling_arguments(parser)
    parser.add_argument("--selection-only", action="store_true",
                        help="write only the scores and selection (train with data.sampler='multi_round')")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, as start_finetune.py --set (repeatable)")
    parser.add_argument("--scores-dir",
                        help="where the batch index and partial scores are kept until done (default: .<dst>.scores)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --dst; restart scores of a different checkpoint or data")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    add_launch_arguments(parser)
    parser.set_defaults(func=_resample)


def _resample(args: argparse.Namespace) -> None:
    from rethinktiny.resample.run import resample_data

    result = resample_data(args.config, args.ckpt, args.dst, data=args.data, ratio=args.ratio,
                           num_batches=args.num_batches, seed=args.seed, temperature=args.temperature,
                           batch_ranks=args.batch_ranks, copy_data=not args.selection_only,
                           overrides=args.overrides, scores_dir=args.scores_dir, launch=launch_options(args),
                           force=args.force, progress=args.progress, max_batches=args.max_batches,
                           fraction=args.fraction, reference=args.reference, floor=args.floor)
    if result is None:
        print(f"this node's ranks scored their share; node 0 gathers, draws and writes {args.dst}")
        return
    scored = "" if result.num_scored == result.num_batches else f" ({result.num_scored} of them scored)"
    print(f"scored {result.num_batches} batches of {result.tokens_per_batch} tokens{scored} "
          f"(mean loss {result.mean_loss_all:.4f}, {result.num_nonfinite} non-finite left out); "
          f"kept {result.num_selected} (mean loss {result.mean_loss_selected:.4f})")
    if result.written:
        print(f"wrote {result.written['documents']} documents, {result.written['tokens']} tokens to {result.dst}")
    else:
        print(f"wrote the selection to {result.dst} (train with data.sampler='multi_round', "
              f"data.selected_batches='{result.dst}/selected.npy')")
