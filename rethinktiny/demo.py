"""`make demo`: the paper's whole recipe in miniature, through the commands a cluster user runs.

    python -m rethinktiny.demo [--sample data/sample] [--out outputs/demo] [--scale demo|smoke] [--force]

--sample is a folder with train.jsonl and valid.jsonl (`make demo` passes the bundled
data/sample); relative paths are taken from the current folder, never from the package, so an
installed (non-editable) rethinktiny runs the demo too. Training runs `rethinktiny train`, the
launcher of start_finetune.py.

Steps (each a folder under --out with the commands it ran in `manifest.json`; a finished step is
reused on the next run unless --force):
  01_data       train an "original" SentencePiece BPE tokenizer, tokenize the sample
  02_teacher    train a PanGu-π teacher (series activation + augmented shortcuts) with InternEvo
  03_vocab      count token frequencies, prune the tokenizer to a compact one, re-tokenize
  04_inherit    inherit a tiny PanGu-π Pro student from the teacher (first-last layers,
                activation-based width, remapped vocabulary)
  05_random     student from random init: round 1 + round 2 on all data (the baseline)
  06_round1     inherited student, round 1 on all data
  07_round2_all      round 2 on all data again (inheritance only)
  08_resample        score every batch with the round-1 model, keep 50% by softmax sampling
  09_round2_resampled round 2 on the resampled batches (inheritance + multi-round)
  10_hf         export the final student to Hugging Face, load it with transformers, generate
  11_eval       held-out loss and perplexity of the teacher and every student variant
  report.md     loss curves, held-out perplexity table, layer importance, vocabulary coverage
Every variant trains the same number of tokens.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rethinktiny.artifacts import write_json
from rethinktiny.demo_report import write_report
from rethinktiny.errors import UserError


@dataclass(frozen=True)
class Scale:
    original_vocab: int = 8000
    compact_vocab: int = 4000
    teacher_steps: int = 150
    round_steps: int = 60
    seq_len: int = 256
    micro_bsz: int = 4
    calib_tokens: int = 16384
    eval_docs: int = 283


SCALES = {"demo": Scale(), "smoke": Scale(teacher_steps=24, round_steps=8, calib_tokens=4096, eval_docs=40)}

TEACHER_SHAPE = dict(hidden_size=256, num_layers=6, num_attention_heads=4, num_kv_heads=4, intermediate_size=704,
                     series_terms=2, aug_shortcuts=1, aug_shortcut_dim=16)
STUDENT_SHAPE = dict(hidden_size=128, num_layers=3, num_attention_heads=2, num_kv_heads=2, intermediate_size=352)


class StepFailed(Exception):
    pass


class Demo:
    def __init__(self, out: Path, sample: Path, scale: Scale, force: bool) -> None:
        self.out, self.sample, self.scale, self.force = out, sample, scale, force
        self.ranks = 2

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
        """Run `body` into a temporary folder renamed to `name` on success; reuse a finished step."""
        final = self.out / name
        if (final / "manifest.json").exists() and not self.force:
            print(f"[demo] {name}: done earlier, reused ({final})", flush=True)
            return final
        partial = self.out / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        print(f"\n[demo] ===== {name} =====", flush=True)
        self.commands: list[dict] = []
        started = time.time()
        body(partial)
        write_json(partial / "manifest.json", {"step": name, "scale": self.scale.__dict__, "commands": self.commands,
                                               "seconds": round(time.time() - started, 1)})
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        return final

    # ---- configs ----------------------------------------------------------------------------
    def config(self, step_dir: Path, name: str, shape: dict, vocab: int, steps: int, lr: float, train: Path,
               save: Path, inherit: Path | None = None) -> Path:
        """Write a CPU training config with `rethinktiny config export` (the command users run)."""
        path = step_dir / f"{name}.py"
        args = ["config", "export", "--preset", "tiny", "--cpu", str(self.ranks), "--vocab-size", str(vocab),
                "--seq-len", str(self.scale.seq_len), "--micro-bsz", str(self.scale.micro_bsz), "--micro-num", "1",
                "--total-steps", str(steps), "--lr", str(lr), "--min-lr", str(lr / 10), "--warmup-ratio", "0.05",
                "--weight-decay", "0.01", "--zero1-size", "-1", "--min-length", "0",
                "--checkpoint-every", str(steps), "--train-folder", str(train), "--save-ckpt-folder",
                f"local:{save}", "--job-name", name, "--dst", str(path)]
        for key, value in shape.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        if inherit is not None:
            args += ["--inherit", str(inherit)]
        self.cli(step_dir, f"config {name}", *args)
        return path


def _worth_showing(line: str) -> bool:
    # Keep the console readable: our own lines, progress and errors; InternEvo's INFO goes to the log.
    noisy = ("INFO", "WARNING", "FutureWarning", "custom_fwd", "custom_bwd", "warnings.warn", "super().__init__")
    return bool(line.strip()) and not any(word in line for word in noisy)


# ---- the steps ------------------------------------------------------------------------------------

def step_data(demo: Demo, d: Path) -> None:
    demo.cli(d, "original tokenizer", "data", "train-tokenizer", "--input", demo.sample / "train.jsonl",
             "--vocab-size", demo.scale.original_vocab, "--dst", d / "tokenizer")
    for split in ("train", "valid"):
        demo.cli(d, f"tokenize {split}", "data", "tokenize", "--input", demo.sample / f"{split}.jsonl",
                 "--tokenizer", d / "tokenizer", "--dst", d / split)


def step_teacher(demo: Demo, d: Path) -> None:
    data = demo.out / "01_data"
    config = demo.config(d, "teacher", TEACHER_SHAPE, demo.scale.original_vocab, demo.scale.teacher_steps, 3e-3,
                         data / "train", d / "ckpt")
    demo.train(d, "train teacher", config)


def step_vocab(demo: Demo, d: Path) -> None:
    data = demo.out / "01_data"
    demo.cli(d, "count", "vocab", "count", "--src", data / "train", "--dst", d / "counts")
    demo.cli(d, "merge", "vocab", "merge", "--src", d / "counts", "--dst", d / "total_token_freq.json")
    demo.cli(d, "prune", "vocab", "prune", "--tokenizer", data / "tokenizer", "--counts",
             d / "total_token_freq.json", "--vocab-num", demo.scale.compact_vocab, "--dst", d / "tokenizer",
             "--preset", "tiny")
    for name, tokenizer in (("original", data / "tokenizer"), ("compact", d / "tokenizer")):
        demo.cli(d, f"inspect {name}", "vocab", "inspect", tokenizer, "--text", demo.sample / "valid.jsonl",
                 "--png", d / f"coverage_{name}.png")
    for split in ("train", "valid"):
        demo.cli(d, f"re-tokenize {split}", "data", "tokenize", "--input", demo.sample / f"{split}.jsonl",
                 "--tokenizer", d / "tokenizer", "--dst", d / split)


def step_inherit(demo: Demo, d: Path) -> None:
    vocab = demo.out / "03_vocab"
    target = demo.config(d, "student_target", STUDENT_SHAPE, demo.scale.compact_vocab, 1, 1e-3,
                         vocab / "train", d / "unused")
    demo.cli(d, "inherit", "inherit", "--src", demo.out / "02_teacher" / "ckpt", "--target", target,
             "--dst", d / "student", "--layers", "first-last", "--width", "activation",
             "--calib", vocab / "train", "--calib-tokens", demo.scale.calib_tokens, "--calib-seq-len",
             demo.scale.seq_len, "--token-map", vocab / "tokenizer" / "token_map.json", "--seed", "0")


def _round(demo: Demo, d: Path, name: str, train: Path, start_from: Path | None, inherited: bool) -> None:
    config = demo.config(d, name, STUDENT_SHAPE, demo.scale.compact_vocab, demo.scale.round_steps, 2e-3,
                         train, d / "ckpt", inherit=start_from if inherited else None)
    overrides = []
    if start_from is not None and not inherited:  # continue from the previous round's weights
        overrides.append(f"ckpt.load_ckpt_info=dict(path='local:{start_from}', content=('model',), "
                         f"ckpt_type='internevo')")
        overrides.append("ckpt.auto_resume=False")
    demo.train(d, f"train {name}", config, *overrides)


def last_step(save: Path) -> Path:
    steps = [p for p in save.iterdir() if p.is_dir() and p.name.isdigit()]
    if not steps:
        raise StepFailed(f"{save}: no checkpoint was saved")
    return max(steps, key=lambda p: int(p.name))


def step_random(demo: Demo, d: Path) -> None:
    train = demo.out / "03_vocab" / "train"
    round1, round2 = d / "round1", d / "round2"
    round1.mkdir(), round2.mkdir()
    _round(demo, round1, "random_round1", train, None, inherited=False)
    _round(demo, round2, "random_round2", train, last_step(round1 / "ckpt"), inherited=False)


def step_round1(demo: Demo, d: Path) -> None:
    _round(demo, d, "round1", demo.out / "03_vocab" / "train", demo.out / "04_inherit" / "student", inherited=True)


def step_round2_all(demo: Demo, d: Path) -> None:
    _round(demo, d, "round2_all", demo.out / "03_vocab" / "train", last_step(demo.out / "06_round1" / "ckpt"),
           inherited=False)


def step_resample(demo: Demo, d: Path) -> None:
    round1 = demo.out / "06_round1"
    demo.cli(d, "resample", "resample", "--config", round1 / "round1.py", "--ckpt", last_step(round1 / "ckpt"),
             "--data", demo.out / "03_vocab" / "train", "--ratio", "0.5", "--dst", d / "selected", "--seed", "0")


def step_round2_resampled(demo: Demo, d: Path) -> None:
    _round(demo, d, "round2_resampled", demo.out / "08_resample" / "selected",
           last_step(demo.out / "06_round1" / "ckpt"), inherited=False)


def step_hf(demo: Demo, d: Path) -> None:
    final = last_step(demo.out / "09_round2_resampled" / "ckpt")
    demo.cli(d, "export", "convert", "to-hf", "--src", final, "--dst", d / "hf",
             "--tokenizer", demo.out / "03_vocab" / "tokenizer", "--add-bos-token")
    demo.run(d, "generate with transformers", [sys.executable, "-c", GENERATE, d / "hf", d / "samples.json"])


GENERATE = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, out = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
samples = []
for prompt in ["The Python interpreter", "Life is", "明月", "def "]:
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        new = model.generate(ids, max_new_tokens=24, do_sample=False)[0][ids.shape[1]:]
    text = tok.decode(new, skip_special_tokens=True)
    print(f"{prompt!r} -> {text!r}")
    samples.append({"prompt": prompt, "continuation": text})
json.dump(samples, open(out, "w"), ensure_ascii=False, indent=2)
"""


