"""How a tokenizer does on a text: tokens per character, vocabulary coverage, and the coverage curve.

The curve is the one the paper used to pick 48k: encode the text, sort the pieces by how often
they were used, and plot the share of all tokens covered by the k most used pieces against k.
A flat tail means pieces that cost embedding rows and buy almost nothing on this text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from rethinktiny.errors import UserError

MARKED_SIZES = (8000, 16000, 32000, 48000)
COVERAGE_LEVELS = (0.9, 0.95, 0.99, 0.999)


def read_texts(path: str | os.PathLike, text_key: str = "text") -> list[str]:
    """Texts of a `.jsonl` file (field `text_key`) or of a plain text file (one per line).

    Args:
        path: the file.
        text_key: jsonl field holding the text.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: text file not found")
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            lines = f.read().splitlines()
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not UTF-8 text ({err})") from None
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            texts.append(json.loads(line)[text_key])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{path}:{number}: malformed jsonl line ({type(err).__name__}: {err})") from None
    return texts


def coverage_curve(counts: np.ndarray) -> np.ndarray:
    """Share of all tokens covered by the k most used pieces, for k = 1 .. len(counts)."""
    ordered = np.sort(counts)[::-1].astype(np.float64)
    total = ordered.sum()
    return np.cumsum(ordered) / total if total else np.zeros_like(ordered)


def inspect_counts(counts: np.ndarray, characters: int) -> dict:
    """Summary figures from the per-piece token counts of a text.

    Args:
        counts: token count per piece id (length = vocabulary size).
        characters: characters in the text.
    """
    curve = coverage_curve(counts)
    tokens = int(counts.sum())
    return {
        "vocab_size": int(len(counts)), "characters": characters, "tokens": tokens,
        "tokens_per_character": tokens / characters if characters else None,
        "pieces_used": int(np.count_nonzero(counts)),
        "vocab_coverage": float(np.count_nonzero(counts) / len(counts)),
        "pieces_for_token_coverage": {f"{level:g}": int(np.searchsorted(curve, level) + 1)
                                      for level in COVERAGE_LEVELS if tokens},
        "token_coverage_at": {str(size): float(curve[min(size, len(curve)) - 1])
                              for size in MARKED_SIZES if tokens and size < len(curve)},
    }


def plot_coverage(counts: np.ndarray, png: str | os.PathLike, title: str) -> Path:
    """Write the coverage-vs-vocabulary-size PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = coverage_curve(counts)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(np.arange(1, len(curve) + 1), curve * 100, color="tab:blue")
    for size in MARKED_SIZES:
        if size < len(curve):
            ax.axvline(size, color="grey", lw=0.6, ls=":")
            ax.annotate(f"{size // 1000}k: {curve[size - 1] * 100:.2f}%", (size, curve[size - 1] * 100),
                        textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("vocabulary size (most used pieces kept)")
    ax.set_ylabel("tokens covered (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = Path(png)
    tmp = png.with_name(f".{png.name}.partial.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, png)
    return png


def inspect_tokenizer(tokenizer: str | os.PathLike, text: str | os.PathLike, png: str | os.PathLike | None = None,
                      text_key: str = "text", force: bool = False) -> dict:
    """Encode `text` with `tokenizer`; return the figures and write the coverage PNG.

    Args:
        tokenizer: SentencePiece model file or folder with `tokenizer.model`.
        text: `.jsonl` (field `text_key`) or plain text file.
        png: where to write the coverage plot (None: no plot).
        text_key: jsonl field with the text.
        force: overwrite an existing `png`.
    """
    from rethinktiny.artifacts import check_writable
    from rethinktiny.vocab.spmodel import load_model_proto, processor_from_proto, resolve_model_path

    if png is not None:
        check_writable(png, force)
    source = resolve_model_path(tokenizer)
    processor = processor_from_proto(load_model_proto(source))
    texts = read_texts(text, text_key)
    if not texts:
        raise UserError(f"{text}: no text to encode")
    encoded = processor.encode(texts)
    ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in encoded]) if encoded else np.zeros(0, np.int64)
    counts = np.bincount(ids, minlength=processor.get_piece_size()).astype(np.int64)
    summary = inspect_counts(counts, sum(len(t) for t in texts))
    if png is not None:
        plot_coverage(counts, png, f"{Path(tokenizer).name} on {Path(text).name}")
        summary["png"] = str(png)
    return summary
