"""The paper's recipes in a fairer miniature, on the shared corpus, on CPU, with paired seeds.

Tang et al. 2024 ("Rethinking Optimization and Architecture for Tiny Language Models") claim:
  1. tokenizer: a compact tokenizer (the large one's rare tail removed) suits a tiny model better;
  2. architecture: at a fixed parameter count, depth matters;
  3. parameter inheritance from a (much better) larger model beats random init; width criteria
     random < L1 < L2 < Taylor < learnable; layers near both ends matter most;
  4. multi-round training: a 2nd round on 50% of the batches drawn by softmax(loss) helps,
     because a single pass forgets what it saw early.
This bench measures 1, 3 and 4 and prints the arithmetic that puts 2 out of reach here:

  - every seed draws its own text sample of `text_bytes` UTF-8 bytes from the training split;
    every tokenizer variant trains on exactly that text (one ordered pass, batches of
    `rows` consecutive windows), so variants differ in tokens, not in text (compare bits/byte);
  - 1: an 8k SentencePiece BPE tokenizer trained on the training split
    (`data.prepare.train_tokenizer`), counted (`vocab.count` / `vocab.sum_counts`) and pruned to
    the sizes that keep >= 99% and >= 98% of its training tokens (`vocab.prune.prune_tokenizer`);
  - 4: round 1 = recipe 1's run with the 98% tokenizer (one ordered pass over the seed's fixed
    set); forgetting = round-1 model's loss on each training batch against how early it was seen;
    round 2 on 50% of the batches by softmax(loss) (`resample.sampling.resample`, what
    `rethinktiny resample` draws with) vs a uniform 50% vs one longer round of the same tokens;
  - 3: teacher = recipe 1's 8k model; students (half depth, half width, 98% tokenizer via
    `token_map.json`) from `inherit.apply.inherit` train on 1/5 of the teacher's tokens;
    learnable masks run 300 steps (their converged count, docs/parameter-inheritance.md).
Every comparison is paired by seed and reported as mean difference ± SE of the per-seed
differences; an effect is claimed only beyond 2 SE (`bench/ablation_stats.py`).

Training is a plain single-process AdamW loop (`bench/inherit_ablation.train`) on the project's
pure-torch model, not InternEvo's trainer: on the shared 2-core machine a torchrun launch per run
would cost more than the runs (see docs/results.md).

    python bench/paper_ablation.py --scale quick|full [--seeds 0 1 2] [--reuse-work DIR]
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
import subprocess
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

from ablation_stats import comparison_table, fmt, mean_se, paired  # noqa: E402
from inherit_ablation import loss_of, token_stream, train  # noqa: E402

from rethinktiny.artifacts import check_writable, output_dir, write_file_atomic, write_json, write_manifest  # noqa: E402
from rethinktiny.checkpoint import load_model, save_model_only  # noqa: E402
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
from rethinktiny.vocab.prune import candidate_order, prune_tokenizer, required_ids  # noqa: E402
from rethinktiny.vocab.spmodel import load_model_proto  # noqa: E402
from rethinktiny.vocab.sum_counts import merge_counts, read_frequency_file  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "corpus" / "corpus.jsonl"
ORIGINAL_VOCAB = 8192
HEAD_DIM = 32
BASE = (6, 128, 352)  # layers, hidden, FFN: recipe 1's body, recipe 3's teacher, recipe 4's model
STUDENT = (3, 64, 176)  # half the base's depth and width
STUDENT_SHARE = 0.2  # students train on 1/5 of the teacher's tokens (issue 17: teacher >= 5x)
MARK = "<!-- paper_ablation {scale} {end} -->"


@dataclass(frozen=True)
class Scale:
    """Budgets of one --scale."""

    text_bytes: int  # UTF-8 bytes of text every tokenizer variant trains on (per seed)
    eval_chars: int | None  # held-out characters scored; None = all
    seeds: tuple[int, ...]
    inherit_seeds: int  # recipe 3 runs on the first this-many seeds
    matched_ffn: bool  # also the 98% tokenizer with the freed parameters in the FFN
    widths: tuple[str, ...] = ("random", "l1", "l2", "activation", "taylor", "learnable")
    layer_choices: tuple[str, ...] = ("uniform", "block-influence")
    coverages: tuple[float, ...] = (0.99, 0.98)
    mr_order: str = "sources"  # round 1's pass: documents grouped by source, or in the sample's random order
    rows: int = 8
    seq: int = 128
    lr: float = 2e-3
    calib_tokens: int = 4096
    learn_steps: int = 300


SCALES = {
    "quick": Scale(text_bytes=230_000, eval_chars=60_000, seeds=(0, 1, 2), inherit_seeds=2, matched_ffn=False),
    "full": Scale(text_bytes=800_000, eval_chars=200_000, seeds=(0, 1, 2, 3), inherit_seeds=4, matched_ffn=True),
}


@dataclass
class Tokenizer:
    vocab: int
    model: Path
    coverage: float  # share of the 8k tokenizer's training tokens its pieces keep
    token_map: Path | None


@dataclass
class EvalSet:
    windows: list[list[int]]
    tokens: int
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
    steps: int
    loss: float  # held-out nats per predicted token
    bits_per_byte: float
    seconds: float
    extra: dict = field(default_factory=dict)


def model_config(layers: int, hidden: int, ffn: int, vocab: int, name: str) -> ModelConfig:
    heads = hidden // HEAD_DIM
    return ModelConfig(hidden_size=hidden, num_layers=layers, num_attention_heads=heads, num_kv_heads=heads,
                       intermediate_size=ffn, vocab_size=vocab, name=name)


def matched_ffn(layers: int, hidden: int, params: int, vocab: int) -> ModelConfig:
    """(layers, hidden) with the FFN width (multiple of 8) that brings the total closest to `params`."""
    probe = model_config(layers, hidden, 8, vocab, "probe")
    ffn = round((params - probe.num_params()) / (3 * hidden * layers) / 8) * 8 + 8
    return model_config(layers, hidden, ffn, vocab, f"{layers}x{hidden}-ffn{ffn}")


# ---- data (cached in the work folder) ----------------------------------------------------------

def split_corpus(corpus: Path, work: Path, every: int) -> tuple[Path, list[str]]:
    """train.jsonl (all but every `every`-th document) and the held-out texts, cached."""
    train_path, held_path = work / "train.jsonl", work / "held_out.json"
    if train_path.is_file() and held_path.is_file():
        return train_path, json.loads(held_path.read_text(encoding="utf-8"))
    if not corpus.is_file():
        raise UserError(f"{corpus}: corpus file not found (pass --corpus)")
    held, kept = [], []
    with open(corpus, encoding="utf-8") as src:
        for number, line in enumerate(src):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise UserError(f"{corpus}:{number + 1}: malformed corpus line ({err})") from None
            if number % every == 0:
                held.append(text)
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
    if not held:
        raise UserError(f"{corpus}: no held-out documents")
    write_file_atomic(train_path, "".join(kept))
    write_json(held_path, held)
    return train_path, held


def vocab_for_coverage(original: Path, counts_file: Path, target: float) -> int:
    """Smallest size whose most frequent pieces (plus the pieces every tokenizer keeps) reach
    `target` of the counted tokens; `prune_tokenizer`'s report confirms it after pruning."""
    proto = load_model_proto(original)
    counts = read_frequency_file(counts_file, len(proto.pieces))
    required = required_ids(proto)
    covered, total = int(counts[required].sum()), int(counts.sum())
    size = len(required)
    for piece in candidate_order(proto, counts):
        if covered >= target * total:
            break
        covered += int(counts[piece])
        size += 1
    return size


