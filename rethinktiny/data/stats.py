"""What `rethinktiny data stats` reports of a tokenized folder: documents and tokens from the
`.meta` indexes (each checked against its `.bin` by `require_bin_files`), or, with `verify`, from
reading every line with the fast block parser of `vocab count`.

Apart from `tokenized.py` because the block parser (`binparse.py`) builds on that module."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rethinktiny.data.binparse import parse_bin_file
from rethinktiny.data.tokenized import iter_documents, read_meta, require_bin_files
from rethinktiny.errors import UserError


def count_tokens(folder: str | os.PathLike, verify: bool = False) -> tuple[int, int]:
    """(documents, tokens) in a dataset folder, from the `.meta` indexes where present (each checked
    against its `.bin` by `require_bin_files`).

    Args:
        folder: tokenized data folder.
        verify: also read every `.bin` in full: a malformed line, or one whose token count differs
            from its `.meta` row, is an error naming file and line.
    """
    docs = tokens = 0
    for path in require_bin_files(folder):
        meta = read_meta(path)
        if verify and meta is not None:
            verify_bin_file(path, meta)
        if meta is None:
            lengths = [len(t) for t in iter_documents(path)]
            docs, tokens = docs + len(lengths), tokens + sum(lengths)
        else:
            docs, tokens = docs + len(meta), tokens + int(meta[:, 1].sum())
    return docs, tokens


def verify_bin_file(path: Path, meta: np.ndarray) -> None:
    """Every document of `path` parsed and compared with its `.meta` row (the fast block parser of
    `vocab count`); the first problem is a UserError naming file and line."""
    _, parsed = parse_bin_file(path, meta)
    if parsed.malformed:
        line, reason = parsed.malformed[0]
        where = f"{path}:{line}" if line else str(path)
        raise UserError(f"{where}: {reason}; {len(parsed.malformed)} problem(s) in total")
