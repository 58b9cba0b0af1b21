"""Vectorised parsing of InternEvo `.bin` token files: every number of a file in a few numpy passes.

A `.bin` line is JSON, but nearly every line is in one of the two shapes the writers produce:

    {"tokens":[1,2,3]}        (BinWriter, compact separators)
    {"tokens": [1, 2, 3]}     (InternEvo's tokenizer tool, json.dumps defaults)

`parse_bin` checks each line against those shapes with whole-file byte masks (prefix, suffix,
allowed bytes, every comma followed by a number, no leading zeros) and reads all numbers of the
lines that pass at once. Any other line goes through `json.loads` (`parse_tokens`), so valid JSON in
another layout still counts and a broken line is reported with its number, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rethinktiny.data.tokenized import parse_tokens

PREFIXES = (b'{"tokens":[', b'{"tokens": [')
SUFFIX = b"]}"
_NEWLINE, _COMMA, _SPACE, _ZERO, _NINE = 10, 44, 32, 48, 57
_DIGITS_ONLY = bytes(c if _ZERO <= c <= _NINE else _SPACE for c in range(256))


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


def _split_lines(buffer: np.ndarray) -> _Lines:
    newlines = np.flatnonzero(buffer == _NEWLINE)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(buffer)]])
    if starts[-1] == len(buffer):  # nothing after the final newline
        starts, ends = starts[:-1], ends[:-1]
    return _Lines(starts.astype(np.int64), ends.astype(np.int64))


def _prefix_length(padded: np.ndarray, lines: _Lines) -> np.ndarray:
    """Length of the fast-shape prefix each line starts with, 0 when it has neither."""
    found = np.zeros(lines.count, dtype=np.int64)
    for prefix in PREFIXES:
        expected = np.frombuffer(prefix, dtype=np.uint8)
        window = padded[lines.starts[:, None] + np.arange(len(prefix))]
        found[(window == expected).all(axis=1) & (lines.ends - lines.starts >= len(prefix) + 2)] = len(prefix)
    return found


def _per_line(positions: np.ndarray, lines: _Lines) -> np.ndarray:
    """How many of the sorted byte `positions` fall in each line."""
    before = np.searchsorted(positions, np.append(lines.starts, lines.ends[-1] + 1 if lines.count else 0))
    return np.diff(before)


def _line_of(positions: np.ndarray, lines: _Lines) -> np.ndarray:
    return np.searchsorted(lines.starts, positions, side="right") - 1


@dataclass
class _Numbers:
    positions: np.ndarray  # byte offset where each number starts
    values: np.ndarray  # int64
    bad: np.ndarray  # bool: leading zero or too long for int64


def _numbers(data: bytes, is_digit: np.ndarray) -> _Numbers:
    digit = is_digit.view(np.int8)
    starts = np.flatnonzero(digit[1:] > digit[:-1]) + 1
    ends = np.flatnonzero(digit[1:] < digit[:-1]) + 1
    if len(digit) and digit[0]:
        starts = np.concatenate([[0], starts])
    if len(digit) and digit[-1]:
        ends = np.concatenate([ends, [len(digit)]])
    lengths = ends - starts
    # Every non-digit byte becomes a space; numpy's text parser then reads all numbers in one call
    # (faster than assembling digits with array arithmetic).
    values = np.fromstring(data.translate(_DIGITS_ONLY), dtype=np.int64, sep=" ")
    if len(values) != len(starts):  # cannot happen for digit runs; kept as a guard
        raise ValueError(f"parsed {len(values)} numbers from {len(starts)} digit runs")
    bad = (np.frombuffer(data, np.uint8)[starts] == _ZERO) & (lengths > 1) | (lengths > 18)
    return _Numbers(starts, values, bad)


def _fast_lines(buffer: np.ndarray, lines: _Lines, numbers: _Numbers, is_digit: np.ndarray) -> np.ndarray:
    """Boolean per line: it has one of the two fast shapes and a well-formed number list."""
    padded = np.concatenate([buffer, np.zeros(16, dtype=np.uint8)])
    prefix = _prefix_length(padded, lines)
    is_comma = buffer == _COMMA
    after_comma = np.concatenate([[False], is_comma[:-1]])
    allowed = is_digit | is_comma | ((buffer == _SPACE) & after_comma) | (buffer == _NEWLINE)
    # Only the prefix and the "]}" may fall outside the allowed bytes.
    fast = _per_line(np.flatnonzero(~allowed), lines) == prefix + len(SUFFIX)
    fast &= (padded[lines.ends - 2] == SUFFIX[0]) & (padded[lines.ends - 1] == SUFFIX[1]) & (prefix > 0)
    commas = np.flatnonzero(is_comma)
    next1, next2 = padded[commas + 1], padded[commas + 2]
    digit = lambda b: (b >= _ZERO) & (b <= _NINE)  # noqa: E731
    comma_ok = digit(next1) | ((next1 == _SPACE) & digit(next2))
    fast &= _per_line(commas[~comma_ok], lines) == 0
    fast &= _per_line(numbers.positions[numbers.bad], lines) == 0
    body_start, body_end = lines.starts + prefix, lines.ends - len(SUFFIX)
    nonempty = body_end > body_start
    fast &= ~nonempty | (digit(padded[body_start]) & digit(padded[np.maximum(body_end - 1, 0)]))
    return fast


def _selected_lines(lines: _Lines, meta: np.ndarray | None, malformed: list) -> tuple[np.ndarray, np.ndarray]:
    """(which lines are documents, expected token count per line or -1) — all lines without meta."""
    expected = np.full(lines.count, -1, dtype=np.int64)
    if meta is None:
        return np.ones(lines.count, dtype=bool), expected
    line_index = np.searchsorted(lines.starts, meta[:, 0])
    at_start = (line_index < lines.count) & (lines.starts[np.minimum(line_index, lines.count - 1)] == meta[:, 0])
    for row in np.flatnonzero(~at_start)[:100]:
        malformed.append((0, f".meta row {row}: offset {meta[row, 0]} is not the start of a line"))
    selected = np.zeros(lines.count, dtype=bool)
    selected[line_index[at_start]] = True
    expected[line_index[at_start]] = meta[at_start, 1]
    return selected, expected


def parse_bin(data: bytes, meta: np.ndarray | None = None) -> ParsedBin:
    """Token ids of a `.bin` file's documents.

    Args:
        data: the file's bytes.
        meta: its `.bin.meta` index ([lines, 2] of byte offset, token count), or None: then every
            non-blank line is a document. With an index, only the lines it points at are.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    lines = _split_lines(buffer)
    malformed: list[tuple[int, str]] = []
    if lines.count == 0:
        return ParsedBin(np.zeros(0, dtype=np.int64), 0, malformed)
    is_digit = (buffer >= _ZERO) & (buffer <= _NINE)
    numbers = _numbers(data, is_digit)
    fast = _fast_lines(buffer, lines, numbers, is_digit)
    selected, expected = _selected_lines(lines, meta, malformed)
    per_line = _per_line(numbers.positions, lines)
    ids = [numbers.values[np.repeat(fast & selected, per_line)]]
    documents = int((fast & selected).sum())
    mismatch = fast & selected & (expected >= 0) & (expected != per_line)
    for n in np.flatnonzero(mismatch):
        malformed.append((int(n) + 1, f"{per_line[n]} tokens but the .meta index says {expected[n]}"))
    for n in np.flatnonzero(~fast & selected):
        line = data[lines.starts[n]:lines.ends[n]]
        documents += _slow_line(int(n) + 1, line, int(expected[n]), ids, malformed)
    return ParsedBin(np.concatenate(ids), documents, sorted(malformed))


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
