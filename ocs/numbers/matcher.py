"""Longest-prefix match of dialled numbers over digit-prefix tables, compiled with numba.

A ``PrefixIndex`` maps digit prefixes to integer *slots* and answers, for a
number, the slot and the length of the longest prefix of it in the table. What
a slot means is the caller's business (a tariff of a plan's deck, a carrier's
cost line, an access number, an area of the standard code table), so one index
type serves every table ocs keeps and each table is a separate index.

How it works. A number is read as a key in base 11 over its first
``KEY_DIGITS`` digits: digit d counts d + 1 and a missing digit 0, so a shorter
number sorts before its extensions. A prefix p of length L covers the key
interval [key(p), key(p) + 11**(KEY_DIGITS - L)): exactly the keys of the
numbers starting with p. Those intervals nest or are disjoint, so one sweep
flattens them into sorted *segments*, each labelled with its innermost
(longest) prefix; a lookup is "which segment holds this key". Two direct
tables find it without a search in most cases:

* level 1, indexed by the first ``l1_digits`` digits (at most 5: 161,051
  entries, small enough to stay in cache), says where the level-2 table of
  that bucket starts and how many further digits (``k``) it resolves;
* level 2 holds, per sub-bucket, either the answer itself (no segment starts
  inside it: most of them) or where the few segments that do start, read in
  one cache line (``_crowded`` searches the rare crowded ones by halving).

So a lookup costs one or two memory misses whatever the table size, and a
batch prefetches the lines of the numbers a few places ahead, so that their
misses overlap while the core resolves (``_lookup_pipelined``). Prefixes longer
than ``KEY_DIGITS`` (no real deck has them; the schema allows 32 digits) sit
in a small dict consulted only for numbers that long.

Arrays only, no Python object per prefix: a 1,000,000-prefix deck takes about
60 MB and builds in a fifth of a second. Kernels are compiled with
``cache=True`` (machine code kept on disk beside this file and reused by the
next process) and release the GIL, so builds can run in a thread beside the
event loop. ``ocs.warm_up`` compiles or loads every kernel a serving process
runs, so no request waits for a compiler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from ocs.numbers.prefetch import prefetch

# An integer as numba kernels compute it: a Python int, or a numpy scalar read
# from an array (numba makes both int64).
Int = int | np.integer[Any]
Int64Array = npt.NDArray[np.int64]

KEY_DIGITS = 18  # 11**18 < 2**63: the key of 18 digits fits an int64
MAX_PREFIX_DIGITS = 32
LENGTH_BITS = 6  # a lookup answers (slot << LENGTH_BITS) | matched length
LENGTH_MASK = (1 << LENGTH_BITS) - 1
MAX_SLOT = (1 << (30 - LENGTH_BITS)) - 2  # a level-2 answer is an int32: (code + 1) << 1
NO_MATCH = -1
INVALID = -2  # the number is not 1 to 32 digits

POW11 = np.array([11**i for i in range(KEY_DIGITS + 1)], dtype=np.int64)

# The packed index: one int64 array, so a lookup from Python passes one argument.
#   header | level 1: int64 per bucket, (level-2 offset << 4) | digits it resolves
#          | level 2: int32 per sub-bucket, (code + 1) << 1 for the answer, or lo << 1 | 1
#            when segments lo, lo + 1, ... start inside it (segment lo - 1 holds its start)
#          | segments: (start key, code) pairs, then a sentinel start above every key
_VERSION = 3
HEADER = 8
H_VERSION, H_L1_DIGITS, H_L1_DIVISOR, H_L2_AT, H_PAIRS_AT, H_SEGMENTS, H_L2_SIZE = range(7)
MAX_L1_DIGITS = 5
MAX_L2_DIGITS = 6
MAX_SEGMENTS = (1 << 30) - 1
LOOKAHEAD = 8  # numbers between one stage of a batch lookup and the next
RING = 32  # a power of two above LOOKAHEAD (a ring slot lives that long): the rings
CHUNK = 1024  # numbers parsed at a time, ahead of their batch lookup
assert RING & (RING - 1) == 0 and RING > LOOKAHEAD

# SWAR constants: batch numbers are validated and read eight bytes at a time.
_U = np.uint64
_LOW7 = _U(0x7F7F7F7F7F7F7F7F)
_HIGH = _U(0x8080808080808080)
_LO_NIBBLES = _U(0x0F0F0F0F0F0F0F0F)
_THREES = _U(0x3030303030303030)
_TO_HIGH_BIT = _U(0x7676767676767676)  # 0x0A..0x7F + this sets the high bit
_ONES = _U(0x0101010101010101)
_GATHER = _U(0x0102040810204080)  # high bits of 8 bytes -> one byte
_BYTE = _U(0xFF)
_PLUS = _U(0x2B)
_ZERO = _U(0)
_ONE = _U(1)
_SHIFT = (_U(7), _U(8), _U(16), _U(32), _U(56))
_PAIRS = (_U(1 + (11 << 8)), _U(1 + (121 << 16)), _U(1 + (14641 << 32)))
_LANES = (_U(0x00FF00FF00FF00FF), _U(0x0000FFFF0000FFFF), _U(0xFFFFFFFF))
_MAX_RUN = _U(0xFFFFFFFF)  # 32 digits
ROW_WORDS = 5  # 40 bytes hold '+' and 32 digits; wider rows must be padding beyond


# --- lookup kernels ------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, inline="always")
def _level2_table(packed: np.ndarray) -> np.ndarray:
    return packed[packed[H_L2_AT] : packed[H_PAIRS_AT]].view(np.int32)


@numba.njit(cache=True, nogil=True, inline="always")
def _level2_at(packed: Int64Array, key: Int) -> Int:
    """Where in level 2 the entry covering ``key`` is."""
    divisor = packed[H_L1_DIVISOR]
    bucket = key // divisor
    entry = packed[HEADER + bucket]  # level 1: small, stays in cache
    sub = (key - bucket * divisor) // POW11[KEY_DIGITS - packed[H_L1_DIGITS] - (entry & 15)]
    at: Int = (entry >> 4) + sub  # typed here: numpy types an array element as Any
    return at


@numba.njit(cache=True, nogil=True)
def _crowded(packed: Int64Array, below: Int, key: Int) -> Int:
    """The code for ``key`` from segment ``below`` on, where many start close together:
    gallop, then halve (a log, not a scan). Segment ``below`` starts at or before key."""
    pairs = packed[H_PAIRS_AT]
    last = packed[H_SEGMENTS]  # the sentinel's index
    step = 1
    above = min(below + 1, last)
    while packed[pairs + 2 * above] <= key:
        below = above
        step *= 2
        above = min(below + step, last)
    while above - below > 1:
        mid = (below + above) >> 1
        if packed[pairs + 2 * mid] <= key:
            below = mid
        else:
            above = mid
    code: Int = packed[pairs + 2 * below + 1]
    return code


@numba.njit(cache=True, nogil=True, inline="always")
def _resolve(packed: Int64Array, entry: Int, key: Int) -> Int:
    """The code a level-2 entry gives ``key``: its answer, or a scan of its few segments."""
    if entry & 1 == 0:
        return (entry >> 1) - 1
    pairs = packed[H_PAIRS_AT]
    at = pairs + 2 * (entry >> 1)  # the first segment starting inside the sub-bucket
    crowded = at + 16
    # Mostly the next segment or two start above key. The sentinel after the last
    # segment starts above every key, so the scan stops.
    while packed[at] <= key:
        at += 2
        if at == crowded:
            return _crowded(packed, (at - pairs) // 2 - 1, key)
    code: Int = packed[at - 1]  # the code of the last segment starting at or before key
    return code


@numba.njit(cache=True, nogil=True)
def _lookup_bytes(packed: Int64Array, digits: bytes) -> Int:
    """Code for one number given as ASCII digits (normalised: no '+')."""
    key: Int = 0
    n = len(digits)
    for i in range(n):
        c = np.int64(digits[i]) - 48
        if c < 0 or c > 9:
            return INVALID
        if i < KEY_DIGITS:
            key = key * 11 + c + 1
    if n == 0 or n > MAX_PREFIX_DIGITS:
        return INVALID
    key *= POW11[KEY_DIGITS - min(n, KEY_DIGITS)]
    return _resolve(packed, np.int64(_level2_table(packed)[_level2_at(packed, key)]), key)


@numba.njit(cache=True, nogil=True)
def _lookup_pipelined(packed: np.ndarray, keys: np.ndarray, out: np.ndarray) -> None:
    """Codes for a batch of keys (INVALID where a key is negative).

    A key goes through four stages, LOOKAHEAD keys apart: prefetch its level-1
    entry; read it and prefetch its level-2 entry; read that and prefetch its
    segments' first line; resolve. So some 3 * LOOKAHEAD loads are in flight
    while the core resolves, where a plain loop stalls on each DRAM miss in turn
    (~0.1 µs). ``bucket``, ``where`` and ``entry`` are rings indexed ``& mask``.
    """
    count = len(keys)
    level2 = _level2_table(packed)
    pairs = packed[H_PAIRS_AT]
    divisor = packed[H_L1_DIVISOR]
    l1_digits = packed[H_L1_DIGITS]
    mask = RING - 1
    bucket = np.empty(RING, np.int64)
    where = np.empty(RING, np.int64)
    entry = np.empty(RING, np.int64)
    for i in range(count + 3 * LOOKAHEAD):
        if i < count:
            b = max(keys[i], 0) // divisor
            bucket[i & mask] = b
            prefetch(packed, HEADER + b)
        j = i - LOOKAHEAD
        if 0 <= j < count:
            b = bucket[j & mask]
            level1 = packed[HEADER + b]
            width = POW11[KEY_DIGITS - l1_digits - (level1 & 15)]
            w = (level1 >> 4) + (max(keys[j], 0) - b * divisor) // width
            where[j & mask] = w
            prefetch(level2, w)
        j = i - 2 * LOOKAHEAD
        if 0 <= j < count:
            e = np.int64(level2[where[j & mask]])
            entry[j & mask] = e
            if e & 1:
                prefetch(packed, pairs + 2 * (e >> 1))
        j = i - 3 * LOOKAHEAD
        if 0 <= j < count:
            key = keys[j]
            out[j] = INVALID if key < 0 else _resolve(packed, entry[j & mask], key)


@numba.njit(cache=True, nogil=True, inline="always")
def _zero_bytes(w: np.uint64) -> np.uint64:
    """0x80 in every byte of ``w`` that is zero, exactly (no false positives)."""
    return ~(((w & _LOW7) + _LOW7) | w) & _HIGH


@numba.njit(cache=True, nogil=True, inline="always")
def _digit_bytes(w: np.uint64) -> np.uint64:
    """0x80 in every byte of ``w`` that is an ASCII digit."""
    t = w ^ _THREES  # digits become 0..9; every other byte is 10 or more
    return ~(((t & _LOW7) + _TO_HIGH_BIT) | t) & _HIGH


@numba.njit(cache=True, nogil=True, inline="always")
def _symbols(w: np.uint64, digits: np.uint64, nibbles: int) -> np.uint64:
    """Base-11 value of the first ``nibbles`` (2 or 8) bytes of ``w``: digit d -> d + 1,
    NUL 0; ``digits`` is ``_digit_bytes(w)``."""
    s = ((w & _LO_NIBBLES) + _ONES) & ((digits >> _SHIFT[0]) * _BYTE)
    s = ((s * _PAIRS[0]) >> _SHIFT[1]) & _LANES[0]  # pairs of symbols
    if nibbles == 2:
        return s & _BYTE
    s = ((s * _PAIRS[1]) >> _SHIFT[2]) & _LANES[1]  # fours
    return ((s * _PAIRS[2]) >> _SHIFT[3]) & _LANES[2]  # eight


@numba.njit(cache=True, nogil=True)
def _row_keys(words: np.ndarray, row_words: int, first: int, keys: np.ndarray) -> None:
    """Keys of rows first.. of a NUL-padded 'S' array seen as uint64 words; -1 if invalid.

    A valid row is an optional '+', then 1 to 32 digits, then only NUL bytes.
    Rows are at least 24 bytes wide (``number_rows`` pads), so the 18 digits a
    key holds are in the first three words even after a '+'.
    """
    for i in range(len(keys)):
        at = (first + i) * row_words
        w0 = words[at]
        plus = (w0 & _BYTE) == _PLUS
        if plus:
            w0 = (w0 & ~_BYTE) | _THREES & _BYTE  # validate the '+' as a digit
        digit_bits = _ZERO
        other = _ZERO
        d0 = d1 = d2 = _ZERO  # the digit masks of the three words a key reads
        for k in range(row_words):
            w = w0 if k == 0 else words[at + k]
            if k < ROW_WORDS:
                d = _digit_bytes(w)
                if k == 0:
                    d0 = d
                elif k == 1:
                    d1 = d
                elif k == 2:
                    d2 = d
                other |= _HIGH & ~_zero_bytes(w) & ~d
                digit_bits |= (((d >> _SHIFT[0]) * _GATHER) >> _SHIFT[4]) << _U(8 * k)
            else:
                other |= w  # a valid row has at most 33 bytes: the rest is padding
        run = digit_bits >> (_ONE if plus else _ZERO)
        # Valid: nothing but digits and padding, the digits one run from the start.
        if other != _ZERO or run == _ZERO or (run & (run + _ONE)) != _ZERO or run > _MAX_RUN:
            keys[i] = -1
            continue
        a = words[at]
        b = words[at + 1]
        c = words[at + 2]
        if plus:  # shift the row one byte left
            a = (a >> _SHIFT[1]) | (b << _SHIFT[4])
            b = (b >> _SHIFT[1]) | (c << _SHIFT[4])
            c = c >> _SHIFT[1]
            if row_words > 3:
                c |= words[at + 3] << _SHIFT[4]
            d0, d1, d2 = _digit_bytes(a), _digit_bytes(b), _digit_bytes(c)
        keys[i] = (
            np.int64(_symbols(a, d0, 8)) * POW11[10]
            + np.int64(_symbols(b, d1, 8)) * POW11[2]
            + np.int64(_symbols(c, d2, 2))
        )


@numba.njit(cache=True, nogil=True)
def _lookup_rows(packed: np.ndarray, words: np.ndarray, row_words: int, out: np.ndarray) -> None:
    """Codes for every row of an 'S' array (as words): parse a chunk, then look it up."""
    count = len(out)
    keys = np.empty(CHUNK, np.int64)
    for first in range(0, count, CHUNK):
        n = min(CHUNK, count - first)
        _row_keys(words, row_words, first, keys[:n])
        _lookup_pipelined(packed, keys[:n], out[first : first + n])


@numba.njit(cache=True, nogil=True)
def _encode_rows(words: np.ndarray, row_words: int, out: np.ndarray) -> None:
    for first in range(0, len(out), CHUNK):
        n = min(CHUNK, len(out) - first)
        _row_keys(words, row_words, first, out[first : first + n])


# --- build kernels -------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def prefix_keys(buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Key of each prefix (its first KEY_DIGITS digits), or -1 where it is not 1-32 digits."""
    n = len(offsets)
    keys = np.empty(n, np.int64)
    for i in range(n):
        length = lengths[i]
        start = offsets[i]
        key: Int = 0
        ok = 1 <= length <= MAX_PREFIX_DIGITS
        for j in range(length if ok else 0):
            c = np.int64(buf[start + j]) - 48
            if c < 0 or c > 9:
                ok = False
                break
            if j < KEY_DIGITS:
                key = key * 11 + c + 1
        keys[i] = key * POW11[KEY_DIGITS - min(length, KEY_DIGITS)] if ok else -1
    return keys