def prune_to_coverage(original: Path, counts_file: Path, target: float, work: Path) -> Tokenizer:
    """Prune the 8k tokenizer to the first size (steps of 32) whose report says coverage >= target."""
    vocab = vocab_for_coverage(original, counts_file, target)
    while True:
        folder = work / f"cov{round(target * 1000)}" / "tokenizer"
        if (folder / "report.json").is_file():
            report = json.loads((folder / "report.json").read_text())
        else:
            report = prune_tokenizer(original, counts_file, vocab, folder, preset=None, force=True)
        coverage = report["coverage"]["token_coverage"]
        if coverage >= target or report["new_vocab_size"] >= ORIGINAL_VOCAB:
            print(f"pruned {ORIGINAL_VOCAB} -> {report['new_vocab_size']}: token coverage {coverage:.4f} "
                  f"(target {target}), dead pieces {report['dead_pieces']}", flush=True)
            return Tokenizer(report["new_vocab_size"], folder / "tokenizer.model", coverage,
                             folder / "token_map.json")
        shutil.rmtree(folder)  # the merge paths of the kept pieces took slots: try a little larger
        vocab += 32


def prepare_tokenizers(train_jsonl: Path, work: Path, coverages: tuple[float, ...]) -> list[Tokenizer]:
    """The 8k tokenizer and the pruned ones, first the original."""
    folder = work / f"tok{ORIGINAL_VOCAB}"
    model = folder / "tokenizer" / "tokenizer.model"
    if not model.is_file():
        train_tokenizer(train_jsonl, folder / "tokenizer", ORIGINAL_VOCAB, force=True)
    counts_file = work / "total_token_freq.json"
    if not counts_file.is_file():
        tokenize_corpus(train_jsonl, model, folder / "train", force=True)
        count_folder(folder / "train", work / "counts", process_num=1, force=True)
        merge_counts(work / "counts", counts_file, force=True)
        shutil.rmtree(folder / "train")  # only the counts are needed
    found = [Tokenizer(ORIGINAL_VOCAB, model, 1.0, None)]
    return found + [prune_to_coverage(model, counts_file, target, work) for target in coverages]


def seed_documents(train_jsonl: Path, seed: int, text_bytes: int) -> list[dict]:
    """The seed's text sample: training documents in a seeded random order until `text_bytes`."""
    lines = [line for line in open(train_jsonl, encoding="utf-8") if line.strip()]
    order = np.random.default_rng(seed).permutation(len(lines))
    chosen, size = [], 0
    for index in order:
        if size >= text_bytes:
            break
        record = json.loads(lines[index])
        chosen.append({"text": record["text"], "source": record.get("source", "default")})
        size += len(record["text"].encode("utf-8"))
    return chosen


def seed_text(train_jsonl: Path, seed: int, text_bytes: int, dst: Path, by_source: bool = False) -> Path:
    """The seed's sample as jsonl: in its random order, or (`by_source`) the same documents grouped
    by source, the sources in a seeded order (a pass that moves from one kind of text to another)."""
    if dst.is_file():
        return dst
    docs = seed_documents(train_jsonl, seed, text_bytes)
    if by_source:
        sources = sorted({d["source"] for d in docs})
        rank = {name: i for i, name in enumerate(np.random.default_rng(seed + 100).permutation(sources))}
        docs = sorted(docs, key=lambda d: rank[d["source"]])  # stable: random order inside a source
    write_file_atomic(dst, "".join(json.dumps({"text": d["text"]}, ensure_ascii=False) + "\n" for d in docs))
    if by_source:
        write_json(dst.with_suffix(".sources.json"), [d["source"] for d in docs])
    return dst


def ordered_batches(stream: torch.Tensor, rows: int, seq: int) -> list[torch.Tensor]:
    """One ordered pass: windows of seq+1 tokens at stride seq (every token a target once), batch
    k = windows k*rows .. k*rows+rows-1, i.e. one contiguous stretch of text; the last batch may
    have fewer rows, the last partial window (< seq tokens) is dropped."""
    count = (len(stream) - 1) // seq
    windows = torch.stack([stream[i * seq:i * seq + seq + 1] for i in range(count)])
    return [windows[i:i + rows] for i in range(0, count, rows)]


