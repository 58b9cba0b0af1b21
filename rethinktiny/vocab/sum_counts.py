"""Sum per-file token counts into one frequency file (the seed's `total_token_freq.json`).

Output format — exactly what the seed's step3 reads, so either side's tools accept it: one JSON
object mapping each token id, written as a decimal string, to its count, for ids seen at least
once, in ascending id order:

    {"0": 12, "1": 22286, "2": 22286, "3": 5, ...}

A sidecar `<dst>.manifest.json` records the inputs (the result files summed, with totals).

Inputs: the result folder of `vocab count` (its `manifest.json` lists the results to sum, so stale
files in the folder are ignored); without a manifest every `*.json` result in the folder is read.
Result files of the seed's step1 (`{"ori_file": ..., "<id>": count, ...}`) are accepted too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rethinktiny.artifacts import check_writable, write_file_atomic, write_json, build_manifest
from rethinktiny.errors import UserError
from rethinktiny.vocab.count import COUNTS_FORMAT


def _result_files(src: Path) -> list[Path]:
    if not src.is_dir():
        raise UserError(f"{src}: count result folder not found")
    manifest = src / "manifest.json"
    if manifest.is_file():
        try:
            listed = json.loads(manifest.read_text(encoding="utf-8")).get("results")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            raise UserError(f"{manifest}: unreadable manifest ({err})") from None
        if isinstance(listed, list):
            missing = [name for name in listed if not (src / name).is_file()]
            if missing:
                raise UserError(f"{src / missing[0]}: listed in {manifest} but missing; rerun `vocab count`")
            return [src / name for name in listed]
    files = sorted(p for p in src.iterdir() if p.suffix == ".json" and p.name != "manifest.json")
    if not files:
        raise UserError(f"{src}: no count result files (*.json) found")
    return files


def _add(total: np.ndarray, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    if ids.size and ids.max() >= total.size:
        total = np.concatenate([total, np.zeros(int(ids.max()) + 1 - total.size, dtype=np.int64)])
    np.add.at(total, ids, counts)
    return total


def read_result(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, counts) of one result file: ours, or the seed's step1 output.

    Args:
        path: JSON result file.
    """
    try:
        body = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a JSON count result ({err})") from None
    if not isinstance(body, dict):
        raise UserError(f"{path}: not a count result (expected a JSON object)")
    if body.get("format") == COUNTS_FORMAT:
        ids, counts = body.get("ids"), body.get("counts")
        if not isinstance(ids, list) or not isinstance(counts, list) or len(ids) != len(counts):
            raise UserError(f"{path}: keys 'ids' and 'counts' must be lists of equal length")
        return _as_array(ids, path, "ids"), _as_array(counts, path, "counts")
    pairs = [(k, v) for k, v in body.items() if k != "ori_file"]  # the seed's step1 layout
    return (_as_array([_int_key(k, path) for k, _ in pairs], path, "keys"),
            _as_array([v for _, v in pairs], path, "counts"))


def _int_key(key: str, path: Path) -> int:
    try:
        return int(key)
    except ValueError:
        raise UserError(f"{path}: key {key!r} is not a token id") from None


def _as_array(values: list, path: Path, what: str) -> np.ndarray:
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise UserError(f"{path}: {what} must be non-negative integers")
    return np.asarray(values, dtype=np.int64)


def merge_counts(src: str | os.PathLike, dst: str | os.PathLike, force: bool = False) -> np.ndarray:
    """Sum the count results in `src` and write the frequency file `dst`.

    Args:
        src: result folder of `vocab count` (or of the seed's step1).
        dst: output JSON file (`total_token_freq.json`).
        force: replace an existing `dst`.
    Returns:
        the dense total counts (index = token id).
    """
    src, dst = Path(src), Path(dst)
    check_writable(dst, force)
    files = _result_files(src)
    total = np.zeros(1, dtype=np.int64)
    for path in tqdm(files, desc="merge", unit="file", disable=len(files) < 2):
        total = _add(total, *read_result(path))
    write_frequency_file(dst, total)
    manifest = build_manifest("vocab merge", dict(src=str(src), dst=str(dst), force=force),
                              extra={"results": [p.name for p in files], "tokens": int(total.sum()),
                                     "distinct_ids": int(np.count_nonzero(total))})
    write_json(f"{dst}.manifest.json", manifest)
    return total


def write_frequency_file(path: str | os.PathLike, counts: np.ndarray) -> Path:
    """Write dense `counts` in the seed's `{"<id>": count}` format (seen ids only, ascending)."""
    seen = np.flatnonzero(counts)
    body = "{" + ", ".join(f'"{i}": {c}' for i, c in zip(seen.tolist(), counts[seen].tolist())) + "}\n"
    return write_file_atomic(path, body)


def read_frequency_file(path: str | os.PathLike, vocab_size: int | None = None) -> np.ndarray:
    """Dense counts from a `{"<id>": count}` file (ours or the seed's).

    Args:
        path: the frequency JSON file.
        vocab_size: when given, an id outside [0, vocab_size) is an error naming the id.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: token frequency file not found")
    try:
        body = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a JSON token frequency file ({err})") from None
    if not isinstance(body, dict):
        raise UserError(f"{path}: expected a JSON object {{\"<id>\": count}}")
    ids = _as_array([_int_key(k, path) for k in body], path, "keys")
    counts = _as_array(list(body.values()), path, "counts")
    if vocab_size is not None and ids.size and ids.max() >= vocab_size:
        bad = int(ids[ids >= vocab_size][0])
        raise UserError(f"{path}: token id {bad} is outside the tokenizer (vocabulary size {vocab_size})")
    return _add(np.zeros(max(vocab_size or 1, 1), dtype=np.int64), ids, counts)
