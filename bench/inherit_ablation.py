"""Miniature reproduction of the paper's parameter-inheritance ablation, on CPU.

1. Train a SentencePiece tokenizer (2,000 pieces) on the bundled sample and tokenize it into
   InternEvo's format (train split = training and calibration data, valid split = held out).
2. Train a teacher (default 6 layers x 384, 6 heads of 64, FFN 1024) with the pure-torch model and
   a plain AdamW loop.
3. Inherit a student (default 3 layers x 192, 3 heads, FFN 512) with `rethinktiny.inherit.apply.inherit`
   for every width metric (layers first-last) and every layer strategy (width l2), plus a
   random-init student.
4. Train every student on the same batches in the same order and report held-out loss right after
   inheritance (step 0) and after training.

    python bench/inherit_ablation.py [--teacher-steps 600] [--student-steps 300] [--seeds 0]
    python bench/inherit_ablation.py --reuse-work outputs/inherit_ablation/work --seeds 1 2 --out ...

Writes results.json and loss_curves.png to --out (default outputs/inherit_ablation/).
The paper's ordering (random < L1 < L2 < Taylor < learnable) is what this measures, not assumes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rethinktiny.checkpoint import load_model, save_model_only  # noqa: E402
from rethinktiny.config import ModelConfig  # noqa: E402
from rethinktiny.data.prepare import tokenize_corpus, train_tokenizer  # noqa: E402
from rethinktiny.data.tokenized import find_bin_files, iter_documents  # noqa: E402
from rethinktiny.inherit.apply import inherit  # noqa: E402
from rethinktiny.inherit.importance import CALIBRATED_METRICS  # noqa: E402
from rethinktiny.model import PanGuPi  # noqa: E402

WIDTH_VARIANTS = ("random", "l1", "l2", "activation", "taylor", "learnable")
LAYER_VARIANTS = ("uniform", "block-influence", "0,1,2", "2,3,4")


def token_stream(folder: Path) -> torch.Tensor:
    tokens: list[int] = []
    for path in find_bin_files(folder):
        for doc in iter_documents(path):
            tokens.extend(doc)
    return torch.tensor(tokens, dtype=torch.long)


def prepare_data(work: Path, vocab: int) -> tuple[Path, torch.Tensor, torch.Tensor]:
    # 2,000 pieces cannot cover every Chinese character of the sample; the rest uses byte fallback.
    tokenizer = train_tokenizer(REPO / "data/sample/train.jsonl", work / "tokenizer", vocab_size=vocab,
                                character_coverage=0.995)
    tokenize_corpus(REPO / "data/sample/train.jsonl", tokenizer, work / "train")
    tokenize_corpus(REPO / "data/sample/valid.jsonl", tokenizer, work / "valid")
    return work / "train", token_stream(work / "train"), token_stream(work / "valid")


def batches(stream: torch.Tensor, steps: int, rows: int, seq: int, seed: int) -> list[torch.Tensor]:
    """The same training batches (random windows of the stream) for every model trained with `seed`."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq - 1, (steps, rows), generator=gen)
    return [torch.stack([stream[s:s + seq + 1] for s in step.tolist()]) for step in starts]