def eval_set(tokenizer: Tokenizer, texts: list[str], seq: int) -> EvalSet:
    """Held-out documents as <s> ids </s>, cut so every token after <s> is a target once."""
    processor = load_tokenizer(tokenizer.model)
    docs = [[processor.bos_id, *ids, processor.eos_id] for ids in processor.encode_batch(texts)]
    windows = [w for ids in docs for w in document_windows(ids, seq)]
    return EvalSet(windows, sum(len(d) - 1 for d in docs), sum(len(t.encode("utf-8")) for t in texts),
                   sum(len(t) for t in texts), len(texts))


def eval_texts(held: list[str], max_chars: int | None) -> list[str]:
    if max_chars is None:
        return held
    chosen, chars = [], 0
    for text in held:
        if chars >= max_chars:
            break
        chosen.append(text)
        chars += len(text)
    return chosen


# ---- runs, cached by key -------------------------------------------------------------------------

class Bench:
    """Tokenizers, held-out sets, per-seed data, and the cache of finished runs."""

    def __init__(self, scale: Scale, work: Path, train_jsonl: Path, tokenizers: list[Tokenizer],
                 texts: list[str]) -> None:
        self.scale, self.work, self.train_jsonl = scale, work, train_jsonl
        self.tokenizers = {t.vocab: t for t in tokenizers}
        self.original, self.compact = tokenizers[0], tokenizers[-1]  # compact: the lowest coverage
        self.evals = {t.vocab: eval_set(t, texts, scale.seq) for t in tokenizers}
        self.results: list[Result] = []
        self.extras: dict[str, dict] = {}  # recipe-level figures (forgetting, draws, ...)

    def text_folder(self, seed: int, vocab: int, by_source: bool = False) -> Path:
        """The seed's text tokenized with `vocab`'s tokenizer (one type folder, document order kept)."""
        name = "text-by-source" if by_source else "text"
        text = seed_text(self.train_jsonl, seed, self.scale.text_bytes, self.seed_dir(seed) / f"{name}.jsonl",
                         by_source)
        folder = self.seed_dir(seed) / (f"tok{vocab}-by-source" if by_source else f"tok{vocab}")
        if not folder.is_dir():
            tokenize_corpus(text, self.tokenizers[vocab].model, folder, type_key=None, force=True)
        return folder

    def seed_dir(self, seed: int) -> Path:
        return self.work / f"seed{seed}-bytes{self.scale.text_bytes}"

    @property
    def tag(self) -> str:
        """What a cached run depends on besides its own key: text budget, batch shape, lr."""
        s = self.scale
        return f"b{s.text_bytes}-r{s.rows}x{s.seq}-lr{s.lr:g}"

    def batches(self, seed: int, vocab: int, by_source: bool = False) -> list[torch.Tensor]:
        return ordered_batches(token_stream(self.text_folder(seed, vocab, by_source)), self.scale.rows,
                               self.scale.seq)

    def measure(self, model: PanGuPi) -> tuple[float, float]:
        """(held-out nats per token, bits per UTF-8 byte)."""
        evals = self.evals[model.cfg.vocab_size]
        model.eval()
        nats, count = score_windows(model, evals.windows, batch_size=32, progress=False)
        model.train()
        assert count == evals.tokens, (count, evals.tokens)
        return nats / count, nats / math.log(2) / evals.bytes

    def progress_rows(self, vocab: int) -> torch.Tensor:
        full = [w for w in self.evals[vocab].windows if len(w) == self.scale.seq + 1][:4]
        return torch.tensor(full, dtype=torch.long)

    def run(self, key: str, recipe: str, variant: str, seed: int,
            build: "callable[[], tuple[PanGuPi, int, int, dict]]") -> tuple[PanGuPi, Result]:
        """The finished run `key` from the cache, or `build()` -> (model, tokens, steps, extra)
        trained now, measured and cached (model-only checkpoint + run.json)."""
        folder = self.work / "runs" / f"{key}-{self.tag}"
        if (folder / "run.json").is_file():
            result = Result(**json.loads((folder / "run.json").read_text()))
            model = load_model(folder).train()
            print(f"== {recipe} | {variant} | seed {seed}: cached, {result.bits_per_byte:.4f} bits/byte", flush=True)
        else:
            start = time.perf_counter()
            model, tokens, steps, extra = build()
            seconds = time.perf_counter() - start
            loss, bpb = self.measure(model)
            result = Result(recipe, variant, seed, model.cfg.num_params(), tokens, steps, loss, bpb, seconds, extra)
            save_model_only(folder, model.state_dict(), model.cfg)
            write_json(folder / "run.json", asdict(result))
            print(f"== {recipe} | {variant} | seed {seed}: held-out {loss:.4f} nats/token, {bpb:.4f} bits/byte "
                  f"({seconds:.0f} s)", flush=True)
        result.recipe, result.variant = recipe, variant  # labels may change between versions
        self.results.append(result)
        return model, result

    def fit(self, model: PanGuPi, data: list[torch.Tensor], label: str) -> PanGuPi:
        train(model, data, self.progress_rows(model.cfg.vocab_size), self.scale.lr, label,
              eval_every=max(1, len(data) // 3))
        return model


def tokens_of(data: list[torch.Tensor]) -> int:
    return sum(b.shape[0] * (b.shape[1] - 1) for b in data)


def batch_losses(model: PanGuPi, data: list[torch.Tensor]) -> np.ndarray:
    """Loss of every batch under the frozen model (the score `rethinktiny resample` computes)."""
    model.eval()
    with torch.no_grad():
        losses = np.array([float(loss_of(model, batch)) for batch in data], dtype=np.float64)
    model.train()
    return losses


# ---- recipe 1: tokenizer ---------------------------------------------------------------------------

def tokenizer_label(tok: Tokenizer) -> str:
    if tok.token_map is None:
        return f"{tok.vocab:,} (original)"
    return f"{tok.vocab:,} (pruned, {tok.coverage:.2%} coverage)"


def recipe_tokenizer(bench: Bench, seed: int) -> dict[int, PanGuPi]:
    """The base body with each tokenizer on the seed's text (same bytes); optionally the compact
    tokenizer with the parameters it frees spent on the FFN. Returns models by vocabulary."""
    layers, hidden, ffn = BASE
    models = {}
    shapes = [(tok, model_config(layers, hidden, ffn, tok.vocab, f"base-{tok.vocab}"), "")
              for tok in bench.tokenizers.values()]
    if bench.scale.matched_ffn:
        total = shapes[0][1].num_params()
        cfg = matched_ffn(layers, hidden, total, bench.compact.vocab)
        shapes.append((bench.compact, cfg, f", FFN {cfg.intermediate_size} (8k's param count)"))
    for tok, cfg, suffix in shapes:
        data = bench.batches(seed, tok.vocab)

        def build(cfg=cfg, data=data, label=tokenizer_label(tok)):
            torch.manual_seed(seed)
            model = bench.fit(PanGuPi(cfg), data, f"tokenizer {label} seed {seed}")
            return model, tokens_of(data), len(data), {"coverage": tok.coverage,
                                                        "embedding_share": cfg.embedding_share()}

        key = f"tok{tok.vocab}-ffn{cfg.intermediate_size}-seed{seed}"
        model, _ = bench.run(key, "1 tokenizer", tokenizer_label(tok) + suffix, seed, build)
        if not suffix:
            models[tok.vocab] = model
    return models


# ---- recipe 4: multi-round in a forgetting regime --------------------------------------------------

def forgetting(losses: np.ndarray, held_out: float) -> dict:
    """How the round-1 model's loss on its own batches depends on how early they were seen."""
    position = np.linspace(0.0, 1.0, len(losses))
    slope = float(np.polyfit(position, losses, 1)[0])  # nats from the first to the last batch
    fifth = max(1, len(losses) // 5)
    return {"slope": slope, "first_fifth": float(losses[:fifth].mean()), "last_fifth": float(losses[-fifth:].mean()),
            "first_minus_last": float(losses[:fifth].mean() - losses[-fifth:].mean()),
            "held_out": held_out, "spread_sd": float(losses.std()),
            "deciles": [float(part.mean()) for part in np.array_split(losses, min(10, len(losses)))]}


def recipe_multiround(bench: Bench, seed: int, round1: PanGuPi, round1_result: Result) -> None:
    """Round 2 on 50% of round 1's batches by softmax(loss), a uniform 50%, or one longer round.
    With --mr-order sources, round 1 is its own run on the seed's text grouped by source."""
    vocab = bench.compact.vocab
    by_source = bench.scale.mr_order == "sources"
    data = bench.batches(seed, vocab, by_source)  # exactly round 1's batches, in round 1's order
    suffix = "-by-source" if by_source else ""
    if by_source:

        def first_round():
            torch.manual_seed(seed)  # the same initialisation as recipe 1's compact run
            model = bench.fit(PanGuPi(round1.cfg), data, f"round 1 by source seed {seed}")
            return model, tokens_of(data), len(data), {}

        round1, round1_result = bench.run(f"mr-round1-{vocab}{suffix}-seed{seed}", "4 multi-round",
                                          "1 round (one pass, documents grouped by source)", seed, first_round)
    keep = num_to_select(len(data), ratio=0.5)
    losses = batch_losses(round1, data)
    drawn = resample(losses, keep, seeded_generator(10 * seed + 2))
    uniform = np.sort(torch.randperm(len(data), generator=seeded_generator(10 * seed + 7))[:keep].numpy())
    position = np.arange(len(data)) / max(1, len(data) - 1)
    bench.extras.setdefault("forgetting", {})[seed] = {
        **forgetting(losses, round1_result.loss),
        "drawn_mean_loss": float(losses[drawn.selected].mean()), "all_mean_loss": float(losses.mean()),
        "drawn_mean_position": float(position[drawn.selected].mean()),
        "uniform_mean_position": float(position[uniform].mean()),
        "max_over_min_probability": float(drawn.probabilities.max() / drawn.probabilities.min()),
        "losses": losses.tolist()}
    if not by_source:
        bench.results.append(Result("4 multi-round", "1 round (recipe 1's compact run)", seed, round1_result.params,
                                    round1_result.train_tokens, round1_result.steps, round1_result.loss,
                                    round1_result.bits_per_byte, round1_result.seconds))
    else:
        sources = json.loads((bench.seed_dir(seed) / "text-by-source.sources.json").read_text())
        bench.extras["forgetting"][seed]["source_order"] = list(dict.fromkeys(sources))

    def second_round(chosen: np.ndarray, label: str):
        part = [data[i] for i in chosen]
        model = bench.fit(copy.deepcopy(round1), part, f"{label} seed {seed}")
        return model, round1_result.train_tokens + tokens_of(part), round1_result.steps + len(part), {}

    bench.run(f"mr-softmax-{vocab}{suffix}-seed{seed}", "4 multi-round", "2 rounds, 50% by softmax(loss)", seed,
              lambda: second_round(drawn.selected, "round 2 softmax"))
    bench.run(f"mr-uniform-{vocab}{suffix}-seed{seed}", "4 multi-round", "2 rounds, 50% uniform", seed,
              lambda: second_round(uniform, "round 2 uniform"))

    def longer():
        # Same init as round 1 (same seed and shape) and one schedule over the same tokens as
        # "2 rounds, 50% uniform": the only difference is no restart of optimizer and schedule.
        torch.manual_seed(seed)
        part = data + [data[i] for i in uniform]
        model = bench.fit(PanGuPi(round1.cfg), part, f"one longer round seed {seed}")
        return model, tokens_of(part), len(part), {}

    bench.run(f"mr-longer-{vocab}{suffix}-seed{seed}", "4 multi-round", "1 longer round (same tokens as 2 rounds)", seed,
              longer)


# ---- recipe 3: inheritance ---------------------------------------------------------------------------

def student_variants(scale: Scale) -> list[tuple[str, str | None, str | None]]:
    variants = [("random init", None, None)]
    variants += [(f"width {w}, layers first-last", w, "first-last") for w in scale.widths]
    variants += [(f"width l2, layers {lay}", "l2", lay) for lay in scale.layer_choices]
    return variants


def recipe_inheritance(bench: Bench, seed: int, teacher_result: Result) -> None:
    """Students from random init and each inheritance choice, trained on 1/5 of the teacher's tokens."""
    teacher_dir = bench.work / "runs" / f"tok{ORIGINAL_VOCAB}-ffn{BASE[2]}-seed{seed}-{bench.tag}"
    tok = bench.compact
    data = bench.batches(seed, tok.vocab)
    steps = max(1, int(STUDENT_SHARE * teacher_result.train_tokens / (bench.scale.rows * bench.scale.seq)))
    data = data[:steps]  # the first stretch of the seed's text (the teacher read all of it)
    cfg = model_config(*STUDENT, tok.vocab, "student")
    for label, width, layers in student_variants(bench.scale):

        def build(label=label, width=width, layers=layers):
            torch.manual_seed(seed)
            extra = {}
            if width is None:
                model = PanGuPi(cfg)
            else:
                dst = bench.work / "students" / f"{width}-{layers}-seed{seed}-{bench.tag}"
                calibrated = width in CALIBRATED_METRICS or layers == "block-influence"
                inherit(teacher_dir, cfg, dst, layers=layers, width=width,
                        calib=bench.text_folder(seed, tok.vocab) if calibrated else None,
                        calib_tokens=bench.scale.calib_tokens, calib_seq_len=bench.scale.seq,
                        token_map=tok.token_map, seed=seed, force=True, learn_steps=bench.scale.learn_steps)
                report = json.loads((dst / "inherit_report.json").read_text())["layers"]
                extra = {"kept_layers": report["kept"], "block_influence": report["block_influence"]}
                model = load_model(dst).train()
            extra["step0_loss"], extra["step0_bpb"] = bench.measure(model)
            bench.fit(model, data, f"{label} seed {seed}")
            return model, tokens_of(data), len(data), extra

        calib = f"-c{bench.scale.calib_tokens}-l{bench.scale.learn_steps}" if width in CALIBRATED_METRICS else ""
        bench.run(f"inh-{width}-{layers}-{tok.vocab}{calib}-seed{seed}", "3 inheritance", label, seed, build)


def run_seed(bench: Bench, seed: int, seconds: dict[str, float]) -> None:
    start = time.perf_counter()
    print(f"\n##### recipe 1 tokenizer, seed {seed}", flush=True)
    models = recipe_tokenizer(bench, seed)
    seconds["1 tokenizer"] = seconds.get("1 tokenizer", 0.0) + time.perf_counter() - start
    by_key = {(r.variant, r.seed): r for r in bench.results if r.recipe == "1 tokenizer"}
    compact = by_key[(tokenizer_label(bench.compact), seed)]
    start = time.perf_counter()
    print(f"\n##### recipe 4 multi-round, seed {seed}", flush=True)
    recipe_multiround(bench, seed, models[bench.compact.vocab], compact)
    seconds["4 multi-round"] = seconds.get("4 multi-round", 0.0) + time.perf_counter() - start
    if seed in bench.scale.seeds[:bench.scale.inherit_seeds]:
        start = time.perf_counter()
        print(f"\n##### recipe 3 inheritance, seed {seed}", flush=True)
        recipe_inheritance(bench, seed, by_key[(tokenizer_label(bench.original), seed)])
        seconds["3 inheritance"] = seconds.get("3 inheritance", 0.0) + time.perf_counter() - start


# ---- reporting ---------------------------------------------------------------------------------------

def by_variant(results: list[Result], recipe: str, metric: str = "bits_per_byte") -> dict[str, dict[int, float]]:
    """variant -> seed -> metric (or an `extra` key) of one recipe, in first-seen order."""
    values: dict[str, dict[int, float]] = {}
    for r in results:
        if r.recipe == recipe:
            values.setdefault(r.variant, {})[r.seed] = getattr(r, metric) if hasattr(r, metric) else r.extra[metric]
    return values


def spread(values: list[float], digits: int = 4) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.{digits}f}" + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def variant_table(results: list[Result], recipe: str, step0: bool = False) -> str:
    """Mean over seeds (± sample sd) of every variant of one recipe."""
    rows = [r for r in results if r.recipe == recipe]
    head = "| variant | seeds | params | train tokens (mean) | steps (mean) | held-out nats/token | bits/byte |"
    sep = "|---|---:|---:|---:|---:|---:|---:|"
    if step0:
        head, sep = head + " bits/byte at step 0 |", sep + "---:|"
    lines = [head, sep]
    for variant in dict.fromkeys(r.variant for r in rows):
        group = [r for r in rows if r.variant == variant]
        line = (f"| {variant} | {len(group)} | {group[0].params:,} | "
                f"{statistics.fmean(r.train_tokens for r in group):,.0f} | {statistics.fmean(r.steps for r in group):.0f} | "
                f"{spread([r.loss for r in group])} | {spread([r.bits_per_byte for r in group])} |")
        if step0:
            line += f" {spread([r.extra['step0_bpb'] for r in group]) if 'step0_bpb' in group[0].extra else '-'} |"
        lines.append(line)
    return "\n".join(lines)


def comparisons(results: list[Result], recipe: str, pairs: list[tuple[str, str]], metric: str = "bits_per_byte",
                unit: str = "bits/byte") -> str:
    values = by_variant(results, recipe, metric)
    rows = [(f"{a} − {b}", paired(a, b, values)) for a, b in pairs if a in values and b in values]
    return comparison_table(rows, unit)


def tokenizer_section(bench: Bench) -> str:
    labels = [tokenizer_label(t) for t in bench.tokenizers.values()]
    pairs = [(label, labels[0]) for label in labels[1:]]
    pairs += [(v, labels[0]) for v in by_variant(bench.results, "1 tokenizer") if "param count" in v]
    notes = [f"- {tokenizer_label(t)}: {bench.evals[t.vocab].tokens / bench.evals[t.vocab].bytes:.4f} held-out "
             f"tokens/byte; embedding+head {model_config(*BASE, t.vocab, 'x').embedding_share():.0%} of the "
             f"base's parameters" for t in bench.tokenizers.values()]
    return "\n".join(["**Recipe 1, tokenizer** (same text per seed, one ordered pass, base body 6 × 128, FFN 352):",
                      "", variant_table(bench.results, "1 tokenizer"), "", *notes, "",
                      comparisons(bench.results, "1 tokenizer", pairs)])


def forgetting_section(bench: Bench) -> str:
    figures = bench.extras.get("forgetting", {})
    if not figures:
        return ""
    seeds = sorted(figures)

    def row(label: str, key: str) -> str:
        values = [figures[s][key] for s in seeds]
        mean, se = mean_se(values)
        return f"| {label} | {fmt(mean, se, 3)} | {' / '.join(f'{v:+.3f}' for v in values)} |"

    for s in seeds:
        figures[s]["first_minus_held"] = figures[s]["first_fifth"] - figures[s]["held_out"]
        figures[s]["last_minus_held"] = figures[s]["last_fifth"] - figures[s]["held_out"]
        figures[s]["drawn_minus_all"] = figures[s]["drawn_mean_loss"] - figures[s]["all_mean_loss"]
        figures[s]["drawn_position_minus_half"] = figures[s]["drawn_mean_position"] - 0.5
    lengths = {len(figures[s]["deciles"]) for s in seeds}  # < 10 batches: as many parts as batches
    deciles = np.mean([figures[s]["deciles"] for s in seeds], axis=0) if len(lengths) == 1 else []
    return "\n".join([
        f"Forgetting after round 1 (the round-1 model's loss on its own training batches, nats/token; "
        f"mean ± SE over {len(seeds)} seeds, then per seed):", "",
        "| figure | mean ± SE | per seed |", "|---|---:|---|",
        row("slope of batch loss over the pass (last batch − first, fitted)", "slope"),
        row("first fifth of the pass − last fifth", "first_minus_last"),
        row("first fifth − held-out loss", "first_minus_held"),
        row("last fifth − held-out loss", "last_minus_held"),
        row("sd of batch losses (the spread softmax sees)", "spread_sd"),
        row("softmax draw: mean loss of drawn − of all batches", "drawn_minus_all"),
        row("softmax draw: mean position of drawn batches − 0.5 (negative = early)", "drawn_position_minus_half"),
        row("largest / smallest draw probability", "max_over_min_probability"),
        "", "Batch loss by decile of the pass (mean over seeds): " + ", ".join(f"{d:.3f}" for d in deciles)]
        + ([] if "source_order" not in figures[seeds[0]] else
           ["", "Source order of the pass: " + "; ".join(f"seed {s}: {' → '.join(figures[s]['source_order'])}"
                                                        for s in seeds)]))


def multiround_section(bench: Bench) -> str:
    one, soft, uni, longer = list(by_variant(bench.results, "4 multi-round"))[:4]
    pairs = [(soft, uni), (soft, longer), (uni, longer), (soft, one)]
    if bench.scale.mr_order == "sources":
        head = (f"round 1 = one pass over the seed's text with its documents grouped by source, the sources in "
                f"a seeded order; {bench.compact.vocab:,}-piece tokenizer, base body, same initialisation as "
                f"recipe 1")
    else:
        head = "round 1 = recipe 1's compact-tokenizer run (documents in the sample's random order)"
    return "\n".join([f"**Recipe 4, multi-round** ({head}; later rounds and the longer round on the same "
                      "fixed set):", "",
                      variant_table(bench.results, "4 multi-round"), "",
                      comparisons(bench.results, "4 multi-round", pairs), "", forgetting_section(bench)])


def inheritance_section(bench: Bench) -> str:
    values = by_variant(bench.results, "3 inheritance")
    if not values:
        return ""
    labels = list(values)
    random_init, first_last = labels[0], {v.split(",")[0]: v for v in labels if v.endswith("first-last")}
    pairs = [(label, random_init) for label in labels[1:]]
    l2 = first_last.get("width l2")
    for width in ("width l1", "width activation", "width taylor", "width learnable"):
        if width in first_last and l2:
            pairs.append((first_last[width], l2))
    if l2 and "width random" in first_last:
        pairs.append((l2, first_last["width random"]))
    pairs += [(v, l2) for v in labels if "layers" in v and not v.endswith("first-last") and l2]
    teachers = [r for r in bench.results if r.recipe == "1 tokenizer" and r.variant == tokenizer_label(bench.original)
                and r.seed in {s for v in values.values() for s in v}]
    students = [r for r in bench.results if r.recipe == "3 inheritance"]
    kept = {r.variant: r.extra.get("kept_layers") for r in students if r.seed == students[0].seed}
    influence = next((r.extra["block_influence"] for r in students if r.extra.get("block_influence")), None)
    return "\n".join([
        f"**Recipe 3, inheritance** (teacher = recipe 1's 8k model: {spread([r.bits_per_byte for r in teachers])} "
        f"bits/byte after {statistics.fmean(r.train_tokens for r in teachers):,.0f} tokens; students 3 × 64, FFN 176, "
        f"{bench.compact.vocab:,}-piece tokenizer via its token map, trained "
        f"{statistics.fmean(r.train_tokens for r in students):,.0f} tokens = {STUDENT_SHARE:.0%} of the teacher's; "
        f"learnable masks {bench.scale.learn_steps} steps, calibration {bench.scale.calib_tokens:,} tokens):", "",
        variant_table(bench.results, "3 inheritance", step0=True), "",
        "After training:", "", comparisons(bench.results, "3 inheritance", pairs), "",
        "Right after inheritance (step 0):", "",
        comparisons(bench.results, "3 inheritance", pairs, metric="step0_bpb"), "",
        "Teacher layers kept (seed " + str(students[0].seed) + "): "
        + "; ".join(f"{v.split('layers ')[-1]} {k}" for v, k in kept.items() if k and "width l2" in v)
        + ("" if influence is None else
           "; block influence by teacher layer: " + ", ".join(f"{x:.3f}" for x in influence))])


def depth_width_arithmetic(bench: Bench) -> str:
    """Why recipe 2 is not run: the cost of a fair depth-vs-width comparison at this scale."""
    base = [r for r in bench.results if r.recipe == "1 tokenizer" and r.variant == tokenizer_label(bench.compact)]
    rate = sum(r.train_tokens for r in base) / sum(r.seconds for r in base)
    cfg = model_config(*BASE, bench.compact.vocab, "base")
    chinchilla = 20 * cfg.num_params()
    runs = 4 * 3 * 3  # shapes x learning rates x seeds
    return (f"**Recipe 2, depth vs width: not run.** A fair test keeps the non-embedding parameters fixed "
            f"({cfg.non_embedding_params():,} for the base), sweeps the learning rate per shape and trains near "
            f"convergence, since in early training shallow models lead (the earlier miniature's finding). "
            f"4 shapes × 3 learning rates × 3 seeds = {runs} runs of about 20 tokens per parameter "
            f"({chinchilla:,} tokens for the base's {cfg.num_params():,} parameters). At the base model's measured "
            f"{rate:,.0f} training tokens/s (this run, one thread) that is {chinchilla / rate / 3600:.1f} h per run, "
            f"{runs * chinchilla / rate / 3600:,.0f} h in all, against this bench's "
            f"{statistics.fmean(r.train_tokens for r in base):,.0f} tokens per run.")


def describe_run(command: str, label: str, bench: Bench, seconds: dict[str, float], threads: int,
                 loads: tuple[float, float]) -> str:
    scale, evals = bench.scale, bench.evals[bench.compact.vocab]
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k not in ("total", "data"))
    computed = sum(r.seconds for r in bench.results)
    return "\n".join([
        f"Command: `{command}` (scale `{label}`, measured {time.strftime('%Y-%m-%d')}).", "",
        f"- Seeds {', '.join(map(str, scale.seeds))} (recipe 3: the first {scale.inherit_seeds}); each seed "
        f"draws {scale.text_bytes:,} bytes of training text; {scale.rows} rows × {scale.seq} tokens per step; AdamW "
        f"lr {scale.lr}, warmup + cosine to 10%.",
        f"- Held-out: {evals.documents:,} documents ({evals.chars:,} characters, {evals.bytes:,} UTF-8 bytes).",
        f"- Runtime: {seconds['total']:.0f} s in this invocation (data {seconds['data']:.0f} s; {parts}); the "
        f"runs themselves took {computed:.0f} s when they were trained (cached runs keep their time); torch "
        f"threads {threads} on a {os.cpu_count()}-core machine, load average {loads[0]:.1f} at the start and "
        f"{loads[1]:.1f} at the end.", "",
        tokenizer_section(bench), "", multiround_section(bench), "", inheritance_section(bench), "",
        depth_width_arithmetic(bench)])


def plot(bench: Bench, path: Path) -> None:
    """Forgetting curve (batch loss against position in the pass) and bits/byte per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = list(dict.fromkeys(r.recipe for r in bench.results))
    fig, axes = plt.subplots(len(recipes) + 1, 1, figsize=(9, 3.2 * (len(recipes) + 1)))
    ax = axes[0]
    for seed, fig_data in sorted(bench.extras.get("forgetting", {}).items()):
        losses = np.asarray(fig_data["losses"])
        color = f"C{seed % 10}"
        ax.plot(np.linspace(0, 1, len(losses)), losses, alpha=0.3, lw=0.8, color=color)
        bins = np.array_split(losses, min(10, len(losses)))
        ax.plot((np.arange(len(bins)) + 0.5) / len(bins), [b.mean() for b in bins], marker="o", color=color,
                label=f"seed {seed} (deciles)")
        ax.axhline(fig_data["held_out"], ls="--", lw=0.8, color=color)
    ax.set_xlabel("position of the batch in round 1's pass (0 = seen first)")
    ax.set_ylabel("round-1 model's loss (nats/token)")
    ax.set_title("forgetting: loss on its own training batches after one pass (dashed: held-out)", fontsize=9)
    ax.legend(fontsize=7)
    for ax, recipe in zip(axes[1:], recipes):
        values = by_variant(bench.results, recipe)
        means = [statistics.fmean(v.values()) for v in values.values()]
        ax.barh(range(len(values)), means, color="tab:blue")
        ax.set_yticks(range(len(values)), [v[:52] for v in values], fontsize=7)
        ax.set_xlim(min(means) * 0.98, max(means) * 1.01)
        ax.invert_yaxis()
        ax.set_title(f"recipe {recipe}: held-out bits per byte, mean over seeds (lower is better)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    base = SCALES["quick" if args.quick else args.scale]
    changes = {}
    if args.seeds:
        changes["seeds"] = tuple(args.seeds)
    if args.text_bytes is not None:
        if args.text_bytes < 10_000:
            raise UserError("--text-bytes must be at least 10000")
        changes["text_bytes"] = args.text_bytes
    if args.inherit_seeds is not None:
        changes["inherit_seeds"] = args.inherit_seeds
    if args.learn_steps is not None:
        changes["learn_steps"] = args.learn_steps
    if args.mr_order is not None:
        changes["mr_order"] = args.mr_order
    if args.eval_chars is not None:
        changes["eval_chars"] = args.eval_chars or None  # 0 = every held-out document
    scale = Scale(**{**asdict(base), **changes})
    name = "quick" if args.quick else args.scale
    if "seeds" in changes:
        name += "-seeds-" + "-".join(map(str, scale.seeds))
    if scale.mr_order != "sources":
        name += f"-mr-{scale.mr_order}"
    return scale, name + ("-custom" if set(changes) - {"seeds", "mr_order"} else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                        help=f"jsonl corpus with a 'text' field (default {DEFAULT_CORPUS})")
    parser.add_argument("--scale", choices=sorted(SCALES), default="quick",
                        help="quick: <= 15 min on an idle 2-core machine; full: about 1 h")
    parser.add_argument("--quick", action="store_true", help="same as --scale quick")
    parser.add_argument("--seeds", type=int, nargs="+", help="paired seeds (default: the scale's)")
    parser.add_argument("--inherit-seeds", type=int, help="recipe 3 on the first N seeds (default: the scale's)")
    parser.add_argument("--text-bytes", type=int, help="bytes of training text per seed (default: the scale's)")
    parser.add_argument("--learn-steps", type=int, help="learnable-mask steps (default 300, their converged count)")
    parser.add_argument("--eval-chars", type=int, help="held-out characters scored (0: all; default: the scale's)")
    parser.add_argument("--mr-order", choices=("sources", "text"),
                        help="round 1's pass for recipe 4: sources = the seed's documents grouped by source "
                             "(default; a forgetting regime), text = recipe 1's run (random document order)")
    parser.add_argument("--holdout-every", type=int, default=20, help="hold out every N-th document (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: faster on the shared machine)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds trained in parallel processes, one thread each (default 1; 2 on an idle "
                             "2-core machine halves the wall time)")
    parser.add_argument("--reuse-work", type=Path,
                        help="work folder kept between runs: tokenizers, tokenized text and finished runs are "
                             "reused (more seeds, or a resumed run, cost only what is new)")
    parser.add_argument("--out", type=Path, help="output folder (default outputs/paper_ablation/<label>-<time>)")
    parser.add_argument("--results-md", default=str(REPO / "docs" / "results.md"),
                        help="results page to update ('none' to skip; default docs/results.md)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder inside --out")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    if args.holdout_every < 2 or args.threads < 1 or args.jobs < 1:
        parser.error("--holdout-every must be >= 2, --threads and --jobs >= 1")
    return args


def seed_job_command(args: argparse.Namespace, scale: Scale, seed: int, work: Path, out: Path) -> list[str]:
    """This script for one seed, sharing `work` (tokenizers are ready; runs are keyed by seed)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--corpus", str(args.corpus),
               "--scale", "quick" if args.quick else args.scale, "--seeds", str(seed),
               "--inherit-seeds", "1" if seed in scale.seeds[:scale.inherit_seeds] else "0",
               "--text-bytes", str(scale.text_bytes), "--learn-steps", str(scale.learn_steps),
               "--eval-chars", str(scale.eval_chars or 0), "--mr-order", scale.mr_order,
               "--holdout-every", str(args.holdout_every), "--threads", str(args.threads),
               "--reuse-work", str(work), "--results-md", "none", "--out", str(out), "--force"]
    return command


