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
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rethinktiny.artifacts import write_file_atomic, write_json
from rethinktiny.errors import UserError

CACHE_FORMAT = "rethinktiny.distill_cache/1"
MANIFEST = "cache.json"
UNIT_RE = re.compile(r"^unit-(\d{6})\.npz$")
MODES = ("sample", "topk")
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
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, manifest)


class TeacherCache:
    """A finished cache, loaded for lookups (every unit in memory, sorted by key).

    Args:
        folder: the cache folder.
        device: where `lookup` returns its tensors.
    """

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu") -> None:
        self.folder = Path(folder)
        self.manifest = read_cache_manifest(self.folder)
        self.mode, self.k = self.manifest["mode"], self.manifest["k"]
        self.device = torch.device(device)
        parts = [np.load(unit_path(self.folder, u)) for u in range(self.manifest["num_units"])]
        keys = np.concatenate([p["keys"] for p in parts])
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        first = np.ones(len(keys), dtype=bool)  # a context summarised twice: keep one entry
        first[1:] = keys[1:] != keys[:-1]
        order = order[first]
        self.keys = keys[first]
        self.ids = np.concatenate([p["ids"] for p in parts])[order]
        self.weights = np.concatenate([p["weights"] for p in parts])[order]
        self.logp = np.concatenate([p["logp"] for p in parts])[order]
        self.mass = np.concatenate([p["mass"] for p in parts])[order]

    def __len__(self) -> int:
        return len(self.keys)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.keys, self.ids, self.weights, self.logp, self.mass))

    def lookup(self, keys: torch.Tensor) -> dict[str, torch.Tensor]:
        """Summaries at `keys` [T]: found [T] bool, ids [T, K] int64, weights [T, K], logp [T, K],
        mass [T] (float32; rows not found are zero)."""
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
