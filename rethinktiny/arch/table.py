"""Plain-text rendering of sweep rows (fixed-width columns, one shape per line)."""

from __future__ import annotations

from rethinktiny.arch.sweep import Row, display_expansion

PRESET_LABELS = {"pangu_pi_1b_pro": "1B Pro", "pangu_pi_1.5b_pro": "1.5B Pro"}


def _columns(measured: bool) -> list[tuple[str, str]]:
    """(header, format key) pairs; the key names a field of `_cells`."""
    columns = [
        ("preset", "preset"), ("layers", "layers"), ("hidden", "hidden"), ("heads", "heads"),
        ("ffn", "ffn"), ("expansion", "expansion"), ("params M", "params"), ("vs budget", "deviation"),
        ("emb+head", "share"), ("non-emb M", "non_embedding"), ("train GFLOP/tok", "flops"),
        ("KV KiB/tok", "kv"),
    ]
    if measured:
        columns += [("prefill tok/s", "prefill"), ("decode tok/s", "decode")]
    return columns


def _cells(row: Row) -> dict[str, str]:
    cfg = row.cfg
    heads = str(cfg.num_attention_heads)
    if cfg.num_kv_heads != cfg.num_attention_heads:  # GQA: query/key-value heads
        heads += f"/{cfg.num_kv_heads}"
    speed = {key: "-" if value is None else f"{value:.1f}"
             for key, value in (("prefill", row.prefill_tokens_per_s), ("decode", row.decode_tokens_per_s))}
    return {
        "preset": PRESET_LABELS.get(row.preset, row.preset), "layers": str(cfg.num_layers),
        "hidden": str(cfg.hidden_size), "heads": heads, "ffn": str(cfg.intermediate_size),
        "expansion": f"{display_expansion(cfg):.3f}", "params": f"{row.params / 1e6:.1f}",
        "deviation": f"{100 * row.budget_deviation:+.1f}%", "share": f"{100 * cfg.embedding_share():.1f}%",
        "non_embedding": f"{cfg.non_embedding_params() / 1e6:.1f}",
        "flops": f"{row.train_flops_per_token / 1e9:.2f}", "kv": f"{row.kv_bytes_per_token / 1024:.1f}",
        **speed,
    }


def format_table(rows: list[Row]) -> str:
    """The sweep table: a header line and one line per row, columns right-aligned."""
    measured = any(row.decode_tokens_per_s is not None for row in rows)
    columns = _columns(measured)
    body = [[_cells(row)[key] for _, key in columns] for row in rows]
    widths = [max(len(header), *(len(line[i]) for line in body)) for i, (header, _) in enumerate(columns)]
    lines = ["  ".join(header.rjust(width) for (header, _), width in zip(columns, widths))]
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in body]
    return "\n".join(lines)
