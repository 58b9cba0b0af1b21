"""The typed functions behind `rethinktiny arch sweep` and `rethinktiny arch config`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rethinktiny.arch.sweep import Row, SweepSpec, build_rows
from rethinktiny.artifacts import check_writable, dumps_json, write_file_atomic
from rethinktiny.config import ModelConfig, internevo_ffn_width
from rethinktiny.errors import UserError


@dataclass(frozen=True)
class MeasureOptions:
    """How to time each row (see `rethinktiny.arch.speed.measure_speed`)."""

    device: str = "cpu"
    dtype: str = "fp32"
    prompt_len: int = 32
    decode_steps: int = 8
    warmup_steps: int = 2
    seed: int = 0
    threads: int | None = None


def run_sweep(spec: SweepSpec, seq_len: int = 2048, kv_dtype: str = "bf16", include_presets: bool = True,
              per_depth: int | None = None, measure: MeasureOptions | None = None,
              plot_path: str | Path | None = None, json_path: str | Path | None = None,
              force: bool = False) -> list[Row]:
    """Enumerate, optionally measure, and write the optional PNG / JSON; returns the rows.

    Args:
        spec: budget, vocabulary and ranges.
        seq_len: sequence length of the FLOPs' attention term.
        kv_dtype: KV-cache element type for bytes per token.
        include_presets: add the matching Pro presets as marked rows.
        per_depth: keep only this many shapes per depth (closest to the budget).
        measure: time every row with random weights (None: analytic costs only).
        plot_path: PNG of speed (or FLOPs) against depth.
        json_path: the rows as JSON.
        force: overwrite existing `plot_path` / `json_path`.
    """
    for path in (plot_path, json_path):
        if path is not None:
            check_writable(path, force)  # before minutes of measuring, not after
    rows = build_rows(spec, seq_len, kv_dtype, include_presets, per_depth)
    if measure is not None:
        from rethinktiny.arch.speed import measure_rows

        measure_rows(rows, measure.device, measure.dtype, measure.prompt_len, measure.decode_steps,
                     measure.warmup_steps, measure.seed, measure.threads)
    if plot_path is not None:
        from rethinktiny.arch.plot import write_plot

        where = f", measured on {measure.device} ({measure.dtype})" if measure else ""
        title = f"{spec.params / 1e9:.2f}B parameters, vocab {spec.vocab_size}{where}"
        write_plot(rows, plot_path, title, force=True)
    if json_path is not None:
        payload = {"spec": {**spec.__dict__, "seq_len": seq_len, "kv_dtype": kv_dtype},
                   "measure": measure.__dict__ if measure else None,
                   "rows": [row.to_dict() for row in rows]}
        write_file_atomic(json_path, dumps_json(payload), force=True)
    return rows


def row_config(hidden: int, layers: int, heads: int, vocab: int, expansion: float | None = None,
               ffn: int | None = None, kv_heads: int | None = None,
               tie_embeddings: bool = False) -> ModelConfig:
    """The ModelConfig of one chosen row; the FFN width comes from `ffn` or InternEvo's rounding
    of `hidden * expansion` (exactly one of them).

    Args:
        hidden, layers, heads, vocab: the shape (`hidden` must be divisible by `heads`).
        expansion: InternEvo `mlp_ratio`.
        ffn: explicit FFN width instead of `expansion`.
        kv_heads: key/value heads (default: `heads`).
        tie_embeddings: share embedding and head.
    """
    if (expansion is None) == (ffn is None):
        raise UserError("give exactly one of --expansion and --ffn")
    if expansion is not None and not expansion > 0:
        raise UserError(f"--expansion must be positive, got {expansion}")
    for flag, value in (("--hidden", hidden), ("--heads", heads)):
        if value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    if hidden % heads:
        raise UserError(f"--hidden {hidden} is not divisible by --heads {heads}")
    width = ffn if ffn is not None else internevo_ffn_width(hidden, expansion)
    return ModelConfig(hidden_size=hidden, num_layers=layers, num_attention_heads=heads,
                       num_kv_heads=kv_heads or heads, intermediate_size=width, vocab_size=vocab,
                       tie_embeddings=tie_embeddings, name=f"l{layers}_h{hidden}_f{width}")


def render_row_config(cfg: ModelConfig, command: str | None = None) -> str:
    """The complete, commented InternEvo config file for `cfg` (the template of
    `rethinktiny config export`), with the row's name as job name.

    Args:
        cfg: the chosen shape.
        command: the command line, recorded in the file's header.
    """
    from rethinktiny.configfiles.export import TrainOptions, render_config

    return render_config(cfg, TrainOptions(job_name=cfg.name), command)