@numba.njit(cache=True, nogil=True, inline="always")
def _emit(starts: np.ndarray, labels: np.ndarray, count: int, at: int, label: int) -> int:
    if starts[count - 1] == at:
        # A segment of zero width: the later label wins, then it may join its left one.
        labels[count - 1] = label
        if count >= 2 and labels[count - 2] == label:
            return count - 1
        return count
    if labels[count - 1] == label:
        return count
    starts[count] = at
    labels[count] = label
    return count + 1


@numba.njit(cache=True, nogil=True)
def _segments(
    keys: np.ndarray, lengths: np.ndarray, codes: np.ndarray
) -> tuple[Int64Array, Int64Array]:
    """Flatten nested prefix intervals (sorted by key, no duplicates) into labelled segments."""
    n = len(keys)
    starts = np.empty(2 * n + 1, np.int64)
    labels = np.empty(2 * n + 1, np.int64)
    starts[0] = 0
    labels[0] = NO_MATCH
    count = 1
    # Open intervals strictly nest by length, so at most KEY_DIGITS are open at once.
    open_end = np.empty(KEY_DIGITS + 1, np.int64)
    open_code = np.empty(KEY_DIGITS + 1, np.int64)
    depth = 0
    for i in range(n + 1):
        lo = keys[i] if i < n else POW11[KEY_DIGITS]
        while depth > 0 and open_end[depth - 1] <= lo:
            depth -= 1
            outer = open_code[depth - 1] if depth > 0 else NO_MATCH
            count = _emit(starts, labels, count, open_end[depth], outer)
        if i < n:
            count = _emit(starts, labels, count, lo, codes[i])
            open_end[depth] = lo + POW11[KEY_DIGITS - min(lengths[i], KEY_DIGITS)]
            open_code[depth] = codes[i]
            depth += 1
    return starts[:count], labels[:count]


