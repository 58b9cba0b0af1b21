"""Output folders that are never half-written, and the manifest every one of them carries.

Every command that writes a folder goes through `output_dir`: it builds the result under a
temporary sibling name and renames it into place only when the body finished without an
exception, so a crash or a bad input leaves nothing behind. An existing destination is refused
unless `force=True`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from rethinktiny.errors import UserError


def _sibling_tmp(dst: Path, tag: str) -> Path:
    return dst.with_name(f".{dst.name}.{tag}-{os.getpid()}-{int(time.time() * 1e6) % 10**9}")


def check_writable(dst: str | os.PathLike, force: bool) -> Path:
    """Fail early (before any work) when `dst` exists and `force` is off."""
    dst = Path(dst)
    if dst.exists() and not force:
        raise UserError(f"{dst}: output exists; pass --force to overwrite")
    return dst


@contextlib.contextmanager
def output_dir(dst: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that replaces `dst` atomically when the body succeeds.

    Args:
        dst: final folder path.
        force: replace an existing `dst`; otherwise an existing `dst` is an error.
    """
    dst = check_writable(dst, force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling_tmp(dst, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dst.exists():
        # Move the old result aside first so a failure between the renames loses nothing.
        old = _sibling_tmp(dst, "old")
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def write_file_atomic(path: str | os.PathLike, data: bytes | str, force: bool = True) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, then rename."""
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{path}: output exists; pass --force to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def dumps_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, fixed indent) so equal inputs give equal bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=_json_default) + "\n"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_file_atomic(path, dumps_json(obj))


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks (inputs can be many GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def input_digests(paths: dict[str, str | os.PathLike | None], max_files: int = 64) -> dict[str, Any]:
    """Digest each named input: a file's sha256, or for a folder the sha256 of its sorted
    (relative path, size) listing — cheap and still changes when files are added or resized."""
    out: dict[str, Any] = {}
    for name, p in paths.items():
        if p is None:
            continue
        p = Path(p)
        if p.is_file():
            out[name] = {"path": str(p), "sha256": file_digest(p)}
        elif p.is_dir():
            listing = sorted(
                (str(f.relative_to(p)), f.stat().st_size) for f in p.rglob("*") if f.is_file()
            )
            h = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
            out[name] = {"path": str(p), "listing_sha256": h, "files": len(listing)}
    return out


@functools.lru_cache(maxsize=1)
def _installed_versions() -> tuple[tuple[str, str], ...]:
    from importlib import metadata

    found = [("python", platform.python_version())]
    for dist in ("torch", "numpy", "sentencepiece", "tokenizers", "internevo", "transformers", "rethinktiny"):
        try:
            found.append((dist, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            continue
    return tuple(found)


def versions() -> dict[str, str]:
    """Installed versions of the libraries that decide what a result contains (read from package
    metadata, so the answer does not depend on what this process happened to import)."""
    return dict(_installed_versions())


def build_manifest(command: str, args: dict[str, Any], inputs: dict[str, Any] | None = None,
                   seed: int | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest.json body. No timestamps: the same inputs must give the same bytes."""
    manifest = {
        "command": command,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()},
        "inputs": input_digests(inputs or {}),
        "seed": seed,
        "versions": versions(),
    }
    if extra:
        manifest.update(extra)
    return manifest


def write_manifest(folder: str | os.PathLike, command: str, args: dict[str, Any],
                   inputs: dict[str, Any] | None = None, seed: int | None = None,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write `folder/manifest.json`. See `build_manifest`."""
    return write_json(Path(folder) / "manifest.json", build_manifest(command, args, inputs, seed, extra))
