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

from rethinktiny.data.tokenized import BIN_SUFFIX, read_meta
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


def _min_length_for(path: Path, spec: BatchSpec) -> int:
    if not spec.min_length_dict:
        return spec.min_length
    hits = [(key, value) for key, value in spec.min_length_dict.items() if key in str(path)]
    if len(hits) > 1:
        raise UserError(f"{path}: matches several data.min_length_dict keys: {[k for k, _ in hits]}")
    return hits[0][1] if hits else spec.min_length


class PackedFile:
    """The packed rows of one `.bin` file.

    Args:
        path: the `.bin` file (its `.bin.meta` index must exist).
        relpath: path relative to the data folder (where a copy is written).
        spec: packing settings.
    """

    def __init__(self, path: Path, relpath: str, spec: BatchSpec) -> None:
        meta = read_meta(path)
        if meta is None:
            raise UserError(f"{path}.meta: index file missing (InternEvo's loader needs it)")
        self.path, self.relpath, self.spec = path, relpath, spec
        min_length = _min_length_for(path, spec)
        keep = meta[:, 1] >= min_length if min_length > 0 else np.ones(len(meta), dtype=bool)
        self.line_numbers = np.nonzero(keep)[0]  # 0-based line of each kept document
        self.offsets = meta[keep, 0].astype(np.int64)
        self.lengths = meta[keep, 1].astype(np.int64)
        self.order = np.arange(len(self.lengths))
        np.random.RandomState(PACK_SEED).shuffle(self.order)
        self.ends = np.cumsum(self.lengths[self.order])
        self.num_tokens = int(self.ends[-1]) if len(self.ends) else 0
        self.num_rows = self.num_tokens // spec.packed_length

    @property
    def num_documents(self) -> int:
        return len(self.lengths)

    def fragments(self, row: int) -> list[tuple[int, int, int]]:
        """(document, start, stop) pieces of `row`, in order; `document` indexes kept documents."""
        start, stop = row * self.spec.packed_length, (row + 1) * self.spec.packed_length
        first = int(np.searchsorted(self.ends, start, side="right"))
        last = int(np.searchsorted(self.ends, stop, side="left"))
        pieces = []
        for position in range(first, last + 1):
            doc = int(self.order[position])
            begin = int(self.ends[position] - self.lengths[doc])
            a, b = max(start - begin, 0), min(stop - begin, int(self.lengths[doc]))
            if b > a:  # InternEvo fails on empty documents; we simply have nothing to add
                pieces.append((doc, a, b))
        return pieces

    def read_document(self, doc: int, handle) -> list[int]:
        """Tokens of kept document `doc`, checked against the `.meta` length."""
        handle.seek(int(self.offsets[doc]))
        line = handle.readline()
        try:
            tokens = json.loads(line)["tokens"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{self.path}:{self.line_numbers[doc] + 1}: not a {{\"tokens\": [...]}} line "
                            f"at the offset the .meta index gives") from None
        if len(tokens) != self.lengths[doc]:
            raise UserError(f"{self.path}:{self.line_numbers[doc] + 1}: {len(tokens)} tokens but the .meta "
                            f"index says {self.lengths[doc]}")
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
