"""Count token ids in InternEvo tokenized data: one result file per `.bin`, resumable.

`count_folder(src, dst)` walks `src` (following links) for `.bin` files and writes, for each, a
JSON result into `dst` (named after the file's path below `src`, '/' -> '__', as the seed's step1
does) plus `manifest.json` listing them. Per-file result format:

    {"format": "rethinktiny.token_counts.v1",
     "source": "<relative path>", "source_size": bytes, "source_mtime_ns": int,
     "documents": int, "tokens": int,
     "ids": [id, ...], "counts": [count, ...],           # ids with a non-zero count, ascending
     "malformed_lines": int,        # lines skipped (not counted)
     "meta_mismatches": int,        # lines counted whose token count differs from their .meta row
     "index_problems": int,         # .meta rows that point at no line (no line number)
     "malformed": [{"line": n or null, "reason": "...", "counted": bool}, ...]}   # first 100

A line that is not `{"tokens": [int, ...]}` is never silently dropped (the seed did `except: pass`):
it is counted in `malformed_lines`, listed with its line number, and `strict=True` makes it fatal.
With a `.bin.meta` index the documents are the lines it points at (what InternEvo trains on) and
each line's token count is checked against it (a mismatch is counted and reported). A file whose
result exists with the same size and modification time is not read again, so an interrupted run on
a large corpus resumes.

Completeness: `manifest.json` is removed when a run starts and written last, listing the results
of this run; `vocab merge` requires it, so a failed or still running count is never merged. Only
one count writes a `--dst` at a time (a `.count.lock` with its pid), and a `--dst` holding another
shard's (or another tokenizer's) results is refused without `force`.

Sharding (`shard=(index, count)`, `--shard I/N`): the sorted list of `.bin` paths below `src`
(relative paths, in `find_bin_files` order) is split by position modulo N: shard I counts files
I, I+N, I+2N, ... Each shard writes its own `--dst`; its manifest records the shard, the digest of
the whole file list, the files it counted and the tokenizer's sha256, and `vocab merge --src A
--src B ...` checks the set is complete before summing.

Speed: blocks of lines are checked and all their numbers read with whole-block numpy operations
(`binfast.py`, `binparse.py`); only lines in an unexpected layout go through `json.loads`. Files are
counted by `process_num` worker threads: numpy releases the GIL in its array operations, so threads
use as many cores as processes would, without starting processes or copying results between them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from rethinktiny.artifacts import build_manifest, dumps_json, file_digest, pid_alive, sigterm_raises
from rethinktiny.cpus import available_cpus
from rethinktiny.data.tokenized import read_meta, require_bin_files
from rethinktiny.errors import UserError
from rethinktiny.data.binfast import Workspace
from rethinktiny.data.binparse import META_MISMATCH, parse_bin_file

COUNTS_FORMAT = "rethinktiny.token_counts.v1"
MANIFEST = "manifest.json"
LOCK = ".count.lock"
SHARD_SPLIT = "modulo"  # file k of the sorted list goes to shard k % N
MAX_LISTED_MALFORMED = 100
# Four-character groups of a decimal, by index: "0000".."9999", then "   0".."9999", then "    ".
_SPACE_PADDED, _BLANK = 10000, 20000
_GROUP_TEXT = np.array([b"%04d" % n for n in range(10000)] + [b"%4d" % n for n in range(10000)] + [b"    "],
                       dtype="S4").view(np.uint32)


@dataclass
class FileCounts:
    """Token counts of one `.bin` file and what was wrong with it."""

    source: str
    counts: np.ndarray  # int64 [max id + 1]
    documents: int = 0
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (1-based line, reason)

    @property
    def tokens(self) -> int:
        return int(self.counts.sum())


def result_name(bin_path: Path, src: Path) -> str:
    """Result file name for a `.bin`: its path below `src` with '/' -> '__', plus `.json`."""
    return str(bin_path.relative_to(src)).replace(os.sep, "__") + ".json"


def count_file(path: str | os.PathLike, src: str | os.PathLike | None = None,
               workspace: Workspace | None = None) -> FileCounts:
    """Count token ids in one `.bin` file.

    Args:
        path: the `.bin` file (a `.bin.meta` next to it is used when present).
        src: folder the source name is taken relative to (default: the file's own folder).
        workspace: parse memory to reuse (one per thread); a new one by default.
    """
    path = Path(path)
    counts, parsed = parse_bin_file(path, read_meta(path), workspace=workspace)
    source = str(path.relative_to(src)) if src is not None else path.name
    return FileCounts(source, counts, parsed.documents, parsed.malformed)


def result_json(counted: FileCounts, stat: os.stat_result) -> str:
    """The JSON result of one file (see the module docstring), one line. The id and count lists
    are formatted with numpy (`join_decimal`): `json.dumps` of their tens of thousands of ints cost
    a third of the parse.

    Args:
        counted: the file's counts.
        stat: the file's `os.stat` taken before it was read (a file changed meanwhile is recounted).
    """
    nonzero = np.flatnonzero(counted.counts != 0)  # via bool: five times faster than on int64
    head = {"format": COUNTS_FORMAT, "source": counted.source,
            "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns,
            "documents": counted.documents, "tokens": counted.tokens}
    tail = {**problem_counts(counted.malformed),
            "malformed": [{"line": n or None, "reason": r, "counted": META_MISMATCH in r}
                          for n, r in counted.malformed[:MAX_LISTED_MALFORMED]]}
    compact = dict(separators=(",", ":"), ensure_ascii=False)
    return (f'{json.dumps(head, **compact)[:-1]},"ids":[{join_decimal(nonzero)}],'
            f'"counts":[{join_decimal(counted.counts[nonzero])}],{json.dumps(tail, **compact)[1:]}')


def join_decimal(values: np.ndarray) -> str:
    """The body of a JSON list of non-negative integers, as whole-array operations: each value right
    aligned to the widest with spaces (whitespace JSON allows), so every entry has the same width
    and no per-value work is left. Values are built from a table of four-character groups.

    Args:
        values: integers >= 0 (int64).
    """
    values = np.asarray(values, dtype=np.int64)
    if len(values) == 0:
        return ""
    width = len(str(int(values.max())))
    groups = (width + 3) // 4
    padded = np.empty((len(values), groups), dtype=np.uint32)  # four ASCII characters each
    rest = values
    for group in range(groups - 1, -1, -1):  # least significant first
        quotient = rest // 10000
        index = rest - quotient * 10000
        index += _SPACE_PADDED * (quotient == 0)  # the leading group: "  12", not "0012"
        if group < groups - 1:
            index[rest == 0] = _BLANK  # above the leading group
        padded[:, group] = _GROUP_TEXT[index]
        rest = quotient
    chars = np.empty((len(values), width + 1), dtype=np.uint8)  # the value, then a comma
    chars[:, :width] = padded.view(np.uint8)[:, 4 * groups - width:]
    chars[:, width] = ord(",")
    return chars.tobytes()[:-1].decode("ascii")


def _current_result(result_path: Path, bin_path: Path) -> dict | None:
    """An earlier result, when it is ours and the source still has the same size and mtime."""
    if not result_path.is_file():
        return None
    try:
        body = json.loads(result_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a damaged result is simply counted again
    stat = bin_path.stat()
    current = (isinstance(body, dict) and body.get("format") == COUNTS_FORMAT
               and body.get("source_size") == stat.st_size and body.get("source_mtime_ns") == stat.st_mtime_ns)
    return body if current else None


def problem_counts(malformed: list[tuple[int, str]]) -> dict[str, int]:
    """The problems of one file by kind: lines skipped, lines counted although their `.meta` row
    says another token count, and `.meta` rows that point at no line (reported as line 0)."""
    index = sum(1 for line, _ in malformed if line == 0)
    mismatches = sum(1 for line, reason in malformed if line and META_MISMATCH in reason)
    return {"malformed_lines": len(malformed) - index - mismatches, "meta_mismatches": mismatches,
            "index_problems": index}


def _summary_of(body: dict) -> dict:
    listed = body.get("malformed") or []
    return {"source": body["source"], "documents": body["documents"], "tokens": body["tokens"],
            "malformed_lines": body["malformed_lines"], "meta_mismatches": body.get("meta_mismatches", 0),
            "index_problems": body.get("index_problems", 0),
            "malformed": [(m["line"] or 0, m["reason"]) for m in listed[:1]],
            "max_id": max(body.get("ids") or [-1])}


def check_ids_fit(source: str, max_id: int, vocab_size: int | None, tokenizer: str | None) -> None:
    """An id the tokenizer does not have means the data was tokenized with another tokenizer."""
    if vocab_size is not None and max_id >= vocab_size:
        raise UserError(f"{source}: token id {max_id} is outside the tokenizer {tokenizer} ({vocab_size} ids); "
                        f"was the data tokenized with another tokenizer?")


def _count_job(job: tuple[str, str, str, bool, int | None, str | None], workspace: Workspace) -> dict:
    """Count one file, write its result (unless strict and malformed, or ids beyond the
    tokenizer); return a summary."""
    bin_path, src, result_path, strict, vocab_size, tokenizer = job
    stat = os.stat(bin_path)
    counted = count_file(bin_path, src, workspace)
    if vocab_size is not None and counted.counts.size > vocab_size:  # cheap: counts end at the largest id
        check_ids_fit(bin_path, int(np.flatnonzero(counted.counts)[-1]), vocab_size, tokenizer)
    summary = {"source": counted.source, "documents": counted.documents, "tokens": counted.tokens,
               "malformed": counted.malformed[:1], **problem_counts(counted.malformed)}
    if not (strict and counted.malformed):
        _write_result(Path(result_path), result_json(counted, stat))
    return summary


def _write_result(path: Path, text: str) -> None:
    """Atomic (temporary name, then rename) but without fsync, for results and the manifest: one
    lost in a power cut is unreadable or missing, and the next run counts that file again (and
    writes the manifest again). An fsync per file cost more than counting it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class CountSummary:
    """What `count_folder` did."""

    files: int = 0
    skipped: int = 0  # unchanged since an earlier run
    documents: int = 0
    tokens: int = 0
    malformed_lines: int = 0  # skipped
    meta_mismatches: int = 0  # counted, token count differs from the .meta row
    index_problems: int = 0  # .meta rows pointing at no line
    first_malformed: str | None = None
    results: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # relative paths of the files this run counted

    @property
    def problems(self) -> int:
        return self.malformed_lines + self.meta_mismatches + self.index_problems


def _plan(files: list[Path], src: Path, dst: Path, strict: bool, force: bool, summary: CountSummary,
          vocab: tuple[int | None, str | None] = (None, None)) -> tuple[list, list]:
    """(jobs to run, summaries of results reused from an earlier run)."""
    jobs, reused = [], []
    for bin_path in files:
        name = result_name(bin_path, src)
        summary.results.append(name)
        summary.sources.append(str(bin_path.relative_to(src)))
        earlier = None if force else _current_result(dst / name, bin_path)
        problems = earlier and earlier["malformed_lines"] + earlier.get("meta_mismatches", 0) \
            + earlier.get("index_problems", 0)
        if earlier is not None and not (strict and problems):
            reused.append(_summary_of(earlier))
            check_ids_fit(str(bin_path), reused[-1]["max_id"], *vocab)
        else:
            jobs.append((str(bin_path), str(src), str(dst / name), strict, *vocab))
    summary.files, summary.skipped = len(summary.results), len(reused)
    return jobs, reused


def _run_jobs(jobs: list[tuple], workers: int) -> list[dict]:
    """Count the files in `workers` threads, each with its own parse memory."""
    if workers <= 1 or len(jobs) <= 1:
        workspace = Workspace()
        return [_count_job(job, workspace) for job in tqdm(jobs, desc="count", unit="file", disable=len(jobs) < 2)]
    local, cancel = threading.local(), threading.Event()

    def run(job: tuple) -> dict:
        if not hasattr(local, "workspace"):
            local.workspace = Workspace(cancel=cancel)
        return _count_job(job, local.workspace)

    summaries: list[dict] = []
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool, \
            tqdm(total=len(jobs), desc="count", unit="file") as progress:
        futures = [pool.submit(run, job) for job in jobs]
        try:
            for future in as_completed(futures):
                summaries.append(future.result())
                progress.update()
        except BaseException:  # an error or Ctrl-C: the other workers stop at their next block
            cancel.set()
            for future in futures:
                future.cancel()
            raise
    return summaries


def count_folder(src: str | os.PathLike, dst: str | os.PathLike, process_num: int | None = None,
                 strict: bool = False, force: bool = False,
                 tokenizer: str | os.PathLike | None = None, shard: tuple[int, int] = (0, 1)) -> CountSummary:
    """Count token ids of every `.bin` below `src`; one result per file in `dst`, plus a manifest.

    Args:
        src: InternEvo tokenized data folder (searched recursively, following links).
        dst: result folder (created; results of unchanged files from an earlier run are kept).
        process_num: parallel workers (threads; numpy releases the GIL, so each can use a core;
            default: the CPUs this process may use, `available_cpus`).
        strict: a malformed line is an error (naming file and line) instead of being reported.
        force: recount every file even when an earlier result is current, and replace a `dst`
            holding another shard's or another tokenizer's results.
        tokenizer: the tokenizer the data was made with (SentencePiece model, or a Hugging Face
            tokenizer.json / folder): an id it does not have is an error naming the file, and its
            vocabulary size and sha256 are recorded in the manifest (`vocab prune` and `vocab merge`
            check them).
        shard: (index, count): count only the files of this shard (module docstring, "Sharding").
    """
    src, dst = Path(src), Path(dst)
    index, count = check_shard(shard)
    if dst.exists() and not dst.is_dir():
        raise UserError(f"{dst}: --dst exists and is not a folder")
    all_files = require_bin_files(src)
    vocab = _tokenizer_vocab(tokenizer)
    identity = {"shard": shard_record(index, count), "src": str(src.resolve()),
                "tokenizer_sha256": _tokenizer_sha256(vocab[1])}
    summary = CountSummary()
    dst.mkdir(parents=True, exist_ok=True)
    with sigterm_raises(), _count_lock(dst):
        _check_same_run(dst, identity, force)
        (dst / MANIFEST).unlink(missing_ok=True)  # from here until the end this folder is incomplete
        for partial in dst.glob(".*.partial"):  # `_write_result` temporaries of a killed run (we hold the lock)
            partial.unlink(missing_ok=True)
        jobs, reused = _plan(all_files[index::count], src, dst, strict, force, summary, vocab)
        done = reused + _run_jobs(jobs, process_num or available_cpus())
        for file_summary in sorted(done, key=lambda d: d["source"]):  # first error: same on every run
            _add_to_summary(summary, file_summary)
        if strict and summary.problems:
            raise UserError(f"{summary.first_malformed}: malformed line; {summary.problems} problem(s) "
                            f"in total (--strict)")
        manifest = build_manifest("vocab count", dict(src=str(src), process_num=process_num, strict=strict,
                                                      force=force, tokenizer=vocab[1], shard=f"{index}/{count}"),
                                  extra=_manifest_extra(summary, identity, vocab, all_files, src))
        _write_result(dst / MANIFEST, dumps_json(manifest))  # like the results: no fsync (see there)
    return summary


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    index, count = (int(v) for v in shard)
    if count < 1 or not 0 <= index < count:
        raise UserError(f"--shard {index}/{count}: expected I/N with 0 <= I < N")
    return index, count


def parse_shard(text: str) -> tuple[int, int]:
    """`--shard I/N` -> (I, N)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected I/N, e.g. 0/4 (shard 0 of 4)") from None
    return check_shard((index, count))


def shard_record(index: int, count: int) -> dict:
    return {"index": index, "count": count, "split": SHARD_SPLIT}


def file_list_sha256(files: list[Path], src: Path) -> str:
    """Digest of the relative paths of the whole (unsplit) file list: shards of one count agree."""
    listing = "\n".join(str(path.relative_to(src)) for path in files)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def _manifest_extra(summary: CountSummary, identity: dict, vocab: tuple, all_files: list[Path], src: Path) -> dict:
    extra = {"complete": True, "results": summary.results, "files": summary.sources, "totals": _totals(summary),
             "shard": identity["shard"],
             "file_list": {"files": len(all_files), "sha256": file_list_sha256(all_files, src)}}
    if vocab[1] is not None:
        extra["tokenizer"] = {"path": vocab[1], "vocab_size": vocab[0], "sha256": identity["tokenizer_sha256"]}
    return extra


def _tokenizer_sha256(path: str | None) -> str | None:
    return None if path is None else file_digest(path)


def _check_same_run(dst: Path, identity: dict, force: bool) -> None:
    """A `dst` holding the results of another shard, source or tokenizer is refused (its manifest
    would be replaced and merge would lose those results) unless `force`."""
    manifest = dst / MANIFEST
    if force or not manifest.is_file():
        return
    try:
        body = json.loads(manifest.read_text(encoding="utf-8"))
        shard = body.get("shard") or shard_record(0, 1)
        earlier = {"shard": shard_record(int(shard["index"]), int(shard["count"])),
                   "src": str(Path(body["args"]["src"]).resolve()),
                   "tokenizer_sha256": (body.get("tokenizer") or {}).get("sha256")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # not a count manifest we can read: it is replaced like a partial result
    if body.get("tokenizer") and "sha256" not in body["tokenizer"]:
        earlier["tokenizer_sha256"] = identity["tokenizer_sha256"]  # recorded before digests were
    for key, what in (("shard", "shard"), ("src", "source folder"), ("tokenizer_sha256", "tokenizer")):
        if earlier[key] != identity[key]:
            raise UserError(f"{dst}: holds the count of another {what} ({_describe(key, earlier[key])}, this run: "
                            f"{_describe(key, identity[key])}); give each count its own --dst, or --force to replace")


def _describe(key: str, value) -> str:
    if key == "shard":
        return f"shard {value['index']}/{value['count']}"
    if key == "tokenizer_sha256":
        return "no --tokenizer" if value is None else f"sha256 {value[:12]}"
    return str(value)


@contextlib.contextmanager
def _count_lock(dst: Path) -> Iterator[None]:
    """One `vocab count` per `dst` at a time: a second one would rewrite the first one's manifest.
    The lock file appears with its owner already in it (written aside, then hard-linked into place,
    which fails when it exists); one left by a dead process of this host is taken over."""
    lock = dst / LOCK
    mine = dst / f"{LOCK}.{os.getpid()}"
    mine.write_text(f"{os.getpid()} {socket.gethostname()}\n", encoding="utf-8")
    try:
        for _ in range(2):
            try:
                os.link(mine, lock)
                break
            except FileExistsError:
                if not _stale_lock(lock):
                    holder = lock.read_text(encoding="utf-8", errors="replace").strip() or "?"
                    raise UserError(f"{dst}: another `vocab count` (pid, host: {holder}) is writing this folder; "
                                    f"wait for it, or remove {lock} if that process is gone") from None
                lock.unlink(missing_ok=True)
        else:
            raise UserError(f"{lock}: could not take the lock")
    finally:
        mine.unlink(missing_ok=True)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _stale_lock(lock: Path) -> bool:
    try:
        pid, host = lock.read_text(encoding="utf-8").split()
        pid = int(pid)
    except FileNotFoundError:
        return True  # released meanwhile
    except (OSError, ValueError):
        return False  # not ours to judge: the message names the file to remove
    if host != socket.gethostname():
        return False  # on a shared file system it may be alive there
    return not pid_alive(pid)


def _tokenizer_vocab(tokenizer: str | os.PathLike | None) -> tuple[int | None, str | None]:
    """(vocabulary size, tokenizer file) of `--tokenizer`, or (None, None) without one."""
    if tokenizer is None:
        return None, None
    from rethinktiny.tokenizer import load_tokenizer

    loaded = load_tokenizer(tokenizer)
    return loaded.vocab_size, str(loaded.path)


def _add_to_summary(summary: CountSummary, done: dict) -> None:
    summary.documents += done["documents"]
    summary.tokens += done["tokens"]
    summary.malformed_lines += done["malformed_lines"]
    summary.meta_mismatches += done.get("meta_mismatches", 0)
    summary.index_problems += done.get("index_problems", 0)
    if done["malformed"] and summary.first_malformed is None:
        line, reason = done["malformed"][0]
        where = f"{done['source']}:{line}" if line else done["source"]  # line 0: the file's .meta, no line
        summary.first_malformed = f"{where} ({reason})"


def _totals(summary: CountSummary) -> dict:
    return {"files": summary.files, "skipped_unchanged": summary.skipped, "documents": summary.documents,
            "tokens": summary.tokens, "malformed_lines": summary.malformed_lines,
            "meta_mismatches": summary.meta_mismatches, "index_problems": summary.index_problems}
