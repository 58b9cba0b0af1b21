"""Distillation of the demo's inherited student from the real teacher (SmolLM2-135M), on CPU.

The demo's student (30 x 576, FFN cut to 256 by activation, 16k compact vocabulary: 49.1M) is
inherited once; every variant then trains from that same start on the same packed rows with 2 CPU
ranks through `rethinktiny train` (InternEvo's trainer), and is scored on held-out text in bits per
byte (`rethinktiny eval ppl`). Seeds are paired: seed s fixes the batch order (data.seed) and
InternEvo's seed for every variant, so differences are taken per seed and an effect is claimed only
beyond two standard errors of the mean difference (bench/ablation_stats.py).

Experiments (--experiments, any subset; each run folder is reused when finished):
  main       CE only, KD only (Minitron: T=1, no CE), CE+KD (weights 1 + 1), at --tokens each
  wallclock  CE only for as many steps as KD only took wall-clock (from the main runs' step times)
  cache      KD from the teacher cache (`rethinktiny distill cache`): K = 16 sampled ids and K = 16 top
             ids; also reports each cache's bytes per 1k tokens and build time
  cuts       held-out loss at step 0 with one cut at a time: vocabulary remap only, FFN only,
             depth only (20 layers), hidden only (384), and the demo's combination
  rounds     round 2 (half the batches of the slice, drawn uniformly / by raw loss / by excess loss
             over the vocabulary-remapped teacher, `resample --reference`) after a CE round 1
  iterative  one-shot pruning to the student vs iterative (prune to FFN 768, recover, prune to 256,
             recover) at equal tokens

    python bench/distill.py --experiments main --tokens 20000 --seeds 0 1
    python bench/distill.py --experiments main cache wallclock cuts rounds iterative --tokens 100000

Writes results.json and results.md (the tables) to --out (default outputs/distill_bench);
bench/distill_plot.py draws docs/img/distill.png from results.json files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ablation_stats import comparison_table, fmt, mean_se, paired  # noqa: E402

DEFAULT_TEACHER = Path("~/.cache/rethinktiny/smollm2-135m").expanduser()
# The demo's student of SmolLM2-135M (30 x 576, GQA 9/3, FFN 1536, tied, 49,152 ids): full depth and
# width, FFN cut to 256 by activation, on a 16k compact vocabulary (rethinktiny/demo).
STUDENT = dict(hidden_size=576, num_layers=30, num_attention_heads=9, num_kv_heads=3, intermediate_size=256,
               tie_embeddings=True)
TEACHER_SHAPE = dict(hidden_size=576, num_layers=30, num_attention_heads=9, num_kv_heads=3, intermediate_size=1536,
                     tie_embeddings=True)
MAIN_VARIANTS = ("CE only", "KD only", "CE+KD")
COMPACT_VOCAB = 16000
TEACHER_VOCAB = 49152
SEQ_LEN, MICRO_BSZ, RANKS = 256, 2, 2
TOKENS_PER_STEP = SEQ_LEN * MICRO_BSZ * RANKS  # micro_num 1
LR = 5e-4  # the demo's measured best for the inherited student
CALIB_TOKENS = 4096
EVAL_DOCS = 16

# One cut at a time (step-0 loss): name -> (target shape, layer strategy, compact vocabulary?)
CUTS = {
    "vocabulary remap only": (TEACHER_SHAPE, "first-last", True),
    "FFN only (1536 -> 256)": ({**TEACHER_SHAPE, "intermediate_size": 256}, "first-last", False),
    "depth only (30 -> 20)": ({**TEACHER_SHAPE, "num_layers": 20}, "block-influence", False),
    "hidden only (576 -> 384)": ({**TEACHER_SHAPE, "hidden_size": 384, "num_attention_heads": 6,
                                  "num_kv_heads": 2}, "first-last", False),
    "all (the demo's student)": (STUDENT, "first-last", True),
}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.out: Path = args.out.resolve()
        self.teacher: Path = args.teacher.resolve()
        self.sample: Path = args.sample.resolve()
        self.train_docs = args.train_docs
        self.setup = self.out / "setup"
        self.runs = self.out / "runs"
        self.results: dict = json.loads((self.out / "results.json").read_text()) if (
            self.out / "results.json").exists() else {}

    # ---- commands ---------------------------------------------------------------------------
    def cli(self, log: Path, *args) -> None:
        command = [sys.executable, "-m", "rethinktiny", *[str(a) for a in args]]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write("$ " + " ".join(command) + "\n")
            f.flush()
            result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        if result.returncode != 0:
            raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n  log: {log}")

    @property
    def token_map(self) -> Path:
        return self.setup / "vocab" / "tokenizer" / "token_map.json"

    @property
    def compact_train(self) -> Path:
        return self.setup / "vocab" / "train"

    @property
    def held_out(self) -> Path:
        return self.setup / "held_out.jsonl"

    @property
    def student(self) -> Path:
        return self.setup / "inherit" / "student"

    def distill(self, **weights) -> str:
        fields = {**dict(teacher=str(self.teacher), token_map=str(self.token_map), kd_weight=1.0, ce_weight=0.0,
                         temperature=1.0), **weights}
        return "distill=dict(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"

    # ---- setup: the demo's data, compact vocabulary and inherited student ------------------
    def prepare(self) -> None:
        s = self.setup
        if (s / "done").exists():
            return
        log = s / "log.txt"
        s.mkdir(parents=True, exist_ok=True)
        _subset(self.sample / "valid.jsonl", self.held_out, EVAL_DOCS)
        self.cli(log, "data", "tokenize", "--input", self.sample / "train.jsonl", "--tokenizer", self.teacher,
                 "--dst", s / "data" / "train")
        self.cli(log, "vocab", "count", "--src", s / "data" / "train", "--tokenizer", self.teacher,
                 "--dst", s / "vocab" / "counts")
        self.cli(log, "vocab", "merge", "--src", s / "vocab" / "counts", "--dst", s / "vocab" / "total_token_freq.json")
        self.cli(log, "vocab", "prune", "--tokenizer", self.teacher, "--counts", s / "vocab" / "total_token_freq.json",
                 "--vocab-num", COMPACT_VOCAB, "--dst", s / "vocab" / "tokenizer")
        _subset(self.sample / "train.jsonl", s / "vocab" / "train_slice.jsonl", self.train_docs)
        _subset(self.sample / "train.jsonl", s / "data" / "train_slice.jsonl", self.train_docs)
        self.cli(log, "data", "tokenize", "--input", s / "vocab" / "train_slice.jsonl", "--tokenizer",
                 s / "vocab" / "tokenizer", "--dst", self.compact_train)
        self.cli(log, "data", "tokenize", "--input", s / "data" / "train_slice.jsonl", "--tokenizer",
                 self.teacher, "--dst", s / "data" / "train_slice")
        self.inherit(STUDENT, "first-last", True, self.student, log)
        (s / "done").write_text("ok\n")

    def target_config(self, shape: dict, vocab: int, path: Path, log: Path) -> Path:
        args = ["config", "export", "--preset", "tiny", "--cpu", RANKS, "--vocab-size", vocab, "--dst", path,
                "--force"]
        for key, value in shape.items():
            flag = f"--{key.replace('_', '-')}"
            args += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, value]
        self.cli(log, *args)
        return path

    def inherit(self, shape: dict, layers: str, compact: bool, dst: Path, log: Path, src: Path | None = None,
                vocab_from_src: bool = False) -> Path:
        """`rethinktiny inherit` of `shape` from `src` (default the teacher), the demo's options."""
        if (dst / "model_config.json").exists():
            return dst
        vocab = COMPACT_VOCAB if compact or vocab_from_src else TEACHER_VOCAB
        target = self.target_config(shape, vocab, dst.parent / f"{dst.name}_target.py", log)
        calib = self.compact_train if compact or vocab_from_src else self.setup / "data" / "train_slice"
        extra = ["--token-map", self.token_map] if compact and not vocab_from_src else []
        self.cli(log, "inherit", "--src", src or self.teacher, "--target", target, "--dst", dst, "--layers", layers,
                 "--width", "activation", "--calib", calib, "--calib-tokens", CALIB_TOKENS, "--calib-seq-len",
                 SEQ_LEN, "--seed", 0, *extra)
        return dst

    # ---- one training run -------------------------------------------------------------------
    def run(self, name: str, seed: int, tokens: int, overrides: list[str], start: Path | None = None,
            train: Path | None = None, start_ckpt: Path | None = None) -> dict:
        """Train from `start` (an inherit folder; default the student) or `start_ckpt` (a step folder),
        then score held-out bits per byte. Returns {bpb, seconds, tokens_per_s, last}."""
        folder = self.runs / f"{name}-s{seed}"
        result_file = folder / "result.json"
        if result_file.exists():
            return json.loads(result_file.read_text())
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        log = folder / "log.txt"
        steps = max(1, tokens // TOKENS_PER_STEP)
        config = folder / "config.py"
        self.cli(log, "config", "export", "--preset", "tiny", "--cpu", RANKS, "--seq-len", SEQ_LEN, "--micro-bsz",
                 MICRO_BSZ, "--micro-num", 1, "--total-steps", steps, "--lr", LR, "--min-lr", LR / 10,
                 "--warmup-ratio", 0.05, "--weight-decay", 0.01, "--zero1-size", -1, "--min-length", 0,
                 "--checkpoint-every", steps, "--train-folder", train or self.compact_train, "--save-ckpt-folder",
                 f"local:{folder / 'ckpt'}", "--job-name", name, "--inherit", start or self.student, "--dst", config)
        sets = [f"data.seed={1024 + seed}", *overrides]
        if start_ckpt is not None:
            sets += [f"ckpt.load_ckpt_info=dict(path='local:{start_ckpt}', content=('model',), "
                     "ckpt_type='internevo')", "ckpt.auto_resume=False"]
        started = time.time()
        self.cli(log, "train", "--config", config, "--seed", 1024 + seed, *[x for s in sets for x in ("--set", s)])
        seconds = time.time() - started
        last = _last_step(folder / "ckpt")
        bpb = self.eval(last, folder / "eval.json", log)
        records = [json.loads(line) for line in (folder / "ckpt" / "train_metrics.jsonl").read_text().splitlines()]
        rates = sorted(r["tokens_per_s"] for r in records[1:]) or [records[0]["tokens_per_s"]]
        result = {"bpb": bpb, "seconds": round(seconds, 1), "steps": steps,
                  "tokens_per_s": rates[len(rates) // 2], "last": str(last),
                  "final": {k: records[-1].get(k) for k in ("loss", "kd_loss", "ce_loss", "teacher_mass", "cache_hits")
                            if k in records[-1]}}
        result_file.write_text(json.dumps(result, indent=1))
        return result

    def eval(self, model: Path, out: Path, log: Path, tokenizer: Path | None = None) -> float:
        if not out.exists():
            self.cli(log, "eval", "ppl", "--model", model, "--data", self.held_out, "--tokenizer",
                     tokenizer or self.setup / "vocab" / "tokenizer", "--seq-len", SEQ_LEN, "--out", out)
        return json.loads(out.read_text())["bits_per_byte"]

    # ---- experiments ------------------------------------------------------------------------
    def main(self, seeds, tokens, names=MAIN_VARIANTS) -> dict:
        variants = {"CE only": [], "KD only": [self.distill()], "CE+KD": [self.distill(ce_weight=1.0)]}
        # Seed-major: a bench stopped early still holds complete pairs.
        runs = {name: {} for name in variants if name in names}
        for s in seeds:
            for name in runs:
                runs[name][s] = self.run(_slug(name, tokens), s, tokens, variants[name])
        return runs

    def wallclock(self, seeds, tokens) -> dict:
        """CE only for as many tokens as an online-KD run's wall-clock buys (the step-time ratio is
        measured in this process: on a shared machine the runs' own tokens/s are too noisy)."""
        ratio = self.results.setdefault("kd_step_time_ratio", step_time_ratio(self))
        steps = round(ratio * (tokens // TOKENS_PER_STEP))
        name = f"CE only, KD's wall-clock ({steps * TOKENS_PER_STEP:,} tokens)"
        return {name: {s: self.run(_slug("CE equal time", tokens), s, steps * TOKENS_PER_STEP, []) for s in seeds}}

    def build_cache(self, mode: str, k: int) -> Path:
        """`rethinktiny distill cache` over the training slice; records its cost in results."""
        cache = self.setup / ("cache" if mode == "sample" else f"cache-{mode}")  # "cache": older runs' name
        log = self.setup / "cache_log.txt"
        if not (cache / "done").exists():
            started = time.time()
            self.cli(log, "distill", "cache", "--teacher", self.teacher, "--data", self.compact_train, "--dst", cache,
                     "--seq-len", SEQ_LEN, "--micro-bsz", MICRO_BSZ, "--token-map", self.token_map, "--k", k,
                     "--mode", mode, "--nproc-per-node", RANKS, "--no-progress")
            size = sum(p.stat().st_size for p in cache.glob("unit-*.npz"))
            manifest = json.loads((cache / "cache.json").read_text())
            tokens_cached = manifest["num_rows"] * SEQ_LEN * MICRO_BSZ
            (cache / "done").write_text(json.dumps({"mode": mode, "k": k, "seconds": round(time.time() - started, 1),
                                                    "bytes": size, "tokens": tokens_cached,
                                                    "bytes_per_1k_tokens": round(1000 * size / tokens_cached)}))
        self.results.setdefault("cache_build", {})[mode] = json.loads((cache / "done").read_text())
        return cache

    def cache(self, seeds, tokens) -> dict:
        """KD from the cache, K = 16 sampled ids (unbiased) and K = 16 top ids (mass beyond dropped)."""
        out = {}
        for mode, name, slug in (("sample", "KD only (cache)", "KD cache"),
                                 ("topk", "KD only (cache, top-k)", "KD cache topk")):
            cache = self.build_cache(mode, 16)
            sets = [f"distill=dict(cache={str(cache)!r}, kd_weight=1.0, ce_weight=0.0)"]
            out[name] = {s: self.run(_slug(slug, tokens), s, tokens, sets) for s in seeds}
        return out

    def cuts(self) -> dict:
        out = {}
        log = self.setup / "cuts_log.txt"
        for name, (shape, layers, compact) in CUTS.items():
            dst = self.setup / "cuts" / _slug(name, 0)
            self.inherit(shape, layers, compact, dst, log)
            tokenizer = self.setup / "vocab" / "tokenizer" if compact else self.teacher
            out[name] = self.eval(dst, dst.parent / f"{dst.name}_eval.json", log, tokenizer)
        out["teacher (no cut)"] = self.eval(self.teacher, self.setup / "cuts" / "teacher_eval.json", log, self.teacher)
        return out

    def rounds(self, seeds, tokens) -> dict:
        """Round 1: CE on the slice; round 2 on half the batches, drawn three ways, equal tokens."""
        reference = self.inherit(*CUTS["vocabulary remap only"], self.setup / "cuts" / "vocabulary_remap_only",
                                 self.setup / "cuts_log.txt")
        out = {"round 2 uniform": {}, "round 2 raw loss": {}, "round 2 excess loss": {}}
        for s in seeds:
            round1 = self.run(_slug("CE only", tokens), s, tokens, [])  # the main experiment's CE run
            config = self.runs / f"{_slug('CE only', tokens)}-s{s}" / "config.py"
            for name, extra in (("round 2 uniform", ["--temperature", "1e9"]), ("round 2 raw loss", []),
                                ("round 2 excess loss", ["--reference", reference])):
                selected = self.runs / f"{_slug(name, tokens)}-s{s}-selected"
                if not (selected / "selection.json").exists():
                    self.cli(self.runs / "resample_log.txt", "resample", "--config", config, "--ckpt", round1["last"],
                             "--data", self.compact_train, "--ratio", 0.5, "--dst", selected, "--seed", s, "--force",
                             "--no-progress", *extra)
                out[name][s] = self.run(_slug(name, tokens), s, tokens, [], train=selected,
                                        start_ckpt=Path(round1["last"]))
        return out

    def iterative(self, seeds, tokens) -> dict:
        """One-shot (prune to the student, recover 2N) vs iterative (FFN 768, recover N, FFN 256, recover N)."""
        half = tokens // 2
        mid_shape = {**STUDENT, "intermediate_size": 768}
        log = self.setup / "iterative_log.txt"
        mid = self.inherit(mid_shape, "first-last", True, self.setup / "iterative" / "ffn768", log)
        out = {"one-shot": {}, "iterative": {}}
        for s in seeds:
            out["one-shot"][s] = self.run(_slug("CE only", tokens), s, tokens, [])  # the main experiment's CE run
            first = self.run(_slug("iterative stage1", tokens), s, half, [], start=mid)
            second = self.inherit(STUDENT, "first-last", True, self.runs / f"iterative-stage2-s{s}", log,
                                  src=Path(first["last"]), vocab_from_src=True)
            out["iterative"][s] = self.run(_slug("iterative stage2", tokens), s, tokens - half, [], start=second)
        return out


def step_time_ratio(bench: Bench, repeats: int = 3) -> float:
    """(student forward+backward + teacher forward) / (student forward+backward) on one packed
    micro-batch (512 tokens, two documents), one thread, best of `repeats`, interleaved."""
    import torch

    from rethinktiny.checkpoint import load_model
    from rethinktiny.distill.losses import teacher_log_probs
    from rethinktiny.distill.section import load_kept_ids
    from rethinktiny.distill.teacher import load_teacher

    torch.set_num_threads(1)
    student = load_model(bench.student).train()
    teacher = load_teacher(bench.teacher)
    kept = load_kept_ids(bench.token_map, TEACHER_VOCAB, COMPACT_VOCAB)
    ids = torch.randint(0, COMPACT_VOCAB, (1, SEQ_LEN * MICRO_BSZ), generator=torch.Generator().manual_seed(0))
    cu = torch.tensor([0, SEQ_LEN - 56, SEQ_LEN * MICRO_BSZ])

    def student_step() -> None:
        torch.nn.functional.cross_entropy(student(ids, cu_seqlens=cu)[0], ids[0]).backward()

    def teacher_forward() -> None:
        with torch.no_grad():
            teacher_log_probs(teacher(kept[ids], cu_seqlens=cu), kept)

    times: dict[str, list[float]] = {"student": [], "teacher": []}
    for _ in range(repeats + 1):  # the first round warms up
        for name, fn in (("student", student_step), ("teacher", teacher_forward)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {name: min(values[1:]) for name, values in times.items()}
    return round((best["student"] + best["teacher"]) / best["student"], 3)


def _subset(src: Path, dst: Path, docs: int) -> None:
    """Every k-th document of `src` (as the demo cuts its slices), so each source of the sample appears."""
    lines = [line for line in src.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]
    stride = max(1, len(lines) // docs)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(lines[::stride][:docs]), encoding="utf-8")


def _slug(name: str, tokens: int) -> str:
    base = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    return f"{base}-{tokens // 1000}k" if tokens else base


def _last_step(save: Path) -> Path:
    steps = [p for p in save.iterdir() if p.is_dir() and p.name.isdigit()]
    if not steps:
        raise SystemExit(f"{save}: no checkpoint")
    return max(steps, key=lambda p: int(p.name))


def table(results: dict[str, dict[int, dict]], baseline: str, tokens: int) -> str:
    """Markdown: each variant's mean bits per byte ± SE, and each against `baseline`, paired."""
    bpb = {name: {int(s): r["bpb"] for s, r in runs.items()} for name, runs in results.items()}
    lines = [f"| variant ({tokens:,} tokens) | seeds | held-out bits/byte | tokens/s (median step) | wall s |",
             "|---|---:|---:|---:|---:|"]
    for name, runs in results.items():
        mean, se = mean_se([r["bpb"] for r in runs.values()])
        rate, _ = mean_se([r["tokens_per_s"] for r in runs.values()])
        secs, _ = mean_se([r["seconds"] for r in runs.values()])
        lines.append(f"| {name} | {len(runs)} | {fmt(mean, se).lstrip('+')} | {rate:,.0f} | {secs:.0f} |")
    rows = [(f"{name} − {baseline}", paired(name, baseline, bpb)) for name in results if name != baseline
            and baseline in results]
    return "\n".join(lines) + ("\n\n" + comparison_table(rows, "bits/byte") if rows else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    parser.add_argument("--sample", type=Path, default=REPO / "data" / "sample")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "distill_bench")
    parser.add_argument("--experiments", nargs="+", default=["main"],
                        choices=["main", "wallclock", "cache", "cuts", "rounds", "iterative"])
    parser.add_argument("--tokens", type=int, default=20000, help="training tokens per variant")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(MAIN_VARIANTS), choices=MAIN_VARIANTS,
                        help="the main experiment's variants (default all)")
    parser.add_argument("--train-docs", type=int, default=160,
                        help="training slice (documents of train.jsonl); 160 is the demo's (~40k tokens)")
    args = parser.parse_args(argv)
    if not (args.teacher / "config.json").exists():
        raise SystemExit(f"--teacher {args.teacher}: no config.json (build it with `make real-teacher`)")
    bench = Bench(args)
    bench.prepare()
    res = bench.results
    res["student_step0_bpb"] = bench.eval(bench.student, bench.setup / "student_eval.json", bench.setup / "log.txt")
    report = [f"Inherited student before training: {res['student_step0_bpb']:.4f} bits/byte."]
    key = f"{args.tokens // 1000}k"
    groups: dict[str, dict] = {}
    if "main" in args.experiments or "wallclock" in args.experiments or "cache" in args.experiments:
        groups.update(bench.main(args.seeds, args.tokens, args.variants))
    if "wallclock" in args.experiments:
        groups.update(bench.wallclock(args.seeds, args.tokens))
        report.append(f"Online KD step / CE step (measured in-process): {res['kd_step_time_ratio']}x.")
    if "cache" in args.experiments:
        groups.update(bench.cache(args.seeds, args.tokens))
    if groups:
        res[f"main_{key}"] = groups
        report.append(table(groups, "CE only", args.tokens))
        if "KD only (cache)" in groups:
            cached = [k for k in ("KD only (cache)", "KD only (cache, top-k)", "KD only") if k in groups]
            report.append(table({k: groups[k] for k in cached}, "KD only (cache)", args.tokens))
            report.append(f"Cache: {json.dumps(res['cache_build'])}")
    if "cuts" in args.experiments:
        res["cuts"] = bench.cuts()
        report.append("| cut (step 0) | held-out bits/byte |\n|---|---:|\n" +
                      "\n".join(f"| {k} | {v:.4f} |" for k, v in res["cuts"].items()))
    if "rounds" in args.experiments:
        res[f"rounds_{key}"] = rounds = bench.rounds(args.seeds, args.tokens)
        report.append(table(rounds, "round 2 uniform", args.tokens))
    if "iterative" in args.experiments:
        res[f"iterative_{key}"] = it = bench.iterative(args.seeds, args.tokens)
        report.append(table(it, "one-shot", args.tokens))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    (args.out / "results.md").write_text("\n\n".join(report) + "\n")
    print("\n\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
