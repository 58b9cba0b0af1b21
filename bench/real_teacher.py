"""Parameter inheritance from a real pretrained teacher (SmolLM2-135M-Instruct), on CPU.

    python tools/make_real_teacher.py                       # once: the HF folder of the teacher
    python bench/real_teacher.py --corpus ../shared/data/corpus/corpus.jsonl [--out outputs/real_teacher]

1. Data: the English documents of the shared corpus (`en_pydocs`, `en_fortunes`) split
   deterministically (file order, every k-th document) into calib / train / held-out jsonl files,
   tokenized with the teacher's own tokenizer by `rethinktiny data tokenize --tokenizer <HF folder>`.
2. Teacher check: `rethinktiny eval ppl` on the HF folder, and the teacher inherited onto its own
   shape (identity) scored by this benchmark's evaluator: both must be ~2.7 nats/token.
3. Students at ~50% and ~25% of the teacher's parameters: depth only, width only, both, and one
   with PanGu-π-1B Pro's depth/width proportions to its 7B teacher (21/30 layers, 1792/4096 width).
   Each is built by the real CLI (`rethinktiny inherit`, one subprocess per variant: seconds and
   peak RSS measured with wait4) with every width metric and every layer strategy, plus a
   random-init control, and scored on the same held-out tokens at step 0.
4. A subset (per trained shape: best and worst step-0 metric, the CLI default, random init) is
   trained with InternEvo on CPU (2 ranks via start_finetune.py, config from
   `rethinktiny config export --inherit ... --cpu 2`), same data and seed for every variant, and
   scored again.

Every finished measurement is cached under --out/work/results/, so an interrupted run resumes.
Writes results.json and real_teacher.png to --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from make_real_teacher import DEFAULT_DST, build_teacher  # noqa: E402

from rethinktiny.checkpoint import InternEvoCheckpoint, read_model_config, save_model_only  # noqa: E402
from rethinktiny.config import ModelConfig  # noqa: E402
from rethinktiny.data.tokenized import find_bin_files, iter_documents  # noqa: E402
from rethinktiny.model import PanGuPi  # noqa: E402

BIN = Path(sys.executable).parent
ENGLISH = ("en_pydocs", "en_fortunes")
CHEAP_WIDTH = ("random", "l1", "l2")  # no calibration data needed
WIDTH_METRICS = ("random", "l1", "l2", "activation", "taylor")


# ---- data ---------------------------------------------------------------------------------------
def split_english(corpus: Path, dst: Path, every: int, heldout_chars: int, calib_chars: int,
                  train_chars: int) -> dict[str, Path]:
    """calib/train/heldout jsonl from the English documents, in file order: document i goes to
    held-out when i % every == 0, to calibration when i % every == 1, else to training; each split
    stops at its character budget (the corpus is 13 MB of English, far more than CPU runs use)."""
    names = {"heldout": heldout_chars, "calib": calib_chars, "train": train_chars}
    picked: dict[str, list[str]] = {name: [] for name in names}
    used = dict.fromkeys(names, 0)
    english = 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record.get("source") not in ENGLISH:
                continue
            split = "heldout" if english % every == 0 else "calib" if english % every == 1 else "train"
            english += 1
            if used[split] < names[split]:
                picked[split].append(line if line.endswith("\n") else line + "\n")
                used[split] += len(record["text"])
    dst.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, lines in picked.items():
        paths[name] = dst / f"{name}.jsonl"
        paths[name].write_text("".join(lines), encoding="utf-8")
    return paths


def tokenize(jsonl: Path, tokenizer: Path, dst: Path) -> Path:
    if not (dst / "summary.json").is_file():
        run([str(BIN / "rethinktiny"), "data", "tokenize", "--input", str(jsonl), "--tokenizer", str(tokenizer),
             "--dst", str(dst), "--force"])
    return dst


def token_stream(folder: Path) -> list[list[int]]:
    return [doc for path in find_bin_files(folder) for doc in iter_documents(path)]


def heldout_rows(docs: list[list[int]], tokens: int, seq: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids [1, seq+1], cu_seqlens) rows packed from the held-out documents, documents kept apart by
    cu_seqlens exactly as InternEvo's packed training sees them."""
    stream, starts = [], []
    for doc in docs:
        starts.append(len(stream))
        stream.extend(doc)
    available = (len(stream) - 1) // seq
    wanted = min(tokens // seq, available)
    rows = []
    # Evenly spaced over the whole stream: the folder holds one data type after the other.
    for r in sorted({int(i * available / wanted) for i in range(wanted)}):
        lo, hi = r * seq, r * seq + seq
        cuts = sorted({0, seq, *[s - lo for s in starts if lo < s < hi]})
        rows.append((torch.tensor(stream[lo:hi + 1]).unsqueeze(0), torch.tensor(cuts)))
    return rows


@torch.no_grad()
def heldout_loss(model: PanGuPi, rows) -> float:
    model.eval()
    total = 0.0
    for ids, cu in rows:
        logits = model(ids[:, :-1], cu_seqlens=cu)
        total += float(F.cross_entropy(logits[0].float(), ids[0, 1:]))
    return total / len(rows)


def load_folder(folder: Path) -> PanGuPi:
    ckpt = InternEvoCheckpoint(folder)
    model = PanGuPi(ckpt.config)
    model.load_state_dict(ckpt.state_dict(), strict=True)
    return model


# ---- processes ----------------------------------------------------------------------------------
def run(command: list[str], env: dict | None = None, log: Path | None = None) -> tuple[float, float]:
    """Run a command to completion; (seconds, peak RSS of that process in GB). Raises on failure."""
    start = time.perf_counter()
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT if log else None,
                            env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if log:
        out.close()
    if proc.returncode != 0:
        tail = log.read_text()[-3000:] if log else ""
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}\n{tail}")
    return seconds, usage.ru_maxrss / 1024 ** 2  # ru_maxrss is in KiB on Linux