@numba.njit(cache=True, nogil=True, inline="always")
def _count_le(starts: np.ndarray, limit: int, j: int) -> int:
    while j < len(starts) and starts[j] <= limit:
        j += 1
    return j


@numba.njit(cache=True, nogil=True)
def _level_sizes(starts: np.ndarray, l1_digits: int) -> np.ndarray:
    """Digits resolved by each level-1 bucket's level-2 table: about one segment per entry."""
    buckets = POW11[l1_digits]
    divisor = POW11[KEY_DIGITS - l1_digits]
    most = min(MAX_L2_DIGITS, KEY_DIGITS - l1_digits)
    sizes = np.empty(buckets, np.int64)
    j = 0
    for b in range(buckets):
        j = _count_le(starts, b * divisor, j)
        inside = _count_le(starts, (b + 1) * divisor - 1, j) - j
        k = 0
        while k < most and POW11[k] < inside:
            k += 1
        sizes[b] = k
    return sizes


@numba.njit(cache=True, nogil=True)
def _fill(packed: np.ndarray, starts: np.ndarray, labels: np.ndarray, digits: np.ndarray) -> None:
    """Write levels 1 and 2 and the segments into ``packed`` (header already set)."""
    l1_digits = packed[H_L1_DIGITS]
    divisor = packed[H_L1_DIVISOR]
    level2 = _level2_table(packed)
    pairs = packed[H_PAIRS_AT]
    offset = 0
    j = 0
    for b in range(len(digits)):
        k = digits[b]
        packed[HEADER + b] = (offset << 4) | k
        width = POW11[KEY_DIGITS - l1_digits - k]
        for e in range(POW11[k]):
            edge = b * divisor + e * width
            j = _count_le(starts, edge, j)
            if j < len(starts) and starts[j] < edge + width:
                level2[offset + e] = (j << 1) | 1
            else:
                level2[offset + e] = (labels[j - 1] + 1) << 1
        offset += POW11[k]
    for i in range(len(starts)):
        packed[pairs + 2 * i] = starts[i]
        packed[pairs + 2 * i + 1] = labels[i]
    packed[pairs + 2 * len(starts)] = POW11[KEY_DIGITS]  # the sentinel: above every key
    packed[pairs + 2 * len(starts) + 1] = NO_MATCH


