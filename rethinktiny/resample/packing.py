"""InternEvo's packed training rows, rebuilt without InternEvo (0.4.x `packed_dataset.py`).

InternEvo's loader treats every `.bin` file as its own dataset: documents shorter than
`min_length` are dropped, the rest are shuffled with a fixed seed (1024), laid end to end and cut
into rows of `packed_length` tokens (a document may continue in the next row). The files are
concatenated in the order `os.walk` lists them (InternEvo sorts the file names of a folder but,
because it materialises the walk before sorting, not the sub-folders: their order is the file
system's), and its batch sampler draws rows from that concatenation.

A row is a list of *fragments* (document, start, stop). From them we rebuild exactly what
InternEvo's collate hands the model: tokens, labels, `cu_seqlens` and `indexes`
(tests/unit/test_resample_batches.py compares every row with InternEvo's own classes).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rethinktiny.data.tokenized import BIN_SUFFIX
from rethinktiny.errors import UserError
from rethinktiny.resample.spec import BatchSpec

PACK_SEED = 1024  # InternEvo's PackedDataset fixes its document shuffle to this seed
IGNORE = -100


@dataclass
class PackedRow:
    """One packed row as InternEvo's collate builds it (labels already shifted and masked)."""

    tokens: np.ndarray  # int64 [packed_length]
    labels: np.ndarray  # int64 [packed_length], IGNORE where no prediction is trained
    cu_seqlens: np.ndarray  # int32 [pieces + 1]
    indexes: np.ndarray  # int64 [packed_length], position inside each piece


def internevo_bin_files(folder: Path) -> list[Path]:
    """The `.bin` files in InternEvo's dataset order (walk order, file names sorted)."""
    found = []
    for root, _dirs, files in list(os.walk(folder, followlinks=True)):
        found.extend(Path(root) / name for name in sorted(files) if name.endswith(BIN_SUFFIX))
    return found


def check_type_folder(folder: Path, path: Path) -> None:
    """InternEvo asserts that exactly one top-level entry names the file's data type."""
    keys = sorted(os.listdir(folder))
    matches = [key for key in keys if re.search(rf"/[z_]*{re.escape(key)}/", str(path))]
    if len(matches) != 1:
        raise UserError(f"{path}: InternEvo needs each .bin file inside exactly one data-type sub-folder of "
                        f"{folder} (<folder>/<type>/*.bin); matching type names: {matches}")


def require_meta(path: Path) -> np.ndarray:
    """The `.bin.meta` index of `path`, memory-mapped (a corpus's indexes may not fit in memory)."""
    meta_path = Path(f"{path}.meta")
    if not meta_path.exists():
        raise UserError(f"{meta_path}: index file missing (InternEvo's loader needs it)")
    meta = np.load(meta_path, mmap_mode="r")
    if meta.ndim != 2 or meta.shape[1] != 2:
        raise UserError(f"{meta_path}: expected an array of shape [lines, 2], got {meta.shape}")
    return meta


def min_length_for(path: Path, spec: BatchSpec) -> int:
    if not spec.min_length_dict:
        return spec.min_length
    hits = [(key, value) for key, value in spec.min_length_dict.items() if key in str(path)]
    if len(hits) > 1:
        raise UserError(f"{path}: matches several data.min_length_dict keys: {[k for k, _ in hits]}")
    return hits[0][1] if hits else spec.min_length