# ---- shapes and variants ------------------------------------------------------------------------
def shapes(teacher: ModelConfig) -> dict[str, ModelConfig]:
    """Students. Heads stay 64 wide and at most 3 query heads share a kv head (the teacher's GQA),
    so hidden sizes are 64 x {4, 6} with 2 kv heads."""
    t = teacher
    s = {
        "depth-50": t.replace(num_layers=11),
        "width-50": t.replace(hidden_size=384, num_attention_heads=6, num_kv_heads=2, intermediate_size=1024),
        "both-50": t.replace(num_layers=22, hidden_size=384, num_attention_heads=6, num_kv_heads=2,
                             intermediate_size=1536),
        # The first measurement: only the FFN shrinks (1536 -> 1024 in all 30 layers).
        "ffn-only-80": t.replace(intermediate_size=1024),
        "depth-25": t.replace(num_layers=2),
        "both-25": t.replace(num_layers=10, hidden_size=384, num_attention_heads=6, num_kv_heads=2,
                             intermediate_size=1024),
        "width-25": t.replace(hidden_size=256, num_attention_heads=4, num_kv_heads=2, intermediate_size=640),
        # PanGu-pi-1B Pro / 7B: depth 21/30, width 1792/4096 = 0.4375, FFN 4864/11008 = 0.442.
        "1b-pro-proportions": t.replace(num_layers=21, hidden_size=256, num_attention_heads=4, num_kv_heads=2,
                                        intermediate_size=672),
    }
    return {name: cfg.replace(name=name) for name, cfg in s.items()}


@dataclass
class Variant:
    shape: str
    width: str | None  # None: random init
    layers: str | None
    calib_tokens: int = 4096
    extra: tuple[str, ...] = ()
    tag: str = ""

    @property
    def key(self) -> str:
        if self.width is None:
            return f"{self.shape}--random-init"
        parts = [self.shape, f"w-{self.width}", f"l-{self.layers.replace(',', '_')}"]
        if self.needs_calib:
            parts.append(f"c{self.calib_tokens}")
        return "--".join(parts + ([self.tag] if self.tag else []))

    @property
    def needs_calib(self) -> bool:
        return self.width is not None and (self.width not in CHEAP_WIDTH or self.layers == "block-influence")


