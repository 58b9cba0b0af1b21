"""The paper's four recipes in miniature, one at a time, on the shared corpus, on CPU.

Tang et al. 2024 ("Rethinking Optimization and Architecture for Tiny Language Models") claim:
  1. tokenizer: a compact tokenizer (pruned from a large one) suits a tiny model better;
  2. architecture: at a fixed parameter count, depth matters (deeper-narrower vs shallower-wider);
  3. parameter inheritance: starting from a larger trained model beats random init; width
     criteria random < L1 < L2 < Taylor < learnable; layers near both ends matter most;
  4. multi-round training: a 2nd round on 50% of the batches drawn by softmax(loss) helps, a 3rd
     saturates.
This script measures each claim at a fixed token budget per comparison and prints one table of
held-out losses plus bits per byte (UTF-8 bytes of the held-out text; per-token losses are not
comparable across tokenizers). It writes results.json, a PNG and manifest.json to --out and the
table, the command, the scale and the runtime into --results-md (between markers, so the
hand-written discussion around them stays).

    python bench/paper_ablation.py [--scale quick|full] [--seeds 0 1] [--corpus CORPUS.jsonl]

Pipeline (everything through the project's functions; training is a plain pure-torch AdamW loop,
`bench/inherit_ablation.train`, not InternEvo's trainer):
  - every --holdout-every-th document is held out; the first --eval-chars characters of the
    held-out documents (in corpus order) are scored, each document as <s> ids </s>
    (`rethinktiny.evaluate.document_windows` / `score_windows`);
  - an 8k SentencePiece BPE tokenizer is trained on the rest (`data.prepare.train_tokenizer`),
    token frequencies are counted and merged (`vocab.count` / `vocab.sum_counts`), and it is pruned to
    4k and 2k (`vocab.prune.prune_tokenizer`, with `token_map.json`);
  - recipe 3's teacher is recipe 1's 8k model; students use the 4k tokenizer and inherit with
    the token map (`inherit.apply.inherit`);
  - recipe 4 scores every round-1 batch with the frozen model and draws 50% with
    `resample.sampling.resample` (a uniform draw of the same size is the control).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from inherit_ablation import batches, load, loss_of, token_stream, train  # noqa: E402

from rethinktiny.artifacts import (check_writable, output_dir, write_file_atomic, write_json,  # noqa: E402
                                   write_manifest)
from rethinktiny.checkpoint import save_model_only  # noqa: E402
from rethinktiny.config import ModelConfig  # noqa: E402
from rethinktiny.data.prepare import tokenize_corpus, train_tokenizer  # noqa: E402
from rethinktiny.errors import UserError  # noqa: E402
from rethinktiny.evaluate import document_windows, score_windows  # noqa: E402
from rethinktiny.inherit.apply import inherit  # noqa: E402
from rethinktiny.inherit.importance import CALIBRATED_METRICS  # noqa: E402
from rethinktiny.model import PanGuPi  # noqa: E402
from rethinktiny.resample.sampling import num_to_select, resample, seeded_generator  # noqa: E402
from rethinktiny.tokenizer import load_tokenizer  # noqa: E402
from rethinktiny.vocab.count import count_folder  # noqa: E402
from rethinktiny.vocab.sum_counts import merge_counts  # noqa: E402
from rethinktiny.vocab.prune import prune_tokenizer  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "corpus" / "corpus.jsonl"  # ../shared from the repo root
ORIGINAL_VOCAB = 8192
COMPACT_VOCABS = (4096, 2048)
STUDENT_VOCAB = 4096  # recipes 2-4 use this compact tokenizer
HEAD_DIM = 32
BASE = (6, 128, 352)  # layers, hidden, FFN: recipe 1's model, recipe 2's reference, recipe 4's round 1
STUDENT = (3, 64, 176)  # half the base's depth and width; inherits from the 8k base model
WIDTH_VARIANTS = ("random", "l1", "l2", "activation", "taylor", "learnable")
LAYER_VARIANTS = ("uniform", "block-influence")
MARK = "<!-- paper_ablation {scale} {end} -->"


@dataclass(frozen=True)
class Scale:
    """Budgets of one --scale. Every base-size run trains `steps` x `rows` x `seq` tokens."""

    steps: int
    student_steps: int
    eval_chars: int | None  # held-out characters scored; None = every held-out document
    arch: tuple[tuple[int, int], ...]  # (layers, hidden) at the base's parameter count
    seeds: tuple[int, ...]
    rows: int = 8
    seq: int = 128
    lr: float = 2e-3
    calib_tokens: int = 4096
    learn_steps: int = 40


SCALES = {
    "quick": Scale(steps=160, student_steps=160, eval_chars=100_000, arch=((2, 192), (12, 96)), seeds=(0,)),
    "full": Scale(steps=256, student_steps=256, eval_chars=300_000,
                  arch=((2, 192), (3, 160), (12, 96), (24, 64)), seeds=(0, 1)),
}


@dataclass
class Tokenizer:
    vocab: int
    model: Path
    train_dir: Path
    token_map: Path | None  # new id -> id of the 8k tokenizer (None for the 8k one)


@dataclass
class EvalSet:
    """The held-out documents scored for one tokenizer."""

    windows: list[list[int]]
    tokens: int  # predicted tokens (every token after <s>)
    bytes: int
    chars: int
    documents: int


@dataclass
class Result:
    recipe: str
    variant: str
    seed: int
    params: int
    train_tokens: int
    loss: float  # held-out nats per predicted token
    bits_per_byte: float
    baseline: bool = False
    note: str = ""
    extra: dict = field(default_factory=dict)


def model_config(layers: int, hidden: int, ffn: int, vocab: int, name: str) -> ModelConfig:
    heads = hidden // HEAD_DIM
    return ModelConfig(hidden_size=hidden, num_layers=layers, num_attention_heads=heads, num_kv_heads=heads,
                       intermediate_size=ffn, vocab_size=vocab, name=name)


def matched_config(layers: int, hidden: int, params: int, vocab: int) -> ModelConfig:
    """A (layers, hidden) shape whose FFN width (a multiple of 8) brings the total parameter count,
    embedding and head included, closest to `params`."""
    probe = model_config(layers, hidden, 8, vocab, "probe")
    per_neuron = 3 * hidden * layers  # w1, w3 rows and a w2 column per FFN neuron, in every layer
    ffn = round((params - probe.num_params()) / per_neuron / 8) * 8 + 8
    if ffn < 8:
        raise UserError(f"architecture {layers} x {hidden}: the embedding and attention alone exceed "
                        f"{params} parameters; pick a narrower or shallower shape")
    return model_config(layers, hidden, ffn, vocab, f"{layers}x{hidden}")


# ---- data -------------------------------------------------------------------------------------

def split_corpus(corpus: Path, work: Path, every: int) -> tuple[Path, list[str]]:
    """Write every document except each `every`-th to train.jsonl; return it and the held-out texts."""
    if not corpus.is_file():
        raise UserError(f"{corpus}: corpus file not found (pass --corpus)")
    train_path, held = work / "train.jsonl", []
    with open(corpus, encoding="utf-8") as src, open(train_path, "w", encoding="utf-8") as dst:
        for number, line in enumerate(src):
            if not line.strip():
                continue
            if number % every == 0:
                try:
                    held.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise UserError(f"{corpus}:{number + 1}: malformed corpus line ({err})") from None
            else:
                dst.write(line if line.endswith("\n") else line + "\n")
    if not held:
        raise UserError(f"{corpus}: no held-out documents")
    return train_path, held


def prepare_tokenizers(train_jsonl: Path, work: Path) -> dict[int, Tokenizer]:
    """The 8k tokenizer trained on the training split, and 4k/2k pruned from it by frequency."""
    original = train_tokenizer(train_jsonl, work / f"tok{ORIGINAL_VOCAB}" / "tokenizer", ORIGINAL_VOCAB)
    tokenize_corpus(train_jsonl, original, work / f"tok{ORIGINAL_VOCAB}" / "train")
    found = {ORIGINAL_VOCAB: Tokenizer(ORIGINAL_VOCAB, original, work / f"tok{ORIGINAL_VOCAB}" / "train", None)}
    count_folder(work / f"tok{ORIGINAL_VOCAB}" / "train", work / "counts", process_num=1)
    merge_counts(work / "counts", work / "total_token_freq.json")
    for vocab in COMPACT_VOCABS:
        folder = work / f"tok{vocab}"
        report = prune_tokenizer(original, work / "total_token_freq.json", vocab, folder / "tokenizer", preset=None)
        print(f"pruned {ORIGINAL_VOCAB} -> {vocab}: token coverage {report['coverage']['token_coverage']:.4f}, "
              f"dead pieces {report['dead_pieces']}", flush=True)
        tokenize_corpus(train_jsonl, folder / "tokenizer", folder / "train")
        found[vocab] = Tokenizer(vocab, folder / "tokenizer" / "tokenizer.model", folder / "train",
                                 folder / "tokenizer" / "token_map.json")
    return found


def eval_set(tokenizer: Tokenizer, texts: list[str], seq: int) -> EvalSet:
    """Held-out documents as <s> ids </s>, cut into windows where every token after <s> is a target once."""
    loaded = load_tokenizer(tokenizer.model)
    docs = [loaded.frame(ids) for ids in loaded.encode_batch(texts)]
    windows = [w for ids in docs for w in document_windows(ids, seq)]
    return EvalSet(windows, sum(len(d) - 1 for d in docs), sum(len(t.encode("utf-8")) for t in texts),
                   sum(len(t) for t in texts), len(texts))


def eval_texts(held: list[str], max_chars: int | None) -> list[str]:
    """Held-out documents in corpus order until `max_chars` characters (None: all of them)."""
    if max_chars is None:
        return held
    chosen, chars = [], 0
    for text in held:
        if chars >= max_chars:
            break
        chosen.append(text)
        chars += len(text)
    return chosen


# ---- measuring and training -------------------------------------------------------------------

class Bench:
    """Data, budgets and results shared by the four recipes."""

    def __init__(self, scale: Scale, work: Path, tokenizers: dict[int, Tokenizer], texts: list[str]) -> None:
        self.scale, self.work, self.tokenizers = scale, work, tokenizers
        self.evals = {v: eval_set(t, texts, scale.seq) for v, t in tokenizers.items()}
        self.streams = {v: token_stream(t.train_dir) for v, t in tokenizers.items()}
        self.results: list[Result] = []
        self.seconds: dict[str, float] = {}

    def measure(self, model: PanGuPi) -> tuple[float, float]:
        """(held-out nats per token, bits per UTF-8 byte) of `model` on its tokenizer's eval set."""
        evals = self.evals[model.cfg.vocab_size]
        model.eval()
        nats, count = score_windows(model, evals.windows, batch_size=32, progress=False)
        model.train()
        assert count == evals.tokens, (count, evals.tokens)
        return nats / count, nats / math.log(2) / evals.bytes

    def progress_rows(self, vocab: int) -> torch.Tensor:
        """A few full-length held-out windows for the training loop's progress lines."""
        full = [w for w in self.evals[vocab].windows if len(w) == self.scale.seq + 1][:4]
        return torch.tensor(full, dtype=torch.long)

    def data(self, vocab: int, steps: int, seed: int) -> list[torch.Tensor]:
        """Training batches (random windows of the training stream); the same for every model
        of one tokenizer, budget and seed."""
        return batches(self.streams[vocab], steps, self.scale.rows, self.scale.seq, seed=1000 + seed)

    def fit(self, model: PanGuPi, data: list[torch.Tensor], label: str) -> PanGuPi:
        train(model, data, self.progress_rows(model.cfg.vocab_size), self.scale.lr, label,
              eval_every=max(1, len(data) // 4))
        return model

    def record(self, recipe: str, variant: str, seed: int, model: PanGuPi, tokens: int, **kw) -> Result:
        loss, bpb = self.measure(model)
        result = Result(recipe, variant, seed, model.cfg.num_params(), tokens, loss, bpb, **kw)
        self.results.append(result)
        print(f"== {recipe} | {variant} | seed {seed}: held-out {loss:.4f} nats/token, {bpb:.4f} bits/byte", flush=True)
        return result

    def add_time(self, recipe: str, start: float) -> None:
        self.seconds[recipe] = self.seconds.get(recipe, 0.0) + time.perf_counter() - start

    def tokens(self, steps: int) -> int:
        return steps * self.scale.rows * self.scale.seq


# ---- the four recipes ---------------------------------------------------------------------------

def tokenizer_run(bench: Bench, seed: int, cfg: ModelConfig, variant: str) -> PanGuPi:
    """Train `cfg` on its tokenizer's batches and record it under recipe 1."""
    vocab = cfg.vocab_size
    torch.manual_seed(seed)
    model = bench.fit(PanGuPi(cfg), bench.data(vocab, bench.scale.steps, seed), f"tokenizer {variant} seed {seed}")
    evals = bench.evals[vocab]
    note = (f"{evals.tokens / evals.bytes:.3f} held-out tokens/byte; embedding+head "
            f"{cfg.embedding_share():.0%} of params")
    bench.record("1 tokenizer", variant, seed, model, bench.tokens(bench.scale.steps),
                 baseline=vocab == ORIGINAL_VOCAB and cfg.intermediate_size == BASE[2], note=note,
                 extra={"tokens_per_byte": evals.tokens / evals.bytes})
    return model


def recipe_tokenizer(bench: Bench, seed: int) -> dict[int, PanGuPi]:
    """The base body with the 8k tokenizer and the 4k/2k ones pruned from it, same token budget;
    then the compact tokenizers with the parameters they free spent on a wider FFN (the 8k model's
    total parameter count). Returns the fixed-body models by vocabulary size."""
    layers, hidden, ffn = BASE
    models = {}
    for vocab in (ORIGINAL_VOCAB, *COMPACT_VOCABS):
        kind = "original" if vocab == ORIGINAL_VOCAB else "pruned"
        models[vocab] = tokenizer_run(bench, seed, model_config(layers, hidden, ffn, vocab, f"base-{vocab}"),
                                      f"{vocab // 1024}k ({kind}), FFN {ffn}")
    for vocab in COMPACT_VOCABS:
        cfg = matched_config(layers, hidden, models[ORIGINAL_VOCAB].cfg.num_params(), vocab)
        tokenizer_run(bench, seed, cfg, f"{vocab // 1024}k (pruned), FFN {cfg.intermediate_size}: 8k's param count")
    return models


def recipe_architecture(bench: Bench, seed: int, base: PanGuPi) -> None:
    """Shapes of the base's total parameter count (FFN width adjusted), same tokenizer and batches."""
    bench.record("2 depth vs width", f"{base.cfg.num_layers} x {base.cfg.hidden_size}, FFN "
                 f"{base.cfg.intermediate_size} (same run as 1: 4k)", seed, base, bench.tokens(bench.scale.steps),
                 baseline=True, note=f"{base.cfg.non_embedding_params():,} non-embedding params")
    for layers, hidden in bench.scale.arch:
        cfg = matched_config(layers, hidden, base.cfg.num_params(), STUDENT_VOCAB)
        torch.manual_seed(seed)
        model = bench.fit(PanGuPi(cfg), bench.data(STUDENT_VOCAB, bench.scale.steps, seed),
                          f"arch {cfg.name} seed {seed}")
        bench.record("2 depth vs width", f"{layers} x {hidden}, FFN {cfg.intermediate_size}", seed, model,
                     bench.tokens(bench.scale.steps), note=f"{cfg.non_embedding_params():,} non-embedding params")


def student_variants() -> list[tuple[str, str | None, str | None]]:
    """(label, width metric, layer strategy); (None, None) is random init."""
    variants = [("random init", None, None)]
    variants += [(f"width {w}, layers first-last", w, "first-last") for w in WIDTH_VARIANTS]
    variants += [(f"width l2, layers {lay}", "l2", lay) for lay in LAYER_VARIANTS]
    return variants


def inherited_student(bench: Bench, seed: int, teacher_dir: Path, width: str, layers: str) -> tuple[PanGuPi, str]:
    """The student's starting weights from the 8k teacher via the 4k token map, and a note on
    the teacher layers it kept (with their block influence when it was measured)."""
    tokenizer = bench.tokenizers[STUDENT_VOCAB]
    cfg = model_config(*STUDENT, STUDENT_VOCAB, "student")
    dst = bench.work / "students" / f"{width}-{layers}-seed{seed}"
    calibrated = width in CALIBRATED_METRICS or layers == "block-influence"
    inherit(teacher_dir, cfg, dst, layers=layers, width=width, calib=tokenizer.train_dir if calibrated else None,
            calib_tokens=bench.scale.calib_tokens, calib_seq_len=bench.scale.seq, token_map=tokenizer.token_map,
            seed=seed, force=True, learn_steps=bench.scale.learn_steps)
    report = json.loads((dst / "inherit_report.json").read_text())["layers"]
    note = f"teacher layers {report['kept']}"
    if layers == "block-influence" and report["block_influence"] is not None:
        note += " (block influence by layer: " + ", ".join(f"{v:.3f}" for v in report["block_influence"]) + ")"
    return load(dst), note


def recipe_inheritance(bench: Bench, seed: int, teacher: PanGuPi) -> None:
    """Students (half depth, half width) from random init and from each inheritance choice."""
    teacher_dir = bench.work / f"teacher-seed{seed}"
    save_model_only(teacher_dir, teacher.state_dict(), teacher.cfg)
    data = bench.data(STUDENT_VOCAB, bench.scale.student_steps, seed + 500)
    for label, width, layers in student_variants():
        torch.manual_seed(seed)
        if width is None:
            model, layers_note = PanGuPi(model_config(*STUDENT, STUDENT_VOCAB, "student")), ""
        else:
            model, layers_note = inherited_student(bench, seed, teacher_dir, width, layers)
        start_loss, _ = bench.measure(model)
        bench.fit(model, data, f"{label} seed {seed}")
        note = f"step 0: {start_loss:.3f}" + (f"; {layers_note}" if layers_note else "")
        bench.record("3 inheritance", label, seed, model, bench.tokens(bench.scale.student_steps),
                     baseline=width is None, note=note, extra={"loss_step0": start_loss})


def batch_losses(model: PanGuPi, data: list[torch.Tensor]) -> np.ndarray:
    """Loss of every batch under the frozen model (the score `rethinktiny resample` computes)."""
    model.eval()
    with torch.no_grad():
        losses = np.array([float(loss_of(model, batch)) for batch in data], dtype=np.float64)
    model.train()
    return losses


def next_round(bench: Bench, model: PanGuPi, data: list[torch.Tensor], chosen: np.ndarray, label: str) -> PanGuPi:
    """Continue from `model`'s weights with a fresh optimizer and schedule on the chosen batches."""
    return bench.fit(copy.deepcopy(model), [data[i] for i in chosen], label)


def recipe_multiround(bench: Bench, seed: int, round1: PanGuPi) -> None:
    """Rounds 2 and 3 on 50% of round 1's batches drawn by softmax(loss); a uniform draw is the control."""
    steps = bench.scale.steps
    data = bench.data(STUDENT_VOCAB, steps, seed)  # exactly round 1's batches
    keep = num_to_select(len(data), ratio=0.5)
    bench.record("4 multi-round", "1 round (same run as 1: 4k)", seed, round1, bench.tokens(steps), baseline=True)
    losses = batch_losses(round1, data)
    drawn = resample(losses, keep, seeded_generator(10 * seed + 2)).selected
    uniform = np.sort(torch.randperm(len(data), generator=seeded_generator(10 * seed + 7))[:keep].numpy())
    round2 = next_round(bench, round1, data, drawn, f"round 2 seed {seed}")
    note = f"round-1 batch loss: all {losses.mean():.3f}, drawn {losses[drawn].mean():.3f}"
    bench.record("4 multi-round", "2 rounds, 50% by softmax(loss)", seed, round2, bench.tokens(steps + keep), note=note)
    control = next_round(bench, round1, data, uniform, f"round 2 uniform seed {seed}")
    bench.record("4 multi-round", "2 rounds, 50% uniform (control)", seed, control, bench.tokens(steps + keep),
                 note=f"round-1 batch loss: drawn {losses[uniform].mean():.3f}")
    losses2 = batch_losses(round2, data)
    drawn3 = resample(losses2, keep, seeded_generator(10 * seed + 3)).selected
    round3 = next_round(bench, round2, data, drawn3, f"round 3 seed {seed}")
    bench.record("4 multi-round", "3 rounds, 50% by softmax(loss)", seed, round3, bench.tokens(steps + 2 * keep),
                 note=f"round-2 batch loss: all {losses2.mean():.3f}, drawn {losses2[drawn3].mean():.3f}; "
                      f"overlap with round 2's draw {len(np.intersect1d(drawn, drawn3))}/{keep}")


def run_seed(bench: Bench, seed: int) -> None:
    """All four recipes for one seed (model init, batch draw, inheritance and resampling seeds)."""
    start = time.perf_counter()
    print(f"\n##### recipe 1 tokenizer, seed {seed}", flush=True)
    models = recipe_tokenizer(bench, seed)
    bench.add_time("1 tokenizer", start)
    steps = [("2 depth vs width", lambda: recipe_architecture(bench, seed, models[STUDENT_VOCAB])),
             ("3 inheritance", lambda: recipe_inheritance(bench, seed, models[ORIGINAL_VOCAB])),
             ("4 multi-round", lambda: recipe_multiround(bench, seed, models[STUDENT_VOCAB]))]
    for name, step in steps:
        start = time.perf_counter()
        print(f"\n##### recipe {name}, seed {seed}", flush=True)
        step()
        bench.add_time(name, start)


# ---- reporting ----------------------------------------------------------------------------------

def summarise(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(results: list[Result]) -> str:
    """One markdown table: mean over seeds (± sample standard deviation with several seeds)."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for result in results:
        groups.setdefault((result.recipe, result.variant), []).append(result)
    baselines = {key[0]: statistics.fmean(r.bits_per_byte for r in rows)
                 for key, rows in groups.items() if rows[0].baseline}
    lines = ["| recipe | variant | params | train tokens | held-out loss (nats/token) | bits/byte | vs baseline "
             "| note |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for (recipe, variant), rows in groups.items():
        bpb = statistics.fmean(r.bits_per_byte for r in rows)
        versus = "baseline" if rows[0].baseline else f"{(bpb / baselines[recipe] - 1) * 100:+.2f}%"
        note = rows[0].note + (f" (seed {rows[0].seed})" if len(rows) > 1 and rows[0].note else "")
        lines.append(f"| {recipe} | {variant} | {rows[0].params:,} | {rows[0].train_tokens:,} | "
                     f"{summarise([r.loss for r in rows], 4)} | {summarise([r.bits_per_byte for r in rows], 4)} | "
                     f"{versus} | {note} |")
    return "\n".join(lines)


def plot(results: list[Result], path: Path) -> None:
    """Bits per byte of every variant, one panel per recipe (baseline bar in grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = list(dict.fromkeys(r.recipe for r in results))
    fig, axes = plt.subplots(len(recipes), 1, figsize=(9, 3.2 * len(recipes)))
    for ax, recipe in zip(np.atleast_1d(axes), recipes):
        variants = list(dict.fromkeys(r.variant for r in results if r.recipe == recipe))
        means = [statistics.fmean(r.bits_per_byte for r in results if r.recipe == recipe and r.variant == v)
                 for v in variants]
        colors = ["grey" if any(r.baseline for r in results if r.variant == v and r.recipe == recipe) else "tab:blue"
                  for v in variants]
        ax.barh(range(len(variants)), means, color=colors)
        ax.set_yticks(range(len(variants)), [v[:48] for v in variants], fontsize=7)
        ax.set_xlim(min(means) * 0.98, max(means) * 1.01)
        ax.invert_yaxis()
        ax.set_title(f"recipe {recipe}: held-out bits per byte (lower is better)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def describe_run(command: str, label: str, scale: Scale, bench: Bench, seconds: dict[str, float],
                 threads: int, loads: tuple[float, float]) -> str:
    """The generated block of the results page: command, scale, data, runtime, table."""
    evals = bench.evals[STUDENT_VOCAB]
    recipes = ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items() if name not in ("total", "data"))
    return "\n".join([
        f"Command: `{command}` (scale `{label}`, measured {time.strftime('%Y-%m-%d')}).",
        "",
        f"- Budget: {scale.rows} rows x {scale.seq} tokens per step; base-size runs {scale.steps} steps "
        f"({bench.tokens(scale.steps):,} tokens), students {scale.student_steps} steps "
        f"({bench.tokens(scale.student_steps):,} tokens); AdamW lr {scale.lr}, warmup + cosine to 10%; "
        f"seeds {', '.join(map(str, scale.seeds))}; inheritance calibration {scale.calib_tokens:,} tokens, "
        f"learnable gates {scale.learn_steps} steps.",
        f"- Held-out: {evals.documents:,} documents ({evals.chars:,} characters, {evals.bytes:,} UTF-8 bytes), "
        f"never trained on or used for tokenizer training, counting or calibration.",
        f"- Runtime: {seconds['total']:.0f} s in total (data and tokenizers {seconds['data']:.0f} s; {recipes}); "
        f"torch threads {threads} on a {os.cpu_count()}-core machine, load average {loads[0]:.1f} at the start "
        f"and {loads[1]:.1f} at the end.",
        "",
        table(bench.results),
    ])


def update_results_md(path: Path, label: str, block: str) -> None:
    """Replace this scale's generated block in the results page (or append one), keeping the rest."""
    begin, end = MARK.format(scale=label, end="begin"), MARK.format(scale=label, end="end")
    text = path.read_text(encoding="utf-8") if path.exists() else "# Results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + begin + "\n" + block + "\n" + end + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## Scale `{label}` (generated)\n\n{begin}\n{block}\n{end}\n"
    write_file_atomic(path, text)


def resolve_scale(args: argparse.Namespace) -> tuple[Scale, str]:
    """The chosen scale with command-line overrides, and a label naming it in the results page."""
    base = SCALES[args.scale]
    overrides = {k: v for k, v in dict(steps=args.steps, student_steps=args.student_steps,
                                       eval_chars=args.eval_chars).items() if v is not None}
    if overrides.get("eval_chars") == 0:
        overrides["eval_chars"] = None  # 0 = every held-out document
    seeds = tuple(args.seeds) if args.seeds else base.seeds
    if min((overrides.get("steps", 1), overrides.get("student_steps", 1))) < 1:
        raise UserError("--steps and --student-steps must be positive")
    scale = Scale(**{**asdict(base), **overrides, "seeds": seeds,
                     "arch": tuple(tuple(a) for a in base.arch)})
    label = args.scale + ("" if seeds == base.seeds else "-seeds-" + "-".join(map(str, seeds)))
    return scale, label + ("-custom" if overrides else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                        help=f"jsonl corpus with a 'text' field (default {DEFAULT_CORPUS})")
    parser.add_argument("--scale", choices=sorted(SCALES), default="quick",
                        help="quick: about 10-15 min on 2 loaded cores; full: about 45 min")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the scale's, 0)")
    parser.add_argument("--holdout-every", type=int, default=20, help="hold out every N-th document (default 20)")
    parser.add_argument("--eval-chars", type=int, help="held-out characters scored (0: all; default: the scale's)")
    parser.add_argument("--steps", type=int, help="override the scale's base-size training steps")
    parser.add_argument("--student-steps", type=int, help="override the scale's student training steps")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on the shared 2-core machine 1 thread trained faster than 2)")
    parser.add_argument("--out", type=Path,
                        help="output folder (default outputs/paper_ablation/<scale label>-<date>-<time>)")
    parser.add_argument("--results-md", default=str(REPO / "docs" / "results.md"),
                        help="results page to update ('none' to skip; default docs/results.md)")
    parser.add_argument("--keep-work", action="store_true", help="keep tokenizers, tokenized data and checkpoints")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    if args.holdout_every < 2 or args.threads < 1:
        parser.error("--holdout-every must be >= 2 and --threads >= 1")
    return args


def prepare(args: argparse.Namespace, scale: Scale, work: Path) -> Bench:
    train_jsonl, held = split_corpus(args.corpus, work, args.holdout_every)
    tokenizers = prepare_tokenizers(train_jsonl, work)
    bench = Bench(scale, work, tokenizers, eval_texts(held, scale.eval_chars))
    for vocab, stream in bench.streams.items():
        print(f"tokenizer {vocab}: {len(stream):,} training tokens, {bench.evals[vocab].tokens:,} held-out tokens",
              flush=True)
    return bench


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    scale, label = resolve_scale(args)
    # inherit_ablation.train prints float(loss) of the graph-attached loss; harmless, but noisy.
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    torch.set_num_threads(args.threads)
    # A timestamped default folder: `make bench` can rerun without --force and nothing is overwritten.
    out = args.out or REPO / "outputs" / "paper_ablation" / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_writable(out, args.force)
    command = shlex.join(["python", "bench/paper_ablation.py", *(sys.argv[1:] if argv is None else argv)])
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    with output_dir(out, args.force) as tmp:
        work = tmp / "work"
        work.mkdir()
        bench = prepare(args, scale, work)
        bench.seconds["data"] = time.perf_counter() - start
        for seed in scale.seeds:
            run_seed(bench, seed)
        bench.seconds["total"] = time.perf_counter() - start
        block = describe_run(command, label, scale, bench, bench.seconds, args.threads,
                             (load_start, os.getloadavg()[0]))
        write_json(tmp / "results.json", {"command": command, "label": label, "scale": asdict(scale),
                                          "seconds": bench.seconds, "results": [asdict(r) for r in bench.results]})
        plot(bench.results, tmp / "paper_ablation.png")
        write_manifest(tmp, "bench/paper_ablation.py", vars(args), inputs={"corpus": args.corpus},
                       extra={"seeds": list(scale.seeds)})
        if not args.keep_work:
            shutil.rmtree(work)
    print("\n" + block)
    if args.results_md != "none":
        update_results_md(Path(args.results_md), label, block)
        print(f"\nupdated {args.results_md}")
    print(f"wrote {out / 'results.json'} and {out / 'paper_ablation.png'}")


if __name__ == "__main__":
    # A kill (SIGTERM) unwinds like Ctrl-C, so output_dir removes its half-built folder.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
