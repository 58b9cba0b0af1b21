"""PNG of a sweep against depth: measured speed when there is one, else the analytic costs."""

from __future__ import annotations

import io
from pathlib import Path

from rethinktiny.arch.sweep import Row, display_expansion
from rethinktiny.arch.table import PRESET_LABELS
from rethinktiny.artifacts import write_file_atomic


def _panels(rows: list[Row]) -> list[tuple[str, list[float]]]:
    """(y-axis label, one value per row) for each panel."""
    if any(row.decode_tokens_per_s is not None for row in rows):
        return [("decode tokens/s (batch 1)", [row.decode_tokens_per_s or float("nan") for row in rows]),
                ("prefill tokens/s", [row.prefill_tokens_per_s or float("nan") for row in rows])]
    return [("training GFLOPs per token", [row.train_flops_per_token / 1e9 for row in rows]),
            ("training FLOPs per token / parameter",
             [row.train_flops_per_token / row.params for row in rows])]


def render_plot(rows: list[Row], title: str) -> bytes:
    """PNG bytes: each panel plots its value against depth, coloured by FFN expansion,
    presets drawn as labelled stars.

    Args:
        rows: sweep rows (measured or not).
        title: figure title (budget, vocabulary, device).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    panels = _panels(rows)
    depths = [row.cfg.num_layers for row in rows]
    expansions = [display_expansion(row.cfg) for row in rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (label, values) in zip(axes[0], panels):
        points = ax.scatter(depths, values, c=expansions, cmap="viridis", s=28)
        for row, depth, value in zip(rows, depths, values):
            if row.preset:
                ax.scatter([depth], [value], marker="*", s=220, facecolors="none", edgecolors="red")
                ax.annotate(PRESET_LABELS.get(row.preset, row.preset), (depth, value),
                            textcoords="offset points", xytext=(6, 6), color="red")
        ax.set_xlabel("layers")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.colorbar(points, ax=axes[0].tolist(), label="FFN expansion (ffn / hidden)")
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def write_plot(rows: list[Row], path: str | Path, title: str, force: bool = False) -> Path:
    """Render and write the PNG atomically; an existing file is refused unless `force`."""
    return write_file_atomic(path, render_plot(rows, title), force=force)