def plan(args) -> list[Variant]:
    """The variants in priority order (each result is cached, so a run cut short keeps what it
    measured and a rerun continues):
    1. every width metric (layers first-last) and random init on the --sweep-shapes;
    2. random selection, l2, --default-width and l1 on the --magnitude-shapes;
    3. --budgets calibration tokens for --default-width on the --budget-shapes;
    4. learnable masks (--learnable SHAPE:STEPS:ROWS);
    5. every layer strategy on the --layer-shapes (width l2 where the width is the teacher's, where
       the metric changes nothing; else --default-width);
    6. --default-width vs random selection on the --check-shapes.
    Random init (the control) is scored on the sweep shapes, the ones that are also trained."""
    tokens = args.calib_tokens
    out = []
    for shape in args.sweep_shapes:
        out += [Variant(shape, None, None)]
        out += [Variant(shape, w, "first-last", tokens) for w in WIDTH_METRICS]
    for shape in args.magnitude_shapes:
        out += [Variant(shape, w, "first-last", tokens) for w in ("random", "l2", args.default_width, "l1")]
    for shape in args.budget_shapes:
        out += [Variant(shape, args.default_width, "first-last", budget) for budget in args.budgets]
    if args.learnable:
        shape, steps, rows = args.learnable.split(":")
        out.append(Variant(shape, "learnable", "first-last", int(rows) * 256,
                           extra=("--learn-steps", steps, "--micro-rows", "1", "--calib-seq-len", "256"),
                           tag=f"s{steps}"))
    for shape in args.layer_shapes:
        width = "l2" if shape.startswith("depth") else args.default_width
        out += [Variant(shape, width, lay, tokens) for lay in ("first-last", "uniform", "block-influence")]
    for shape in args.check_shapes:
        out += [Variant(shape, "random", "first-last", tokens), Variant(shape, args.default_width, "first-last", tokens)]
    return list({v.key: v for v in out}.values())


# ---- one measurement ----------------------------------------------------------------------------
def cached(path: Path, compute) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)
    return result


def inherit_variant(v: Variant, cfg: ModelConfig, ctx) -> dict:
    """Build the student (CLI subprocess for inherited ones) and score it at step 0."""
    dst = ctx.work / "students" / v.key
    if v.width is None:  # InternEvo's init (PanGuPi.reset_parameters), seed 0
        torch.manual_seed(0)
        save_model_only(dst, PanGuPi(cfg).state_dict(), cfg) if not dst.exists() else None
        seconds, rss = 0.0, 0.0
    else:
        target = export_target(cfg, ctx.work / "targets" / f"{v.shape}.py")
        command = [str(BIN / "rethinktiny"), "inherit", "--src", str(ctx.teacher_weights), "--target", str(target),
                   "--dst", str(dst), "--force", "--width", v.width, "--layers", v.layers, *v.extra]
        if v.needs_calib:
            command += ["--calib", str(ctx.calib), "--calib-tokens", str(v.calib_tokens)]
        seconds, rss = run(command, env=ctx.env, log=ctx.work / "logs" / f"{v.key}.inherit.log")
    model = load_folder(dst)
    report = json.loads((dst / "inherit_report.json").read_text()) if (dst / "inherit_report.json").exists() else {}
    return {"key": v.key, "shape": v.shape, "width": v.width, "layers": v.layers, "calib_tokens":
            v.calib_tokens if v.needs_calib else 0, "extra": list(v.extra), "params": cfg.num_params(),
            "inherit_seconds": round(seconds, 1), "inherit_peak_rss_gb": round(rss, 3),
            "kept_layers": report.get("layers", {}).get("kept"), "loss_step0": heldout_loss(model, ctx.rows)}


def export_target(cfg: ModelConfig, path: Path) -> Path:
    """An InternEvo config file holding the target shape (what `--target` reads)."""
    from rethinktiny.config import to_internevo

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"model_type = {cfg.model_type!r}\nmodel = {to_internevo(cfg)!r}\n")
    return path


