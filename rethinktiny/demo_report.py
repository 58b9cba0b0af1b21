"""`outputs/demo/report.md`: what the demo measured, with the plots a person wants to look at."""

from __future__ import annotations

import json
from pathlib import Path

from rethinktiny.artifacts import write_file_atomic

# (label, [round folders whose train_metrics.jsonl follow each other])
CURVES = [
    ("random init", ["05_random/round1/ckpt", "05_random/round2/ckpt"]),
    ("inherited", ["06_round1/ckpt", "07_round2_all/ckpt"]),
    ("inherited + multi-round", ["06_round1/ckpt", "09_round2_resampled/ckpt"]),
]


def read_metrics(folder: Path) -> list[dict]:
    path = folder / "train_metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def curve(out: Path, rounds: list[str]) -> tuple[list[int], list[float]]:
    """Tokens seen and loss per step across consecutive rounds (each round restarts its counter)."""
    tokens, losses, offset = [], [], 0
    for folder in rounds:
        rows = read_metrics(out / folder)
        tokens += [offset + r["tokens"] for r in rows]
        losses += [r["loss"] for r in rows]
        offset += rows[-1]["tokens"] if rows else 0
    return tokens, losses


def _smooth(values: list[float], window: int = 5) -> list[float]:
    return [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
            for i in range(len(values))]


def plot_loss_curves(out: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, rounds in CURVES:
        tokens, losses = curve(out, rounds)
        left.plot(tokens, _smooth(losses), label=label)
    boundary = curve(out, CURVES[1][1][:1])[0]
    if boundary:
        left.axvline(boundary[-1], color="grey", linestyle=":", label="round 2 starts")
    left.set(xlabel="training tokens", ylabel="train loss (5-step mean)", title="Tiny PanGu-π Pro student")
    left.legend()
    tokens, losses = curve(out, ["02_teacher/ckpt"])
    right.plot(tokens, _smooth(losses), color="black")
    right.set(xlabel="training tokens", ylabel="train loss (5-step mean)",
              title="PanGu-π teacher (original tokenizer)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _characters(valid: Path, max_docs: int) -> int:
    lines = [line for line in valid.read_text(encoding="utf-8").splitlines() if line.strip()][:max_docs]
    return sum(len(json.loads(line)["text"]) for line in lines)


def eval_table(out: Path, characters: int, evaluated: list[tuple[str, str, str]]) -> list[str]:
    rows = ["| model | held-out loss (nats/token) | perplexity | tokens | nats/character |", "|---|---|---|---|---|"]
    for index, (label, _, _) in enumerate(evaluated):
        path = out / "11_eval" / f"eval_{index}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        rows.append(f"| {label} | {r['loss']:.4f} | {r['perplexity']:.1f} | {r['tokens']:,} | "
                    f"{r['loss'] * r['tokens'] / characters:.4f} |")
    return rows


def _json(path: Path) -> dict | list:
    return json.loads(path.read_text()) if path.exists() else {}


def _first_losses(out: Path) -> list[str]:
    lines = []
    for label, rounds in CURVES[:2]:
        rows = read_metrics(out / rounds[0])
        if rows:
            lines.append(f"- {label}: first-step loss {rows[0]['loss']:.3f}, last round-1 loss {rows[-1]['loss']:.3f}")
    return lines


def _inherit_summary(report: dict) -> str:
    layers = report.get("layers", {})
    influence = layers.get("block_influence")
    text = f"Teacher layers kept ({layers.get('strategy', '?')}): {layers.get('kept', '?')}"
    if influence:
        text += "; block influence of each teacher layer: " + ", ".join(f"{v:.3f}" for v in influence)
    return text + f". Width metric: {report.get('width', {}).get('metric', report.get('width', '?'))}."


def write_report(out: Path, scale, valid: Path, evaluated: list[tuple[str, str, str]]) -> Path:
    """Write `out/report.md` (and its PNGs next to it) from the finished steps.

    Args:
        out: the demo's output folder.
        scale: the demo's `Scale` (steps, vocabulary sizes, documents scored).
        valid: the held-out jsonl file the eval step scored (for the nats/character column).
        evaluated: the eval step's (label, checkpoint, tokenizer) rows, in its eval_<i>.json order.
    """
    plot_loss_curves(out, out / "loss_curves.png")
    characters = _characters(valid, scale.eval_docs)
    prune_report = _json(out / "03_vocab" / "tokenizer" / "report.json")
    inherit_report = _json(out / "04_inherit" / "student" / "inherit_report.json")
    resample_manifest = _json(out / "08_resample" / "selected" / "manifest.json")
    samples = _json(out / "10_hf" / "samples.json") or []
    importance_png = next(iter(sorted((out / "04_inherit" / "student").glob("*.png"))), None)
    parts = [
        "# rethinktiny demo report",
        "",
        f"The paper's recipe in miniature on the bundled English+Chinese sample ({scale.round_steps} steps a "
        f"round, {scale.teacher_steps} teacher steps, sequence length {scale.seq_len}, 2 CPU ranks). "
        "Every student variant trains the same number of tokens. Each step's folder holds the exact "
        "commands it ran (`manifest.json`) and their output (`log.txt`).",
        "",
        "## Held-out evaluation (`rethinktiny eval ppl`, data/sample/valid.jsonl)",
        "",
        *eval_table(out, characters, evaluated),
        "",
        "Per-token figures compare only models with the same tokenizer (the students); nats per character "
        "compare across tokenizers.",
        "",
        "## Training loss",
        "",
        "![loss curves](loss_curves.png)",
        "",
        *_first_losses(out),
        "",
        "## Compact tokenizer (`rethinktiny vocab count | merge | prune`)",
        "",
        f"{scale.original_vocab:,} → {scale.compact_vocab:,} pieces. Pruning report: "
        f"`03_vocab/tokenizer/report.json`.",
        "",
        "```json",
        json.dumps({k: v for k, v in prune_report.items() if not isinstance(v, (list, dict)) or k in (
            "kept_by_type", "coverage", "embedding_share")}, indent=2, ensure_ascii=False)[:2000],
        "```",
        "",
        "| original | compact |",
        "|---|---|",
        "| ![original](03_vocab/coverage_original.png) | ![compact](03_vocab/coverage_compact.png) |",
        "",
        "## Parameter inheritance (`rethinktiny inherit`)",
        "",
        _inherit_summary(inherit_report),
        "",
        f"![layer importance]({importance_png.relative_to(out)})" if importance_png else "(no layer plot)",
        "",
        "## Multi-round training (`rethinktiny resample`)",
        "",
        "```json",
        json.dumps({k: v for k, v in resample_manifest.items() if k not in ("versions", "inputs")}, indent=2,
                   ensure_ascii=False)[:1500],
        "```",
        "",
        "![losses of all and selected batches](08_resample/selected/losses.png)",
        "",
        "## Hugging Face export (`rethinktiny convert to-hf`), greedy samples from transformers",
        "",
        *[f"- `{s['prompt']}` → `{s['continuation']}`" for s in samples],
        "",
    ]
    path = out / "report.md"
    write_file_atomic(path, "\n".join(parts))
    return path
