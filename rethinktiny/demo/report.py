"""`outputs/demo/report.md`: what the demo measured, with the plots a person wants to look at."""

from __future__ import annotations

import json
from pathlib import Path

from rethinktiny.artifacts import write_file_atomic

# The demo's step folders below --out, in the order it runs them (rethinktiny.demo.pipeline's STEPS).
DATA, TEACHER, VOCAB, INHERIT, RANDOM, MULTIROUND, EXPORT, EVAL, DISTILL = (
    "01_data", "02_teacher", "03_vocab", "04_inherit", "05_random", "06_multiround", "07_export", "08_eval",
    "09_distill")
# What `rethinktiny multiround --work 06_multiround` leaves there: each round's checkpoints, and the
# resampled batches (with the scores' manifest.json and losses.png) that round 2 trains on.
ROUND1_CKPT, ROUND2_CKPT, SELECTED = (f"{MULTIROUND}/round1/ckpt", f"{MULTIROUND}/round2/ckpt",
                                      f"{MULTIROUND}/round2/data")

# (label, [round folders whose train_metrics.jsonl follow each other])
CURVES = [
    ("random init", [f"{RANDOM}/ckpt"]),
    ("inherited + multi-round", [ROUND1_CKPT, ROUND2_CKPT]),
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


def _smooth(values: list[float], window: int = 3) -> list[float]:
    return [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
            for i in range(len(values))]


def plot_loss_curves(out: Path, png: Path, student_step0_loss: float | None) -> None:
    """Train loss (3-step mean) of the two students, the inherited one's held-out loss before training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, rounds in CURVES:
        tokens, losses = curve(out, rounds)
        ax.plot(tokens, _smooth(losses), label=f"{label}: train")
    if student_step0_loss is not None:
        ax.axhline(student_step0_loss, color="tab:orange", linestyle=":", linewidth=1,
                   label="inherited student before training (held-out)")
    boundary = curve(out, CURVES[1][1][:1])[0]
    if boundary:
        ax.axvline(boundary[-1], color="grey", linestyle=":", label="round 2 starts (on the resampled, harder batches)")
    ax.set(xlabel="training tokens", ylabel="loss (nats/token, compact vocabulary)",
           title="Students of the teacher (same tokens each)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def eval_rows(out: Path, evaluated: list[tuple[str, str]]) -> list[tuple[str, dict]]:
    """(label, eval ppl result) of the teacher and every evaluated student present."""
    rows = [("teacher", _json(out / TEACHER / "eval.json"))]
    rows += [(label, _json(out / EVAL / f"eval_{i}.json")) for i, (label, _) in enumerate(evaluated)]
    return [(label, r) for label, r in rows if r]


def _params(out: Path) -> dict[str, int]:
    report = _json(out / INHERIT / "student" / "inherit_report.json").get("parameters", {})
    return {"teacher": report.get("source"), "student": report.get("target")}


def eval_table(out: Path, evaluated: list[tuple[str, str]]) -> list[str]:
    params = _params(out)
    rows = ["| model | parameters | bits/byte | loss (nats/token) | tokens | bytes |", "|---|---:|---:|---:|---:|---:|"]
    for label, r in eval_rows(out, evaluated):
        n = params["teacher" if label == "teacher" else "student"]
        size = f"{n / 1e6:.1f}M" if n else ""
        rows.append(f"| {label} | {size} | **{r['bits_per_byte']:.3f}** | {r['loss']:.3f} | {r['tokens']:,} | "
                    f"{r['bytes']:,} |")
    return rows


def samples_table(out: Path) -> list[str]:
    """Greedy continuations, one row per prompt, one column per model (teacher first)."""
    teacher = _json(out / TEACHER / "samples.json")
    students = _json(out / EXPORT / "samples.json")
    models = {**teacher.get("models", {}), **students.get("models", {})}
    prompts = students.get("prompts") or teacher.get("prompts") or []
    if not models:
        return ["(no samples)"]

    def cell(text: str) -> str:
        return "`" + text.replace("|", "\\|").replace("\n", "⏎").replace("`", "'") + "`" if text else "(empty)"

    rows = ["| prompt | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for i, prompt in enumerate(prompts):
        rows.append(f"| {cell(prompt)} | " + " | ".join(cell(texts[i]) for texts in models.values()) + " |")
    return rows


def _first_losses(out: Path) -> list[str]:
    lines = []
    for label, rounds in CURVES:
        tokens, losses = curve(out, rounds)
        if losses:
            lines.append(f"- {label}: first-step train loss {losses[0]:.3f}, last {losses[-1]:.3f} "
                         f"after {tokens[-1]:,} tokens")
    return lines


def _inherit_summary(report: dict) -> str:
    layers = report.get("layers", {})
    params = report.get("parameters", {})
    target = report.get("target", {})
    text = (f"Student {target.get('num_layers', '?')} layers x {target.get('hidden_size', '?')} (FFN "
            f"{target.get('intermediate_size', '?')}, {target.get('num_attention_heads', '?')}/"
            f"{target.get('num_kv_heads', '?')} heads, vocabulary {target.get('vocab_size', '?'):,}): "
            f"{params.get('target', 0) / 1e6:.1f}M of the teacher's {params.get('source', 0) / 1e6:.1f}M parameters "
            f"({100 * params.get('kept_fraction', 0):.0f}%). Teacher layers kept ({layers.get('strategy', '?')}): "
            f"{layers.get('kept', '?')}. Width metric: {report.get('width', {}).get('metric', '?')}.")
    return text


def _prune_summary(report: dict) -> list[str]:
    if not report:
        return ["(no pruning report)"]
    coverage = report.get("coverage", {})
    lines = [f"- {report.get('old_vocab_size', 0):,} → {report.get('new_vocab_size', 0):,} ids; the sample uses "
             f"{coverage.get('seen_ids', 0):,} distinct ids; kept pieces cover "
             f"**{100 * coverage.get('token_coverage', 0):.2f}%** of its {coverage.get('counted_tokens', 0):,} tokens"]
    if "unreachable_tokens" in report:
        merged = report.get("merged_tokens", {})
        lines.append(f"- {report['unreachable_tokens']} unreachable pieces; {merged.get('kept_for_frequency', 0):,} "
                     f"merged pieces kept for frequency, {merged.get('kept_for_merge_paths', 0):,} for the merge "
                     f"paths that build them; {report.get('merges', {}).get('kept', 0):,} of "
                     f"{report.get('merges', {}).get('original', 0):,} merges kept")
    return lines


def distill_section(out: Path) -> list[str]:
    """The 09_distill step's comparison: CE + KD against the CE round 1, same start and tokens."""
    comparison = _json(out / DISTILL / "comparison.json")
    if not comparison:
        return ["(no distillation comparison)"]
    ce, kd = comparison["ce"], comparison["ce_kd"]
    rows = ["| round 1 from the inherited student | held-out bits/byte | tokens/s (median step) | last kd_loss | "
            "teacher_mass |", "|---|---:|---:|---:|---:|"]
    for label, arm in (("CE (the demo's round 1)", ce), ("CE + KD (online teacher, weights 1 + 1)", kd)):
        figures = [f"{arm[key]:.3f}" if arm.get(key) is not None else "" for key in ("kd_loss", "teacher_mass")]
        rows.append(f"| {label} | **{arm['bits_per_byte']:.3f}** | {arm['tokens_per_s']:,.0f} | "
                    + " | ".join(figures) + " |")
    delta, ratio = kd["bits_per_byte"] - ce["bits_per_byte"], comparison["step_time_ratio"]
    return [
        f"Both runs start from the inherited student and train {comparison['tokens']:,} tokens on the same batches "
        "in the same order (same data seed) at the same LR; only the loss differs.",
        "",
        *rows,
        "",
        f"CE + KD − CE: **{delta:+.3f} bits/byte** at equal tokens; a CE + KD step took **{ratio:.2f}×** a CE step "
        f"here (the teacher's forward), so in CE + KD's time CE trains {ratio:.2f}× the tokens. The demo's rounds "
        "train with CE: `bench/distill.py` (paired seeds, docs/distillation.md) finds CE at equal wall-clock "
        "better than CE + KD on this machine. One seed, one short run: a single measurement.",
    ]


def _rounds_table(out: Path) -> list[str]:
    """multiround's own per-round table, from the summary.json it wrote."""
    from rethinktiny.resample.multiround import RoundResult, summary_table

    summary = out / MULTIROUND / "summary.json"
    if not summary.exists():
        return ["(no multiround summary)"]
    return [summary_table([RoundResult(**row) for row in json.loads(summary.read_text())])]


def write_report(out: Path, scale, evaluated: list[tuple[str, str]], exported: list[tuple[str, str]],
                 teacher: str, seconds: dict[str, float]) -> Path:
    """Write `out/report.md` (and its PNGs next to it) from the finished steps.

    Args:
        out: the demo's output folder.
        scale: the demo's `Scale` (steps, documents scored).
        evaluated: the eval step's (label, checkpoint) rows, in its eval_<i>.json order.
        exported: the export step's (label, checkpoint) rows.
        teacher: the teacher's HF folder, or "self".
        seconds: wall-clock seconds of each step, as its manifest recorded them.
    """
    inherit_report = _json(out / INHERIT / "student" / "inherit_report.json")
    before = _json(out / EVAL / "eval_0.json")
    plot_loss_curves(out, out / "loss_curves.png", before.get("loss"))
    prune_report = _json(out / VOCAB / "tokenizer" / "report.json")
    resample_manifest = _json(out / SELECTED / "manifest.json")
    importance_png = out / INHERIT / "student" / "layer_importance.png"
    gguf = _json(out / EXPORT / "gguf" / "manifest.json")
    coverage_pngs = [p for p in (f"{VOCAB}/coverage_original.png", f"{VOCAB}/coverage_compact.png") if (out / p).exists()]
    parts = [
        "# rethinktiny demo report",
        "",
        f"Teacher: `{teacher}`. The paper's recipe on the bundled English+Chinese sample: compact tokenizer, "
        f"parameter inheritance, multi-round training ({scale.round_steps} steps a round, sequence length "
        f"{scale.seq_len}, micro batch {scale.micro_bsz}, 2 CPU ranks of InternEvo's trainer). Every student "
        "variant trains the same number of tokens. Each step's folder holds the exact commands it ran "
        f"(`manifest.json`) and their output (`log.txt`). Steps took {sum(seconds.values()):.0f} s in all ("
        + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items()) + ").",
        "",
        f"## Held-out bits per byte (`rethinktiny eval ppl`, {scale.eval_docs} documents: every k-th of valid.jsonl)",
        "",
        *eval_table(out, evaluated),
        "",
        "Bits per byte compare models with different tokenizers (the teacher's 49k ids, the students' compact "
        "vocabulary); nats per token compare only the students.",
        "",
        f"## Greedy samples (transformers `generate`, {scale.sample_tokens} new tokens)",
        "",
        *samples_table(out),
        "",
        "## Training loss",
        "",
        "![loss curves](loss_curves.png)",
        "",
        *_first_losses(out),
        "",
        "## Parameter inheritance (`rethinktiny inherit`)",
        "",
        _inherit_summary(inherit_report),
        "",
        f"![layer importance]({importance_png.relative_to(out)})" if importance_png.exists() else "(no layer plot)",
        "",
        "## Compact tokenizer (`rethinktiny vocab count | merge | prune`)",
        "",
        *_prune_summary(prune_report),
        "",
        *(["| original | compact |", "|---|---|", "| " + " | ".join(f"![{p}]({p})" for p in coverage_pngs) + " |", ""]
          if coverage_pngs else []),
        "## Multi-round training (`rethinktiny multiround`)",
        "",
        "```",
        *_rounds_table(out),
        "```",
        "",
        "Round 2's draw (`rethinktiny resample`, run by multiround):",
        "",
        "```json",
        json.dumps(resample_manifest.get("summary", {}), indent=2, ensure_ascii=False)[:1500],
        "```",
        "",
        f"![losses of all and selected batches]({SELECTED}/losses.png)",
        "",
        "## Distillation from the teacher (`distill` section of the training config)",
        "",
        *distill_section(out),
        "",
        "## Exports",
        "",
        *[f"- {label}: Hugging Face folder `{EXPORT}/hf_{i}` (`convert to-hf`)" for i, (label, _) in enumerate(exported)],
        f"- {exported[0][0]}: GGUF `{EXPORT}/gguf/model.gguf` (`convert to-gguf`"
        + (f", {gguf.get('args', {}).get('outtype', 'f16')}" if gguf else "") + "), read back by transformers for "
        "the samples above",
        "",
    ]
    path = out / "report.md"
    write_file_atomic(path, "\n".join(parts))
    return path
