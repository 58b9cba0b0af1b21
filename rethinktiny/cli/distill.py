"""rethinktiny distill cache --teacher T --data D --dst C (--config TRAIN_CONFIG | --seq-len N --micro-bsz M)"""

from __future__ import annotations

import argparse
from pathlib import Path

from rethinktiny.cli.train import add_launch_arguments, launch_options


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    p = sub.add_parser("cache", help="store a sparse summary of the teacher at every token of the data",
                       description="Summarise the teacher's next-token distribution at every token of the packed "
                                   "training rows (K sampled ids with counts, or the top K); train from it with "
                                   "distill=dict(cache=DST). Resumable: run it again to finish an interrupted cache.")
    p.add_argument("--teacher", required=True, help="InternEvo checkpoint, HF folder or .gguf file")
    p.add_argument("--data", required=True, help="tokenized training data (the student's vocabulary)")
    p.add_argument("--dst", required=True, type=Path, help="cache folder")
    p.add_argument("--config", help="training config: packing (data.seq_len, micro_bsz, min_length) and its "
                                    "distill.token_map")
    p.add_argument("--seq-len", type=int, help="data.seq_len (without --config)")
    p.add_argument("--micro-bsz", type=int, help="data.micro_bsz (without --config)")
    p.add_argument("--min-length", type=int, default=0, help="data.min_length (without --config)")
    p.add_argument("--token-map", help="token_map.json of the compact vocabulary (default: the config's)")
    # topk by default: it trained the bench's student better than sample at equal K (3 paired seeds,
    # docs/distillation.md), for 18% more bytes.
    p.add_argument("--mode", choices=["sample", "topk"], default="topk",
                   help="topk: the K most likely ids with their probabilities (the rest of the mass is dropped; "
                        "default); sample: K ids drawn from the teacher with their counts (unbiased)")
    p.add_argument("--k", type=int, default=16, help="ids per token (default 16)")
    p.add_argument("--temperature", type=float, default=1.0, help="teacher temperature (default 1)")
    p.add_argument("--dtype", default="float32", help="teacher dtype (default float32)")
    p.add_argument("--rows-per-unit", type=int, default=16, help="packed rows per written file (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace a cache built with other settings")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_launch_arguments(p)
    p.set_defaults(func=_cache)


def _packing(args: argparse.Namespace):
    """(BatchSpec, token map, rank hint) from --config or the flags."""
    from rethinktiny.errors import UserError
    from rethinktiny.resample.spec import spec_from_data_config

    if args.config:
        from rethinktiny.configfiles.training import TrainingConfig

        # check_data=False: the rows summarised are --data's, not the config's train folder.
        config = TrainingConfig.from_file(args.config, check_data=False)
        distill = config.raw.get("distill") or {}
        return (spec_from_data_config(config.raw.get("data", {}), source=args.config),
                args.token_map or distill.get("token_map"), config.nproc_hint)
    if not args.seq_len or not args.micro_bsz:
        raise UserError("distill cache: give --config (the training config) or --seq-len and --micro-bsz")
    data = dict(seq_len=args.seq_len, micro_bsz=args.micro_bsz, min_length=args.min_length)
    return spec_from_data_config(data, source="flags"), args.token_map, None


def _cache(args: argparse.Namespace) -> None:
    from rethinktiny.distill.build import plan_cache, run_cache_ranks
    from rethinktiny.distill.cache import index_bytes
    from rethinktiny.dtypes import dtype_name

    spec, token_map, hint = _packing(args)
    manifest = plan_cache(args.teacher, args.data, args.dst, spec, token_map, args.k, args.mode, args.temperature,
                          dtype_name(args.dtype), args.rows_per_unit, args.seed, args.force)
    run_cache_ranks(args.dst, launch_options(args).resolve(hint), args.progress)
    size = sum(p.stat().st_size for p in args.dst.glob("unit-*.npz"))
    print(f"wrote {manifest['num_units']} units for {manifest['num_rows']} packed rows to {args.dst} "
          f"({size / 1e6:.1f} MB, index {index_bytes(args.dst) / 1e6:.1f} MB); "
          f"train with distill=dict(cache={str(args.dst)!r})")
