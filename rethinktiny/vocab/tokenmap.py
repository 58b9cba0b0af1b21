"""`token_map.json`: which old token id each new token id came from.

Written by `rethinktiny vocab prune` next to the pruned `tokenizer.model`; read by weight
inheritance to pick embedding and output rows (`new_embedding = old_embedding[new_to_old]`).

Format (JSON object, UTF-8, keys sorted):

    {
      "format": "rethinktiny.token_map.v1",
      "old_vocab_size": 103168,          # pieces in the original tokenizer
      "new_vocab_size": 48000,           # pieces in the pruned tokenizer == len(new_to_old)
      "new_to_old": [0, 1, 2, 3, ...],   # new_to_old[new_id] = old_id
      "old_tokenizer_sha256": "...",     # optional: digests of both tokenizer.model files
      "new_tokenizer_sha256": "..."
    }

Invariants checked on load: every old id is an integer in [0, old_vocab_size), no old id appears
twice (pruning never duplicates a piece), and `new_vocab_size == len(new_to_old)`. Pruning keeps
the original order of pieces, so `new_to_old` is strictly increasing; that is not required here, so
a map from any other tool still loads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rethinktiny.artifacts import write_json
from rethinktiny.errors import UserError

TOKEN_MAP_FORMAT = "rethinktiny.token_map.v1"
TOKEN_MAP_FILE = "token_map.json"


@dataclass(frozen=True)
class TokenMap:
    """New id -> old id, plus the size of the old vocabulary."""

    new_to_old: tuple[int, ...]
    old_vocab_size: int
    old_tokenizer_sha256: str | None = None
    new_tokenizer_sha256: str | None = None

    @property
    def new_vocab_size(self) -> int:
        return len(self.new_to_old)

    def index(self) -> np.ndarray:
        """`new_to_old` as an int64 array, ready for `old_rows[index]` (numpy or torch)."""
        return np.asarray(self.new_to_old, dtype=np.int64)

    def old_to_new(self) -> dict[int, int]:
        return {old: new for new, old in enumerate(self.new_to_old)}

    def to_json(self) -> dict:
        body = {"format": TOKEN_MAP_FORMAT, "old_vocab_size": self.old_vocab_size,
                "new_vocab_size": self.new_vocab_size, "new_to_old": list(self.new_to_old)}
        if self.old_tokenizer_sha256:
            body["old_tokenizer_sha256"] = self.old_tokenizer_sha256
        if self.new_tokenizer_sha256:
            body["new_tokenizer_sha256"] = self.new_tokenizer_sha256
        return body


def validate_token_map(new_to_old, old_vocab_size: int, source: str = "token map") -> tuple[int, ...]:
    """Check the invariants above; returns `new_to_old` as a tuple of ints.

    Args:
        new_to_old: sequence of old ids, one per new id.
        old_vocab_size: size of the old vocabulary.
        source: file name for error messages.
    """
    if not isinstance(old_vocab_size, int) or isinstance(old_vocab_size, bool) or old_vocab_size <= 0:
        raise UserError(f"{source}: old_vocab_size must be a positive integer, got {old_vocab_size!r}")
    if not isinstance(new_to_old, (list, tuple)) or not new_to_old:
        raise UserError(f"{source}: new_to_old must be a non-empty list of integers")
    for new_id, old_id in enumerate(new_to_old):
        if not isinstance(old_id, (int, np.integer)) or isinstance(old_id, bool):
            raise UserError(f"{source}: new_to_old[{new_id}] is not an integer ({old_id!r})")
        if not 0 <= old_id < old_vocab_size:
            raise UserError(f"{source}: new_to_old[{new_id}] = {old_id} is outside the old "
                            f"vocabulary [0, {old_vocab_size})")
    values = tuple(int(v) for v in new_to_old)
    if len(set(values)) != len(values):
        raise UserError(f"{source}: new_to_old lists an old id more than once")
    return values


def save_token_map(path: str | os.PathLike, token_map: TokenMap) -> Path:
    """Write `token_map` as JSON (atomically, deterministic bytes)."""
    validate_token_map(list(token_map.new_to_old), token_map.old_vocab_size, str(path))
    return write_json(path, token_map.to_json())


def load_token_map(path: str | os.PathLike) -> TokenMap:
    """Read and validate a `token_map.json` (or the folder holding one).

    Args:
        path: the JSON file, or a pruned-tokenizer folder containing `token_map.json`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TOKEN_MAP_FILE
    if not path.is_file():
        raise UserError(f"{path}: token map not found")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a JSON token map ({err})") from None
    if not isinstance(body, dict) or body.get("format") != TOKEN_MAP_FORMAT:
        raise UserError(f"{path}: key 'format' must be {TOKEN_MAP_FORMAT!r}")
    for key in ("old_vocab_size", "new_to_old"):
        if key not in body:
            raise UserError(f"{path}: missing key {key!r}")
    new_to_old = validate_token_map(body["new_to_old"], body["old_vocab_size"], str(path))
    if body.get("new_vocab_size", len(new_to_old)) != len(new_to_old):
        raise UserError(f"{path}: new_vocab_size {body['new_vocab_size']} != len(new_to_old) {len(new_to_old)}")
    return TokenMap(new_to_old, body["old_vocab_size"], body.get("old_tokenizer_sha256"),
                    body.get("new_tokenizer_sha256"))
