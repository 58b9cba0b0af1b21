"""Token counting speed: `rethinktiny vocab count` against the seed's step1 algorithm.

    python bench/vocab_count.py [--tokenizer ../shared/data/tokenizers/internlm_103k.model]
                                [--corpus ../shared/data/corpus/corpus.jsonl] [--shards 4] [--process-num 2]

The corpus is tokenized once into InternEvo's format (`--shards` shards, <s> ... </s> per document,
as `rethinktiny data tokenize` writes it), before any timing. Then, on the same files with the same
number of workers (`--process-num`), alternately (the order flips every repeat):
  * baseline — the seed's step1 algorithm, reimplemented here: a pool of `--process-num` processes,
    one task per file, `json.loads` per line, a Python dict of counts, the dict dumped as JSON per file;
  * ours — `rethinktiny.vocab.count.count_folder` with `--process-num` worker threads, into a new
    folder each time (every file counted: no resume shortcut), results and manifest included.
Each is timed end to end (pool start to last result written) `--repeats` times, in wall time and in
CPU time of all its processes and threads (steadier on a shared machine). Reported: the best of each
and the median of the per-repeat ratios. Both results are checked to be the same counts. Writes a
PNG of the timings.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rethinktiny.data.prepare import tokenize_corpus  # noqa: E402
from rethinktiny.tokenizer import load_tokenizer  # noqa: E402
from rethinktiny.data.tokenized import find_bin_files  # noqa: E402
from rethinktiny.vocab.count import count_folder  # noqa: E402
from rethinktiny.vocab.sum_counts import merge_counts  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def seed_worker(ori_file: str, save_path: str) -> None:
    """The seed's step1 worker (json per line, dict counts), minus its silent `except: pass`."""
    res = {"ori_file": ori_file}
    with open(ori_file, "r") as f:
        line = f.readline()
        while line:
            data = json.loads(line)
            for token in data["tokens"]:
                if token in res:
                    res[token] += 1
                else:
                    res[token] = 1
            line = f.readline()
    with open(save_path, "w") as f:
        f.write(json.dumps(res))


def cpu_seconds() -> float:
    """CPU time of this process plus its finished children (pool workers are reaped on exit)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(function, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    function(*args)
    return time.perf_counter() - wall, cpu_seconds() - cpu


def run_seed(src: Path, dst: Path, process_num: int) -> None:
    """The seed's step1 main: walk for .bin files, one pool task per file."""
    files = [str(p) for p in find_bin_files(src)]
    with multiprocessing.get_context("fork").Pool(processes=process_num) as pool:
        results = [pool.apply_async(seed_worker, (f, str(dst / (f.replace("/", "__") + ".json"))))
                   for f in files]
        pool.close()
        for result in results:
            result.get()
        pool.join()


def run_ours(src: Path, dst: Path, process_num: int) -> None:
    count_folder(src, dst, process_num=process_num, force=True)


def seed_totals(dst: Path) -> Counter:
    total: Counter = Counter()
    for path in dst.iterdir():
        body = json.loads(path.read_text())
        body.pop("ori_file")
        total.update({int(k): v for k, v in body.items()})
    return total


def prepare_data(tokenizer: Path, corpus: Path, shards: int, work: Path) -> Path:
    """The corpus in InternEvo format, split into `shards` files of about equal token counts."""
    loaded = load_tokenizer(tokenizer)
    texts = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8")]
    tokens = sum(len(loaded.frame(ids)) for ids in loaded.encode_batch(texts))
    data = work / "data"
    tokenize_corpus(corpus, tokenizer, data, type_key=None, shard_tokens=math.ceil(tokens / shards))
    return data


def plot(seed_runs: list, our_runs: list, png: Path, tokens: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, index, what in zip(axes, (0, 1), ("wall", "CPU")):
        seed, ours = min(r[index] for r in seed_runs), min(r[index] for r in our_runs)
        ax.bar(["seed step1\n(json + dict)", "rethinktiny\nvocab count"], [seed, ours], color=["tab:gray", "tab:blue"])
        ax.set_ylabel(f"{what} seconds (best of runs)")
        ax.set_title(f"{what}: {seed / ours:.1f}x faster", fontsize=10)
    fig.suptitle(f"counting {tokens / 1e6:.2f}M tokens", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def timed_runs(data: Path, work: Path, process_num: int, repeats: int) -> tuple[list, list]:
    """(wall, CPU) of each run of the seed's algorithm and of ours, alternating which goes first."""
    seed_runs, our_runs = [], []
    for repeat in range(repeats):
        seed_dst, our_dst = work / f"seed{repeat}", work / f"ours{repeat}"
        seed_dst.mkdir()
        seed = lambda: seed_runs.append(timed(run_seed, data, seed_dst, process_num))  # noqa: E731
        ours = lambda: our_runs.append(timed(run_ours, data, our_dst, process_num))  # noqa: E731
        for run in ((seed, ours) if repeat % 2 == 0 else (ours, seed)):
            run()
    return seed_runs, our_runs


def report(seed_runs: list, our_runs: list) -> None:
    for name, runs in (("seed step1 algorithm", seed_runs), ("rethinktiny count", our_runs)):
        print(f"{name + ':':22s} wall best {min(w for w, _ in runs):.3f} s, CPU best {min(c for _, c in runs):.3f} s"
              f"  (runs, wall/CPU: {', '.join(f'{w:.3f}/{c:.3f}' for w, c in runs)})")
    for index, what in ((0, "wall clock"), (1, "CPU, all processes and threads")):
        best = min(r[index] for r in seed_runs) / min(r[index] for r in our_runs)
        paired = statistics.median(s[index] / o[index] for s, o in zip(seed_runs, our_runs))
        print(f"speed-up, {what}: {best:.1f}x best vs best, {paired:.1f}x median of the per-repeat ratios")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "tokenizers" / "internlm_103k.model")
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "corpus.jsonl")
    parser.add_argument("--data", type=Path, help="an existing InternEvo data folder (skips tokenizing)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--process-num", type=int, default=2, help="workers for both (seed: processes, ours: threads)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--png", type=Path, default=Path("bench_vocab_count.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data or prepare_data(args.tokenizer, args.corpus, args.shards, work)  # not timed
        files = find_bin_files(data)
        seed_runs, our_runs = timed_runs(data, work, args.process_num, args.repeats)
        ours = merge_counts(work / f"ours{args.repeats - 1}", work / "total.json")
        expected = seed_totals(work / f"seed{args.repeats - 1}")
        assert {i: int(c) for i, c in enumerate(ours) if c} == dict(expected), "counts differ"
        tokens = sum(expected.values())
        print(f"{len(files)} files, {tokens:,} tokens, {args.process_num} workers each, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}; same counts: yes")
        report(seed_runs, our_runs)
        plot(seed_runs, our_runs, args.png, tokens)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
