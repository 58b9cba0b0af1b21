"""Peak memory and time of `rethinktiny inherit` on a 7B-shaped checkpoint.

Builds a synthetic InternEvo checkpoint of the 7B shape (32 layers x 4096, 32 heads, FFN 11008,
bf16, pipeline-parallel shards as InternEvo saves them) in a temporary folder, then measures in
separate subprocesses, each starting with the source evicted from the page cache:
- baseline: a plain read of every tensor of the checkpoint (memory-mapped, as torch.load(mmap=True));
- inherit: `rethinktiny inherit --width l2 --layers first-last` to the 1B Pro shape.
Prints peak RSS / source size and inherit time / plain read time. The goal is peak RSS <= 0.5x
the source. The temporary folder is removed afterwards (unless --keep).

    python bench/inherit_memory.py [--workdir /tmp] [--layers 32] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rethinktiny.checkpoint import write_model_config  # noqa: E402
from rethinktiny.config import ModelConfig  # noqa: E402

GB = 1e9


def source_config(layers: int, vocab: int) -> ModelConfig:
    return ModelConfig(hidden_size=4096, num_layers=layers, num_attention_heads=32, num_kv_heads=32,
                       intermediate_size=11008, vocab_size=vocab, name="synthetic-7b")


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    h, f = cfg.hidden_size, cfg.intermediate_size
    return {"attention_norm.weight": (h,), "ffn_norm.weight": (h,),
            "attention.wq.weight": (h, h), "attention.wk.weight": (h, h), "attention.wv.weight": (h, h),
            "attention.wo.weight": (h, h), "feed_forward.w1.weight": (f, h), "feed_forward.w3.weight": (f, h),
            "feed_forward.w2.weight": (h, f)}


def _random(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    # Per-row scales so magnitude ranking has something to find.
    scale = torch.empty(shape[0], 1).uniform_(0.01, 0.03, generator=gen).to(torch.bfloat16)
    return torch.empty(shape, dtype=torch.bfloat16).normal_(0, 1, generator=gen) * scale


def write_synthetic(folder: Path, cfg: ModelConfig, pp: int) -> int:
    """InternEvo pp shards (tp=1), one stage in memory at a time; returns bytes on disk."""
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    per_stage = [cfg.num_layers // pp + (1 if p < cfg.num_layers % pp else 0) for p in range(pp)]
    first = 0
    for p, count in enumerate(per_stage):
        shard = {}
        if p == 0:
            shard["tok_embeddings.weight"] = _random((cfg.vocab_size, cfg.hidden_size), gen)
        for local in range(count):
            for name, shape in layer_shapes(cfg).items():
                shard[f"layers.{local}.{name}"] = _random(shape, gen)
        if p == pp - 1:
            shard["norm.weight"] = torch.ones(cfg.hidden_size, dtype=torch.bfloat16)
            shard["output.weight"] = _random((cfg.vocab_size, cfg.hidden_size), gen)
        torch.save(shard, folder / f"model_tp0_pp{p}.pt")
        print(f"  wrote stage {p}: layers {first}..{first + count - 1}", flush=True)
        first += count
        del shard
    write_model_config(folder, cfg)
    return sum(f.stat().st_size for f in folder.glob("model_tp*.pt"))


def evict_page_cache(folder: Path) -> None:
    """Drop the source from the page cache so every measurement reads it from disk."""
    for f in folder.glob("model_tp*.pt"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


PLAIN_READ = """
import sys, torch
from rethinktiny.checkpoint import InternEvoCheckpoint
ckpt = InternEvoCheckpoint(sys.argv[1])
total = 0.0
for name in ckpt.keys():
    total += float(ckpt.tensor(name).sum(dtype=torch.float32))
print("checksum", total)
"""


def measure(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one child process (wait4 gives that child's own rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed with exit code {proc.returncode}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp"))
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=48000, help="source vocabulary (>= the target's 48000)")
    parser.add_argument("--pp", type=int, default=8, help="pipeline stages the synthetic checkpoint is saved in")
    parser.add_argument("--target", default="pangu_pi_1b_pro")
    parser.add_argument("--width", default="l2")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="inherit_memory_", dir=args.workdir))
    try:
        cfg = source_config(args.layers, args.vocab)
        print(f"building synthetic source: {cfg.num_layers} x {cfg.hidden_size}, {cfg.num_params() / 1e9:.2f}B params, "
              f"bf16, pp={args.pp} in {work}", flush=True)
        t0 = time.perf_counter()
        size = write_synthetic(work / "src", cfg, args.pp)
        print(f"  {size / GB:.2f} GB in {time.perf_counter() - t0:.0f} s", flush=True)

        evict_page_cache(work / "src")
        read_s, read_rss = measure([sys.executable, "-c", PLAIN_READ, str(work / "src")])
        evict_page_cache(work / "src")
        inherit_s, inherit_rss = measure([sys.executable, "-m", "rethinktiny", "inherit", "--src", str(work / "src"),
                                          "--target", args.target, "--dst", str(work / "dst"),
                                          "--width", args.width, "--layers", "first-last"])
        out_size = sum(f.stat().st_size for f in (work / "dst").iterdir())
        print(f"\nsource checkpoint:   {size / GB:6.2f} GB ({cfg.num_layers} x {cfg.hidden_size}, bf16, pp={args.pp})")
        print(f"inherited output:    {out_size / GB:6.2f} GB ({args.target})")
        print(f"plain read (mmap):   {read_s:6.1f} s, peak RSS {read_rss / GB:5.2f} GB = {read_rss / size:.2f}x source")
        print(f"inherit --width {args.width}: {inherit_s:6.1f} s, peak RSS {inherit_rss / GB:5.2f} GB = "
              f"{inherit_rss / size:.2f}x source")
        print(f"time inherit / plain read: {inherit_s / read_s:.2f}x")
        verdict = "met" if inherit_rss <= 0.5 * size else "NOT met"
        print(f"goal peak RSS <= 0.5x source: {verdict}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