def train_variant(v: Variant, cfg: ModelConfig, ctx) -> dict:
    """Train the step-0 folder with InternEvo (2 CPU ranks) and score the last checkpoint."""
    src = ctx.work / "students" / v.key
    save = ctx.work / "trained" / v.key
    config = ctx.work / "trained" / f"{v.key}.py"
    save.mkdir(parents=True, exist_ok=True)
    run([str(BIN / "rethinktiny"), "config", "export", "--inherit", str(src), "--cpu", "2", "--dst", str(config),
         "--force", "--zero1-size", "2", "--seq-len", str(ctx.args.train_seq), "--micro-num", str(ctx.args.micro_num), "--micro-bsz", "1",
         "--total-steps", str(ctx.args.train_steps), "--checkpoint-every", str(ctx.args.train_steps),
         "--lr", str(ctx.args.lr), "--warmup-ratio", "0.1", "--min-lr", str(ctx.args.lr / 10),
         "--train-folder", str(ctx.train), "--valid-folder", str(ctx.heldout), "--save-ckpt-folder", f"local:{save}", "--job-name", v.key])
    seconds, rss = run([sys.executable, str(REPO / "start_finetune.py"), "--config", str(config)], env=ctx.env,
                       log=ctx.work / "logs" / f"{v.key}.train.log")
    losses = [json.loads(line)["loss"] for line in (save / "train_metrics.jsonl").read_text().splitlines()]
    model = load_folder(save / str(ctx.args.train_steps))
    return {"key": v.key, "train_seconds": round(seconds, 1), "train_peak_rss_gb": round(rss, 3),
            "train_losses": losses, "loss_trained": heldout_loss(model, ctx.rows)}


# ---- the run ------------------------------------------------------------------------------------
@dataclass
class Context:
    args: argparse.Namespace
    work: Path
    teacher: Path
    teacher_weights: Path
    calib: Path
    train: Path
    heldout: Path
    rows: list
    env: dict


