"""The teacher cache: a sparse summary of the teacher's distribution at every trained token.

Layout of a cache folder (written by `rethinktiny distill cache`):
- `cache.json`: what was summarised (teacher, token map, data, packing, mode, k, temperature) and
  into how many units the data's packed rows were cut; a resumed run must match it.
- `unit-NNNNNN.npz`, one per unit of `rows_per_unit` packed rows, written atomically when the unit
  is done (a crash loses at most the units in flight; a re-run skips the finished ones, with any
  number of ranks). Arrays, one entry per token of the rows:
    keys [N] int64     hash of the token's context (below)
    ids [N, K]         student ids (uint16 when the vocabulary fits, else int32)
    weights [N, K]     sample mode: uint8 draw counts (weight = count / K, unbiased);
                       topk mode: float16 teacher probabilities (the mass beyond them is dropped)
    logp [N, K] f16    teacher log-probabilities at the ids (renormalised on the kept vocabulary)
    mass [N] f16       teacher probability on the kept vocabulary (1 without a token map)
- `index/`: the units merged once the last one is written (`write_index`): `keys.npy`, `ids.npy`,
  `weights.npy`, `logp.npy`, `mass.npy`, sorted by key with one entry per distinct key, and
  `index.json` (written last; it names the units it merged). Training ranks memory-map it instead
  of loading and sorting every unit (1.8 s per 1M entries in every rank, and all of it in RAM).

Keyed by context, not by position. The trainer's batch carries no document or file position (it
holds tokens, `cu_seqlens` and `indexes`), and the teacher's distribution at a token is a function
of exactly what attention sees: the tokens of its packed piece from the piece start up to it. So
each entry's key is a 62-bit polynomial hash of that prefix, and training looks up the hash of
the same prefix in its own batch. This does not depend on the sampler, the data-parallel layout,
the round, or which batches `resample` kept: a resampled round-2 row finds every piece that starts
where it started in the summarised rows; a piece cut at a new place (it now starts mid-document,
so even the online teacher would see another context) is a miss and gets no KD term; the hit
share is logged. Collisions: two 31-bit hashes; at 1e9 distinct contexts about 0.1 expected.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rethinktiny.artifacts import sibling_tmp, dumps_json, remove_stale_temporaries, write_file_atomic, write_json
from rethinktiny.errors import UserError

CACHE_FORMAT = "rethinktiny.distill_cache/1"
MANIFEST = "cache.json"
UNIT_RE = re.compile(r"^unit-(\d{6})\.npz$")
MODES = ("sample", "topk")
INDEX = "index"
INDEX_MANIFEST = "index.json"
INDEX_FORMAT = "rethinktiny.distill_cache_index/1"
ARRAYS = ("keys", "ids", "weights", "logp", "mass")
# Entries per step of the index's chunked passes: temporaries stay at a few tens of MB while each
# numpy call still does enough work to hide the Python loop.
_CHUNK = 1 << 20
# Two Mersenne-size primes: each partial sum (< 2^31 per term, < 2^32 terms) stays exact in int64.
_HASHES = ((2147483647, 1000003), (2147483629, 998244353 % 2147483629))


@functools.lru_cache(maxsize=8)
def _powers(modulus: int, base: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(base^j, base^-j) mod modulus for j < length, as int64 tensors."""
    inverse = pow(base, -1, modulus)
    up, down, a, b = [], [], 1, 1
    for _ in range(length):
        up.append(a)
        down.append(b)
        a, b = a * base % modulus, b * inverse % modulus
    return torch.tensor(up, dtype=torch.int64), torch.tensor(down, dtype=torch.int64)


def context_keys(tokens: torch.Tensor, indexes: torch.Tensor) -> torch.Tensor:
    """62-bit key of every token's context: the tokens of its piece from the start up to it.

    Args:
        tokens: [T] token ids of a packed row (several pieces laid end to end).
        indexes: [T] position of each token inside its piece (InternEvo's `indexes`; 0 starts a piece).
    """
    tokens, indexes = tokens.reshape(-1).long().cpu(), indexes.reshape(-1).long().cpu()
    starts = torch.nonzero(indexes == 0).flatten()
    piece = torch.cumsum((indexes == 0).long(), 0) - 1
    if len(starts) == 0 or int(piece.min()) < 0:
        raise ValueError("indexes must start every piece at 0")
    length = 1 << max(int(indexes.max()) + 1, 1).bit_length()  # few distinct table sizes
    key = torch.zeros_like(tokens)
    for modulus, base in _HASHES:
        up, down = _powers(modulus, base, length)
        terms = (tokens + 1) * down[indexes] % modulus  # < 2^62
        total = torch.cumsum(terms, 0)
        before = torch.cat([torch.zeros(1, dtype=torch.int64), total])[starts][piece]
        key = (key << 31) | ((total - before) % modulus * up[indexes] % modulus)
    return key