def run_seed_jobs(args: argparse.Namespace, scale: Scale, work: Path, folder: Path) -> None:
    """Train the seeds in `args.jobs` parallel processes (one core each); the caller then reads
    every run from the cache. Each job's log is `folder/seed<S>.log`."""
    folder.mkdir(parents=True, exist_ok=True)
    pending, running = list(scale.seeds), []
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            log = open(folder / f"seed{seed}.log", "w", encoding="utf-8")
            command = seed_job_command(args, scale, seed, work, folder / f"seed{seed}")
            running.append((seed, log, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)))
            print(f"seed {seed}: started (log {folder / f'seed{seed}.log'})", flush=True)
        time.sleep(2)
        for job in list(running):
            seed, log, process = job
            if process.poll() is not None:
                log.close()
                running.remove(job)
                if process.returncode != 0:
                    for _, other_log, other in running:
                        other.terminate()
                        other.wait()
                        other_log.close()
                    raise UserError(f"seed {seed} failed (exit {process.returncode}); see {folder / f'seed{seed}.log'}")
                print(f"seed {seed}: done", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    scale, label = resolve_scale(args)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    torch.set_num_threads(args.threads)
    out = args.out or REPO / "outputs" / "paper_ablation" / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_writable(out, args.force)
    command = shlex.join(["python", "bench/paper_ablation.py", *(sys.argv[1:] if argv is None else argv)])
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    with output_dir(out, args.force) as tmp:
        work = args.reuse_work or tmp / "work"
        work.mkdir(parents=True, exist_ok=True)
        train_jsonl, held = split_corpus(args.corpus, work, args.holdout_every)
        tokenizers = prepare_tokenizers(train_jsonl, work, scale.coverages)
        bench = Bench(scale, work, train_jsonl, tokenizers, eval_texts(held, scale.eval_chars))
        seconds = {"data": time.perf_counter() - start}
        if args.jobs > 1 and len(scale.seeds) > 1:
            run_seed_jobs(args, scale, work.resolve(), tmp / "seed_jobs")
            seconds["seed jobs"] = time.perf_counter() - start - seconds["data"]
        for seed in scale.seeds:
            run_seed(bench, seed, seconds)
        seconds["total"] = time.perf_counter() - start
        block = describe_run(command, label, bench, seconds, args.threads, (load_start, os.getloadavg()[0]))
        extras = {k: {str(s): v for s, v in d.items()} for k, d in bench.extras.items()}
        write_json(tmp / "results.json", {"command": command, "label": label, "scale": asdict(scale),
                                          "tokenizers": [asdict(t) for t in tokenizers], "seconds": seconds,
                                          "results": [asdict(r) for r in bench.results], "extras": extras})
        write_file_atomic(tmp / "results.md", block + "\n")
        plot(bench, tmp / "paper_ablation.png")
        write_manifest(tmp, "bench/paper_ablation.py", vars(args), inputs={"corpus": args.corpus},
                       extra={"seeds": list(scale.seeds)})
        if args.reuse_work is None and not args.keep_work:
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
