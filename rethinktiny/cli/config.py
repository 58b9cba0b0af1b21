"""rethinktiny config export | show"""

from __future__ import annotations

import argparse
import shlex
import sys

from rethinktiny.configfiles.export import TrainOptions
from rethinktiny.dtypes import config_dtype_argument, dtype_help


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    p = sub.add_parser("export", help="write a complete, commented InternEvo config file for a preset")
    p.add_argument("--preset", default="pangu_pi_1b_pro", help="model preset (see `rethinktiny config show`)")
    p.add_argument("--vocab-size", type=int, help="override the preset's vocabulary (e.g. a pruned tokenizer's)")
    p.add_argument("--inherit", help="a `rethinktiny inherit` folder: start from its weights (and take its shape)")
    p.add_argument("--resample", help="a `rethinktiny resample` folder: train on its selected batches")
    p.add_argument("--distill", metavar="TEACHER", help="distil from this teacher (an `inherit` source): "
                                                         "writes a distill=dict(...) section")
    p.add_argument("--token-map", help="with --distill: the student's token_map.json (compact vocabulary)")
    p.add_argument("--dst", help="output .py file (default: print to stdout)")
    defaults = TrainOptions()
    for name in ("seq_len", "micro_num", "micro_bsz", "total_steps", "zero1_size", "checkpoint_every"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--checkpoint", default="false", metavar="true|false|SHARE",
                   help="model.checkpoint: activation checkpointing of all, no or this share of layers")
    p.add_argument("--dtype", default=defaults.dtype, type=config_dtype_argument(),
                   help=f"model.dtype of the config: {dtype_help()} or tf32 (default {defaults.dtype})")
    p.add_argument("--train-folder", default=None)
    p.add_argument("--valid-folder", default=None)
    p.add_argument("--save-ckpt-folder", default=defaults.save_ckpt_folder)
    p.add_argument("--job-name", default=None)
    p.add_argument("--cpu", type=int, default=0, metavar="RANKS",
                   help="a CPU config for RANKS processes (fp32, gloo, no comm overlap, no loader workers)")
    p.add_argument("--warmup-ratio", type=float, default=defaults.warmup_ratio)
    p.add_argument("--min-lr", type=float, default=defaults.min_lr)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--min-length", type=int, default=defaults.min_length)
    shape = p.add_argument_group("model shape (overrides the preset)")
    for flag in ("hidden-size", "num-layers", "num-attention-heads", "num-kv-heads", "intermediate-size",
                 "series-terms", "aug-shortcuts", "aug-shortcut-dim"):
        shape.add_argument(f"--{flag}", type=int, default=None)
    shape.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=None,
                       help="the output head shares the input embedding (as SmolLM2/LLaMA-3.2 teachers do)")
    p.add_argument("--comment", action="append", default=[], metavar="TEXT",
                   help="a line for the file's header comment (repeatable)")
    p.add_argument("--force", action="store_true", help="replace an existing --dst")
    p.set_defaults(func=_export)

    p = sub.add_parser("show", help="list the presets with their shapes and parameter counts")
    p.set_defaults(func=_show)


def _export(args: argparse.Namespace) -> None:
    from rethinktiny.checkpoint import read_model_config
    from rethinktiny.config import get_preset
    from rethinktiny.configfiles.export import export_config, parse_checkpoint, render_config

    if args.token_map and not args.distill:
        from rethinktiny.errors import UserError

        raise UserError("--token-map goes with --distill TEACHER")
    cfg = read_model_config(args.inherit) if args.inherit else get_preset(args.preset)
    shape = {key: getattr(args, key) for key in ("hidden_size", "num_layers", "num_attention_heads", "num_kv_heads",
                                                 "intermediate_size", "series_terms", "aug_shortcuts",
                                                 "aug_shortcut_dim", "vocab_size", "tie_embeddings")
             if getattr(args, key) is not None}
    comments = list(args.comment)
    if shape and not args.inherit:
        # The file keeps naming the preset it starts from (`preset=` in model=dict) and says which
        # keys differ, so a reader sees e.g. "num_layers 20 (preset: 21)" instead of "custom".
        changed = [f"{key} {value} (preset: {getattr(cfg, key)})" for key, value in shape.items()
                   if getattr(cfg, key) != value]
        if changed:
            comments.insert(0, f"Shape differs from preset {cfg.name}: " + ", ".join(changed) + ".")
    if shape:
        cfg = cfg.replace(**shape)
    opts = TrainOptions(
        job_name=args.job_name or cfg.name, seq_len=args.seq_len, micro_num=args.micro_num, micro_bsz=args.micro_bsz,
        total_steps=args.total_steps, lr=args.lr, dtype=args.dtype, zero1_size=args.zero1_size,
        checkpoint=parse_checkpoint(args.checkpoint),
        checkpoint_every=args.checkpoint_every, train_folder=args.train_folder, valid_folder=args.valid_folder,
        save_ckpt_folder=args.save_ckpt_folder, inherit=args.inherit, resample=args.resample, cpu_ranks=args.cpu,
        distill=args.distill, token_map=args.token_map,
        warmup_ratio=args.warmup_ratio, min_lr=args.min_lr, weight_decay=args.weight_decay,
        min_length=args.min_length, extra_comments=comments)
    command = "rethinktiny config export " + " ".join(shlex.quote(a) for a in sys.argv[3:]) if len(sys.argv) > 3 else None
    if args.dst:
        from rethinktiny.artifacts import check_output_file

        # before any work: never write the config over one of its own inputs, even with --force
        check_output_file(args.dst, args.force, {"--token-map": args.token_map, "--distill": args.distill,
                                                 "--inherit": args.inherit, "--resample": args.resample}, "--dst")
        print(f"wrote {export_config(args.dst, cfg=cfg, opts=opts, force=args.force, command=command)}")
    else:
        print(render_config(cfg, opts, command), end="")


def _show(_args: argparse.Namespace) -> None:
    from rethinktiny.config import PRESETS, describe

    for cfg in PRESETS.values():
        print(describe(cfg))
