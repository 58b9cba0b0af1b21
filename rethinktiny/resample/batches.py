"""Every training batch of a data folder, in the order InternEvo's batch sampler draws them.

`PackedCorpus` concatenates the packed rows of all `.bin` files (InternEvo's `ConcatDataset`).
InternEvo's `StaticBatchSampler` shuffles the row numbers once with `RandomState(data.seed)` and
drops the tail that does not fill a whole step; rank r of W then takes every W-th row, micro_num
at a time. So the rows of optimizer step k over all W ranks are the contiguous block
`order[k*micro_num*W : (k+1)*micro_num*W]`, and rank r's share is `block[r::W]`. Batch k here is
that block with W = `spec.batch_ranks`: `batch_rows(...)[k]`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from rethinktiny.errors import UserError
from rethinktiny.resample.packing import PackedFile, PackedRow, check_type_folder, internevo_bin_files
from rethinktiny.resample.spec import BatchSpec


class PackedCorpus:
    """All packed rows of a data folder, numbered as InternEvo's concatenated dataset numbers them.

    Args:
        folder: InternEvo tokenized data folder (`<folder>/<type>/*.bin` + `.bin.meta`).
        spec: packing and batching settings.
    """

    def __init__(self, folder: str | os.PathLike, spec: BatchSpec) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UserError(f"{self.folder}: data folder not found")
        self.spec = spec
        paths = internevo_bin_files(self.folder)
        if not paths:
            raise UserError(f"{self.folder}: no .bin files found (expected <folder>/<type>/*.bin)")
        self.files: list[PackedFile] = []
        for path in paths:
            check_type_folder(self.folder, path)
            packed = PackedFile(path, str(path.relative_to(self.folder)), spec)
            if packed.num_documents:  # InternEvo skips files left empty by min_length
                self.files.append(packed)
        self.row_starts = np.cumsum([0] + [f.num_rows for f in self.files])
        self.num_rows = int(self.row_starts[-1])

    @property
    def num_tokens(self) -> int:
        return sum(f.num_tokens for f in self.files)

    def locate(self, row: int) -> tuple[int, int]:
        """(file index, row inside that file) of global row `row`."""
        if not 0 <= row < self.num_rows:
            raise IndexError(f"row {row} outside 0..{self.num_rows - 1}")
        index = int(np.searchsorted(self.row_starts, row, side="right")) - 1
        return index, row - int(self.row_starts[index])

    def file_rows(self) -> list[tuple[str, int]]:
        """(relative path, packed rows) of every file, in dataset order: the selection records
        this so a loader can check it reads the same rows."""
        return [(f.relpath, f.num_rows) for f in self.files]


class RowReader:
    """Reads packed rows, keeping one open handle per file (a batch touches many files)."""

    def __init__(self, corpus: PackedCorpus) -> None:
        self.corpus = corpus
        self._handles = contextlib.ExitStack()
        self._open: dict[int, object] = {}

    def _handle(self, index: int):
        if index not in self._open:
            self._open[index] = self._handles.enter_context(open(self.corpus.files[index].path, "rb"))
        return self._open[index]

    def row(self, row: int) -> PackedRow:
        index, local = self.corpus.locate(row)
        return self.corpus.files[index].build_row(local, self._handle(index))

    def documents(self, row: int) -> Iterator[tuple[int, list[int]]]:
        """(file index, fragment tokens) for each document fragment of `row`."""
        index, local = self.corpus.locate(row)
        packed = self.corpus.files[index]
        for doc, a, b in packed.fragments(local):
            yield index, packed.read_document(doc, self._handle(index))[a:b]

    def close(self) -> None:
        self._handles.close()

    def __enter__(self) -> "RowReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def batch_rows(num_rows: int, spec: BatchSpec) -> np.ndarray:
    """[num_batches, rows_per_batch] global row numbers of every batch (InternEvo's draw order).

    Args:
        num_rows: packed rows in the corpus.
        spec: batching settings (seed, micro_num, batch_ranks).
    """
    order = np.arange(num_rows)
    np.random.RandomState(spec.seed).shuffle(order)
    per_batch = spec.rows_per_batch
    usable = num_rows // per_batch * per_batch  # InternEvo drops the incomplete last step
    return order[:usable].astype(np.int64).reshape(-1, per_batch)


def require_batches(corpus: PackedCorpus) -> np.ndarray:
    """`batch_rows` of the corpus, with a clear error when not one batch is complete."""
    batches = batch_rows(corpus.num_rows, corpus.spec)
    if len(batches) == 0:
        spec = corpus.spec
        raise UserError(f"{corpus.folder}: {corpus.num_rows} packed rows of {spec.packed_length} tokens "
                        f"({corpus.num_tokens} tokens) do not fill one batch of {spec.rows_per_batch} rows")
    return batches
