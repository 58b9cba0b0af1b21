"""Resumable batch scores: a plan every rank reads, and append-only score files.

The scores folder holds `plan.json` (what is scored: checkpoint, data, batch settings, dtype)
and one `scores-a{attempt}-r{rank}.bin` per rank and attempt: fixed 16-byte records
(int64 batch, float64 loss) flushed as each batch is scored. A crash loses at most the batch
in flight (a torn last record is ignored). A re-run starts a new attempt; its ranks skip every
batch an earlier attempt finished and split the rest, so the scores of an interrupted run are
never computed twice and the world size may change between attempts.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rethinktiny.artifacts import dumps_json, write_json
from rethinktiny.errors import UserError

RECORD = struct.Struct("<qd")
SCORE_FILE_RE = re.compile(r"^scores-a(\d+)-r(\d+)\.bin$")
PLAN_NAME = "plan.json"


@dataclass
class ScorePlan:
    """Everything a scoring rank needs, and the identity a resumed run must match."""

    folder: str  # the scores folder
    data: str
    index: str  # the packed corpus (`batches.write_index`), memory-mapped by every rank
    checkpoint: str  # resolved step folder
    model: dict  # ModelConfig.to_dict()
    dtype: str
    spec: dict  # BatchSpec.to_dict()
    label_smoothing: float
    num_batches: int
    identity: str  # digest of the inputs; a resumed run must have the same
    attempt: int = 0
    scored: list[int] | None = None  # the batches to score (None: all num_batches)
    next_plan: str | None = None  # a plan the same ranks score afterwards (the reference model's)

    def batch_numbers(self) -> list[int] | range:
        return range(self.num_batches) if self.scored is None else self.scored

    def save(self) -> Path:
        return write_json(Path(self.folder) / PLAN_NAME, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "ScorePlan":
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_NAME
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise UserError(f"{path}: not a scoring plan ({err})") from None


def plan_identity(fields: dict) -> str:
    return hashlib.sha256(dumps_json(fields).encode()).hexdigest()


def prepare_folder(plan: ScorePlan, restart: bool) -> ScorePlan:
    """Create the scores folder, or continue the one there when it scored the same inputs.

    Args:
        plan: the new plan (its attempt number is set here).
        restart: discard scores of a different plan instead of refusing.
    """
    folder = Path(plan.folder)
    if (folder / PLAN_NAME).exists():
        previous = ScorePlan.load(folder)
        if previous.identity != plan.identity:
            if not restart:
                raise UserError(f"{folder}: holds scores of a different checkpoint, data or batch setting; "
                                f"delete it, pass another --scores-dir, or --force to start over")
            for attempt, rank in score_files(folder):  # sub-folders (index, copy) check their own inputs
                (folder / score_file_name(attempt, rank)).unlink()
    folder.mkdir(parents=True, exist_ok=True)
    plan.attempt = 1 + max((a for a, _ in score_files(folder)), default=-1)
    plan.save()
    return plan


def score_files(folder: Path) -> list[tuple[int, int]]:
    """(attempt, rank) of every score file in `folder`."""
    found = []
    for path in Path(folder).iterdir():
        m = SCORE_FILE_RE.match(path.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2))))
    return sorted(found)


def score_file_name(attempt: int, rank: int) -> str:
    return f"scores-a{attempt}-r{rank}.bin"


def read_scores(folder: str | Path, before_attempt: int | None = None) -> dict[int, float]:
    """batch -> loss from the score files (of attempts < `before_attempt` when given)."""
    scores: dict[int, float] = {}
    for attempt, rank in score_files(Path(folder)):
        if before_attempt is not None and attempt >= before_attempt:
            continue
        data = (Path(folder) / score_file_name(attempt, rank)).read_bytes()
        usable = len(data) - len(data) % RECORD.size  # a torn last record is dropped
        for batch, loss in RECORD.iter_unpack(data[:usable]):
            scores.setdefault(batch, loss)
    return scores


class ScoreAppender:
    """Appends (batch, loss) records to one rank's score file, flushing each."""

    def __init__(self, folder: str | Path, attempt: int, rank: int) -> None:
        self.path = Path(folder) / score_file_name(attempt, rank)
        self._file = open(self.path, "ab", buffering=0)  # unbuffered: each record reaches the OS at once

    def append(self, batch: int, loss: float) -> None:
        self._file.write(RECORD.pack(batch, loss))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "ScoreAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def collect_losses(plan: ScorePlan) -> np.ndarray:
    """float64 [num_batches] losses in batch order, nan for a batch outside `plan.scored`; every
    batch of the plan must have been scored."""
    scores = read_scores(plan.folder)
    wanted = plan.batch_numbers()
    missing = [b for b in wanted if b not in scores]
    if missing:
        raise UserError(f"{plan.folder}: {len(missing)} of {len(wanted)} batches are not scored (first: {missing[0]}); "
                        f"run the command again to continue")
    losses = np.full(plan.num_batches, np.nan)
    losses[list(wanted)] = [scores[b] for b in wanted]
    return losses
