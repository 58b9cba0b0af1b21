"""rethinktiny arch sweep | config | memory"""

from __future__ import annotations

import argparse

from rethinktiny.dtypes import dtype_argument, dtype_help


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    p = sub.add_parser("sweep", help="shapes within a parameter budget: params, FLOPs, KV cache, speed")
    p.add_argument("--params", required=True, help="parameter budget, e.g. 1.0e9 or 1B (embedding included)")
    p.add_argument("--vocab", required=True, type=int, help="vocabulary size")
    p.add_argument("--layers", default="12:32", help="depths START:STOP[:STEP], inclusive (default 12:32)")
    p.add_argument("--expansion", default="2.0:4.0",
                   help="FFN mlp_ratio range LOW:HIGH or one value; InternEvo rounds the width up "
                        "to a multiple of 256 (default 2.0:4.0)")
    p.add_argument("--heads-dim", type=int, default=128, help="head dimension; hidden is a multiple (128)")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (GQA); default one per head")
    p.add_argument("--tolerance", type=float, default=0.05, help="accepted relative distance from --params")
    p.add_argument("--tie-embeddings", action="store_true", help="share embedding and output head")
    p.add_argument("--per-depth", type=int, default=None,
                   help="keep only the N shapes per depth closest to the budget (default: all)")
    p.add_argument("--no-presets", action="store_true", help="do not add the 1B/1.5B Pro reference rows")
    p.add_argument("--seq-len", type=int, default=2048, help="sequence length of the FLOPs' attention term")
    p.add_argument("--kv-dtype", default="bf16", help="KV-cache element type: fp32, bf16, fp16, fp8, int8")
    p.add_argument("--measure", choices=("cpu", "cuda", "llama.cpp"), default=None,
                   help="also time prefill and batch-1 decode with random weights on this device "
                        "(llama.cpp: as a GGUF file in llama-cpp-python, float32 or float16)")
    p.add_argument("--measure-dtype", default="fp32", type=dtype_argument(),
                   help=f"weight dtype when measuring: {dtype_help()}; float16 on cuda only")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens of the timed prefill")
    p.add_argument("--decode-steps", type=int, default=8, help="timed decode steps")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed decode steps before timing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads while measuring (default: torch's); 1 is steadier on a busy machine")
    p.add_argument("--plot", default=None, help="write a PNG of speed (or FLOPs) against depth")
    p.add_argument("--json", default=None, help="write the rows as JSON")
    p.add_argument("--force", action="store_true", help="overwrite existing --plot / --json files")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("config", help="print the complete InternEvo config file of one shape")
    p.add_argument("--hidden", type=int, required=True)
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--vocab", type=int, required=True)
    width = p.add_mutually_exclusive_group(required=True)
    width.add_argument("--expansion", type=float, help="mlp_ratio; width rounded up to a multiple of 256")
    width.add_argument("--ffn", type=int, help="explicit FFN width (the sweep's ffn column)")
    p.add_argument("--kv-heads", type=int, default=None)
    p.add_argument("--tie-embeddings", action="store_true")
    p.add_argument("--output", default=None, help="write to this file instead of printing")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    p.set_defaults(func=_config)

    p = sub.add_parser("memory", help="per-GPU memory plan of a training config (optionally measured on CPU)")
    p.add_argument("--config", required=True, help="an InternEvo training config file (configs/*.py)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. data.micro_bsz=4 (repeatable)")
    p.add_argument("--allow-unknown-keys", action="store_true",
                   help="keep config keys neither InternEvo nor rethinktiny reads (default: an error)")
    p.add_argument("--nproc", type=int, default=None,
                   help="data-parallel ranks of the job (default: the config's launch.nproc_per_node, else 1)")
    p.add_argument("--gpu-gb", type=float, default=None,
                   help="also check the plan fits a GPU of this many GB (exit 2 when it does not)")
    p.add_argument("--measure", action="store_true",
                   help="also count saved-tensor bytes of one forward+backward on CPU at the micro-batch shape")
    p.add_argument("--measure-layers", type=int, default=None,
                   help="measure a model of this many layers and scale to the config's depth by the plan")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    p.set_defaults(func=_memory)


def _sweep(args: argparse.Namespace) -> None:
    from rethinktiny.arch.explorer import MeasureOptions, run_sweep
    from rethinktiny.arch.sweep import SweepSpec, parse_count, parse_float_range, parse_int_range
    from rethinktiny.arch.table import format_table

    spec = SweepSpec(params=parse_count(args.params, "--params"), vocab_size=args.vocab,
                     layers=tuple(parse_int_range(args.layers, "--layers")),
                     expansion=parse_float_range(args.expansion, "--expansion"), heads_dim=args.heads_dim,
                     tolerance=args.tolerance, kv_heads=args.kv_heads, tie_embeddings=args.tie_embeddings)
    measure = None
    if args.measure:
        measure = MeasureOptions(args.measure, args.measure_dtype, args.prompt_len, args.decode_steps,
                                 args.warmup_steps, args.seed, args.threads)
    rows = run_sweep(spec, args.seq_len, args.kv_dtype, not args.no_presets, args.per_depth, measure,
                     args.plot, args.json, args.force)
    print(format_table(rows))
    plural = "" if len(rows) == 1 else "s"
    print(f"{len(rows)} shape{plural}; FLOPs at sequence length {args.seq_len}, KV cache in {args.kv_dtype}"
          + (f"; speed on {args.measure} ({args.measure_dtype}), batch 1, prompt {args.prompt_len}, "
             f"{args.decode_steps} decode steps" if args.measure else ""))
    for path in (args.plot, args.json):
        if path:
            print(f"wrote {path}")


def _config(args: argparse.Namespace) -> None:
    import shlex
    import sys

    from rethinktiny.arch.explorer import render_row_config, row_config
    from rethinktiny.artifacts import write_file_atomic

    cfg = row_config(args.hidden, args.layers, args.heads, args.vocab, expansion=args.expansion, ffn=args.ffn,
                     kv_heads=args.kv_heads, tie_embeddings=args.tie_embeddings)
    command = "rethinktiny " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if len(sys.argv) > 1 else None
    text = render_row_config(cfg, command)
    if args.output:
        write_file_atomic(args.output, text, force=args.force)
        print(f"wrote {args.output}")
    else:
        print(text, end="")


def _memory(args: argparse.Namespace) -> None:
    import json

    from rethinktiny.arch.memory import GB, check_fits, measure_activations, memory_plan, with_layers
    from rethinktiny.configfiles.training import TrainingConfig
    from rethinktiny.errors import UserError

    config = TrainingConfig.from_file(args.config, args.set, allow_unknown_keys=args.allow_unknown_keys)
    nproc = args.nproc or config.nproc_hint or 1
    plan = memory_plan(config, nproc)
    result = plan.to_dict()
    if args.measure:
        measured = measure_activations(config, args.measure_layers)
        layers = measured["measured_layers"]
        # Fewer layers measured: scale by the plan's own ratio between the two depths.
        scale = plan.activations_bytes / memory_plan(with_layers(config, layers), nproc).activations_bytes
        result["measured_activations_bytes"] = round(measured["measured_activations_bytes"] * scale)
        result["measured_layers"] = layers
    if args.json:
        print(json.dumps(result))
    else:
        print(plan.describe())
        if args.measure:
            ratio = plan.activations_bytes / result["measured_activations_bytes"]
            scaled = f", scaled from {layers} layers" if layers != plan.num_layers else ""
            print(f"  measured activations {result['measured_activations_bytes'] / GB:.2f} GB on CPU{scaled} "
                  f"(plan / measured {ratio:.3f})")
    if args.gpu_gb is not None:
        if args.gpu_gb <= 0:
            raise UserError(f"--gpu-gb: expected a positive size, got {args.gpu_gb}")
        check_fits(plan, int(args.gpu_gb * GB), force=False)
        if not args.json:
            print(f"fits a {args.gpu_gb:g} GB GPU")
