"""Fast path of the `.bin` parser: a whole block of clean lines checked and read in ~25 numpy passes.

A block is clean when every line is `{"tokens":[...]}` or `{"tokens": [...]}` holding plain
numbers separated by "," or ", " — what BinWriter and InternEvo's tokenizer tool write. That is
checked for the whole block at once, mostly by counting, instead of line by line:

  * every line starts with one of the two prefixes and ends with `]}` (checked per line, but lines
    are few: about a thousand per block against 200,000 numbers);
  * the block has exactly 14 bytes per line that are not a digit, comma or space: the prefix's 11
    (the spaced prefix also has one space), `]}` and the newline. So inside the brackets there are
    only digits, commas and spaces;
  * lists of digits and commas only: a list of d numbers has at least d - 1 runs of commas, exactly
    d - 1 when it starts and ends with a digit. So the block's commas number at least (numbers -
    lists starting with a digit), with equality only when every list is numbers joined by single
    commas (given that each list starts and ends alike: both with a digit or neither);
  * lists with spaces: every comma has a digit before it and a digit or a space after it, every
    space a comma before it and a digit after it;
  * no number has a leading zero (JSON forbids it), more than 8 digits or a value over MAX_TOKEN_ID.

Then the lists are valid JSON whose numbers are exactly the digit runs. Each run's value is read
from the 8 bytes that end it: one little-endian word (from two aligned 8-byte loads), the bytes
before the run masked off, digits combined in three multiply-shift-mask steps (the SWAR method
simdjson uses). When any check fails the block is handed back (None) and `binparse` parses it line
by line, reporting what is wrong where.
"""

from __future__ import annotations

import threading
from typing import Iterator, NamedTuple

import numpy as np

MAX_TOKEN_ID = (1 << 24) - 1  # counts are dense arrays indexed by id: a larger id is reported, not counted
WORD_PAD = 8  # zero bytes before the data, so the 8-byte word ending at any byte is inside the buffer
TAIL_PAD = 16  # bytes after the data: the second aligned load of the last word
HUGE_PAGE = 2 << 20
BLOCK_BYTES = 1 << 20  # lines parsed at a time: a worker's memory is about 30 times that
NEWLINE, SPACE, COMMA, ZERO = 10, 32, 44, 48
COMPACT_PREFIX = np.frombuffer(b'{"tokens":[', dtype=np.uint8)
SPACED_PREFIX = np.frombuffer(b'{"tokens": [', dtype=np.uint8)
SUFFIX = b"]}"
FIXED_BYTES_PER_LINE = len(COMPACT_PREFIX) + len(SUFFIX) + 1  # not digit/comma/space: 14, either prefix
_HEAD = np.uint64(int.from_bytes(b'{"tokens', "little"))  # prefix bytes 0-7, and 8-10 / 8-11:
_COMPACT_REST, _SPACED_REST = np.uint64(int.from_bytes(b'":[', "little")), np.uint64(int.from_bytes(b'": [', "little"))
# For a number of L digits: mask keeping the last L bytes of the word that ends with it, and of each
# of those bytes only the low nibble ('0'..'9' -> 0..9). L > 8 is clipped (such ids are rejected).
_DIGIT_MASK = np.array([0] + [(((1 << (8 * n)) - 1) << (8 * (8 - n))) & 0x0F0F0F0F0F0F0F0F for n in range(1, 9)],
                       dtype=np.uint64)
# (multiplier, shift, mask before the next step): 8 digits -> 4 two-digit lanes -> 2 four-digit -> 1
_SWAR_STEPS = ((2561, 8, 0x00FF00FF00FF00FF), (6553601, 16, 0x0000FFFF0000FFFF), (42949672960001, 32, None))


