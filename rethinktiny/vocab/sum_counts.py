"""Sum per-file token counts into one frequency file (the seed's `total_token_freq.json`).

Output format — exactly what the seed's step3 reads, so either side's tools accept it: one JSON
object mapping each token id, written as a decimal string, to its count, for ids seen at least
once, in ascending id order:

    {"0": 12, "1": 22286, "2": 22286, "3": 5, ...}

A sidecar `<dst>.manifest.json` records the inputs (the result files summed, with totals).

Inputs: the result folders of `vocab count`, one per shard (`--src A --src B ...`). Each must carry
the `manifest.json` a finished count writes last (it lists the results to sum, so stale files in the
folder are ignored); a folder of our results without one is a failed or still running count and is
refused. The folders must be exactly the shards 0..N-1 of one split of one file list, counted with one
tokenizer: a missing or repeated shard, another split, or another tokenizer is a one-line error.
A folder of the seed's step1 results (`{"ori_file": ..., "<id>": count, ...}`, no manifest) is
accepted alone: every `*.json` in it is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rethinktiny.artifacts import build_manifest, check_output_file, write_file_atomic, write_json
from rethinktiny.errors import UserError
from rethinktiny.vocab.count import COUNTS_FORMAT, LOCK, MANIFEST


def _read_manifest(src: Path) -> dict | None:
    """The manifest of a `vocab count` folder; None for a folder of the seed's step1 results.
    A folder of our results without a complete manifest is an error."""
    if not src.is_dir():
        raise UserError(f"{src}: count result folder not found")
    manifest = src / MANIFEST
    if not manifest.is_file():
        if (src / LOCK).exists() or any(_is_our_result(p) for p in src.glob("*.json")):
            raise UserError(f"{src}: no {MANIFEST}: this `vocab count` failed or is still running; "
                            f"rerun it (finished files are not counted again)")
        return None
    try:
        body = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{manifest}: unreadable manifest ({err})") from None
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        raise UserError(f"{manifest}: not a complete `vocab count` manifest (no 'results' list)")
    return body


def _is_our_result(path: Path) -> bool:
    with open(path, "rb") as f:
        return COUNTS_FORMAT.encode() in f.read(200)  # "format" is the first key we write


def _result_files(src: Path, manifest: dict | None) -> list[Path]:
    if manifest is not None:
        listed = manifest["results"]
        missing = [name for name in listed if not (src / name).is_file()]
        if missing:
            raise UserError(f"{src / missing[0]}: listed in {src / MANIFEST} but missing; rerun `vocab count`")
        return [src / name for name in listed]
    files = sorted(p for p in src.iterdir() if p.suffix == ".json" and p.name != MANIFEST)
    if not files:
        raise UserError(f"{src}: no count result files (*.json) found")
    return files


def check_shard_set(manifests: dict[Path, dict | None]) -> None:
    """The folders are the shards 0..N-1 of one count: same split of the same file list, same
    tokenizer, each shard once. Raises UserError naming what is missing or differs.

    Args:
        manifests: each `--src` folder's manifest (None: the seed's step1 results, only alone).
    """
    if len(manifests) == 1:
        return _check_single(*next(iter(manifests.items())))
    seed = [str(src) for src, body in manifests.items() if body is None]
    if seed:
        raise UserError(f"{seed[0]}: seed step1 results (no {MANIFEST}) can only be merged alone")
    shards = {src: body.get("shard") or {"index": 0, "count": 1} for src, body in manifests.items()}

    def identity(src: Path) -> dict[str, str]:
        body = manifests[src]
        return {"shard count": f"N={shards[src]['count']}", "file list": _file_list(body),
                "tokenizer": _tokenizer_digest(body)}

    first = next(iter(manifests))
    for src in manifests:
        for what, value in identity(src).items():
            if value != identity(first)[what]:
                raise UserError(f"{src}: counted with another {what} than {first} ({value} vs "
                                f"{identity(first)[what]}); merge only the shards of one `vocab count --shard I/N` set")
    seen: dict[int, Path] = {}
    for src, shard in shards.items():
        if shard["index"] in seen:
            raise UserError(f"shard {shard['index']}/{shard['count']} given twice: {seen[shard['index']]} and {src}")
        seen[shard["index"]] = src
    count = shards[first]["count"]
    missing = [f"{i}/{count}" for i in range(count) if i not in seen]
    if missing:
        raise UserError(f"shard(s) {', '.join(missing)} missing from --src (given: "
                        f"{', '.join(f'{i}/{count} {seen[i]}' for i in sorted(seen))})")


def _check_single(src: Path, body: dict | None) -> None:
    shard = (body or {}).get("shard")
    if shard and shard["count"] > 1:
        missing = [f"{i}/{shard['count']}" for i in range(shard["count"]) if i != shard["index"]]
        raise UserError(f"{src} holds shard {shard['index']}/{shard['count']} only; shard(s) {', '.join(missing)} "
                        f"missing (pass every shard's folder with --src)")


def _file_list(body: dict) -> str:
    listing = body.get("file_list") or {}
    return f"{listing.get('files')} files, sha256 {str(listing.get('sha256'))[:12]}"


def _tokenizer_digest(body: dict) -> str:
    recorded = body.get("tokenizer") or {}
    return f"sha256 {recorded['sha256'][:12]}" if recorded.get("sha256") else "no --tokenizer"


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


def merge_counts(src: str | os.PathLike | list[str | os.PathLike], dst: str | os.PathLike,
                 force: bool = False) -> np.ndarray:
    """Sum the count results of one or more `vocab count` folders and write the frequency file `dst`.

    Args:
        src: result folder of `vocab count` (or of the seed's step1), or a list of them: the shards of
            one sharded count (`check_shard_set`).
        dst: output JSON file (`total_token_freq.json`).
        force: replace an existing `dst`.
    Returns:
        the dense total counts (index = token id).
    """
    sources = [Path(p) for p in ([src] if isinstance(src, (str, os.PathLike)) else src)]
    if not sources:
        raise UserError("--src: no count result folder given")
    dst = check_output_file(dst, force, {}, flag="--dst")
    if len({path.resolve() for path in sources}) < len(sources):
        raise UserError(f"--src: a folder is given twice ({', '.join(map(str, sources))})")
    manifests = {path: _read_manifest(path) for path in sources}
    check_shard_set(manifests)
    files = [f for path, body in manifests.items() for f in _result_files(path, body)]
    total = np.zeros(1, dtype=np.int64)
    for path in tqdm(files, desc="merge", unit="file", disable=len(files) < 2):
        total = _add(total, *read_result(path))
    write_frequency_file(dst, total)
    bodies = [body for body in manifests.values() if body]
    extra = {"results": [str(p.relative_to(p.parent.parent)) if len(sources) > 1 else p.name for p in files],
             "tokens": int(total.sum()), "distinct_ids": int(np.count_nonzero(total))}
    if bodies and bodies[0].get("tokenizer"):
        extra["tokenizer"] = bodies[0]["tokenizer"]  # what `vocab prune` checks the frequency file against
    manifest = build_manifest("vocab merge", dict(src=str(sources[0]) if len(sources) == 1 else [str(p) for p in sources],
                                                  dst=str(dst), force=force), extra=extra)
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
