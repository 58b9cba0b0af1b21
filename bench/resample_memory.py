"""Peak memory of `rethinktiny resample`'s parent and of one scoring rank, before and after the
corpus index (issue 23.3), on a synthetic corpus of millions of documents.

Before: every process packed the whole corpus in memory (PackedCorpus + batch_rows, about 40 bytes
a document). After: the parent packs it once into an index beside the scores (16 bytes a document,
on disk) that the ranks memory-map; `--max-batches` scores a subset. Measured here, each figure in
its own process (peak RSS = VmHWM, so pages of the memory-mapped index a rank reads are counted):
- old parent: the old code's parent steps but the scoring itself (imports, checkpoint check,
  PackedCorpus + require_batches, which it held throughout, the draw and the plot over all batches);
- old rank: the old code's `score_share`, its share cut to --batches batches (everything else as it ran);
- new parent and rank: the real `resample_data` (--max-batches --batches, two torchrun ranks), the
  parent reading its own VmHWM, each rank printing its peak on its rate line;
- floor: Python + torch + the model alone (what no index change can remove).
The old code is the package at `--before` (`git archive`), imported from a temporary folder.

    .venv/bin/python bench/resample_memory.py [--documents 5000000] [--sizes 0.2,1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

BEFORE = "3ccca08"  # the last commit before the index (issue 23.3)
CONFIG = REPO / "configs" / "tiny_cpu.py"
RANK_RE = re.compile(r"scoring rank (\d+): .*peak RSS (\d+) MiB")
PEAK = """
def _peak():
    status = open("/proc/self/status").read()
    return {k: int(re.search(rf"{k}:\\s+(\\d+) kB", status).group(1)) // 1024 for k in ("VmHWM", "RssAnon")}
"""


def make_corpus(folder: Path, documents: int, files: int, vocab: int) -> Path:
    """`documents` documents of 4..12 tokens in `files` .bin files (the project's BinWriter)."""
    from rethinktiny.data.tokenized import BinWriter

    if (folder / "done").is_file():
        return folder
    rng = np.random.default_rng(0)
    per_file = documents // files
    start = time.perf_counter()
    for index in range(files):
        lengths = rng.integers(4, 13, per_file)
        tokens = rng.integers(1, vocab, int(lengths.sum())).tolist()
        with BinWriter(folder / "en" / f"{index:05d}.bin") as writer:
            position = 0
            for length in lengths.tolist():
                writer.write(tokens[position:position + length])
                position += length
    (folder / "done").write_text(f"{per_file * files} documents in {time.perf_counter() - start:.0f} s\n")
    return folder


def subset(corpus: Path, dst: Path, files: int) -> Path:
    """A data folder of the corpus's first `files` files (symlinks)."""
    (dst / "en").mkdir(parents=True, exist_ok=True)
    for path in sorted((corpus / "en").glob("*.bin"))[:files]:
        for suffix in ("", ".meta"):
            link = dst / "en" / f"{path.name}{suffix}"
            if not link.exists():
                link.symlink_to(Path(f"{path}{suffix}"))
    return dst


def run_python(code: str, pythonpath: Path, timeout: int = 1800) -> tuple[str, float]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], cwd=pythonpath, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        sys.exit(f"failed:\n{code}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout, time.perf_counter() - start


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def old_package(rev: str, dst: Path) -> Path:
    """The rethinktiny package at `rev`, unpacked into `dst`."""
    archive = subprocess.run(["git", "archive", rev, "rethinktiny"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dst)], input=archive.stdout, check=True)
    return dst


def measure_old(old: Path, data: Path, overrides: list[str], ckpt: Path, work: Path, batches: int) -> dict:
    setup = f"""
import json, re, sys
from rethinktiny.resample.run import read_training_config  # the old package's name
from rethinktiny.resample.spec import spec_from_data_config
cfg = read_training_config({str(CONFIG)!r}, {overrides!r})
spec = spec_from_data_config(cfg.data)
{PEAK}"""
    parent, parent_s = run_python(setup + f"""
# the old parent's steps but scoring: imports, checkpoint check, corpus, batches, draw, plot
import numpy as np
from rethinktiny.checkpoint import open_model_checkpoint
from rethinktiny.resample.batches import PackedCorpus, require_batches
from rethinktiny.resample.sampling import resample, seeded_generator
from rethinktiny.resample.writer import plot_losses
checkpoint, _ = open_model_checkpoint({str(ckpt)!r}, cfg.model)
corpus = PackedCorpus({str(data)!r}, spec)
batches = require_batches(corpus)
losses = np.random.default_rng(0).normal(7.0, 0.1, len(batches))
draw = resample(losses, {batches}, seeded_generator(0))
plot_losses(losses, draw.selected, __import__("pathlib").Path({str(work / "old_losses.png")!r}))
print(json.dumps({{**_peak(), "batches": len(batches), "rows": corpus.num_rows}}))
""", old)
    scores = work / "old_scores"
    scores.mkdir(parents=True, exist_ok=True)
    num_batches = last_json(parent)["batches"]
    rank, rank_s = run_python(setup + f"""
from rethinktiny.resample import worker
from rethinktiny.resample.scorefiles import ScorePlan
plan = ScorePlan(folder={str(scores)!r}, data={str(data)!r}, checkpoint={str(ckpt)!r}, model=cfg.model.to_dict(),
                 dtype=cfg.dtype, spec=spec.to_dict(), label_smoothing=0.0, num_batches={num_batches},
                 identity="bench")
# the old rank as it ran, its share cut to the first batches (rank 0 of 2: every other batch)
worker.batches_to_score = lambda plan, rank, world: list(range(0, 2 * {batches}, 2))
worker.score_share(plan, 0, 2, "cpu", progress=False)
print(json.dumps(_peak()))
""", old)
    return {"parent": last_json(parent), "parent_s": parent_s, "rank": last_json(rank), "rank_s": rank_s}


def measure_new(data: Path, overrides: list[str], ckpt: Path, work: Path, batches: int) -> dict:
    dst = work / "new_out"
    out, seconds = run_python(f"""
import json, re
from rethinktiny.launch import LaunchOptions
from rethinktiny.resample.run import resample_data
{PEAK}
result = resample_data({str(CONFIG)!r}, {str(ckpt)!r}, {str(dst)!r}, data={str(data)!r}, num_batches={batches},
                       max_batches={2 * batches}, copy_data=False, overrides={overrides!r}, force=True,
                       launch=LaunchOptions(nproc_per_node=2), progress=False)
print(json.dumps({{**_peak(), "batches": result.num_batches, "scored": result.num_scored}}))
""", REPO)
    ranks = {int(m.group(1)): int(m.group(2)) for m in RANK_RE.finditer(out)}
    if not ranks:  # two ranks finishing at once can interleave their lines; one clean line is enough
        sys.exit(f"no rank printed its peak RSS:\n{out[-3000:]}")
    return {"parent": last_json(out), "parent_s": seconds, "rank": {"VmHWM": max(ranks.values())}, "ranks": ranks}


def measure_floor(overrides: list[str], ckpt: Path) -> dict:
    out, _ = run_python(f"""
import json, re
from rethinktiny.checkpoint import load_model
from rethinktiny.resample.run import read_config
{PEAK}
cfg = read_config({str(CONFIG)!r}, {overrides!r})
model = load_model({str(ckpt)!r}, cfg.model, cfg.dtype)
print(json.dumps(_peak()))
""", REPO)
    return last_json(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=5_000_000)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--sizes", default="0.2,1", help="fractions of the files to measure at")
    parser.add_argument("--batches", type=int, default=4, help="batches each rank scores")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "rethinktiny" / "bench_resample_memory")
    parser.add_argument("--before", default=BEFORE, help="git revision of the old code")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "resample_memory.json")
    args = parser.parse_args()

    import torch

    from rethinktiny.checkpoint import save_model_only
    from rethinktiny.model import PanGuPi
    from rethinktiny.resample.run import read_config

    work = args.work
    overrides = ["data.seq_len=64", "data.micro_bsz=1", "data.micro_num=1", "data.min_length=0",
                 f"data.train_folder='{work / 'corpus'}'"]
    cfg = read_config(CONFIG, overrides)
    corpus = make_corpus(work / "corpus", args.documents, args.files, cfg.model.vocab_size)
    print(f"corpus: {(corpus / 'done').read_text().strip()}", flush=True)
    ckpt = work / "ckpt"
    if not (ckpt / "model_config.json").is_file():
        torch.manual_seed(0)
        save_model_only(ckpt, PanGuPi(cfg.model).state_dict(), cfg.model)
    floor = measure_floor(overrides, ckpt)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = old_package(args.before, Path(tmp))
        for size in [float(s) for s in args.sizes.split(",")]:
            files = max(1, round(size * args.files))
            data = subset(corpus, work / f"data_{files}", files)
            documents = files * (args.documents // args.files)
            before = measure_old(old, data, overrides, ckpt, work, args.batches)
            after = measure_new(data, overrides, ckpt, work, args.batches)
            rows.append({"documents": documents, "batches": before["parent"]["batches"], "before": before,
                         "after": after})
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"floor": floor, "rows": rows}, indent=1) + "\n")
    print(f"\nfloor (python + torch + model, no corpus): {floor['VmHWM']} MiB")
    print("| documents | batches | parent before | parent after | ratio | rank before | rank after | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        pb, pa = row["before"]["parent"]["VmHWM"], row["after"]["parent"]["VmHWM"]
        rb, ra = row["before"]["rank"]["VmHWM"], row["after"]["rank"]["VmHWM"]
        print(f"| {row['documents']:,} | {row['batches']:,} | {pb} MiB | {pa} MiB | {pb / pa:.2f} | "
              f"{rb} MiB | {ra} MiB | {rb / ra:.2f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
