"""Vectorised parsing of InternEvo `.bin` token files: every number of a file in a few numpy passes.

A `.bin` line is JSON, but nearly every line is in one of the two shapes the writers produce:

    {"tokens":[1,2,3]}        (BinWriter, compact separators)
    {"tokens": [1, 2, 3]}     (InternEvo's tokenizer tool, json.dumps defaults)

`parse_bin` finds every run of digits in the file at once, reads their values eight bytes at a
time, and checks each line against those shapes from the runs alone (prefix, the numbers filling
the body, exactly "," or ", " between two numbers, no leading zeros, "]}" at the end). Any other
line goes through `json.loads` (`parse_tokens`), so valid JSON in another layout still counts and a
broken line is reported with its number, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rethinktiny.data.tokenized import parse_tokens

PREFIXES = (b'{"tokens":[', b'{"tokens": [')
SUFFIX = b"]}"
_COMMA, _SPACE, _ZERO, _NINE = 44, 32, 48, 57
MAX_FAST_DIGITS = 8  # numbers up to 8 digits are assembled 8 bytes at a time (SWAR)
# For a number of L digits, the mask keeping the last L bytes of the 8-byte word that ends with it.
_KEEP = np.array([0] + [((1 << (8 * n)) - 1) << (8 * (8 - n)) for n in range(1, 9)], dtype=np.uint64)
_ASCII_ZEROS = np.uint64(0x3030303030303030)
# (multiplier, shift, mask): 8 one-digit bytes -> 4 two-digit lanes -> 2 four-digit -> 1 eight-digit
_SWAR_STEPS = ((10, 8, 0x00FF00FF00FF00FF), (100, 16, 0x0000FFFF0000FFFF), (10000, 32, 0xFFFFFFFF))
BLOCK_BYTES = 64 << 20  # parse 64 MiB of lines at a time: peak memory about ten times that
MAX_META_REPORTS = 100


@dataclass
class ParsedBin:
    """All token ids of the counted lines, plus what was wrong."""

    ids: np.ndarray  # int64, every token of every counted document
    documents: int
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (1-based line, reason)


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


def _digit_values(buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Values of the digit runs [starts, ends): each run's last 8 bytes read as one little-endian
    word, the bytes before the run masked off, then digits combined pairwise in 3 multiply-adds.
    Operations write in place: fresh temporaries would double the time."""
    padded = np.concatenate([np.zeros(8, np.uint8), buffer, np.zeros(8, np.uint8)])
    v = np.ndarray(shape=(len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))[ends]
    keep = _KEEP[np.minimum(ends - starts, MAX_FAST_DIGITS)]
    np.bitwise_and(v, keep, out=v)
    np.bitwise_and(keep, _ASCII_ZEROS, out=keep)
    np.subtract(v, keep, out=v)  # masked first, so no borrow from a neighbouring byte
    scratch = keep
    for factor, shift, mask in _SWAR_STEPS:
        np.right_shift(v, np.uint64(shift), out=scratch)
        np.multiply(v, np.uint64(factor), out=v)
        np.add(v, scratch, out=v)
        np.bitwise_and(v, np.uint64(mask), out=v)
    values = v.view(np.int64)
    for i in np.flatnonzero(ends - starts > MAX_FAST_DIGITS):  # absurdly large ids: exact, one by one
        values[i] = min(int(bytes(buffer[starts[i]:ends[i]])), np.iinfo(np.int64).max)
    return values


def _numbers(buffer: np.ndarray, lines: _Lines) -> _Numbers:
    is_digit = ((buffer - np.uint8(_ZERO)) < 10).view(np.int8)  # one pass: bytes below '0' wrap
    edges = np.diff(is_digit)
    starts, ends = np.flatnonzero(edges == 1) + 1, np.flatnonzero(edges == -1) + 1
    if len(is_digit) and is_digit[0]:  # only a malformed file starts or ends with a digit
        starts = np.concatenate([[0], starts])
    if len(is_digit) and is_digit[-1]:
        ends = np.concatenate([ends, [len(is_digit)]])
    first_of_line = np.searchsorted(starts, np.append(lines.starts, len(buffer)))
    return _Numbers(starts, ends, _digit_values(buffer, starts, ends), first_of_line)


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
    bad = np.concatenate([np.flatnonzero(~gap_ok), _bad_numbers(buffer, numbers)])
    fast[_lines_of(bad, numbers)] = False
    return fast