def unit_path(folder: Path, unit: int) -> Path:
    return folder / f"unit-{unit:06d}.npz"


def done_units(folder: Path) -> set[int]:
    return {int(m.group(1)) for p in folder.iterdir() if (m := UNIT_RE.match(p.name))}


def write_unit(folder: Path, unit: int, arrays: dict[str, np.ndarray]) -> Path:
    """One finished unit, atomically (a half-written unit never has its final name)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return write_file_atomic(unit_path(folder, unit), buffer.getvalue())


def summary_arrays(keys: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, logp: torch.Tensor,
                   mass: torch.Tensor | None, mode: str, vocab: int) -> dict[str, np.ndarray]:
    """The stored form of one row's summaries (see the module docstring for dtypes)."""
    id_dtype = np.uint16 if vocab <= 1 << 16 else np.int32
    weight_dtype = np.uint8 if mode == "sample" else np.float16
    return {"keys": keys.cpu().numpy().astype(np.int64), "ids": ids.cpu().numpy().astype(id_dtype),
            "weights": weights.cpu().numpy().astype(weight_dtype), "logp": logp.cpu().numpy().astype(np.float16),
            "mass": (mass if mass is not None else torch.ones(len(keys))).float().cpu().numpy().astype(np.float16)}


def read_cache_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"distill.cache {folder}: no {MANIFEST} there (build it with `rethinktiny distill cache`)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != CACHE_FORMAT:
        raise UserError(f"{path}: format {manifest.get('format')!r}, expected {CACHE_FORMAT!r}")
    missing = sorted(set(range(manifest["num_units"])) - done_units(Path(folder)))
    if missing:
        raise UserError(f"distill.cache {folder}: {len(missing)} of {manifest['num_units']} units missing (first: "
                        f"{missing[0]}); run `rethinktiny distill cache` again to finish it")
    return manifest


def write_cache_manifest(folder: Path, manifest: dict[str, Any], force: bool) -> None:
    """Write the plan, or check that an unfinished cache in `folder` was planned the same way."""
    path = folder / MANIFEST
    manifest = {"format": CACHE_FORMAT, **manifest}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != json.loads(json.dumps(manifest)):
            if not force:
                changed = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
                raise UserError(f"{folder}: a cache with other settings is there ({', '.join(changed)} differ); "
                                "pass --force to replace it, or another --dst")
            for unit in done_units(folder):
                unit_path(folder, unit).unlink()
            if (folder / INDEX).exists():  # merged from the units just deleted
                shutil.rmtree(folder / INDEX)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, manifest)


# ---- the merged index ----------------------------------------------------------------------------