# --- the index -----------------------------------------------------------------------


def _pack(starts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    l1_digits = 1
    while l1_digits < MAX_L1_DIGITS and POW11[l1_digits] < len(starts):
        l1_digits += 1
    if len(starts) > MAX_SEGMENTS:
        raise ValueError(f"more than {MAX_SEGMENTS} segments: split the table")
    digits = _level_sizes(starts, l1_digits)
    l2_size = int(POW11[digits].sum())
    l2_at = HEADER + int(POW11[l1_digits])
    pairs_at = l2_at + (l2_size + 1) // 2  # int32 entries, two per int64
    # Allocated by numpy, not inside numba: numpy asks Linux for huge pages on large
    # arrays, which spares the TLB misses of random lookups over tens of MB.
    packed = np.empty(pairs_at + 2 * len(starts) + 2, np.int64)
    packed[:HEADER] = 0
    packed[H_VERSION] = _VERSION
    packed[H_L1_DIGITS] = l1_digits
    packed[H_L1_DIVISOR] = POW11[KEY_DIGITS - l1_digits]
    packed[H_L2_AT] = l2_at
    packed[H_PAIRS_AT] = pairs_at
    packed[H_SEGMENTS] = len(starts)
    packed[H_L2_SIZE] = l2_size
    _fill(packed, starts, labels, digits)
    return packed


class PrefixIndex:
    """An immutable digit-prefix -> slot index answering longest-prefix matches.

    Build it with ``from_strings`` or, with no Python object per prefix, with
    ``from_buffer``. ``lookup`` is the hot-path entry (one number),
    ``lookup_many`` and ``lookup_keys`` the batch ones (billing, re-rating).
    """

    __slots__ = ("_long", "_long_lengths", "_lookup", "packed", "size")

    def __init__(self, packed: np.ndarray, long: dict[str, int], size: int) -> None:
        self.packed = packed
        self.size = size
        self._long = long or None
        self._long_lengths = sorted({len(p) for p in long}, reverse=True)
        self._lookup = _entry(_lookup_bytes, packed, b"0")

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Approximate memory the index takes, in bytes."""
        return int(self.packed.nbytes) + 100 * len(self._long or ())

    @classmethod
    def from_strings(
        cls, prefixes: Sequence[str], slots: Sequence[int] | Int64Array
    ) -> PrefixIndex:
        """Index ``prefixes[i] -> slots[i]``; prefixes are 1 to 32 ASCII digits, all distinct."""
        if len(prefixes) != len(slots):
            raise ValueError("prefixes and slots differ in length")
        encoded = [p.encode("utf-8", "replace") for p in prefixes]
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
        offsets = np.zeros(len(encoded), np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        buf = np.frombuffer(b"".join(encoded), np.uint8)
        return cls.from_buffer(buf, offsets, lengths, np.asarray(slots, np.int64))

    @classmethod
    def from_buffer(
        cls, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, slots: np.ndarray
    ) -> PrefixIndex:
        """Index prefix i, the bytes ``buf[offsets[i]:offsets[i] + lengths[i]]``, to ``slots[i]``.

        Raises ValueError naming the first prefix that is not 1 to 32 digits, a
        prefix given twice, or a slot out of range.
        """
        buf = np.ascontiguousarray(buf, np.uint8)
        offsets = np.ascontiguousarray(offsets, np.int64)
        lengths = np.ascontiguousarray(lengths, np.int64)
        slots = np.ascontiguousarray(slots, np.int64)
        if not len(offsets) == len(lengths) == len(slots):
            raise ValueError("offsets, lengths and slots differ in length")
        if len(slots) and (int(slots.min()) < 0 or int(slots.max()) > MAX_SLOT):
            raise ValueError(f"slots must be 0 to {MAX_SLOT}")

        def text(i: int) -> str:
            return bytes(buf[offsets[i] : offsets[i] + lengths[i]]).decode("utf-8", "replace")

        keys = prefix_keys(buf, offsets, lengths)
        bad = np.flatnonzero(keys < 0)
        if len(bad):
            raise ValueError(f"prefix {text(int(bad[0]))!r}: expected 1 to 32 digits")
        codes = (slots << LENGTH_BITS) | lengths
        long: dict[str, int] = {}
        is_long = lengths > KEY_DIGITS
        if is_long.any():
            for i in np.flatnonzero(is_long).tolist():
                prefix = text(i)
                if prefix in long:
                    raise ValueError(f"prefix {prefix}: given twice")
                long[prefix] = int(codes[i])
            short = ~is_long
            keys, lengths, codes = keys[short], lengths[short], codes[short]
            which = np.flatnonzero(short)
        else:
            which = None
        order = np.argsort(keys, kind="stable")
        keys, lengths, codes = keys[order], lengths[order], codes[order]
        twice = np.flatnonzero(keys[1:] == keys[:-1])
        if len(twice):
            i = int(order[twice[0] + 1])
            raise ValueError(f"prefix {text(i if which is None else int(which[i]))}: given twice")
        starts, labels = _segments(keys, lengths, codes)
        return cls(_pack(starts, labels), long, len(slots))

    def lookup(self, digits: str) -> int:
        """Code of the longest prefix of ``digits`` (normalised: ASCII digits only).

        ``code >> LENGTH_BITS`` is the slot and ``code & LENGTH_MASK`` the length
        of the matched prefix; NO_MATCH (-1) when no prefix matches, INVALID (-2)
        when ``digits`` is not 1 to 32 digits.
        """
        if self._long is not None and len(digits) > KEY_DIGITS:
            code = self._lookup_long(digits)
            if code != NO_MATCH:
                return code
        matched: int = self._lookup(self.packed, digits.encode())
        return matched

    def _lookup_long(self, digits: str) -> int:
        assert self._long is not None
        if not (digits.isascii() and digits.isdigit()) or len(digits) > MAX_PREFIX_DIGITS:
            return INVALID
        for length in self._long_lengths:
            if length <= len(digits):
                code = self._long.get(digits[:length])
                if code is not None:
                    return code
        return NO_MATCH

    def lookup_many(self, numbers: np.ndarray | Iterable[str]) -> np.ndarray:
        """Codes (int64, as ``lookup`` answers) for a batch of numbers.

        ``numbers``: a numpy bytes array (dtype 'S': NUL-padded ASCII, the
        cheapest form), a str array or an iterable of str. Each is an optional
        '+' then 1 to 32 digits; anything else answers INVALID.
        """
        rows = number_rows(numbers)
        out = np.empty(len(rows), np.int64)
        if len(rows):
            _lookup_rows(self.packed, rows.view(np.uint64), rows.itemsize // 8, out)
            self._fix_long(rows, out)
        return out

    def lookup_keys(self, keys: np.ndarray) -> np.ndarray:
        """Codes for numbers already turned into keys by ``encode_numbers``."""
        if self._long is not None:
            # A key holds 18 digits: longer numbers need their digits (lookup_many).
            raise ValueError("this index has prefixes over 18 digits: use lookup_many")
        keys = np.ascontiguousarray(keys, np.int64)
        # A key past every number's would index past level 1: no encode_numbers output.
        if len(keys) and int(keys.max()) >= POW11[KEY_DIGITS]:
            raise ValueError("keys must come from encode_numbers (one is out of range)")
        out = np.empty(len(keys), np.int64)
        _lookup_pipelined(self.packed, keys, out)
        return out

    def _fix_long(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Numbers longer than KEY_DIGITS where this index has prefixes that long."""
        if self._long is None:
            return
        for i in np.flatnonzero(np.char.str_len(rows) > KEY_DIGITS).tolist():
            if out[i] != INVALID:
                code = self._lookup_long(rows[i].decode("ascii").removeprefix("+"))
                if code != NO_MATCH:
                    out[i] = code


def number_rows(numbers: np.ndarray | Iterable[str]) -> np.ndarray:
    """Numbers as a numpy 'S' array whose rows are whole uint64 words, at least 24 bytes."""
    array = numbers if isinstance(numbers, np.ndarray) else np.asarray(list(numbers))
    if array.ndim != 1:
        raise ValueError("numbers must be a one-dimensional array")
    if array.size == 0:
        return np.zeros(0, "S24")
    if array.dtype.kind == "U":
        try:
            array = array.astype(f"S{max(array.dtype.itemsize // 4, 1)}")
        except UnicodeEncodeError:
            bad = next(i for i, n in enumerate(array.tolist()) if not n.isascii())
            raise ValueError(f"number {bad}: must be digits, got {array[bad]!r}") from None
    elif array.dtype.kind != "S":
        raise ValueError(f"numbers must be strings or bytes, not {array.dtype}")
    width = max(24, -(-array.itemsize // 8) * 8)
    if width != array.itemsize:
        array = array.astype(f"S{width}")
    array = np.ascontiguousarray(array)
    if not array.flags.aligned:
        array = array.copy()
    return array


def encode_numbers(numbers: np.ndarray | Iterable[str]) -> np.ndarray:
    """Keys (int64) of a batch of numbers, for ``PrefixIndex.lookup_keys``; -1 if invalid.

    Billing re-rates the same destinations against several tables: encoding
    them once and looking the keys up in each saves the parse.
    """
    rows = number_rows(numbers)
    keys = np.empty(len(rows), np.int64)
    if len(rows):
        _encode_rows(rows.view(np.uint64), rows.itemsize // 8, keys)
    return keys


# --- fast calls from Python ----------------------------------------------------------


_ENTRIES: dict[Any, Callable[..., Any]] = {}


def _entry(dispatcher: Any, *example: Any) -> Callable[..., Any]:
    """The compiled function behind ``dispatcher`` for arguments typed like ``example``.

    Calling it skips numba's per-call type dispatch: about 0.15 µs of the
    0.3 µs a call from Python costs. The first call compiles the kernel or
    loads it from the on-disk cache.
    """
    # numba.typeof is unannotated.
    signature = tuple(numba.typeof(arg) for arg in example)  # type: ignore[no-untyped-call]
    key = (dispatcher, signature)
    entry = _ENTRIES.get(key)
    if entry is None:
        dispatcher(*example)
        try:
            entry = dispatcher.overloads[signature].entry_point
        except (AttributeError, KeyError):  # another numba version: go through dispatch
            entry = dispatcher
        _ENTRIES[key] = entry
    return entry


def warm_up_lookups() -> None:
    """Compile, or load from numba's on-disk cache, every lookup kernel of this module.

    ``ocs.warm_up`` calls it with the other modules' warm-ups before a process takes traffic.
    """
    index = PrefixIndex.from_strings(["1", "44", "447", "4477"], [0, 1, 2, 3])
    assert index.lookup("447700900123") == (3 << LENGTH_BITS) | 4
    index.lookup_many(np.array([b"+4420", b"1"]))
    index.lookup_keys(encode_numbers(["4420"]))
