"""Parsing of InternEvo `.bin` token files: every number of a block of lines in a few numpy passes.

A `.bin` line is JSON, but nearly every line is in one of the two shapes the writers produce:

    {"tokens":[1,2,3]}        (BinWriter, compact separators)
    {"tokens": [1, 2, 3]}     (InternEvo's tokenizer tool, json.dumps defaults)

A file is read in blocks of whole lines into reusable memory. A block whose lines are all in those
shapes (and agree with the `.bin.meta` index) is checked and read as a whole by `binfast` — the
usual case. Any other block is parsed here line by line: every run of digits is found at once, each
line is checked against the two shapes from the runs alone (prefix, the numbers filling the body,
exactly "," or ", " between two numbers, no leading zeros, "]}" at the end), and any other line goes
through `json.loads` (`parse_tokens`), so valid JSON in another layout still counts and a broken
line is reported with its number, never dropped. Token ids over MAX_TOKEN_ID are reported too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rethinktiny.data.tokenized import parse_tokens
from rethinktiny.data.binfast import (BLOCK_BYTES, MAX_TOKEN_ID, Block, Workspace, iter_line_blocks,
                                       load_block, parse_clean_block, word_values)

PREFIXES = (b'{"tokens":[', b'{"tokens": [')
SUFFIX = b"]}"
_COMMA, _SPACE, _ZERO = 44, 32, 48
MAX_DIGITS = 8  # MAX_TOKEN_ID has 8 digits: a longer number is reported without computing its value
_SMALLEST = np.array([0, 0] + [10 ** (n - 1) for n in range(2, MAX_DIGITS + 1)], dtype=np.uint64)
MAX_META_REPORTS = 100
# The reason of a line whose tokens are counted although its .meta row says another number.
META_MISMATCH = "tokens but the .meta index says"


@dataclass
class ParsedBin:
    """All token ids of the counted lines, plus what was wrong."""

    ids: np.ndarray  # int64, every token of every counted document
    documents: int
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (1-based line, reason)
    lines: int = 0  # lines in the parsed bytes, blank ones included


@dataclass
class _Lines:
    starts: np.ndarray  # byte offset of each line
    ends: np.ndarray  # offset of its newline (or end of data)

    @property
    def count(self) -> int:
        return len(self.starts)


@dataclass
class _Numbers:
    starts: np.ndarray  # byte offset where each digit run starts
    ends: np.ndarray  # offset just after it
    values: np.ndarray  # int64
    first_of_line: np.ndarray  # index of each line's first number; numbers of line i: [first[i], first[i+1])


def _split_lines(buffer: np.ndarray) -> _Lines:
    newlines = np.flatnonzero(buffer == ord("\n"))
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(buffer)]])
    if starts[-1] == len(buffer):  # nothing after the final newline
        starts, ends = starts[:-1], ends[:-1]
    return _Lines(starts.astype(np.int64), ends.astype(np.int64))


def _numbers(block: Block, lines: _Lines, workspace: Workspace) -> _Numbers:
    buffer = block.data
    is_digit = ((buffer - np.uint8(_ZERO)) < 10).view(np.int8)  # one pass: bytes below '0' wrap
    edges = np.diff(is_digit)
    starts, ends = np.flatnonzero(edges == 1) + 1, np.flatnonzero(edges == -1) + 1
    if len(is_digit) and is_digit[0]:  # only a malformed file starts or ends with a digit
        starts = np.concatenate([[0], starts])
    if len(is_digit) and is_digit[-1]:
        ends = np.concatenate([ends, [len(is_digit)]])
    first_of_line = np.searchsorted(starts, np.append(lines.starts, len(buffer)))
    values = word_values(block.words, ends, ends - starts, workspace).copy()  # the workspace's is reused
    return _Numbers(starts, ends, values, first_of_line)


def _lines_of(indices: np.ndarray, numbers: _Numbers) -> np.ndarray:
    """Line of each number index."""
    return np.searchsorted(numbers.first_of_line, indices, side="right") - 1


def _prefix_length(padded: np.ndarray, lines: _Lines) -> np.ndarray:
    """Length of the fast-shape prefix each line starts with, 0 when it has neither."""
    found = np.zeros(lines.count, dtype=np.int64)
    for prefix in PREFIXES:
        expected = np.frombuffer(prefix, dtype=np.uint8)
        window = padded[lines.starts[:, None] + np.arange(len(prefix))]
        found[(window == expected).all(axis=1) & (lines.ends - lines.starts >= len(prefix) + 2)] = len(prefix)
    return found


def _fast_lines(buffer: np.ndarray, lines: _Lines, numbers: _Numbers) -> np.ndarray:
    """Boolean per line: `{"tokens":[...]}` in a fast shape whose body is exactly numbers joined by
    "," or ", ", without leading zeros. Checked on the digit runs only, not byte by byte."""
    padded = np.concatenate([buffer, np.zeros(16, dtype=np.uint8)])
    prefix = _prefix_length(padded, lines)
    fast = (prefix > 0) & (padded[lines.ends - 2] == SUFFIX[0]) & (padded[lines.ends - 1] == SUFFIX[1])
    body_start, body_end = lines.starts + prefix, lines.ends - len(SUFFIX)
    starts, ends = numbers.starts, numbers.ends
    if len(starts) == 0:
        return fast & (body_start == body_end)
    has = np.diff(numbers.first_of_line) > 0
    first = np.minimum(numbers.first_of_line[:-1], len(starts) - 1)
    last = np.maximum(numbers.first_of_line[1:] - 1, 0)
    # The numbers fill the body: the first starts right after the prefix, the last ends at "]}".
    fast &= np.where(has, (starts[first] == body_start) & (ends[last] == body_end), body_start == body_end)
    # Between two numbers of a line: exactly "," or ", ".
    gap = starts[1:] - ends[:-1]
    after = padded[ends[:-1]], padded[ends[:-1] + 1]
    gap_ok = (after[0] == _COMMA) & ((gap == 1) | ((gap == 2) & (after[1] == _SPACE)))
    gap_ok[last[has & (last < len(gap_ok))]] = True  # the pair across a line break is not a gap
    bad = np.concatenate([np.flatnonzero(~gap_ok), _bad_numbers(numbers)])
    fast[_lines_of(bad, numbers)] = False
    return fast


def _bad_numbers(numbers: _Numbers) -> np.ndarray:
    """Indices of numbers JSON rejects (leading zero) or over MAX_TOKEN_ID: their lines go through
    json, which reports them."""
    lengths = numbers.ends - numbers.starts
    too_small = numbers.values < _SMALLEST[np.minimum(lengths, MAX_DIGITS)]
    return np.flatnonzero((lengths > MAX_DIGITS) | too_small | (numbers.values > MAX_TOKEN_ID))


def _selected_lines(lines: _Lines, meta: np.ndarray | None, rows: np.ndarray | None,
                    malformed: list) -> tuple[np.ndarray, np.ndarray]:
    """(which lines are documents, expected token count per line or -1) — all lines without meta."""
    expected = np.full(lines.count, -1, dtype=np.int64)
    if meta is None:
        return np.ones(lines.count, dtype=bool), expected
    line_index = np.searchsorted(lines.starts, meta[:, 0])
    at_start = (line_index < lines.count) & (lines.starts[np.minimum(line_index, lines.count - 1)] == meta[:, 0])
    rows = np.arange(len(meta)) if rows is None else rows
    for row in np.flatnonzero(~at_start)[:MAX_META_REPORTS]:
        malformed.append((0, f".meta row {rows[row]}: offset points inside a line"))
    selected = np.zeros(lines.count, dtype=bool)
    selected[line_index[at_start]] = True
    expected[line_index[at_start]] = meta[at_start, 1]
    return selected, expected


def parse_bin(data: bytes, meta: np.ndarray | None = None, first_line: int = 1,
              meta_rows: np.ndarray | None = None) -> ParsedBin:
    """Token ids of the documents in `data`, whole lines of a `.bin` file.

    Args:
        data: the bytes (complete lines).
        meta: `.bin.meta` rows for these bytes ([n, 2] of byte offset into `data`, token count), or
            None: then every non-blank line is a document. With rows, only the lines they point at are.
        first_line: line number of the first line of `data` in its file (for messages).
        meta_rows: row numbers of `meta` in the file's index (for messages).
    """
    workspace = Workspace(len(data))
    return parse_block(load_block(data, workspace), workspace, meta, first_line, meta_rows)


def parse_block(block: Block, workspace: Workspace, meta: np.ndarray | None = None, first_line: int = 1,
                meta_rows: np.ndarray | None = None) -> ParsedBin:
    """`parse_bin` of a block already in memory: the whole-block fast path when it is clean, else
    line by line. The ids may live in `workspace` (valid until its next use)."""
    clean = parse_clean_block(block, workspace, meta)
    if clean is not None:
        ids, lines = clean
        return ParsedBin(ids, lines, [], lines)
    return _parse_lines(block, workspace, meta, first_line, meta_rows)


def _parse_lines(block: Block, workspace: Workspace, meta: np.ndarray | None, first_line: int,
                 meta_rows: np.ndarray | None) -> ParsedBin:
    """Line by line: lines in a fast shape from the digit runs, the others through json."""
    buffer = block.data
    lines = _split_lines(buffer)
    malformed: list[tuple[int, str]] = []
    if lines.count == 0:
        return ParsedBin(np.zeros(0, dtype=np.int64), 0, malformed, 0)
    numbers = _numbers(block, lines, workspace)
    fast = _fast_lines(buffer, lines, numbers)
    selected, expected = _selected_lines(lines, meta, meta_rows, malformed)
    per_line = np.diff(numbers.first_of_line)
    counted = fast & selected
    values = numbers.values.view(np.int64)
    ids = [values if counted.all() else values[np.repeat(counted, per_line)]]
    mismatch = counted & (expected >= 0) & (expected != per_line)
    for n in np.flatnonzero(mismatch):
        malformed.append((int(n) + first_line, f"{per_line[n]} {META_MISMATCH} {expected[n]}"))
    documents = int(counted.sum())
    for n in np.flatnonzero(~fast & selected):
        line = buffer[lines.starts[n]:lines.ends[n]].tobytes()
        documents += _slow_line(int(n) + first_line, line, int(expected[n]), ids, malformed)
    return ParsedBin(ids[0] if len(ids) == 1 else np.concatenate(ids), documents, malformed, lines.count)


def parse_bin_file(path, meta: np.ndarray | None = None, block_bytes: int = BLOCK_BYTES,
                   workspace: Workspace | None = None) -> tuple[np.ndarray, ParsedBin]:
    """Counts (dense, index = id) and the parse report of a whole `.bin` file, block by block.

    Args:
        path: the `.bin` file.
        meta: its `.bin.meta` index, or None.
        block_bytes: bytes parsed at a time.
        workspace: memory reused between blocks and files (one per thread); a new one by default.
    """
    workspace = workspace or Workspace(block_bytes)
    counts = np.zeros(1, dtype=np.int64)
    documents, malformed, line = 0, [], 1
    order = None if meta is None else np.argsort(meta[:, 0], kind="stable")
    offsets = None if order is None else meta[order, 0]
    used = 0
    for block in iter_line_blocks(path, workspace, block_bytes):
        rows = None
        if order is not None:
            lo, hi = np.searchsorted(offsets, [block.offset, block.offset + len(block.data)])
            rows, used = order[lo:hi], used + hi - lo
        part_meta = None if rows is None else meta[rows] - np.array([block.offset, 0])
        parsed = parse_block(block, workspace, part_meta, line, rows)
        counts = _add_counts(counts, np.bincount(parsed.ids, minlength=1))
        documents, line = documents + parsed.documents, line + parsed.lines
        malformed.extend(parsed.malformed)
    if meta is not None and used < len(meta):
        malformed.append((0, f".meta has {len(meta) - used} row(s) pointing past the end of the file"))
    return counts, ParsedBin(np.zeros(0, dtype=np.int64), documents, sorted(malformed), line - 1)


def _add_counts(total: np.ndarray, part: np.ndarray) -> np.ndarray:
    if len(part) > len(total):
        total, part = part.astype(np.int64), total
    total[:len(part)] += part
    return total


def _slow_line(number: int, line: bytes, expected: int, ids: list, malformed: list) -> int:
    """Parse one line with json; returns 1 when it is a document, 0 for a blank or broken line."""
    if not line.strip():
        return 0
    try:
        tokens = parse_tokens(line)
        if any(t < 0 for t in tokens):
            raise ValueError("negative token id")
        if any(t > MAX_TOKEN_ID for t in tokens):  # a dense count array that large is no tokenizer's
            raise ValueError(f"token id {max(tokens)} over {MAX_TOKEN_ID}")
    except ValueError as err:
        malformed.append((number, str(err)))
        return 0
    if expected >= 0 and expected != len(tokens):
        malformed.append((number, f"{len(tokens)} {META_MISMATCH} {expected}"))
    ids.append(np.asarray(tokens, dtype=np.int64))
    return 1
