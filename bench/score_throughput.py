"""Scoring throughput against training throughput, same model, same data, same run.

Scoring every training batch with the frozen model is forward-only, no gradients: about a third of
a training step's compute, so it should run at >= 2.5x the training tokens/s. Measured here:
1. InternEvo training (start_finetune.py, the config's ranks) for --steps steps on a slice of the
   data; training tokens/s = median of the trainer's per-step figure after --warmup steps;
2. `rethinktiny resample` scoring (same ranks, same launcher) of every batch of that slice with
   the checkpoint step 1 saved; scoring tokens/s = sum over ranks of each rank's steady rate
   (model loading excluded, as the trainer's per-step figure excludes start-up);
3. in one process, the same packed rows: forward-only loss vs forward + backward + AdamW step.

    .venv/bin/python bench/score_throughput.py [--config configs/tiny_cpu.py] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from rethinktiny.data.tokenized import find_bin_files, iter_documents, write_documents  # noqa: E402

RATE_RE = re.compile(r"\[rethinktiny\] scoring rank (\d+): .* \(([\d.]+) tokens/s\)")
GOAL = 2.5


def slice_data(src: Path, dst: Path, tokens_per_file: int) -> Path:
    """The first documents of every .bin under `src`, up to `tokens_per_file` tokens each."""
    for path in find_bin_files(src):
        documents, total = [], 0
        for tokens in iter_documents(path):
            if total >= tokens_per_file:
                break
            documents.append(tokens)
            total += len(tokens)
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_documents(out, documents)
    return dst


def run(command: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result, time.perf_counter() - start


def train(args, data: Path, save: Path, nproc: int) -> float:
    """Median training tokens/s over the steps after warm-up (InternEvo's trainer, `nproc` ranks)."""
    sets = [f"ckpt.save_ckpt_folder='local:{save}'", f"data.train_folder='{data}'", f"data.total_steps={args.steps}",
            f"lr_scheduler.total_steps={args.steps}", f"ckpt.checkpoint_every={args.steps}"]
    command = [sys.executable, "start_finetune.py", "--config", args.config, "--nproc-per-node", str(nproc)]
    run(command + [item for s in sets for item in ("--set", s)])
    rows = [json.loads(line) for line in (save / "train_metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["tokens_per_s"] for r in rows[args.warmup:])


def score(args, data: Path, ckpt: Path, dst: Path, nproc: int) -> tuple[float, float, int]:
    """(sum of the ranks' steady scoring tokens/s, wall seconds incl. start-up, batches)."""
    result, wall = run([sys.executable, "-m", "rethinktiny", "resample", "--config", args.config, "--ckpt", str(ckpt),
                        "--data", str(data), "--dst", str(dst), "--ratio", "0.5", "--selection-only",
                        "--nproc-per-node", str(nproc), "--no-progress", "--force"])
    rates = {int(m.group(1)): float(m.group(2)) for m in RATE_RE.finditer(result.stdout + result.stderr)}
    if len(rates) != nproc:
        sys.exit(f"expected {nproc} scoring rank rates, found {rates}\n{result.stdout[-2000:]}")
    batches = json.loads((dst / "manifest.json").read_text())["summary"]["num_batches"]
    return sum(rates.values()), wall, batches


def in_process(args, data: Path, ckpt: Path, rows: int) -> tuple[float, float]:
    """(forward-only tokens/s, training-step tokens/s) on the same packed rows, one process."""
    from rethinktiny.resample.batches import PackedCorpus, RowReader
    from rethinktiny.resample.run import read_config
    from rethinktiny.checkpoint import load_model
    from rethinktiny.resample.scoring import row_loss
    from rethinktiny.resample.spec import spec_from_data_config

    cfg = read_config(args.config)
    corpus = PackedCorpus(data, spec_from_data_config(cfg.data))
    with RowReader(corpus) as reader:
        packed = [reader.row(i) for i in range(min(rows, corpus.num_rows))]
    torch.set_num_threads(1)  # as each torchrun rank (OMP_NUM_THREADS=1): no oversubscription
    model = load_model(ckpt, cfg.model, cfg.dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    tokens = sum(len(r.tokens) for r in packed)
    forward_s, step_s = [], []
    for _ in range(3):  # alternate; the first round warms both up
        start = time.perf_counter()
        for row in packed:
            row_loss(model, row)
        forward_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        for row in packed:
            training_step(model, optimizer, row)
        step_s.append(time.perf_counter() - start)
    return tokens / min(forward_s[1:]), tokens / min(step_s[1:])


def training_step(model, optimizer, row) -> None:
    logits = model(torch.from_numpy(row.tokens)[None], cu_seqlens=torch.from_numpy(row.cu_seqlens),
                   indexes=torch.from_numpy(row.indexes))
    torch.nn.functional.cross_entropy(logits[0].float(), torch.from_numpy(row.labels)).backward()
    optimizer.step()
    optimizer.zero_grad()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny_cpu.py")
    parser.add_argument("--data", help="tokenized data folder (default: the config's data.train_folder)")
    parser.add_argument("--tokens-per-file", type=int, default=30_000, help="slice of each data file to use")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--nproc-per-node", type=int, default=None, help="default: the config's launch hint")
    parser.add_argument("--rows", type=int, default=20, help="packed rows for the in-process comparison")
    parser.add_argument("--repeats", type=int, default=3, help="training/scoring runs, alternated")
    parser.add_argument("--work", default="outputs/bench/score_throughput")
    args = parser.parse_args()

    from rethinktiny.configfiles.training import TrainingConfig
    from rethinktiny.launch import LaunchOptions
    from rethinktiny.resample.run import read_config

    hint = TrainingConfig.from_file(args.config).nproc_hint
    nproc = LaunchOptions.from_env(nproc_per_node=args.nproc_per_node).resolve(hint).nproc_per_node
    work = REPO / args.work
    shutil.rmtree(work, ignore_errors=True)
    source = Path(args.data or read_config(args.config).data["train_folder"])
    data = slice_data(source, work / "data", args.tokens_per_file)
    train_rates, score_rates = [], []
    for repeat in range(args.repeats):  # alternate, so load changes on a shared machine hit both
        save = work / f"ckpt{repeat}"
        train_rates.append(train(args, data, save, nproc))
        rate, wall, batches = score(args, data, save / str(args.steps), work / "scores", nproc)
        score_rates.append(rate)
        print(f"repeat {repeat + 1}: training {train_rates[-1]:,.0f} tokens/s, scoring {rate:,.0f} tokens/s "
              f"({wall:.1f} s wall incl. start-up)", flush=True)
    forward, step = in_process(args, data, work / "ckpt0" / str(args.steps), args.rows)
    train_rate, score_rate = statistics.median(train_rates), statistics.median(score_rates)
    print(f"config {args.config}, {nproc} ranks, {batches} batches of {data}, load average {os.getloadavg()[0]:.1f}")
    print(f"  InternEvo training : {train_rate:>10,.0f} tokens/s (median of {args.repeats} runs of the median step "
          f"{args.warmup + 1}..{args.steps})")
    print(f"  resample scoring   : {score_rate:>10,.0f} tokens/s (median of {args.repeats} runs; sum over ranks)")
    print(f"  ratio              : {score_rate / train_rate:>10.2f}x  (goal >= {GOAL}x)")
    print(f"  one process, 1 thread, {args.rows} rows: forward-only {forward:,.0f} tokens/s, "
          f"forward+backward+AdamW {step:,.0f} tokens/s, ratio {forward / step:.2f}x")

if __name__ == "__main__":
    main()
