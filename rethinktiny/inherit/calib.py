"""Calibration batches for activation, Taylor, learnable and block-influence scores.

Documents are drawn in a seeded random order from an InternEvo tokenized folder (seeking to each
document through the `.bin.meta` index, so a large dataset is never read whole), or from a jsonl text
file tokenized with the source model's own tokenizer (`rethinktiny.tokenizer`, each document framed
as `data tokenize` frames it, only as many documents as the rows need), concatenated and cut into
rows of `seq_len` tokens.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from rethinktiny.data.tokenized import iter_documents, parse_tokens, read_meta, require_bin_files
from rethinktiny.errors import UserError

TEXT_SUFFIXES = (".jsonl",)
# Text documents encoded per call into the tokenizer (one native batch, few wasted when rows fill).
TEXT_BATCH = 64


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
                        token_map: torch.Tensor | None = None,
                        tokenizer: str | os.PathLike | None = None) -> Calibration:
    """Rows of calibration tokens.

    Args:
        folder: InternEvo tokenized folder (`<folder>/<type>/*.bin`), or a jsonl text file (a
            `text` field per line) tokenized with `tokenizer`.
        num_tokens: tokens wanted (rounded down to whole rows; fewer when the folder is smaller).
        seq_len: tokens per row.
        seed: document order.
        source_vocab: ids must be below this (after mapping).
        token_map: when given, tokenized data is in the target vocabulary and id i becomes
            token_map[i]; text is tokenized with the source's tokenizer, so it is never mapped.
        tokenizer: the source model's tokenizer (SentencePiece model or HF tokenizer folder), for text.
    """
    if num_tokens < seq_len or seq_len < 2:
        raise UserError(f"--calib-tokens {num_tokens} must be at least --calib-seq-len {seq_len} (>= 2)")
    wanted = (num_tokens // seq_len) * seq_len
    if is_text_calibration(folder):
        documents = _text_documents(Path(folder), tokenizer, seed, source_vocab)
        token_map = None
    else:
        documents = _tokenized_documents(folder, seed)
    stream: list[int] = []
    used = 0
    for document in documents:
        if len(stream) >= wanted:
            break
        stream.extend(document)
        used += 1
    rows = min(len(stream), wanted) // seq_len
    if rows == 0:
        raise UserError(f"{folder}: only {len(stream)} calibration tokens, fewer than one row of {seq_len}")
    ids = torch.tensor(stream[:rows * seq_len], dtype=torch.long).view(rows, seq_len)
    ids = _to_source_ids(ids, folder, source_vocab, token_map)
    return Calibration(ids, str(folder), used)


def is_text_calibration(path: str | Path) -> bool:
    """A jsonl text file (tokenized here) rather than an InternEvo tokenized folder."""
    return Path(path).suffix in TEXT_SUFFIXES and not Path(path).is_dir()


def _tokenized_documents(folder: str | Path, seed: int) -> Iterator[list[int]]:
    index = _document_index(require_bin_files(folder))
    random.Random(seed).shuffle(index)
    for path, offset, line in index:
        yield _read_document(path, offset, line)


def _text_documents(path: Path, tokenizer: str | os.PathLike | None, seed: int,
                    source_vocab: int) -> Iterator[list[int]]:
    """Framed documents of a jsonl file in a seeded order, encoded TEXT_BATCH at a time."""
    from rethinktiny.data.prepare import iter_jsonl_texts
    from rethinktiny.tokenizer import load_tokenizer

    if tokenizer is None:
        raise UserError(f"{path}: text calibration needs the source model's tokenizer and none is next to "
                        f"the source; pass --calib-tokenizer (or tokenize it with data tokenize)")
    loaded = load_tokenizer(tokenizer)
    loaded.check_fits(source_vocab, what="the source's vocab_size")
    texts = [text for _, text in iter_jsonl_texts(path, "text", None)]
    if not texts:
        raise UserError(f"{path}: no documents")
    random.Random(seed).shuffle(texts)
    for start in range(0, len(texts), TEXT_BATCH):
        for ids in loaded.encode_batch(texts[start:start + TEXT_BATCH]):
            yield loaded.frame(ids)


def _to_source_ids(ids: torch.Tensor, folder: str | Path, source_vocab: int,
                   token_map: torch.Tensor | None) -> torch.Tensor:
    limit = source_vocab if token_map is None else len(token_map)
    bad = ids[(ids < 0) | (ids >= limit)]
    if bad.numel():
        what = "the source vocabulary" if token_map is None else "the token map (data must use the new tokenizer)"
        raise UserError(f"{folder}: calibration token id {int(bad[0])} is outside {what} of size {limit}")
    return ids if token_map is None else token_map[ids]
