"""InternEvo's tokenized data format, read and written without InternEvo.

A dataset folder holds one sub-folder per data *type* (InternEvo numbers types by the sorted
sub-folder names and reports metrics per type):

    <folder>/<type>/<shard>.bin        one JSON object a line: {"tokens": [int, ...]}
    <folder>/<type>/<shard>.bin.meta   numpy .npy array [lines, 2]: (byte offset, token count)

InternEvo's loader needs the `.meta` index (it seeks to each offset); we write int64 offsets so
shards over 2 GiB stay valid (InternEvo's own tool writes int32; np.load reads either).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from rethinktiny.errors import UserError

BIN_SUFFIX = ".bin"


def find_bin_files(folder: str | os.PathLike) -> list[Path]:
    """All `.bin` files below `folder` (following symlinks, as InternEvo does), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: data folder not found")
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        found.extend(Path(root) / name for name in sorted(files) if name.endswith(BIN_SUFFIX))
    return found


def require_bin_files(folder: str | os.PathLike, need_meta: bool = False) -> list[Path]:
    """The `.bin` files below `folder`, each checked against its `.bin.meta` (`check_bin_against_meta`:
    sizes and the last document, no full read), so a truncated shard is a one-line error here and not
    InternEvo's `seek out of range` inside the ranks.

    Args:
        folder: tokenized data folder.
        need_meta: a `.bin` without `.bin.meta` is an error (InternEvo's loader asserts on it; `vocab
            count` and the calibration reader do without).
    """
    files = find_bin_files(folder)
    if not files:
        raise UserError(f"{folder}: no .bin files found (expected <folder>/<type>/*.bin)")
    for path in files:
        meta = read_meta(path)
        if meta is None and need_meta:
            raise UserError(f"{path}.meta: missing; InternEvo needs the .meta index of every .bin "
                            f"(`rethinktiny data tokenize` writes both)")
        if meta is not None:
            check_bin_against_meta(path, meta)
    return files


def read_meta(bin_path: str | os.PathLike) -> np.ndarray | None:
    meta_path = Path(f"{bin_path}.meta")
    if not meta_path.exists():
        return None
    try:
        meta = np.load(meta_path)
    except (ValueError, OSError, EOFError) as err:  # truncated or not an .npy file
        raise UserError(f"{meta_path}: unreadable .meta index ({err})") from None
    if meta.ndim != 2 or meta.shape[1] != 2:
        raise UserError(f"{meta_path}: expected an array of shape [lines, 2], got {meta.shape}")
    return meta


def check_bin_against_meta(bin_path: str | os.PathLike, meta: np.ndarray) -> None:
    """Cheap integrity check of one shard: the `.meta` rows are non-negative, the document at the
    largest offset starts a line inside the file, is whole (ends with a newline) and holds the token
    count its row says. A `.bin` truncated or replaced under its `.meta` fails here after reading one
    line. Raises UserError naming the file.

    Args:
        bin_path: the `.bin` file.
        meta: its `.bin.meta` rows (byte offset, token count).
    """
    if len(meta) == 0:
        return
    if (meta < 0).any():
        raise UserError(f"{bin_path}.meta: negative offset or token count in row {int(np.flatnonzero((meta < 0).any(1))[0])}")
    row = int(np.argmax(meta[:, 0]))
    offset, expected = int(meta[row, 0]), int(meta[row, 1])
    size = os.path.getsize(bin_path)
    where = f"{bin_path}: .meta row {row} (byte {offset}, {expected} tokens)"
    if offset >= size:
        raise UserError(f"{where} points past the end of the file ({size} bytes); truncated, or not the "
                        f"file this .meta indexes")
    with open(bin_path, "rb") as f:
        f.seek(max(offset - 1, 0))
        before = f.read(1) if offset else b"\n"
        line = f.readline()
    if before != b"\n":
        raise UserError(f"{where} does not start a line; the .bin is not the file this .meta indexes")
    if not line.endswith(b"\n"):
        raise UserError(f"{where}: the last document has no newline; the .bin is truncated")
    try:
        tokens = parse_tokens(line)
    except ValueError as err:
        raise UserError(f"{where}: {err}; the .bin is damaged or not the file this .meta indexes") from None
    if len(tokens) != expected:
        raise UserError(f"{where}: the line holds {len(tokens)} tokens; the .bin is not the file this .meta indexes")


@dataclass
class BadLine:
    path: str
    line: int  # 1-based
    reason: str


@dataclass
class ReadReport:
    """What `iter_documents` skipped; callers decide whether that is fatal."""

    bad_lines: list[BadLine] = field(default_factory=list)

    def raise_if_any(self) -> None:
        if self.bad_lines:
            first = self.bad_lines[0]
            raise UserError(f"{first.path}:{first.line}: malformed line ({first.reason}); "
                            f"{len(self.bad_lines)} malformed line(s) in total")


def parse_tokens(line: bytes) -> list[int]:
    """Tokens of one `.bin` line; raises ValueError with the reason when malformed."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON: {err.msg}") from None
    if not isinstance(record, dict) or "tokens" not in record:
        raise ValueError('no "tokens" key')
    tokens = record["tokens"]
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise ValueError('"tokens" is not a list of integers')
    return tokens


def iter_documents(bin_path: str | os.PathLike, report: ReadReport | None = None) -> Iterator[list[int]]:
    """Token lists of one `.bin` file, line by line. Malformed lines are recorded in `report`
    (with file and line number) and skipped; without a report they raise UserError."""
    with open(bin_path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield parse_tokens(line)
            except ValueError as err:
                if report is None:
                    raise UserError(f"{bin_path}:{number}: malformed line ({err})") from None
                report.bad_lines.append(BadLine(str(bin_path), number, str(err)))


class BinWriter:
    """Writes one shard: `.bin` lines plus the `.bin.meta` index, both via temporary names."""

    def __init__(self, bin_path: str | os.PathLike) -> None:
        self.path = Path(bin_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.partial")
        self._file = open(self._tmp, "wb")
        self._meta: list[tuple[int, int]] = []
        self._offset = 0
        self.num_tokens = 0

    def write(self, tokens: Iterable[int]) -> None:
        tokens = [int(t) for t in tokens]
        line = (json.dumps({"tokens": tokens}, separators=(",", ":")) + "\n").encode("utf-8")
        self._file.write(line)
        self._meta.append((self._offset, len(tokens)))
        self._offset += len(line)
        self.num_tokens += len(tokens)

    @property
    def num_documents(self) -> int:
        return len(self._meta)

    def close(self) -> None:
        self._file.close()
        meta = np.array(self._meta, dtype=np.int64).reshape(-1, 2)
        meta_tmp = self.path.with_name(f".{self.path.name}.meta.partial")
        with open(meta_tmp, "wb") as f:
            np.save(f, meta)
        os.replace(self._tmp, self.path)
        os.replace(meta_tmp, f"{self.path}.meta")

    def __enter__(self) -> "BinWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()
            self._tmp.unlink(missing_ok=True)


def write_documents(bin_path: str | os.PathLike, documents: Iterable[Iterable[int]]) -> int:
    """Write a whole shard; returns the number of documents."""
    with BinWriter(bin_path) as writer:
        for tokens in documents:
            writer.write(tokens)
    return writer.num_documents
