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
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from rethinktiny.errors import UserError
from rethinktiny.resample.packing import (PackedFile, PackedRow, check_type_folder, internevo_bin_files, min_length_for,
                                          pack_order, require_meta)
from rethinktiny.resample.spec import BatchSpec


INDEX_FORMAT = "rethinktiny.resample.index/1"
INDEX_NAME = "index.json"


@dataclass
class FileSummary:
    """One `.bin` file before packing: its kept documents and tokens (from the `.meta` alone)."""

    path: Path
    relpath: str
    num_documents: int
    num_tokens: int


def scan_files(folder: Path, spec: BatchSpec) -> list[FileSummary]:
    """The `.bin` files with at least one kept document, in InternEvo's dataset order."""
    paths = internevo_bin_files(folder)
    if not paths:
        raise UserError(f"{folder}: no .bin files found (expected <folder>/<type>/*.bin)")
    found = []
    for path in paths:
        check_type_folder(folder, path)
        lengths = require_meta(path)[:, 1]
        kept = lengths[lengths >= min_length_for(path, spec)]
        if len(kept):  # InternEvo skips files left empty by min_length
            found.append(FileSummary(path, str(path.relative_to(folder)), len(kept), int(kept.sum())))
    return found


class PackedCorpus:
    """All packed rows of a data folder, numbered as InternEvo's concatenated dataset numbers them.

    `PackedCorpus(folder, spec)` packs every file in memory (16 bytes a document). At scale the
    launcher writes the packing once to an index folder (`write_index`) and every process opens
    it memory-mapped (`PackedCorpus.open_index`), so no process holds the whole corpus.

    Args:
        folder: InternEvo tokenized data folder (`<folder>/<type>/*.bin` + `.bin.meta`).
        spec: packing and batching settings.
    """

    def __init__(self, folder: str | os.PathLike, spec: BatchSpec) -> None:
        folder = Path(folder)
        _require_folder(folder)
        files = [PackedFile.scan(f.path, f.relpath, spec) for f in scan_files(folder, spec)]
        self._setup(folder, spec, files, index=None)

    def _setup(self, folder: Path, spec: BatchSpec, files: list[PackedFile], index: Path | None) -> None:
        self.folder, self.spec, self.files, self.index = folder, spec, files, index
        self.row_starts = np.cumsum([0] + [f.num_rows for f in self.files])
        self.num_rows = int(self.row_starts[-1])

    @classmethod
    def open_index(cls, index: str | os.PathLike) -> "PackedCorpus":
        """The corpus a `write_index` folder describes, its arrays memory-mapped."""
        index = Path(index)
        record = json.loads((index / INDEX_NAME).read_text())
        spec = BatchSpec.from_dict(record["spec"])
        ends, offsets = (np.load(index / name, mmap_mode="r") for name in ("ends.npy", "offsets.npy"))
        folder = Path(record["data"])
        files = [PackedFile(folder / relpath, relpath, spec, ends[start:start + count], offsets[start:start + count])
                 for relpath, start, count in record["files"]]
        corpus = cls.__new__(cls)
        corpus._setup(folder, spec, files, index)
        return corpus

    @property
    def num_tokens(self) -> int:
        return sum(f.num_tokens for f in self.files)

    def batches(self) -> np.ndarray:
        """`batch_rows` of the corpus (memory-mapped from the index when there is one)."""
        if self.index is not None:
            return np.load(self.index / "batches.npy", mmap_mode="r")
        return batch_rows(self.num_rows, self.spec)

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


def _require_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise UserError(f"{folder}: data folder not found")


def _index_identity(folder: Path, spec: BatchSpec, files: list[FileSummary]) -> str:
    """What the packing depends on: the files (size and mtime of data and index) and the spec."""
    stats = []
    for f in files:
        meta = Path(f"{f.path}.meta")
        stats.append([f.relpath, f.path.stat().st_size, f.path.stat().st_mtime_ns, meta.stat().st_mtime_ns])
    text = json.dumps({"data": str(folder.resolve()), "files": stats, "spec": spec.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def write_index(folder: str | os.PathLike, spec: BatchSpec, dst: str | os.PathLike,
                files: list[FileSummary] | None = None) -> PackedCorpus:
    """Pack the corpus once into `dst` (ends.npy, offsets.npy, batches.npy, index.json) and open it.

    One file at a time goes through memory; an index already in `dst` for the same files and
    settings is reused (a resumed run does not pack again).

    Args:
        folder: the data folder.
        spec: packing and batching settings.
        dst: the index folder (written atomically).
        files: `scan_files(folder, spec)` when the caller has it already.
    """
    from rethinktiny.artifacts import write_json

    folder, dst = Path(folder), Path(dst)
    _require_folder(folder)
    files = scan_files(folder, spec) if files is None else files
    identity = _index_identity(folder, spec, files)
    if (dst / INDEX_NAME).is_file() and json.loads((dst / INDEX_NAME).read_text()).get("identity") == identity:
        return PackedCorpus.open_index(dst)
    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    total = sum(f.num_documents for f in files)
    ends = np.lib.format.open_memmap(tmp / "ends.npy", mode="w+", dtype=np.int64, shape=(total,))
    offsets = np.lib.format.open_memmap(tmp / "offsets.npy", mode="w+", dtype=np.int64, shape=(total,))
    entries, start, num_rows = [], 0, 0
    for f in files:
        file_ends, file_offsets = pack_order(require_meta(f.path), min_length_for(f.path, spec))
        ends[start:start + f.num_documents], offsets[start:start + f.num_documents] = file_ends, file_offsets
        entries.append([f.relpath, start, f.num_documents])
        start, num_rows = start + f.num_documents, num_rows + f.num_tokens // spec.packed_length
    ends.flush(), offsets.flush()
    del ends, offsets
    np.save(tmp / "batches.npy", batch_rows(num_rows, spec))
    write_json(tmp / INDEX_NAME, {"format": INDEX_FORMAT, "identity": identity, "data": str(folder),
                                  "spec": spec.to_dict(), "files": entries, "num_rows": num_rows})
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    return PackedCorpus.open_index(dst)


def count_batches(files: list[FileSummary], spec: BatchSpec) -> int:
    """Batches of the corpus, from the `scan_files` summaries alone (nothing packed)."""
    return sum(f.num_tokens // spec.packed_length for f in files) // spec.rows_per_batch


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
    """`corpus.batches()`, with a clear error when not one batch is complete."""
    batches = corpus.batches()
    if len(batches) == 0:
        raise_no_batch(corpus.folder, corpus.num_rows, corpus.num_tokens, corpus.spec)
    return batches


def raise_no_batch(folder: Path, num_rows: int, num_tokens: int, spec: BatchSpec) -> None:
    raise UserError(f"{folder}: {num_rows} packed rows of {spec.packed_length} tokens "
                    f"({num_tokens} tokens) do not fill one batch of {spec.rows_per_batch} rows")
