"""Calibration batches for activation, Taylor, learnable and block-influence scores.

Documents are drawn in a seeded random order from an InternEvo tokenized folder (seeking to each
document through the `.bin.meta` index, so a large dataset is never read whole), concatenated and
cut into rows of `seq_len` tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from rethinktiny.data.tokenized import iter_documents, parse_tokens, read_meta, require_bin_files
from rethinktiny.errors import UserError


@dataclass
class Calibration:
    """Token rows [sequences, seq_len] in the *source* vocabulary, and where they came from."""

    ids: torch.Tensor
    folder: str
    documents: int

    def describe(self) -> dict:
        return {"folder": self.folder, "sequences": self.ids.shape[0], "seq_len": self.ids.shape[1],
                "tokens": self.ids.numel(), "documents": self.documents}


def _document_index(files: list[Path]) -> list[tuple[Path, int | None, int]]:
    """(file, byte offset or None, line number) per document; offsets from .bin.meta when present."""
    index = []
    for path in files:
        meta = read_meta(path)
        if meta is not None:
            index.extend((path, int(offset), line) for line, offset in enumerate(meta[:, 0].tolist(), start=1))
        else:  # no index: remember line numbers, read sequentially later
            index.extend((path, None, line) for line, _ in enumerate(iter_documents(path), start=1))
    return index


def _read_document(path: Path, offset: int | None, line: int) -> list[int]:
    with open(path, "rb") as f:
        if offset is not None:
            f.seek(offset)
            raw = f.readline()
        else:
            for _ in range(line):
                raw = f.readline()
    try:
        return parse_tokens(raw)
    except ValueError as err:
        raise UserError(f"{path}:{line}: malformed line ({err})") from None


def calibration_batches(folder: str | Path, num_tokens: int, seq_len: int, seed: int, source_vocab: int,
                        token_map: torch.Tensor | None = None) -> Calibration:
    """Rows of calibration tokens.

    Args:
        folder: InternEvo tokenized folder (`<folder>/<type>/*.bin`).
        num_tokens: tokens wanted (rounded down to whole rows; fewer when the folder is smaller).
        seq_len: tokens per row.
        seed: document order.
        source_vocab: ids must be below this (after mapping).
        token_map: when given, the data is in the target vocabulary and id i becomes token_map[i].
    """
    if num_tokens < seq_len or seq_len < 2:
        raise UserError(f"--calib-tokens {num_tokens} must be at least --calib-seq-len {seq_len} (>= 2)")
    index = _document_index(require_bin_files(folder))
    random.Random(seed).shuffle(index)
    wanted = (num_tokens // seq_len) * seq_len
    stream: list[int] = []
    used = 0
    for path, offset, line in index:
        if len(stream) >= wanted:
            break
        stream.extend(_read_document(path, offset, line))
        used += 1
    rows = min(len(stream), wanted) // seq_len
    if rows == 0:
        raise UserError(f"{folder}: only {len(stream)} calibration tokens, fewer than one row of {seq_len}")
    ids = torch.tensor(stream[:rows * seq_len], dtype=torch.long).view(rows, seq_len)
    ids = _to_source_ids(ids, folder, source_vocab, token_map)
    return Calibration(ids, str(folder), used)


def _to_source_ids(ids: torch.Tensor, folder: str | Path, source_vocab: int,
                   token_map: torch.Tensor | None) -> torch.Tensor:
    limit = source_vocab if token_map is None else len(token_map)
    bad = ids[(ids < 0) | (ids >= limit)]
    if bad.numel():
        what = "the source vocabulary" if token_map is None else "the token map (data must use the new tokenizer)"
        raise UserError(f"{folder}: calibration token id {int(bad[0])} is outside {what} of size {limit}")
    return ids if token_map is None else token_map[ids]