def pack_order(meta: np.ndarray, min_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ends, offsets) of a file's kept documents in InternEvo's pack order: `ends[p]` is the
    token count up to and including the p-th packed document, `offsets[p]` its byte offset.

    Args:
        meta: the `.bin.meta` index ([lines, 2]: byte offset, tokens).
        min_length: documents shorter than this are dropped.
    """
    keep = meta[:, 1] >= min_length if min_length > 0 else slice(None)
    offsets, lengths = meta[keep, 0], meta[keep, 1]
    order = np.arange(len(lengths))
    np.random.RandomState(PACK_SEED).shuffle(order)
    return np.cumsum(lengths[order], dtype=np.int64), offsets[order].astype(np.int64)


class PackedFile:
    """The packed rows of one `.bin` file.

    Documents are numbered by *position*: their place in the pack order. The two arrays are all a
    reader needs (16 bytes a document); they may be memory-mapped views of the corpus index.

    Args:
        path: the `.bin` file.
        relpath: path relative to the data folder (where a copy is written).
        spec: packing settings.
        ends, offsets: `pack_order` of the file.
    """

    def __init__(self, path: Path, relpath: str, spec: BatchSpec, ends: np.ndarray, offsets: np.ndarray) -> None:
        self.path, self.relpath, self.spec = path, relpath, spec
        self.ends, self.offsets = ends, offsets
        self.num_tokens = int(ends[-1]) if len(ends) else 0
        self.num_rows = self.num_tokens // spec.packed_length

    @classmethod
    def scan(cls, path: Path, relpath: str, spec: BatchSpec) -> "PackedFile":
        """Read the file's `.bin.meta` index and pack it in memory."""
        return cls(path, relpath, spec, *pack_order(require_meta(path), min_length_for(path, spec)))

    @property
    def num_documents(self) -> int:
        return len(self.ends)

    def _span(self, position: int) -> tuple[int, int]:
        """(first token, end) of the packed document at `position` in the file's token stream."""
        return int(self.ends[position - 1]) if position else 0, int(self.ends[position])

    def fragments(self, row: int) -> list[tuple[int, int, int]]:
        """(position, start, stop) pieces of `row`, in order."""
        start, stop = row * self.spec.packed_length, (row + 1) * self.spec.packed_length
        first = int(np.searchsorted(self.ends, start, side="right"))
        last = int(np.searchsorted(self.ends, stop, side="left"))
        pieces = []
        for position in range(first, last + 1):
            begin, end = self._span(position)
            a, b = max(start - begin, 0), min(stop - begin, end - begin)
            if b > a:  # InternEvo fails on empty documents; we simply have nothing to add
                pieces.append((position, a, b))
        return pieces

    def line_number(self, position: int) -> int:
        """1-based line of the document at `position` (for error messages: reads the .meta again)."""
        return int(np.searchsorted(require_meta(self.path)[:, 0], self.offsets[position])) + 1

    def read_document(self, position: int, handle) -> list[int]:
        """Tokens of the document at `position`, checked against the `.meta` length."""
        handle.seek(int(self.offsets[position]))
        line = handle.readline()
        begin, end = self._span(position)
        try:
            tokens = json.loads(line)["tokens"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{self.path}:{self.line_number(position)}: not a {{\"tokens\": [...]}} line "
                            f"at the offset the .meta index gives") from None
        if len(tokens) != end - begin:
            raise UserError(f"{self.path}:{self.line_number(position)}: {len(tokens)} tokens but the .meta "
                            f"index says {end - begin}")
        return tokens

    def build_row(self, row: int, handle) -> PackedRow:
        """The row exactly as InternEvo's dataset + `packed_collate_fn` produce it."""
        pieces = [(doc, a, b, self.read_document(doc, handle)) for doc, a, b in self.fragments(row)]
        return assemble_row(pieces, self.spec)


def _piece_lengths(length: int, seq_len: int) -> list[int]:
    full, left = divmod(length, seq_len)
    return [seq_len] * full + ([left] if left else [])


def assemble_row(pieces: list[tuple[int, int, int, list[int]]], spec: BatchSpec) -> PackedRow:
    """tokens/labels/cu_seqlens/indexes of a row from its fragments (InternEvo's rules).

    Cut mode (`PackedDatasetWithCut`): each fragment is split into pieces of at most seq_len that
    attend separately; the last token of a fragment predicts nothing, except in the row's last
    fragment when its document continues in the next row. Fixed-slot mode
    (`PackedDatasetWithoutCuSeqlen`): micro_bsz pieces of seq_len, no continuation label.
    """
    tokens, labels, cu_seqlens, indexes = [], [], [0], []
    for number, (_doc, a, b, doc_tokens) in enumerate(pieces):
        chunk = doc_tokens[a:b]
        tokens.extend(chunk)
        continues = number == len(pieces) - 1 and b < len(doc_tokens) and not spec.pack_sample_into_one
        labels.extend(chunk[1:] + [doc_tokens[b] if continues else IGNORE])
        if not spec.pack_sample_into_one:
            for length in _piece_lengths(len(chunk), spec.seq_len):
                cu_seqlens.append(cu_seqlens[-1] + length)
                indexes.extend(range(length))
    if spec.pack_sample_into_one:
        cu_seqlens = [i * spec.seq_len for i in range(spec.micro_bsz + 1)]
        indexes = list(range(spec.seq_len)) * spec.micro_bsz
    token_array = np.abs(np.asarray(tokens, dtype=np.int64))
    label_array = np.asarray(labels, dtype=np.int64)
    # InternEvo's collate trains only on labels > 0: token id 0 is never a target.
    label_array[label_array <= 0] = IGNORE
    return PackedRow(token_array, label_array, np.asarray(cu_seqlens, dtype=np.int32),
                     np.asarray(indexes, dtype=np.int64))