def prepare(args) -> Context:
    out = Path(args.out)
    work = out / "work"
    for sub in ("results", "logs", "students", "trained"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    teacher = build_teacher(Path(args.teacher))
    weights = weights_only_view(teacher, work / "teacher_weights")
    text = split_english(Path(args.corpus), work / "text", args.every, args.heldout_chars, args.calib_chars,
                         args.train_chars)
    tok = {name: tokenize(path, teacher, work / "tokenized" / name) for name, path in text.items()}
    rows = heldout_rows(token_stream(tok["heldout"]), args.eval_tokens, args.eval_seq)
    print(f"held-out: {len(rows)} rows x {args.eval_seq} tokens; calibration and training data in {work}", flush=True)
    return Context(args, work, teacher, weights, tok["calib"], tok["train"], tok["heldout"], rows,
                   {"OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"})


def weights_only_view(teacher: Path, dst: Path) -> Path:
    """The teacher's config and weights without its tokenizer files (symlinks).

    Work-around: `inherit` without --calib currently fails when a tokenizer sits next to --src
    (inherit/apply.py asks `is_text_calibration(None)`); the calibration data here is tokenized
    already, so the tokenizer is not needed there.
    """
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (teacher / name).exists() and not (dst / name).exists():
            (dst / name).symlink_to((teacher / name).resolve())
    return dst


def teacher_check(ctx: Context) -> dict:
    """Held-out loss of the HF folder (`rethinktiny eval ppl`) and of the teacher inherited onto its
    own shape, scored like every student (the identity proves the whole path: GGUF q/k order,
    HF -> InternEvo names, RoPE permutation, tied head)."""
    def eval_ppl() -> dict:
        result = ctx.work / "teacher_ppl.json"
        seconds, rss = run([str(BIN / "rethinktiny"), "eval", "ppl", "--model", str(ctx.teacher), "--data",
                            str(ctx.work / "text" / "heldout.jsonl"), "--seq-len", str(ctx.args.eval_seq),
                            "--out", str(result)], env=ctx.env, log=ctx.work / "logs" / "teacher_ppl.log")
        return {**json.loads(result.read_text()), "seconds": round(seconds, 1), "peak_rss_gb": round(rss, 3)}

    ppl = cached(ctx.work / "results" / "teacher-eval-ppl.json", eval_ppl)
    teacher_cfg = read_model_config_hf(ctx.teacher)
    identity = cached(ctx.work / "results" / "teacher-identity.json",
                      lambda: inherit_variant(Variant("teacher-identity", "l2", "first-last"), teacher_cfg, ctx))
    print(f"teacher: eval ppl loss {ppl['loss']:.4f} ({ppl['tokens']} tokens); identity inherit scored here "
          f"{identity['loss_step0']:.4f}; uniform guess {math.log(teacher_cfg.vocab_size):.2f}", flush=True)
    return {"eval_ppl": ppl, "identity": identity, "params": teacher_cfg.num_params()}


def read_model_config_hf(folder: Path) -> ModelConfig:
    from rethinktiny.convert.hf_config import model_config_from_hf, read_hf_config

    return model_config_from_hf(read_hf_config(folder), str(folder)).replace(name="teacher")


def pick_trained(step0: list[dict], shape: str, default: tuple[str, str], calib_tokens: int) -> list[str]:
    """Keys to train for `shape`: best and worst inherited variant at step 0, the CLI default, random init."""
    mine = [r for r in step0 if r["shape"] == shape and r["width"] is not None
            and r["calib_tokens"] in (0, calib_tokens) and not r["extra"]]
    if not mine:
        return []
    ordered = sorted(mine, key=lambda r: r["loss_step0"])
    keys = [ordered[0]["key"], ordered[-1]["key"]]
    keys += [r["key"] for r in mine if (r["width"], r["layers"]) == default]
    keys.append(f"{shape}--random-init")
    return list(dict.fromkeys(keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="the shared corpus.jsonl (English part is used)")
    parser.add_argument("--teacher", default=str(DEFAULT_DST), help="HF folder of the teacher (built if missing)")
    parser.add_argument("--out", default=str(REPO / "outputs" / "real_teacher"))
    parser.add_argument("--every", type=int, default=40, help="document i -> held-out if i %% every == 0, calib if 1")
    parser.add_argument("--heldout-chars", type=int, default=60_000)
    parser.add_argument("--calib-chars", type=int, default=120_000)
    parser.add_argument("--train-chars", type=int, default=600_000)
    parser.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens scored per model")
    parser.add_argument("--eval-seq", type=int, default=512)
    parser.add_argument("--sweep-shapes", nargs="*", default=["both-25"], help="shapes that get every width metric")
    parser.add_argument("--magnitude-shapes", nargs="*", default=["ffn-only-80"],
                        help="shapes that get random selection, l2, --default-width and l1")
    parser.add_argument("--layer-shapes", nargs="*", default=["depth-50"], help="shapes that get every layer strategy")
    parser.add_argument("--check-shapes", nargs="*",
                        default=["both-50", "1b-pro-proportions"],
                        help="shapes that get the default metric vs random selection")
    parser.add_argument("--default-width", default="activation", help="the metric under test as the default")
    parser.add_argument("--calib-tokens", type=int, default=1024, help="calibration tokens of every variant")
    parser.add_argument("--budgets", type=int, nargs="*", default=[4096], help="other calibration budgets")
    parser.add_argument("--budget-shapes", nargs="*", default=["ffn-only-80", "both-50"],
                        help="shapes that get --default-width with each of --budgets")
    parser.add_argument("--learnable", default="both-25:8:4", help="SHAPE:STEPS:ROWS of 256 tokens, or ''")
    parser.add_argument("--train-shapes", nargs="*", default=["both-25"])
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--train-seq", type=int, default=256)
    parser.add_argument("--micro-num", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--report-only", action="store_true",
                        help="table, json and plot from the measurements cached so far; run nothing new")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    start = time.perf_counter()
    ctx = prepare(args)
    teacher = teacher_check(ctx)
    all_shapes = shapes(read_model_config_hf(ctx.teacher))
    variants = plan(args)
    unknown = sorted({v.shape for v in variants} - set(all_shapes))
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; known: {sorted(all_shapes)}")
    step0, trained = [], {}

    def measure(v: Variant) -> None:
        if args.report_only and not (ctx.work / "results" / f"{v.key}.json").is_file():
            return
        result = cached(ctx.work / "results" / f"{v.key}.json", lambda: inherit_variant(v, all_shapes[v.shape], ctx))
        step0.append(result)
        print(f"{v.key:60s} step-0 {result['loss_step0']:.3f}  inherit {result['inherit_seconds']:.0f} s "
              f"{result['inherit_peak_rss_gb']:.2f} GB  ({time.perf_counter() - start:.0f} s total)", flush=True)

    # The trained shapes' plain variants first, then their training, then everything else.
    first = [v for v in variants if v.shape in args.train_shapes and not v.extra
             and (v.width is None or v.calib_tokens == args.calib_tokens or not v.needs_calib)]
    for v in first:
        measure(v)
    for shape in args.train_shapes:
        for key in pick_trained(step0, shape, (args.default_width, "first-last"), args.calib_tokens):
            v = next(x for x in variants if x.key == key)
            if args.report_only and not (ctx.work / "results" / f"{key}.trained.json").is_file():
                continue
            trained[key] = cached(ctx.work / "results" / f"{key}.trained.json",
                                  lambda: train_variant(v, all_shapes[shape], ctx))
            print(f"{key:60s} trained {args.train_steps} steps: {trained[key]['loss_trained']:.3f} "
                  f"({trained[key]['train_seconds']:.0f} s)", flush=True)
    for v in variants:
        if v not in first:
            measure(v)
    results = {"args": vars(args), "teacher": teacher, "shapes": {k: c.to_dict() | {"params": c.num_params()}
                                                                  for k, c in all_shapes.items()},
               "step0": step0, "trained": trained, "total_seconds": round(time.perf_counter() - start)}
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print_table(results)
    plot(results, out / "real_teacher.png")
    print(f"\ntotal {results['total_seconds']} s; wrote {out / 'results.json'} and {out / 'real_teacher.png'}")


def print_table(results: dict) -> None:
    teacher = results["teacher"]
    print(f"\nteacher SmolLM2-135M ({teacher['params'] / 1e6:.1f} M parameters): held-out loss "
          f"{teacher['identity']['loss_step0']:.3f} (eval ppl on the HF folder: {teacher['eval_ppl']['loss']:.3f})")
    print("\n| student | params | width | layers | calib tokens | step-0 loss | after training | inherit s | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results["step0"]:
        shape = results["shapes"][r["shape"]]
        t = results["trained"].get(r["key"])
        trained = f"{t['loss_trained']:.3f}" if t else ""
        width = (r["width"] or "random init") + (f" ({' '.join(r['extra'])})" if r["extra"] else "")
        share = r["params"] / teacher["params"]
        cost = (f"{r['inherit_seconds']:.0f} | {r['inherit_peak_rss_gb']:.2f}" if r["width"] is not None
                else "— | —")  # random init runs no inherit
        print(f"| {r['shape']} {shape['num_layers']}x{shape['hidden_size']} ffn {shape['intermediate_size']} | "
              f"{r['params'] / 1e6:.1f} M ({share:.0%}) | {width} | {r['layers'] or ''} | {r['calib_tokens'] or ''} | "
              f"{r['loss_step0']:.3f} | {trained} | {cost} |")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    shape_names = list(dict.fromkeys(r["shape"] for r in results["step0"] if r["shape"] != "teacher-identity"))
    base = results["args"]["calib_tokens"]  # other budgets are in the table only
    markers = {"random init": "x", "random": "o", "l1": "v", "l2": "^", "activation": "s", "taylor": "D",
               "learnable": "*", "uniform": "<", "block-influence": ">"}
    for label, marker in markers.items():
        xs, ys = [], []
        for r in results["step0"]:
            if r["shape"] not in shape_names or (r["calib_tokens"] not in (0, base) and not r["extra"]):
                continue
            name = ("random init" if r["width"] is None else r["layers"] if r["layers"] in ("uniform", "block-influence")
                    else r["width"])
            if name == label:
                xs.append(shape_names.index(r["shape"]))
                ys.append(r["loss_step0"])
        left.scatter(xs, ys, marker=marker, label=label, s=40)
    teacher = results["teacher"]["identity"]["loss_step0"]
    left.axhline(teacher, color="k", linewidth=0.8, label=f"teacher {teacher:.2f}")
    left.axhline(math.log(49152), color="grey", linestyle=":", label="uniform guess 10.80")
    left.set_xticks(range(len(shape_names)), shape_names, rotation=20, fontsize=8)
    left.set_ylabel("held-out loss at step 0 (nats/token)")
    left.set_title("students of SmolLM2-135M right after inheritance")
    left.legend(fontsize=7, ncol=2)
    for key, t in results["trained"].items():
        right.plot(range(1, len(t["train_losses"]) + 1), t["train_losses"], label=f"{key} (held-out {t['loss_trained']:.2f})",
                   linestyle="--" if key.endswith("random-init") else "-")
    right.set_xlabel("InternEvo training step (2 CPU ranks)")
    right.set_ylabel("training loss")
    right.set_title("short training from the inherited weights")
    right.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
