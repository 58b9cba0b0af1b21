"""Training on chosen batches straight from the original data (no copy): which rows each step reads.

A `rethinktiny resample` folder records the chosen batch numbers (`selected.npy`) and how batches
were formed (`selection.json`: batch settings and the packed rows of every data file). Given the
same data folder, `RoundSchedule` lists the rows of every optimizer step for one data-parallel
rank, as InternEvo's batch sampler would hand them out:
- an epoch is the chosen batches' rows, concatenated: in batch order in epoch 0 (itself a random
  order), in a reshuffled batch order (`RandomState(seed + epoch)`) in later epochs;
- step k of W ranks reads the block `rows[k*micro_num*W : (k+1)*micro_num*W]` and rank r its
  every W-th row (InternEvo's interleaving), so with W = the batch's `batch_ranks` every step
  is exactly one chosen batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rethinktiny.errors import UserError
from rethinktiny.resample.batches import batch_rows
from rethinktiny.resample.spec import BatchSpec
from rethinktiny.resample.writer import SELECTION_FORMAT


@dataclass
class SelectedBatches:
    """A resample folder's selection, checked (format, digest, range)."""

    folder: Path
    selected: np.ndarray
    spec: BatchSpec
    files: list[tuple[str, int]]
    num_rows: int
    num_batches: int
    sha256: str

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SelectedBatches":
        """From `<folder>/selected.npy` (or the folder) and the `selection.json` beside it."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        npy, record_path = (path / "selected.npy" if path.is_dir() else path), folder / "selection.json"
        for needed in (npy, record_path):
            if not needed.is_file():
                raise UserError(f"{needed}: not found (data.selected_batches must name a `rethinktiny resample` "
                                f"output's selected.npy)")
        raw = npy.read_bytes()
        record = json.loads(record_path.read_text())
        if record.get("format") != SELECTION_FORMAT:
            raise UserError(f"{record_path}: format {record.get('format')!r}, expected {SELECTION_FORMAT!r}")
        if hashlib.sha256(raw).hexdigest() != record["selected_sha256"]:
            raise UserError(f"{npy}: does not match {record_path} (selected_sha256 differs)")
        selected = np.load(npy, allow_pickle=False).astype(np.int64)
        if len(selected) == 0 or selected.min() < 0 or selected.max() >= record["num_batches"]:
            raise UserError(f"{npy}: batch numbers must lie in 0..{record['num_batches'] - 1}")
        return cls(folder, selected, BatchSpec.from_dict(record["spec"]), [tuple(f) for f in record["files"]],
                   int(record["num_rows"]), int(record["num_batches"]), record["selected_sha256"])

    def check_files(self, files: list[tuple[str, int]], source: str) -> None:
        """The loader's files and packed rows must be those the batches were numbered on."""
        if [tuple(f) for f in files] == self.files:
            return
        mine, theirs = dict(self.files), dict(files)
        for relpath in [*mine, *theirs]:
            if mine.get(relpath) != theirs.get(relpath):
                raise UserError(f"{source}: {relpath} has {theirs.get(relpath)} packed rows, but the selection in "
                                f"{self.folder} was made on {mine.get(relpath)}; score this data again")
        raise UserError(f"{source}: the data files are listed in another order than when {self.folder} was made "
                        f"(InternEvo orders sub-folders as the file system lists them); score this data again")

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """All rows of one epoch over the chosen batches, in reading order."""
        order = self.selected.copy()
        if epoch > 0:
            np.random.RandomState(self.spec.seed + epoch).shuffle(order)
        return batch_rows(self.num_rows, self.spec)[order].reshape(-1)


class RoundSchedule:
    """The rows one data-parallel rank reads at each optimizer step.

    Args:
        selection: the chosen batches.
        micro_num: packed rows per rank per step (the training config's data.micro_num).
        rank, world: this rank and the data-parallel size of the training run.
    """

    def __init__(self, selection: SelectedBatches, micro_num: int, rank: int, world: int) -> None:
        self.selection, self.micro_num, self.rank, self.world = selection, micro_num, rank, world
        rows_per_epoch = len(selection.selected) * selection.spec.rows_per_batch
        self.steps_per_epoch = rows_per_epoch // (micro_num * world)
        if self.steps_per_epoch == 0:
            raise UserError(f"{selection.folder}: {rows_per_epoch} chosen rows do not fill one step of "
                            f"{micro_num} rows x {world} ranks")
        self._cached_epoch, self._cached_rows = -1, np.empty(0, dtype=np.int64)

    def rows(self, step: int) -> np.ndarray:
        """This rank's rows at global step `step` (epochs follow each other)."""
        epoch, inside = divmod(step, self.steps_per_epoch)
        if epoch != self._cached_epoch:
            self._cached_epoch, self._cached_rows = epoch, self.selection.epoch_rows(epoch)
        block = self.micro_num * self.world
        return self._cached_rows[inside * block:(inside + 1) * block][self.rank::self.world]