def _index_fingerprint(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """What an index records of the units it merged; an index recording anything else is stale.

    The units' total size alone would not tell a rebuilt cache apart: np.savez stores its arrays
    uncompressed, so a unit's size depends only on its shapes, and `--force` with another seed or
    temperature writes units of the very same sizes. Hence the manifest's digest too."""
    unit_bytes = sum(unit_path(folder, u).stat().st_size for u in range(manifest["num_units"]))
    digest = hashlib.sha256(dumps_json(manifest).encode("utf-8")).hexdigest()
    return {"num_units": manifest["num_units"], "unit_bytes": unit_bytes, "manifest_sha256": digest}


def _recorded_index(index: Path) -> dict[str, Any] | None:
    """`index/index.json`, or None where there is none (an index without it is unfinished)."""
    try:
        recorded = json.loads((index / INDEX_MANIFEST).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return recorded if isinstance(recorded, dict) and recorded.get("format") == INDEX_FORMAT else None


def open_index(folder: str | Path, manifest: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The five arrays of `folder/index/`, memory-mapped read-only; None where there is no
    finished index of exactly these units (then build one with `write_index`).

    Args:
        folder: the cache folder.
        manifest: its `cache.json` (as `read_cache_manifest` returns it).
    """
    index = Path(folder) / INDEX
    recorded, fingerprint = _recorded_index(index), _index_fingerprint(Path(folder), manifest)
    if recorded is None or any(recorded.get(k) != v for k, v in fingerprint.items()):
        return None
    entries = recorded.get("entries")
    try:
        arrays = {name: np.load(index / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    except (FileNotFoundError, ValueError):  # a file removed or cut short after index.json was written
        return None
    return arrays if all(len(a) == entries for a in arrays.values()) else None


def index_bytes(folder: str | Path) -> int:
    """Bytes on disk of `folder/index/` (0 where there is none)."""
    index = Path(folder) / INDEX
    return sum(p.stat().st_size for p in index.iterdir()) if index.is_dir() else 0


def write_index(folder: str | Path, progress: bool = False) -> Path:
    """Merge the finished units of `folder` into `folder/index/` (see the module docstring); an
    index already there of exactly these units is kept. Returns the index folder.

    Memory: only the keys and the sort order are held whole, 16 bytes per token (8 + 8), plus the
    stable argsort's scratch while it runs (measured peak: 20.2 B/token of anonymous memory at 8M
    and 16M entries, against ~136 B/token for the in-memory merge at K=16). The other arrays are
    copied unit by unit into memory-mapped outputs, so the rest of the peak is one unit and a few
    chunk-sized temporaries; the outputs' pages belong to the page cache, which writes them back.
    Those writes land at random rows (keys are hashes): an index far larger than the page cache
    is written back many times over; an external merge (per-unit sorted runs) would stream it.
    Equal keys keep the first entry in unit order, as the in-memory merge does. The index is built
    in a temporary sibling folder with its `index.json` written last, then renamed into place: a
    half-written one never has the name.
    Several processes may race to build it (each with its own temporary); the first to finish
    wins and a current index is never replaced, so nobody's open memory map is pulled away.

    Args:
        folder: a finished cache folder (every unit written).
        progress: show a progress bar over the units.
    """
    folder = Path(folder)
    manifest = read_cache_manifest(folder)
    index = folder / INDEX
    if open_index(folder, manifest) is not None:
        return index
    remove_stale_temporaries(index)  # temporaries of killed builders on this host
    tmp = sibling_tmp(index, "tmp")
    tmp.mkdir()
    try:
        entries = _merge_units_into(tmp, folder, manifest["num_units"], progress)
        recorded = {"format": INDEX_FORMAT, "entries": entries, **_index_fingerprint(folder, manifest)}
        write_json(tmp / INDEX_MANIFEST, recorded)  # last: it is what makes the folder a finished index
        _install_index(tmp, folder, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary: nothing in it is worth keeping
        raise
    return index


def _install_index(tmp: Path, folder: Path, manifest: dict[str, Any]) -> None:
    """Rename `tmp` to `folder/index`. A current index another process installed first stays (ours
    is dropped); a stale one is moved aside, then replaced."""
    index = folder / INDEX
    try:
        os.rename(tmp, index)  # fails where `index` exists and is not empty
        return
    except OSError:
        if not index.exists():
            raise
    if open_index(folder, manifest) is not None:
        shutil.rmtree(tmp)
        return
    old = sibling_tmp(index, "old")
    os.replace(index, old)
    os.rename(tmp, index)
    shutil.rmtree(old)


def _merge_units_into(out: Path, folder: Path, num_units: int, progress: bool) -> int:
    """Write the five sorted, deduplicated arrays of the units into `out`; returns the entry count."""
    keys, lengths = _all_keys(folder, num_units)
    order = np.argsort(keys, kind="stable")  # stable: of equal keys, the first in unit order leads
    entries = _keep_first_of_equal_keys(keys, order)
    order = order[:entries]
    sorted_keys = np.lib.format.open_memmap(out / "keys.npy", mode="w+", dtype=np.int64, shape=(entries,))
    for start in range(0, entries, _CHUNK):
        sorted_keys[start:start + _CHUNK] = keys[order[start:start + _CHUNK]]
    sorted_keys.flush()
    del keys, sorted_keys
    destination = _destinations(order, sum(lengths))
    del order
    _scatter_units(out, folder, lengths, destination, entries, progress)
    return entries


def _all_keys(folder: Path, num_units: int) -> tuple[np.ndarray, list[int]]:
    """Every unit's keys end to end (unit order), and each unit's entry count."""
    parts = []
    for unit in range(num_units):
        with np.load(unit_path(folder, unit)) as arrays:
            parts.append(arrays["keys"])
    return np.concatenate(parts), [len(p) for p in parts]


def _keep_first_of_equal_keys(keys: np.ndarray, order: np.ndarray) -> int:
    """Compact `order` (a stable argsort of `keys`) in place to the first entry of every run of
    equal keys; returns how many are left. Chunked, so no second whole-length array is made."""
    kept, previous = 0, None
    for start in range(0, len(order), _CHUNK):
        chunk = order[start:start + _CHUNK]
        chunk_keys = keys[chunk]
        first = np.empty(len(chunk), dtype=bool)
        first[0] = previous is None or chunk_keys[0] != previous
        first[1:] = chunk_keys[1:] != chunk_keys[:-1]
        previous = chunk_keys[-1]
        chosen = chunk[first]  # a copy: safe to write over the front of `order` (kept <= start)
        order[kept:kept + len(chosen)] = chosen
        kept += len(chosen)
    return kept


def _destinations(order: np.ndarray, total: int) -> np.ndarray:
    """For every entry of the units (unit order), its row in the index; -1 for a dropped duplicate."""
    destination = np.full(total, -1, dtype=np.int64)
    for start in range(0, len(order), _CHUNK):
        destination[order[start:start + _CHUNK]] = np.arange(start, min(start + _CHUNK, len(order)))
    return destination


def _scatter_units(out: Path, folder: Path, lengths: list[int], destination: np.ndarray, entries: int,
                   progress: bool) -> None:
    """Copy the kept rows of ids, weights, logp and mass into memory-mapped `out/*.npy`, one unit at a time."""
    from tqdm import tqdm

    outputs, start = {}, 0
    for unit, length in enumerate(tqdm(lengths, desc="teacher cache index", unit="unit", disable=not progress)):
        rows = destination[start:start + length]
        kept = rows >= 0
        with np.load(unit_path(folder, unit)) as arrays:
            for name in ARRAYS[1:]:
                values = arrays[name]
                if name not in outputs:  # dtype and row shape from the first unit
                    outputs[name] = np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=values.dtype,
                                                              shape=(entries, *values.shape[1:]))
                outputs[name][rows[kept]] = values[kept]
        start += length
    for array in outputs.values():
        array.flush()


def _merge_in_memory(folder: Path, num_units: int) -> dict[str, np.ndarray]:
    """Every unit loaded, concatenated, sorted by key and deduplicated (the first of equal keys in
    unit order kept): the path of a cache without an index that cannot get one (read-only)."""
    parts = [np.load(unit_path(folder, u)) for u in range(num_units)]
    keys = np.concatenate([p["keys"] for p in parts])
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    first = np.ones(len(keys), dtype=bool)  # a context summarised twice: keep one entry
    first[1:] = keys[1:] != keys[:-1]
    order = order[first]
    merged = {"keys": keys[first]}
    for name in ARRAYS[1:]:
        merged[name] = np.concatenate([p[name] for p in parts])[order]
    return merged


class TeacherCache:
    """A finished cache, opened for lookups: its index memory-mapped (built first where there is
    none and the folder is writable), else every unit merged in memory (`mapped` says which).

    Args:
        folder: the cache folder.
        device: where `lookup` returns its tensors.
        use_index: False merges the units in memory even where an index exists (a baseline).
    """

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", use_index: bool = True) -> None:
        self.folder = Path(folder)
        self.manifest = read_cache_manifest(self.folder)
        self.mode, self.k = self.manifest["mode"], self.manifest["k"]
        self.device = torch.device(device)
        arrays = self._mapped_arrays() if use_index else None
        self.mapped = arrays is not None
        if arrays is None:
            arrays = _merge_in_memory(self.folder, self.manifest["num_units"])
        self.keys, self.ids, self.weights, self.logp, self.mass = (arrays[name] for name in ARRAYS)

    def _mapped_arrays(self) -> dict[str, np.ndarray] | None:
        arrays = open_index(self.folder, self.manifest)
        if arrays is not None or not os.access(self.folder, os.W_OK):
            return arrays
        # A cache written before the index existed (or whose index is stale): merging it once to
        # disk costs no more than the in-memory merge, and every later open is a memory map.
        try:
            write_index(self.folder)
        except OSError as err:  # a full disk, a read-only mount os.access cannot see
            print(f"[rethinktiny] teacher cache {self.folder}: could not write its index ({err}); "
                  "merging the units in memory", flush=True)
            return None
        return open_index(self.folder, self.manifest)

    def __len__(self) -> int:
        return len(self.keys)

    def nbytes(self) -> int:
        """Bytes of the lookup arrays: the index on disk when mapped, else the arrays in memory."""
        if self.mapped:
            return sum((self.folder / INDEX / f"{name}.npy").stat().st_size for name in ARRAYS)
        return sum(a.nbytes for a in (self.keys, self.ids, self.weights, self.logp, self.mass))

    def lookup(self, keys: torch.Tensor) -> dict[str, torch.Tensor]:
        """Summaries at `keys` [T]: found [T] bool, ids [T, K] int64, weights [T, K], logp [T, K],
        mass [T] (float32; weights and logp are zero where not found). On a memory-mapped index
        only the pages holding the binary search's probes and the found rows are read."""
        wanted = keys.reshape(-1).cpu().numpy()
        at = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        found = self.keys[at] == wanted
        at = np.where(found, at, 0)
        weights = self.weights[at].astype(np.float32)
        if self.mode == "sample":
            weights /= self.k
        rows = {"ids": self.ids[at].astype(np.int64), "weights": weights * found[:, None],
                "logp": self.logp[at].astype(np.float32) * found[:, None], "mass": self.mass[at].astype(np.float32)}
        out = {name: torch.from_numpy(value).to(self.device) for name, value in rows.items()}
        out["found"] = torch.from_numpy(found).to(self.device)
        return out
