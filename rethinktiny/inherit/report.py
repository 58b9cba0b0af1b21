"""`inherit_report.json` (kept layers, kept indices, scores) and the layer-importance PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from rethinktiny.artifacts import write_json
from rethinktiny.inherit.importance import WidthScores
from rethinktiny.inherit.prune import KeepPlan

REPORT_FORMAT = "rethinktiny.inherit_report.v1"
REPORT_FILE = "inherit_report.json"
PLOT_FILE = "layer_importance.png"


def rounded(values: torch.Tensor | Sequence[float]) -> list[float]:
    """Scores with 6 significant digits: readable, and equal inputs give equal bytes."""
    values = values.tolist() if isinstance(values, torch.Tensor) else list(values)
    return [float(f"{v:.6g}") for v in values]


def _layer_entry(plan_layer, scores: WidthScores) -> dict[str, Any]:
    i = plan_layer.source_layer
    entry = {
        "source_layer": i,
        "kept_heads": plan_layer.heads.tolist(),
        "kept_kv_heads": plan_layer.kv_heads.tolist(),
        "kept_ffn": plan_layer.ffn.tolist(),
        "head_scores": rounded(scores.heads[i]) if i in scores.heads else None,
        "kv_head_scores": rounded(scores.kv_heads[i]) if i in scores.kv_heads else None,
        "ffn_scores": rounded(scores.ffn[i]) if i in scores.ffn else None,
    }
    if plan_layer.shortcut_dims:
        entry["kept_shortcut_dims"] = [d.tolist() for d in plan_layer.shortcut_dims]
    return entry


def build_report(plan: KeepPlan, scores: WidthScores, layer_strategy: str, influence: list[float] | None,
                 source_info: dict[str, Any], calibration: dict[str, Any] | None,
                 token_map: str | None) -> dict[str, Any]:
    """The report body (no timestamps, so equal inputs give equal bytes)."""
    return {
        "format": REPORT_FORMAT,
        "source": source_info,
        "target": plan.target.to_dict(),
        "parameters": {"source": plan.source.num_params(), "target": plan.target.num_params(),
                       "kept_fraction": round(plan.target.num_params() / plan.source.num_params(), 6)},
        "layers": {"strategy": layer_strategy, "kept": [lk.source_layer for lk in plan.layers],
                   "block_influence": rounded(influence) if influence is not None else None},
        "width": {"metric": scores.metric, "kept_hidden": plan.hidden.tolist(),
                  "hidden_scores": rounded(scores.hidden),
                  "layers": [_layer_entry(lk, scores) for lk in plan.layers],
                  **{k: v for k, v in scores.extra.items()}},
        "vocab": {"token_map": token_map, "rows": plan.target.vocab_size,
                  "new_to_old_first": plan.vocab[:16].tolist() if plan.vocab is not None else None},
        "calibration": calibration,
        "notes": plan.notes,
    }


def write_report(folder: Path, report: dict[str, Any]) -> Path:
    return write_json(folder / REPORT_FILE, report)


def needs_log_scale(values: Sequence[float]) -> bool:
    """True when the largest positive value is over 5x their median (one layer dominates)."""
    positive = sorted(v for v in values if v > 0)
    return bool(positive) and positive[-1] > 5 * positive[len(positive) // 2]


def plot_layer_importance(path: Path, num_layers: int, kept: list[int], influence: list[float] | None,
                          title: str) -> Path:
    """Bar chart of block influence per source layer, kept layers highlighted and numbered, or,
    without calibration data, which layers were kept.

    Real models have one layer far above the rest (SmolLM2-135M: 0.96 for layer 0, 0.02-0.18 for
    the others), which flattens a linear axis; the axis is logarithmic when the largest value is
    more than 5x the median, so every bar stays readable, and each bar carries its value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    kept_set = set(kept)
    heights = influence if influence is not None else [1.0 if i in kept_set else 0.2 for i in range(num_layers)]
    colors = ["tab:blue" if i in kept_set else "lightgray" for i in range(num_layers)]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * num_layers), 3.8))
    bars = ax.bar(range(num_layers), heights, color=colors, edgecolor=["navy" if i in kept_set else "gray"
                                                                         for i in range(num_layers)])
    ax.set_xticks(range(num_layers))
    ax.tick_params(axis="x", labelsize=7)
    for i in kept_set:  # kept layers are also marked below the axis, readable without colour
        ax.get_xticklabels()[i].set_fontweight("bold")
        ax.get_xticklabels()[i].set_color("tab:blue")
    ax.set_xlabel(f"source layer ({len(kept_set)} of {num_layers} kept: blue, bold)")
    if influence is not None:
        positive = sorted(v for v in influence if v > 0)
        log = needs_log_scale(influence)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(positive[0] / 2, positive[-1] * 3)
        ax.set_ylabel("block influence (1 - cos)" + (", log scale" if log else ""))
        for bar, value in zip(bars, influence):
            ax.annotate(f"{value:.2g}", (bar.get_x() + bar.get_width() / 2, max(value, positive[0] if positive else 0)),
                        ha="center", va="bottom", fontsize=6, rotation=90, xytext=(0, 2), textcoords="offset points")
        ax.legend(handles=[Patch(color="tab:blue", label="kept"), Patch(color="lightgray", label="dropped")],
                  fontsize=7, loc="upper right")
    else:
        ax.set_yticks([])
        ax.set_ylabel("kept")
        title += " (no calibration data: block influence not measured)"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path