def _bad_numbers(buffer: np.ndarray, numbers: _Numbers) -> np.ndarray:
    """Indices of numbers JSON rejects (leading zero) or int64 cannot hold (over 18 digits)."""
    lengths = numbers.ends - numbers.starts
    return np.flatnonzero(((buffer[numbers.starts] == _ZERO) & (lengths > 1)) | (lengths > 18))


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
    buffer = np.frombuffer(data, dtype=np.uint8)
    lines = _split_lines(buffer)
    malformed: list[tuple[int, str]] = []
    if lines.count == 0:
        return ParsedBin(np.zeros(0, dtype=np.int64), 0, malformed)
    numbers = _numbers(buffer, lines)
    fast = _fast_lines(buffer, lines, numbers)
    selected, expected = _selected_lines(lines, meta, meta_rows, malformed)
    per_line = np.diff(numbers.first_of_line)
    counted = fast & selected
    ids = [numbers.values if counted.all() else numbers.values[np.repeat(counted, per_line)]]
    mismatch = counted & (expected >= 0) & (expected != per_line)
    for n in np.flatnonzero(mismatch):
        malformed.append((int(n) + first_line, f"{per_line[n]} tokens but the .meta index says {expected[n]}"))
    documents = int(counted.sum())
    for n in np.flatnonzero(~fast & selected):
        line = data[lines.starts[n]:lines.ends[n]]
        documents += _slow_line(int(n) + first_line, line, int(expected[n]), ids, malformed)
    return ParsedBin(ids[0] if len(ids) == 1 else np.concatenate(ids), documents, malformed)


def iter_line_blocks(path, block_bytes: int = BLOCK_BYTES):
    """(byte offset, first line number, bytes) of consecutive blocks of whole lines of a file, so
    memory stays bounded by the block size on multi-GB shards."""
    offset, line, carry = 0, 1, b""
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            data = carry + block
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # a line longer than the block: keep reading
                carry = data
                continue
            yield offset, line, data[:cut]
            offset, line, carry = offset + cut, line + data.count(b"\n", 0, cut), data[cut:]
    if carry:
        yield offset, line, carry


def parse_bin_file(path, meta: np.ndarray | None = None,
                   block_bytes: int = BLOCK_BYTES) -> tuple[np.ndarray, ParsedBin]:
    """Counts (dense, index = id) and the parse report of a whole `.bin` file, block by block.

    Args:
        path: the `.bin` file.
        meta: its `.bin.meta` index, or None.
        block_bytes: bytes parsed at a time.
    """
    counts = np.zeros(1, dtype=np.int64)
    documents, malformed = 0, []
    order = None if meta is None else np.argsort(meta[:, 0], kind="stable")
    used = 0
    for offset, first_line, data in iter_line_blocks(path, block_bytes):
        rows = None
        if order is not None:
            lo, hi = np.searchsorted(meta[order, 0], [offset, offset + len(data)])
            rows, used = order[lo:hi], used + hi - lo
        part_meta = None if rows is None else meta[rows] - np.array([offset, 0])
        parsed = parse_bin(data, part_meta, first_line, rows)
        block_counts = np.bincount(parsed.ids, minlength=1)
        counts = _add_counts(counts, block_counts)
        documents += parsed.documents
        malformed.extend(parsed.malformed)
    if meta is not None and used < len(meta):
        malformed.append((0, f".meta has {len(meta) - used} row(s) pointing past the end of the file"))
    return counts, ParsedBin(np.zeros(0, dtype=np.int64), documents, sorted(malformed))


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
    except ValueError as err:
        malformed.append((number, str(err)))
        return 0
    if expected >= 0 and expected != len(tokens):
        malformed.append((number, f"{len(tokens)} tokens but the .meta index says {expected}"))
    ids.append(np.asarray(tokens, dtype=np.int64))
    return 1
