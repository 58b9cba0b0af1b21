"""Decode speed against depth at a fixed parameter count (the paper's depth-vs-speed trade-off).

Baseline: the PanGu-π-1B Pro shape (the preset: 21 layers x 1792, from the paper's model table). Compared: a shallower (default 12-layer)
shape of the same parameter count (within --tolerance), chosen among the sweep's shapes with the
FFN expansion closest to the baseline's. Random weights, batch 1, greedy decoding with the KV cache.
The shapes are timed in turns (A, B, A, B, ...) so load changes on a shared machine hit both; the
median of --repeats runs is reported, with the ratio against the baseline measured in this run.

    .venv/bin/python bench/arch_decode.py [--device cpu|cuda] [--dtypes fp32,bf16] [--depths 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from rethinktiny.arch.measure import measure_model, random_model, resolve_device, resolve_dtype  # noqa: E402
from rethinktiny.arch.sweep import SweepSpec, display_expansion, enumerate_shapes  # noqa: E402
from rethinktiny.config import ModelConfig, describe, get_preset  # noqa: E402


def matched_shape(base: ModelConfig, layers: int, tolerance: float) -> ModelConfig:
    """The `layers`-deep shape at the baseline's parameter count with the nearest FFN expansion."""
    spec = SweepSpec(params=base.num_params(), vocab_size=base.vocab_size, layers=(layers,),
                     heads_dim=base.head_dim, tolerance=tolerance)
    target = base.intermediate_size / base.hidden_size
    return min(enumerate_shapes(spec), key=lambda cfg: (abs(cfg.intermediate_size / cfg.hidden_size - target),
                                                        abs(cfg.num_params() - base.num_params())))


def time_shapes(shapes: list[ModelConfig], device: str, dtype: str, args) -> list[dict]:
    """Median prefill / decode tokens/s of each shape, measured in alternation."""
    torch_device = resolve_device(device)
    models = [random_model(cfg, torch_device, resolve_dtype(dtype, torch_device)) for cfg in shapes]
    prefill: list[list[float]] = [[] for _ in shapes]
    decode: list[list[float]] = [[] for _ in shapes]
    best: list[list[float]] = [[] for _ in shapes]
    cpu: list[list[float]] = [[] for _ in shapes]
    for repeat in range(args.repeats):
        for i, model in enumerate(models):
            speed = measure_model(model, args.prompt_len, args.decode_steps, args.warmup_steps, seed=repeat)
            prefill[i].append(speed.prefill_tokens_per_s)
            decode[i].append(speed.decode_tokens_per_s)
            best[i].append(speed.decode_best_tokens_per_s)
            cpu[i].append(speed.decode_cpu_s_per_token)
            print(f"  [{dtype} run {repeat + 1}/{args.repeats}] {shapes[i].num_layers} layers: "
                  f"decode {speed.decode_tokens_per_s:.2f} tok/s (best step {speed.decode_best_tokens_per_s:.2f}), "
                  f"{speed.decode_cpu_s_per_token:.3f} CPU-s/token, prefill {speed.prefill_tokens_per_s:.1f} tok/s",
                  flush=True)
    del models
    return [{"prefill": statistics.median(p), "decode": statistics.median(d), "best": max(b),
             "cpu": statistics.median(c)} for p, d, b, c in zip(prefill, decode, best, cpu)]


def report(shapes: list[ModelConfig], results: list[dict], device: str, dtype: str) -> None:
    base = results[0]
    print(f"\n{device} {dtype}, batch 1 (median over runs of the median step; best = fastest step seen):")
    print(f"{'shape':>28}  {'params M':>9}  {'decode tok/s':>12}  {'ratio':>6}  {'best tok/s':>10}  {'ratio':>6}  "
          f"{'CPU-s/token':>11}  {'ratio':>6}  {'prefill tok/s':>13}  {'ratio':>6}")
    for cfg, result in zip(shapes, results):
        label = f"{cfg.num_layers} x {cfg.hidden_size}, ffn {cfg.intermediate_size}"
        print(f"{label:>28}  {cfg.num_params() / 1e6:9.1f}  {result['decode']:12.2f}  "
              f"{result['decode'] / base['decode']:5.2f}x  {result['best']:10.2f}  "
              f"{result['best'] / base['best']:5.2f}x  {result['cpu']:11.3f}  {base['cpu'] / result['cpu']:5.2f}x  "
              f"{result['prefill']:13.1f}  {result['prefill'] / base['prefill']:5.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16 (fp16 on cuda)")
    parser.add_argument("--depths", default="12", help="comma-separated depths to compare with the 1B Pro")
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 degrades more gently on a busy machine")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    base = get_preset("pangu_pi_1b_pro")
    shapes = [base] + [matched_shape(base, int(depth), args.tolerance) for depth in args.depths.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    for cfg in shapes:
        print(f"  {describe(cfg)}; expansion {display_expansion(cfg):.3f}, "
              f"{100 * (cfg.num_params() / base.num_params() - 1):+.1f}% params vs 1B Pro")
    for dtype in args.dtypes.split(","):
        start = time.perf_counter()
        results = time_shapes(shapes, args.device, dtype, args)
        report(shapes, results, args.device, dtype)
        print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