class Workspace:
    """Scratch memory of one worker (not shared between threads), reused block after block.

    Fresh memory is slow: every page faults when first touched. While each block allocated its own
    arrays, faults were a third of the parse time on the development machine; with a set of arrays
    per worker they were still a fifth of counting four 4.7 MB files. So the scratch arrays are
    slices of one allocation, aligned to 2 MiB: numpy asks Linux for transparent huge pages on
    allocations of 4 MiB and more, and a huge page is one fault for 2 MiB instead of 512.
    """

    def __init__(self, block_bytes: int = BLOCK_BYTES, cancel: threading.Event | None = None) -> None:
        self.cancel = cancel  # when set, reading stops at the next block (`Cancelled`)
        self._initial = 24 * min(block_bytes, BLOCK_BYTES)  # what such a block uses, with room to spare
        self._arena = np.zeros(0, dtype=np.uint8)
        self._slots: dict[str, tuple[int, int]] = {}  # name -> (byte offset in the arena, capacity)
        self._used = 0
        self._raw = np.zeros(0, dtype=np.uint8)

    def array(self, name: str, size: int, dtype: type) -> np.ndarray:
        """`size` elements of the scratch array `name` (contents left over from earlier use). The
        arrays returned earlier stay valid when this one has to grow."""
        nbytes = size * np.dtype(dtype).itemsize
        offset, capacity = self._slots.get(name, (0, -1))
        if capacity < nbytes:
            offset = self._reserve(name, nbytes)
        return self._arena[offset:offset + nbytes].view(dtype)

    def _reserve(self, name: str, nbytes: int) -> int:
        capacity = (nbytes + nbytes // 4 + 63) // 64 * 64  # room to grow, 64-byte aligned
        if self._used + capacity > len(self._arena):  # lay every slot out again in a larger arena
            others = {n: cap for n, (_, cap) in self._slots.items() if n != name}
            self._arena = _huge_page_aligned(max(2 * (sum(others.values()) + capacity), self._initial))
            self._slots, self._used = {}, 0
            for other, cap in others.items():
                self._slots[other], self._used = (self._used, cap), self._used + cap
        self._slots[name], self._used = (self._used, capacity), self._used + capacity
        return self._slots[name][0]

    def buffer(self, size: int, keep: int = 0) -> np.ndarray:
        """The byte buffer, with room for `size` data bytes at WORD_PAD; its first `keep` data bytes
        are kept when it grows. Its length is a multiple of 8 and it is 8-byte aligned (numpy aligns
        allocations), so `words()` views it as aligned uint64."""
        need = WORD_PAD + size + TAIL_PAD
        if len(self._raw) < need:
            grown = np.zeros((need + need // 8 + 7) // 8 * 8, dtype=np.uint8)
            grown[WORD_PAD:WORD_PAD + keep] = self._raw[WORD_PAD:WORD_PAD + keep]
            self._raw = grown
        return self._raw

    def words(self) -> np.ndarray:
        return self._raw.view(np.uint64)


def _huge_page_aligned(size: int) -> np.ndarray:
    base = np.empty(size + HUGE_PAGE, dtype=np.uint8)
    start = -base.ctypes.data % HUGE_PAGE
    return base[start:start + size]


class Cancelled(Exception):
    """The workspace's cancel event was set: another worker failed or the user interrupted."""


class Block(NamedTuple):
    """Whole lines of a file, in a workspace's buffer (valid until the next block is read)."""

    offset: int  # byte offset of the block in its file
    data: np.ndarray  # uint8 view of the bytes, starting at WORD_PAD of the buffer
    words: np.ndarray  # the whole buffer as aligned uint64


def load_block(data: bytes, workspace: Workspace) -> Block:
    """`data` copied into the workspace's buffer, as a Block at offset 0."""
    raw = workspace.buffer(len(data))
    raw[WORD_PAD:WORD_PAD + len(data)] = np.frombuffer(data, dtype=np.uint8)
    return Block(0, raw[WORD_PAD:WORD_PAD + len(data)], workspace.words())


def iter_line_blocks(path, workspace: Workspace, block_bytes: int) -> Iterator[Block]:
    """Consecutive blocks of whole lines of a file, read into the workspace's buffer (no new memory
    per block). A line longer than `block_bytes` makes its block longer."""
    offset, carry = 0, 0
    with open(path, "rb") as f:
        while True:
            if workspace.cancel is not None and workspace.cancel.is_set():
                raise Cancelled(str(path))
            raw = workspace.buffer(carry + block_bytes, keep=carry)
            got = f.readinto(memoryview(raw)[WORD_PAD + carry:WORD_PAD + carry + block_bytes])
            end = carry + got
            data = raw[WORD_PAD:WORD_PAD + end]
            cut = end if got == 0 else _after_last_newline(data)
            if cut == 0 and got:  # no newline yet: a line longer than the block, keep reading
                carry = end
                continue
            if cut:
                yield Block(offset, data[:cut], workspace.words())
            if got == 0:
                return
            raw[WORD_PAD:WORD_PAD + end - cut] = raw[WORD_PAD + cut:WORD_PAD + end].copy()
            offset, carry = offset + cut, end - cut


def _after_last_newline(data: np.ndarray) -> int:
    """Index just after the last newline of `data` (0 when there is none), looking from the end in
    growing windows: lines are short next to a block, so this rarely reads more than 64 KiB."""
    window = 1 << 16
    while True:
        start = max(len(data) - window, 0)
        found = np.flatnonzero(data[start:] == NEWLINE)
        if len(found) or start == 0:
            return start + int(found[-1]) + 1 if len(found) else 0
        window *= 4


def word_values(words: np.ndarray, ends: np.ndarray, lengths: np.ndarray, workspace: Workspace) -> np.ndarray:
    """Values (uint64, in the workspace) of the digit runs of lengths 1..8 ending at `ends` (offsets
    in the block's data). Longer runs get the value of their last 8 digits.

    Args:
        words: the block buffer as aligned uint64 (data byte i is buffer byte i + WORD_PAD).
        ends: int64 offset just after each run (any stride).
        lengths: int64 digits per run.
        workspace: where the result and scratch arrays live.
    """
    count = len(ends)
    index = workspace.array("index", count, np.int64)
    values = workspace.array("values", count, np.uint64)
    scratch = workspace.array("scratch", count, np.uint64)
    # The run's last 8 bytes are buffer bytes [end, end + 8): the top of one aligned word, the bottom
    # of the next. A shift by 64 gives 0 in numpy, which is right for a run ending on a word boundary.
    np.right_shift(ends, 3, out=index)
    np.take(words, index, out=values, mode="clip")  # "clip": in range anyway, and twice as fast as "raise"
    np.take(words[1:], index, out=scratch, mode="clip")
    shift = index.view(np.uint64)
    np.bitwise_and(ends, 7, out=index)
    np.left_shift(shift, np.uint64(3), out=shift)
    np.right_shift(values, shift, out=values)
    np.subtract(np.uint64(64), shift, out=shift)
    np.left_shift(scratch, shift, out=scratch)
    np.bitwise_or(values, scratch, out=values)
    np.take(_DIGIT_MASK, lengths, out=scratch, mode="clip")
    np.bitwise_and(values, scratch, out=values)
    for factor, shift_bits, mask in _SWAR_STEPS:
        np.multiply(values, np.uint64(factor), out=values)
        np.right_shift(values, np.uint64(shift_bits), out=values)
        if mask is not None:
            np.bitwise_and(values, np.uint64(mask), out=values)
    return values


def parse_clean_block(block: Block, workspace: Workspace, meta: np.ndarray | None) -> tuple[np.ndarray, int] | None:
    """(token ids of every line, number of lines) when the block is clean (module docstring), else None.

    Args:
        block: whole lines.
        workspace: scratch memory (the ids returned live there until the next block).
        meta: `.bin.meta` rows of this block (offsets relative to it, ascending), or None. The block
            is only clean when the rows point at every line, in order, with the right token counts.
    """
    data = block.data
    if len(data) == 0:
        return None
    starts, ends = _line_bounds(data, workspace)
    spaced = _prefix_kinds(block.words, data, starts, ends)
    if spaced is None:
        return None
    runs = _checked_runs(data, workspace, starts, ends, spaced)
    if runs is None or (meta is not None and not _meta_matches(meta, starts, runs)):
        return None
    run_ends = workspace.array("ends", len(runs) // 2, np.int64)
    np.copyto(run_ends, runs[1::2])  # contiguous: strided reads cost as much as the copy, twice
    lengths = workspace.array("lengths", len(run_ends), np.int64)
    np.subtract(run_ends, runs[0::2], out=lengths)
    if len(lengths) and lengths.max() > 8:
        return None
    values = word_values(block.words, run_ends, lengths, workspace)
    if len(values) and values.max() > MAX_TOKEN_ID:
        return None
    return values.view(np.int64), len(starts)


def _line_bounds(data: np.ndarray, workspace: Workspace) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) offsets of every line; the end is its newline (or the end of the data)."""
    is_newline = workspace.array("mask_newline", len(data), np.bool_)
    np.equal(data, NEWLINE, out=is_newline)
    ends = np.flatnonzero(is_newline)
    if data[-1] != NEWLINE:
        ends = np.append(ends, len(data))
    starts = np.empty_like(ends)
    starts[0] = 0
    np.add(ends[:-1], 1, out=starts[1:])
    return starts, ends


def _load_words(words: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The 8 data bytes before each offset in `ends` as little-endian uint64 (for small arrays; see
    `word_values`)."""
    index = ends >> 3
    shift = ((ends & 7) << 3).astype(np.uint64)
    return (words[index] >> shift) | (words[index + 1] << (np.uint64(64) - shift))


def _prefix_kinds(words: np.ndarray, data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray | None:
    """Per line: True for the spaced prefix, False for the compact one; None when some line has
    neither, does not end in `]}`, or is too short for both. Prefixes compared 8 bytes at a time."""
    lengths = ends - starts
    if lengths.min() < len(COMPACT_PREFIX) + len(SUFFIX):
        return None
    head, rest = _load_words(words, starts + 8), _load_words(words, starts + 16)
    compact = (rest & np.uint64(0xFFFFFF)) == _COMPACT_REST
    spaced = ((rest & np.uint64(0xFFFFFFFF)) == _SPACED_REST) & (lengths >= len(SPACED_PREFIX) + len(SUFFIX))
    closed = (data[ends - 2] == SUFFIX[0]) & (data[ends - 1] == SUFFIX[1])
    return spaced if ((head == _HEAD) & (compact | spaced) & closed).all() else None


def _checked_runs(data: np.ndarray, workspace: Workspace, starts: np.ndarray, ends: np.ndarray,
                  spaced: np.ndarray) -> np.ndarray | None:
    """The digit runs (`_digit_runs`) when the lists hold only numbers joined by "," or ", ", else None."""
    size = len(data)
    scratch = workspace.array("mask_scratch", size, np.uint8)
    is_digit = workspace.array("mask_digit", size, np.bool_)
    is_comma = workspace.array("mask_comma", size, np.bool_)
    np.subtract(data, np.uint8(ZERO), out=scratch)  # bytes below '0' wrap around to >= 10
    np.less(scratch, 10, out=is_digit)
    np.equal(data, COMMA, out=is_comma)
    commas = np.count_nonzero(is_comma)
    np.equal(data, SPACE, out=scratch.view(np.bool_))
    spaces = np.count_nonzero(scratch)
    fixed = FIXED_BYTES_PER_LINE * len(starts) - (data[-1] != NEWLINE)
    if size - np.count_nonzero(is_digit) - commas - spaces != fixed:
        return None
    list_spaces = spaces - int(spaced.sum())
    is_space = scratch.view(np.bool_)
    if list_spaces and not _separators_placed(is_digit, is_comma, is_space, commas, list_spaces, workspace):
        return None
    if _has_leading_zero(data, is_digit, scratch.view(np.bool_)):
        return None
    runs = _digit_runs(is_digit, workspace)
    body_starts = starts + len(COMPACT_PREFIX) + spaced
    if list_spaces == 0 and not _commas_counted(is_digit, runs, body_starts, ends - len(SUFFIX), commas):
        return None
    return runs


def _commas_counted(is_digit: np.ndarray, runs: np.ndarray, body_starts: np.ndarray, body_ends: np.ndarray,
                    commas: int) -> bool:
    """Lists of digits and commas only: whether they are numbers joined by single commas. By counting:
    a list with d numbers has at least d - 1 comma runs, d - 1 exactly when it starts and ends with a
    digit, so the commas in the block are at least (numbers - lists starting with a digit), with
    equality only when every list is right."""
    first_digit, last_digit = is_digit[body_starts], is_digit[body_ends - 1]  # both False when empty
    return bool((first_digit == last_digit).all()) and commas == len(runs) // 2 - int(first_digit.sum())


def _separators_placed(is_digit: np.ndarray, is_comma: np.ndarray, is_space: np.ndarray, commas: int,
                       list_spaces: int, workspace: Workspace) -> bool:
    """Lists of digits, commas and spaces: whether every comma has a digit before it and a digit or
    space after it, and every space in a list a comma before it and a digit after it."""
    both = workspace.array("mask_both", len(is_digit), np.bool_)
    if _count_both(is_comma[1:], is_digit[:-1], both[1:]) != commas:
        return False
    followed = _count_both(is_comma[:-1], is_digit[1:], both[:-1]) + _count_both(is_comma[:-1], is_space[1:], both[:-1])
    np.logical_and(is_space[1:-1], is_comma[:-2], out=both[1:-1])
    return followed == commas and _count_both(both[1:-1], is_digit[2:], both[1:-1]) == list_spaces


def _has_leading_zero(data: np.ndarray, is_digit: np.ndarray, scratch: np.ndarray) -> bool:
    """Whether a number starts with 0 and goes on (JSON forbids it): a '0' after a non-digit, before
    a digit. (bool > bool is "and not".)"""
    np.equal(data, ZERO, out=scratch)
    np.logical_and(scratch[1:-1], is_digit[2:], out=scratch[1:-1])
    np.greater(scratch[1:-1], is_digit[:-2], out=scratch[1:-1])
    return bool(np.count_nonzero(scratch[1:-1]))


def _count_both(first: np.ndarray, second: np.ndarray, out: np.ndarray) -> int:
    np.logical_and(first, second, out=out)
    return int(np.count_nonzero(out))


def _digit_runs(is_digit: np.ndarray, workspace: Workspace) -> np.ndarray:
    """Offsets where digit runs start and end, interleaved: [start0, end0, start1, end1, ...]
    (the data starts and ends with a non-digit, so they pair up)."""
    edges = workspace.array("mask_comma", len(is_digit), np.bool_)  # the comma mask is no longer needed
    edges[0] = False
    np.not_equal(is_digit[1:], is_digit[:-1], out=edges[1:])
    return np.flatnonzero(edges)


def _meta_matches(meta: np.ndarray, starts: np.ndarray, runs: np.ndarray) -> bool:
    """Whether the .meta rows point at every line, in order, with each line's number of tokens."""
    if len(meta) != len(starts) or not np.array_equal(meta[:, 0], starts):
        return False
    tokens = meta[:, 1]
    numbers = len(runs) // 2
    if tokens.min() < 0 or int(tokens.sum()) != numbers:
        return False
    if numbers == 0:
        return True
    before = np.cumsum(tokens) - tokens  # numbers the index puts before each line
    # Right for every line <=> exactly `before` numbers start before each line start. Run starts
    # ascend, so that is: the number just before starts earlier, the one at `before` not earlier.
    # (Indexing `runs` itself: a take from the strided runs[0::2] would copy all of it first.)
    earlier = (before == 0) | (np.take(runs, 2 * before - 2, mode="clip") < starts)
    not_earlier = (before == numbers) | (np.take(runs, 2 * before, mode="clip") >= starts)
    return bool((earlier & not_earlier).all())