# (label, checkpoint folder below --out, tokenizer folder below --out)
EVALUATED = [
    ("teacher (original tokenizer)", "02_teacher/ckpt", "01_data/tokenizer"),
    ("student: inherited, before training", "04_inherit/student", "03_vocab/tokenizer"),
    ("student: random init", "05_random/round2/ckpt", "03_vocab/tokenizer"),
    ("student: inherited", "07_round2_all/ckpt", "03_vocab/tokenizer"),
    ("student: inherited + multi-round", "09_round2_resampled/ckpt", "03_vocab/tokenizer"),
]


def step_eval(demo: Demo, d: Path) -> None:
    for index, (label, checkpoint, tokenizer) in enumerate(EVALUATED):
        demo.cli(d, f"eval {label}", "eval", "ppl", "--model", demo.out / checkpoint, "--data",
                 demo.sample / "valid.jsonl", "--tokenizer", demo.out / tokenizer, "--seq-len", demo.scale.seq_len,
                 "--max-docs", demo.scale.eval_docs, "--out", d / f"eval_{index}.json")


STEPS = [("01_data", step_data), ("02_teacher", step_teacher), ("03_vocab", step_vocab),
         ("04_inherit", step_inherit), ("05_random", step_random), ("06_round1", step_round1),
         ("07_round2_all", step_round2_all), ("08_resample", step_resample),
         ("09_round2_resampled", step_round2_resampled), ("10_hf", step_hf), ("11_eval", step_eval)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=Path, default=Path("data/sample"),
                        help="folder with train.jsonl and valid.jsonl (default: data/sample of the current folder)")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--scale", choices=sorted(SCALES), default="demo")
    parser.add_argument("--force", action="store_true", help="redo finished steps")
    args = parser.parse_args(argv)
    missing = [name for name in ("train.jsonl", "valid.jsonl") if not (args.sample / name).is_file()]
    if missing:
        parser.error(f"--sample {args.sample}: no {' or '.join(missing)} there (pass the folder of the demo's corpus)")
    demo = Demo(args.out.resolve(), args.sample.resolve(), SCALES[args.scale], args.force)
    started = time.time()
    try:
        for name, body in STEPS:
            demo.step(name, lambda d, body=body: body(demo, d))
        report = write_report(demo.out, demo.scale, demo.sample / "valid.jsonl", EVALUATED)
    except (StepFailed, UserError) as err:
        print(f"\n[demo] failed: {err}", file=sys.stderr)
        return 1
    print(f"\n[demo] finished in {time.time() - started:.0f} s; report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