def held_out(stream: torch.Tensor, rows: int, seq: int) -> torch.Tensor:
    usable = min(rows, (len(stream) - 1) // (seq + 1))
    return stream[:usable * (seq + 1)].view(usable, seq + 1)


def loss_of(model: PanGuPi, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model: PanGuPi, valid: torch.Tensor, rows: int = 16) -> float:
    model.eval()
    total = sum(float(loss_of(model, valid[i:i + rows])) * len(valid[i:i + rows]) for i in range(0, len(valid), rows))
    model.train()
    return total / len(valid)


def train(model: PanGuPi, data: list[torch.Tensor], valid: torch.Tensor, lr: float, label: str,
          eval_every: int) -> list[tuple[int, float]]:
    """AdamW, linear warmup then cosine to 10%; returns (step, held-out loss) points."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, len(data) // 20)
    schedule = lambda s: (s + 1) / warmup if s < warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / max(1, len(data) - warmup)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    curve = [(0, evaluate(model, valid))]
    start = time.perf_counter()
    for step, batch in enumerate(data, start=1):
        loss = loss_of(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if step % eval_every == 0 or step == len(data):
            curve.append((step, evaluate(model, valid)))
            print(f"  [{label}] step {step}/{len(data)} train {float(loss):.3f} held-out {curve[-1][1]:.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return curve


def student_variants() -> list[tuple[str, str | None, str | None]]:
    """(label, width metric, layer strategy); None, None = random init."""
    variants = [("random init", None, None)]
    variants += [(f"width {w} / layers first-last", w, "first-last") for w in WIDTH_VARIANTS]
    variants += [(f"width l2 / layers {lay}", "l2", lay) for lay in LAYER_VARIANTS]
    return variants


def run_students(args, work: Path, teacher_dir: Path, train_dir: Path, train_stream, valid) -> dict:
    student = ModelConfig(hidden_size=args.student_hidden, num_layers=args.student_layers,
                          num_attention_heads=args.student_hidden // 64, num_kv_heads=args.student_hidden // 64,
                          intermediate_size=args.student_ffn, vocab_size=args.vocab, name="student")
    results = {}
    for seed in args.seeds:
        data = batches(train_stream, args.student_steps, args.rows, args.seq, seed=1000 + seed)
        for label, width, layers in student_variants():
            torch.manual_seed(seed)
            if width is None:
                model = PanGuPi(student)
            else:
                dst = work / "students" / f"{label.replace(' ', '_').replace('/', '')}-{seed}"
                # Calibration only where the method needs it (it also adds a block-influence pass).
                needs_calib = width in CALIBRATED_METRICS or layers == "block-influence"
                inherit(teacher_dir, student, dst, layers=layers, width=width,
                        calib=train_dir if needs_calib else None,
                        calib_tokens=args.calib_tokens, calib_seq_len=args.seq, seed=seed, force=True,
                        learn_steps=args.learn_steps)
                model = load_model(dst)
            curve = train(model, data, valid, args.lr, f"{label} seed {seed}", args.eval_every)
            results.setdefault(label, []).append(curve)
    return results


def print_table(results: dict, teacher_loss: float) -> None:
    print(f"\nteacher held-out loss: {teacher_loss:.4f}")
    print("\n| student (3 layers x 192) | held-out loss at step 0 | held-out loss after training |")
    print("|---|---|---|")
    for label, curves in results.items():
        start = sum(c[0][1] for c in curves) / len(curves)
        end = sum(c[-1][1] for c in curves) / len(curves)
        spread = f" (seeds: {', '.join(f'{c[-1][1]:.3f}' for c in curves)})" if len(curves) > 1 else ""
        print(f"| {label} | {start:.3f} | {end:.3f}{spread} |")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # eleven variants: the default cycle repeats
    for label, curves in results.items():
        steps = [s for s, _ in curves[0]]
        mean = [sum(c[i][1] for c in curves) / len(curves) for i in range(len(steps))]
        ax.plot(steps[1:], mean[1:], label=label, linestyle="--" if label == "random init" else "-")
    ax.set_xlabel("student training step")
    ax.set_ylabel("held-out loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def train_teacher(args, train_stream: torch.Tensor, valid: torch.Tensor, folder: Path) -> list[tuple[int, float]]:
    cfg = ModelConfig(hidden_size=args.teacher_hidden, num_layers=args.teacher_layers,
                      num_attention_heads=args.teacher_hidden // 64, num_kv_heads=args.teacher_hidden // 64,
                      intermediate_size=args.teacher_ffn, vocab_size=args.vocab, name="teacher")
    torch.manual_seed(0)
    teacher = PanGuPi(cfg)
    curve = train(teacher, batches(train_stream, args.teacher_steps, args.rows, args.seq, seed=7), valid,
                  args.lr, "teacher", args.eval_every)
    save_model_only(folder, teacher.state_dict(), cfg)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "outputs" / "inherit_ablation"))
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--teacher-layers", type=int, default=6)
    parser.add_argument("--teacher-hidden", type=int, default=384)
    parser.add_argument("--teacher-ffn", type=int, default=1024)
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--student-layers", type=int, default=3)
    parser.add_argument("--student-hidden", type=int, default=192)
    parser.add_argument("--student-ffn", type=int, default=512)
    parser.add_argument("--student-steps", type=int, default=300)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--calib-tokens", type=int, default=8192)
    parser.add_argument("--learn-steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--reuse-work", default=None,
                        help="work folder of an earlier run: reuse its tokenized data and trained teacher")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.reuse_work:  # data, tokenizer and teacher of an earlier run (more seeds, less time)
        work = Path(args.reuse_work)
        train_dir, train_stream, valid_stream = work / "train", token_stream(work / "train"), token_stream(work / "valid")
    else:
        work = out / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        train_dir, train_stream, valid_stream = prepare_data(work, args.vocab)
    valid = held_out(valid_stream, 64, args.seq)
    print(f"data: {len(train_stream)} training tokens, {valid.numel()} held-out tokens", flush=True)
    if args.reuse_work:
        teacher_curve = [(args.teacher_steps, evaluate(load_model(work / "teacher"), valid))]
    else:
        teacher_curve = train_teacher(args, train_stream, valid, work / "teacher")

    results = run_students(args, work, work / "teacher", train_dir, train_stream, valid)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "teacher": teacher_curve, "students": results},
                                                 indent=1))
    print_table(results, teacher_curve[-1][1])
    plot(results, out / "loss_curves.png")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; wrote {out / 'results.json'} and {out / 'loss_curves.png'}")


if __name__ == "__main__":
    main()
