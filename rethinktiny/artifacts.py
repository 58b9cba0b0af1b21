"""Output folders that are never half-written, and the manifest every one of them carries.

Every command that writes a folder goes through `output_dir`: it builds the result under a
temporary sibling name and renames it into place only when the body finished without an
exception, so a crash or a bad input leaves nothing behind. An existing destination is refused
unless `force=True`.

Temporary names are `.<dst>.tmp-<pid>-<counter>-<host>`. SIGTERM (what `kill` and Slurm's
`scancel` send) is turned into an exception while a folder is being built, so the temporary
folder is removed as on any other failure (SIGINT already raises KeyboardInterrupt). What SIGKILL
or a power cut leaves behind is removed by the next `output_dir` for the same destination: a
temporary whose process is no longer alive on this host.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from rethinktiny.errors import UserError


TERMINATED_EXIT = 128 + signal.SIGTERM  # the status a shell reports for a process ended by SIGTERM


def _host() -> str:
    return socket.gethostname().split(".")[0].replace("-", "_") or "host"


def sibling_tmp(dst: Path, tag: str) -> Path:
    return dst.with_name(f".{dst.name}.{tag}-{os.getpid()}-{int(time.time() * 1e6) % 10**9}-{_host()}")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host exists (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(dst: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `dst` left by processes of this host that are no longer alive
    (killed with SIGKILL, or a power cut). A temporary of another host is kept: on a shared file
    system its process may be alive there. Returns what was removed.

    Args:
        dst: the destination whose `.<name>.tmp-<pid>-...` / `.<name>.old-<pid>-...` siblings to check.
    """
    dst = Path(dst)
    if not dst.parent.is_dir():
        return []
    removed = []
    for path in dst.parent.glob(f".{glob_escape(dst.name)}.*-*-*"):
        owner = _temporary_owner(path.name[len(dst.name) + 2:])
        if owner is None or owner[1] != _host() or owner[0] == os.getpid() or pid_alive(owner[0]):
            continue
        if path.name.startswith(f".{dst.name}.old-") and not dst.exists():
            os.replace(path, dst)  # killed between its two renames: the old result goes back
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _temporary_owner(suffix: str) -> tuple[int, str] | None:
    """(pid, host) of a `tmp-<pid>-<counter>-<host>` / `old-...` suffix; None for anything else."""
    parts = suffix.split("-")
    if len(parts) != 4 or parts[0] not in ("tmp", "old") or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return int(parts[1]), parts[3]


class Terminated(SystemExit):
    """SIGTERM arrived: unwinds like any exception (temporaries are removed), exits with 143."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(TERMINATED_EXIT)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the body runs, SIGTERM raises `Terminated` instead of killing the process outright,
    so `finally` blocks and `except BaseException` clean-ups run. A handler someone else installed
    (a launcher forwarding signals to its ranks) is left alone, as is any thread but the main one."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


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
    remove_stale_temporaries(dst)  # first: it may put back an old result a killed run had moved aside
    dst = check_writable(dst, force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with sigterm_raises():
        tmp = sibling_tmp(dst, "tmp")
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    old = None
    if dst.exists():
        # Move the old result aside first so a failure between the renames loses nothing.
        old = sibling_tmp(dst, "old")
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def check_not_an_input(dst: str | os.PathLike, inputs: dict[str, str | os.PathLike | None],
                       flag: str = "--dst") -> Path:
    """Refuse an output that is one of the inputs or a folder holding one (replacing it, even with
    `--force`, would delete the input). Links are resolved.

    Args:
        dst: the output file or folder.
        inputs: the command's inputs by flag; None values are skipped.
        flag: the output's flag, for the message.
    """
    dst = Path(dst)
    resolved = dst.resolve()
    for name, given in inputs.items():
        if given is None:
            continue
        source = Path(given).resolve()
        if source == resolved:
            raise UserError(f"{dst}: {flag} is the same file as {name}; refusing to write over an input")
        if resolved in source.parents:
            raise UserError(f"{dst}: {flag} holds {name} ({given}); replacing it would delete an input")
    return dst


def check_output_file(path: str | os.PathLike, force: bool, inputs: dict[str, str | os.PathLike | None],
                      flag: str = "--out") -> Path:
    """Refuse, before any work, an output file that exists (unless `force`) or that is one of the
    command's own inputs (always: `--force` must not turn a typo into a lost input).

    Args:
        path: the output file.
        force: allow replacing an existing file that is not an input.
        inputs: the command's inputs by flag (`{"--data": path}`); None values are skipped.
        flag: the output's flag, for the message.
    """
    path = check_not_an_input(path, inputs, flag)
    if path.is_dir():
        raise UserError(f"{path}: {flag} is a folder, expected a file name")
    return check_writable(path, force)


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
