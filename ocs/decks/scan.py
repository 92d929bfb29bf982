"""The compiled scan of a deck's bytes, shared by a plan's rate deck and a carrier's cost deck.

Carrier decks have a million rows, so the parse is compiled: one numba pass over
the bytes splits the lines and fields and reads every plain row (``scan_deck``),
and only rows it cannot vouch for (quoting beyond the simple kind, unusual
whitespace, anything malformed) go through the per-row checks of the reference
(ocs.decks.reference, by ``read_lines``), which also word every error message.
Strings are interned by compiled hash tables (``intern_strings``,
``intern_keys``), and duplicate prefixes and zones with two rates are found by
one more compiled pass in file order (``cross_check``). A deck whose quoting the
scan does not follow (a quoted field spanning lines, a bare carriage return) is
left to the reference outright.

The kernels keep numba's on-disk cache (``cache=True``); ocs.warm_up loads or
compiles them before a process takes traffic.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numba
import numpy as np

from ocs.decks.cells import COLUMNS, MAX_BLOCK_SECONDS, MAX_ZONE_CHARS, optional_present
from ocs.decks.problems import DeckError, Problems, csv_problem, field_count, line_messages
from ocs.decks.reference import duplicate, is_blank
from ocs.numbers.matcher import KEY_DIGITS, MAX_PREFIX_DIGITS, Int, Int64Array, prefix_keys
from ocs.rating.rates import Rate

# Line outcomes: the scan's (``out[n, 0]``), and LINE_BAD, set after it on a plain
# row with a bad optional cell.
LINE_OK, LINE_BLANK, LINE_SLOW, LINE_COUNT, LINE_BAD = range(5)
FIRST_LINE = 2  # out[n] is line n + 2 of the file: the header is line 1
# Columns in the order _scan takes their positions (cells.COLUMNS' order).
_PREFIX, _ZONE, _PRICE, _FEE, _BLOCK, _INCREMENT = range(6)

_Item = TypeVar("_Item")


class PrefixRows(Sequence[_Item]):
    """Rows of a parsed deck, column-wise, in file order: row i is line ``lines[i]``
    of the file, its prefix ``buf[prefix_at[i]:prefix_at[i] + prefix_len[i]]``
    (digits, no '+'). A plan's ``Deck`` (ocs.decks.rate_deck) and a carrier's
    ``CarrierDeck`` (ocs.decks.cost_deck) add what else a row has."""

    __slots__ = ("buf", "lines", "prefix_at", "prefix_len")

    def __init__(
        self, buf: np.ndarray, lines: np.ndarray, prefix_at: np.ndarray, prefix_len: np.ndarray
    ) -> None:
        self.buf = buf
        self.lines = lines
        self.prefix_at = prefix_at
        self.prefix_len = prefix_len

    @staticmethod
    def _packed(prefixes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(buf, prefix_at, prefix_len) of ``prefixes`` laid end to end."""
        encoded = [prefix.encode() for prefix in prefixes]
        prefix_len = np.fromiter(map(len, encoded), np.int64, len(encoded))
        prefix_at = np.zeros(len(encoded), np.int64)
        np.cumsum(prefix_len[:-1], out=prefix_at[1:])
        return np.frombuffer(b"".join(encoded), np.uint8), prefix_at, prefix_len

    def __len__(self) -> int:
        return len(self.lines)

    def prefix(self, i: int) -> str:
        """Row ``i``'s prefix: digits, no '+'."""
        at = int(self.prefix_at[i])
        return bytes(self.buf[at : at + int(self.prefix_len[i])]).decode("ascii")

    def _position(self, i: int) -> int:
        """Row ``i``, counted from the end when negative; IndexError when there is none."""
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return i

    def __iter__(self) -> Iterator[_Item]:
        return (self[i] for i in range(len(self)))


def scan_deck(
    data_bytes: bytes, read_header: Callable[[list[str]], dict[str, int]]
) -> tuple[np.ndarray, np.ndarray, dict[str, int], int] | None:
    """The compiled scan of a deck's bytes: (data, out, column positions, header width),
    or None to leave the whole deck to the reference (an empty file, quotes or a CR
    in the header, a quoted field going on past its line, a bare CR).

    ``read_header`` reads the header's fields (DeckError when they are wrong) into
    positions of the base columns, ``COLUMNS`` (a deck without ``zone``, a carrier's,
    is scanned without one), and of any ``OPTIONAL_COLUMNS``, whose cells ``out``
    locates in their order. ``out[n]`` holds line ``n + 2``, as ``_scan`` says.
    """
    data_bytes = data_bytes.removeprefix(b"\xef\xbb\xbf")  # spreadsheets write a BOM
    newline = data_bytes.find(b"\n")
    header_end = len(data_bytes) if newline < 0 else newline + 1
    header_text = data_bytes[:header_end].decode("utf-8", "surrogatepass")
    core = header_text.removesuffix("\n").removesuffix("\r")
    if not data_bytes or '"' in header_text or "\r" in core:
        return None
    try:
        header = next(csv.reader([header_text]), [])
    except csv.Error as exc:  # a header field over the csv module's size limit
        raise DeckError([(1, csv_problem(exc))]) from None
    index = read_header(header)
    ncols = len(header)
    columns = [index.get(c, -1) for c in COLUMNS] + [index[c] for c in optional_present(index)]
    data = np.frombuffer(data_bytes, np.uint8)
    out = np.empty((_count_lines(data, header_end), 2 * len(columns) - 2), np.int64)
    positions = np.array(columns, np.int64)
    scanned = _scan(data, header_end, ncols, positions, out) if header_end < len(data) else 0
    if scanned < 0:
        return None
    return data, out[:scanned], index, ncols


def read_lines(
    data: np.ndarray,
    out: np.ndarray,
    ncols: int,
    problems: Problems,
    row_values: Callable[[list[str]], tuple[str, str, Rate, str]],
) -> dict[int, tuple[str, str, Rate, str]]:
    """The problems of lines the scan found with another number of fields than the
    header's, and the lines it left to the reference: read as the csv module reads
    them, each by ``row_values`` (its (prefix, zone, rate, direction); ValueError: its
    problems). Returns the good ones' values by ``out`` row."""
    counts = np.flatnonzero(out[:, 0] == LINE_COUNT)
    for n in counts[: problems.most].tolist():
        problems.add(n + FIRST_LINE, field_count(ncols, int(out[n, 1])))
    problems.skip(max(0, len(counts) - problems.most))
    slow = np.flatnonzero(out[:, 0] == LINE_SLOW).tolist()
    rows: dict[int, tuple[str, str, Rate, str]] = {}
    if not slow:
        return rows
    cuts = np.flatnonzero(data == 10)  # line n of the body ends at cuts[n + 1]
    for n in slow:
        line = n + FIRST_LINE
        start = int(cuts[n]) + 1
        stop = int(cuts[n + 1]) if n + 1 < len(cuts) else len(data)
        text = bytes(data[start:stop]).decode("utf-8", "surrogatepass")
        try:
            fields = next(csv.reader([text]), [])
        except csv.Error as exc:  # a field over the csv module's size limit
            problems.add(line, csv_problem(exc))
            continue
        if is_blank(fields):
            continue
        if len(fields) != ncols:
            problems.add(line, field_count(ncols, len(fields)))
            continue
        try:
            rows[n] = row_values(fields)
        except ValueError as exc:
            for message in line_messages(exc):
                problems.add(line, message)
    return rows


def good_rows(
    data: np.ndarray, out: np.ndarray, slow_rows: dict[int, tuple[str, str, Rate, str]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(good, rows, buf): the ``out`` rows of good lines in file order, those rows, the
    ones the reference read (``slow_rows``) filled in with their prefix and zone
    appended to the bytes, and those bytes (``data`` itself when no line went to the
    reference). ``rows`` is a view of ``out`` when the good lines are its first rows
    (those the reference read filled in in ``out``), else a copy."""
    good = np.flatnonzero(out[:, 0] == LINE_OK)
    slow = np.fromiter(slow_rows, np.int64, len(slow_rows))  # in file order
    if len(slow):
        good = np.sort(np.concatenate((good, slow)))
    # The first rows of ``out`` (every row, as a rule) are a view, not a copy.
    rows = out[: len(good)] if not len(good) or good[-1] == len(good) - 1 else out[good]
    if not len(slow):
        return good, rows, data
    extra = bytearray()
    for at, n in zip(np.searchsorted(good, slow).tolist(), slow.tolist(), strict=True):
        prefix, zone, rate, _ = slow_rows[n]
        p = prefix.encode()
        z = zone.encode("utf-8", "surrogatepass")
        rows[at, 2:10] = (
            len(data) + len(extra), len(p), len(data) + len(extra) + len(p), len(z),
            rate.connect_fee, rate.first_block, rate.increment, rate.price_per_minute,
        )  # fmt: skip
        extra += p + z
    return good, rows, np.concatenate((data, np.frombuffer(bytes(extra), np.uint8)))


def prefix_ids(buf: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``intern_strings`` of the rows' prefixes: up to KEY_DIGITS digits by key, longer
    by bytes (``intern_keys`` when none is longer)."""
    keys = prefix_keys(buf, rows[:, 2], rows[:, 3])
    keys[rows[:, 3] > KEY_DIGITS] = -1
    if not (keys < 0).any():
        return intern_keys(keys, np.sort(keys))
    return intern_strings(buf, rows[:, 2], rows[:, 3], keys)


def prefix_text(buf: np.ndarray, rows: np.ndarray, r: int) -> str:
    """The prefix of row ``r`` of ``good_rows``' rows (in ``buf``, its bytes)."""
    return bytes(buf[rows[r, 2] : rows[r, 2] + rows[r, 3]]).decode("ascii")


def duplicate_prefixes(
    buf: np.ndarray, rows: np.ndarray, lines: np.ndarray, problems: Problems
) -> None:
    """The cross-row check of a deck without zones or directions (a carrier's cost
    deck): each prefix given again, naming the line that gave it first."""
    n = len(rows)
    prefix_id, prefix_first = prefix_ids(buf, rows)
    one = np.zeros(n, np.int64)  # one zone and one direction, with no rate to compare
    no_rate = np.empty((n, 0), np.int64)
    crossed, crossed_count = cross_check(
        lines, prefix_id, len(prefix_first), one, 1, one, 1, no_rate, problems.most
    )
    problems.skip(crossed_count - len(crossed))
    for r, _, other in crossed.tolist():
        problems.add(int(lines[r]), duplicate(prefix_text(buf, rows, r), "outbound", other))


def text_at(buf: np.ndarray, at: int, length: int) -> str:
    """The text of ``length`` bytes of ``buf`` from ``at`` (a zone, a cell)."""
    return bytes(buf[at : at + length]).decode("utf-8", "surrogatepass")


def texts_at(buf: np.ndarray, at: np.ndarray, length: np.ndarray) -> list[str]:
    """``text_at`` of many spans, decoded in one go: a deck's ~41,000 zone names cost
    one decode, not one each. No span may hold a line feed (no name or cell does)."""
    if not len(at):
        return []
    joined = _joined(buf, np.asarray(at, np.int64), np.asarray(length, np.int64))
    return joined.tobytes().decode("utf-8", "surrogatepass").split("\n")[:-1]


@numba.njit(cache=True, nogil=True)
def _joined(buf: np.ndarray, at: np.ndarray, length: np.ndarray) -> np.ndarray:
    """The spans' bytes one after the other, each followed by a line feed."""
    out = np.empty(int(length.sum()) + len(at), np.uint8)
    n = 0
    for i in range(len(at)):
        for k in range(length[i]):
            out[n + k] = buf[at[i] + k]
        n += length[i]
        out[n] = 10
        n += 1
    return out


# --- the compiled scan ---------------------------------------------------------------


@numba.njit(cache=True, nogil=True, inline="always")
def _is_space(c: int) -> bool:
    # The ASCII characters str.strip() removes.
    return c == 32 or 9 <= c <= 13 or 28 <= c <= 31


@numba.njit(cache=True, nogil=True, inline="always")
def _is_unicode_space(data: np.ndarray, i: int, end: int) -> bool:
    """Whether the UTF-8 character at ``i`` (a lead byte of 128 or more, before ``end``)
    is one str.strip() removes beyond ASCII: U+0085, U+00A0, U+1680, U+2000 to U+200A,
    U+2028, U+2029, U+202F, U+205F, U+3000. A truncated character answers True (the
    reference decides)."""
    c = int(data[i])
    if c < 0xE0:  # two bytes: C2 85 and C2 A0
        if i + 1 >= end:
            return True
        a = int(data[i + 1])
        return c == 0xC2 and (a == 0x85 or a == 0xA0)
    if c >= 0xF0:  # four bytes: none is whitespace
        return False
    if i + 2 >= end:
        return True
    a = int(data[i + 1])
    b = int(data[i + 2])
    if c == 0xE1:
        return a == 0x9A and b == 0x80
    if c == 0xE2:
        if a == 0x80:
            return b <= 0x8A or b == 0xA8 or b == 0xA9 or b == 0xAF
        return a == 0x81 and b == 0x9F
    return c == 0xE3 and a == 0x80 and b == 0x80


@numba.njit(cache=True, nogil=True)
def _unicode_edge(data: np.ndarray, s: int, e: int) -> bool:
    """Whether the field ``data[s:e]`` (ASCII-stripped, not empty) starts or ends with
    Unicode whitespace. Called only for a field with a byte of 128 or more at an edge,
    so the scan's loop over plain fields stays as it was."""
    if int(data[s]) >= 128 and _is_unicode_space(data, s, e):
        return True
    if int(data[e - 1]) < 128:
        return False
    i = e - 1
    while i > s and int(data[i]) & 0xC0 == 0x80:  # back over continuation bytes to the lead
        i -= 1
    return _is_unicode_space(data, i, e)


@numba.njit(cache=True, nogil=True, inline="always")
def _amount_micro(data: np.ndarray, start: int, end: int) -> Int:
    """Micro-units of a plain amount (digits[.digits]), or -1 for anything else."""
    whole: Int = 0
    i = start
    while i < end and 48 <= data[i] <= 57:
        whole = whole * 10 + (np.int64(data[i]) - 48)
        i += 1
    if i == start or i - start > 9:
        return -1
    fraction: Int = 0
    places = 0
    if i < end and data[i] == 46:  # '.'
        i += 1
        while i < end and 48 <= data[i] <= 57:
            digit = np.int64(data[i]) - 48
            if places < 6:
                fraction = fraction * 10 + digit
            elif digit != 0:
                return -1  # beyond micro-units: the reference words the error
            places += 1
            i += 1
    if i != end:
        return -1
    while places < 6:
        fraction *= 10
        places += 1
    return whole * 1_000_000 + fraction


@numba.njit(cache=True, nogil=True, inline="always")
def _whole_seconds(data: np.ndarray, start: int, end: int, minimum: int) -> Int:
    """Seconds of a plain count in [minimum, MAX_BLOCK_SECONDS], or -1."""
    if end == start or end - start > 9:
        return -1
    value: Int = 0
    for i in range(start, end):
        if not 48 <= data[i] <= 57:
            return -1
        value = value * 10 + (np.int64(data[i]) - 48)
    return value if minimum <= value <= MAX_BLOCK_SECONDS else -1


@numba.njit(cache=True, nogil=True, inline="always")
def _line_end(data: np.ndarray, k: int) -> int:
    """At ``k``: 1 for LF, 2 for CRLF, 1 for a CR ending the text, 0 if not a line end,
    -1 for a CR in the middle of a line (the csv module's business)."""
    c = data[k]
    if c == 10:
        return 1
    if c != 13:
        return 0
    if k + 1 == len(data):
        return 1
    return 2 if data[k + 1] == 10 else -1


@numba.njit(cache=True, nogil=True)
def _count_lines(data: np.ndarray, start: int) -> int:
    lines = 1
    for i in range(start, len(data)):
        lines += data[i] == 10
    return lines


@numba.njit(cache=True, nogil=True)
def _scan(data: np.ndarray, body: int, ncols: int, columns: np.ndarray, out: np.ndarray) -> int:
    """Split the body into lines and fields and read every plain row, in one pass.

    Returns the number of lines, or -1 to leave the whole deck to the reference.
    ``out[n]`` for line n: [outcome, fields found, prefix at, prefix length,
    zone at, zone length (0, 0 when ``columns[_ZONE]`` is -1: a deck without
    zones), connect fee, first block, increment, price, then
    (at, length) of each optional column's cell, ``columns[6:]``]. Plain
    means what the reference reads the same way without the csv module: fields
    split on ',', optionally in double quotes without quotes inside, ASCII
    whitespace around values, values of the simple forms. LINE_SLOW lines go to the
    reference one by one; a quoted field running past its line or a bare CR
    gives the whole deck to it.
    """
    size = len(data)
    starts = np.empty(ncols, np.int64)
    ends = np.empty(ncols, np.int64)
    n = 0
    i = body
    while i < size:
        row = out[n]
        outcome = LINE_OK
        blank = True
        fields = 0
        while True:  # one field per turn; i is where it starts
            e = i
            if i < size and data[i] == 34:  # a quoted field
                j = i + 1
                while True:
                    while j < size and data[j] != 34 and data[j] != 10 and data[j] != 13:
                        j += 1
                    if j == size or data[j] != 34:
                        return -1  # it goes on past its line, or holds a CR
                    if j + 1 < size and data[j + 1] == 34:
                        outcome = LINE_SLOW  # an escaped quote: unescaping is the reference's
                        j += 2
                        continue
                    break
                s, e = i + 1, j
                k = j + 1
            else:
                s = k = i
            # Up to the comma or the line end; after a closing quote, any text is SLOW.
            after_quote = k
            stop = 0
            while k < size:
                c = data[k]
                if c == 44:
                    break
                stop = _line_end(data, k) if c == 10 or c == 13 else 0
                if stop != 0:
                    break
                if c == 34 or c == 0:
                    outcome = LINE_SLOW  # a literal quote, a NUL
                k += 1
            if stop < 0:
                return -1
            if s == i:  # unquoted
                e = k
            elif k > after_quote:
                outcome = LINE_SLOW  # text after the closing quote
            while s < e and _is_space(data[s]):
                s += 1
            while e > s and _is_space(data[e - 1]):
                e -= 1
            if s < e:
                blank = False
                # Beyond ASCII at an edge (a name like "Guinea: Labé"): only Unicode
                # whitespace there needs strip(), the reference's.
                if (data[s] >= 128 or data[e - 1] >= 128) and _unicode_edge(data, s, e):
                    outcome = LINE_SLOW
            if fields < ncols:
                starts[fields] = s
                ends[fields] = e
            fields += 1
            if k < size and data[k] == 44:
                i = k + 1  # past the comma; a comma at the end opens one more field
                continue
            i = k + (stop if stop > 0 else 1)
            break
        row[1] = fields
        if outcome == LINE_OK:
            if blank:
                outcome = LINE_BLANK
            elif fields != ncols:
                outcome = LINE_COUNT
            else:
                outcome = _read_row(data, starts, ends, columns, row)
        row[0] = outcome
        n += 1
    return n


@numba.njit(cache=True, nogil=True, inline="always")
def _read_row(
    data: np.ndarray, starts: np.ndarray, ends: np.ndarray, columns: np.ndarray, row: np.ndarray
) -> int:
    s = starts[columns[_PREFIX]]
    e = ends[columns[_PREFIX]]
    if s < e and data[s] == 43:  # '+'
        s += 1
    if not 1 <= e - s <= MAX_PREFIX_DIGITS:
        return LINE_SLOW
    for i in range(s, e):
        if not 48 <= data[i] <= 57:
            return LINE_SLOW
    row[2] = s
    row[3] = e - s
    if columns[_ZONE] < 0:  # a deck without zones: a carrier's cost deck
        row[4] = 0
        row[5] = 0
    else:
        s = starts[columns[_ZONE]]
        e = ends[columns[_ZONE]]
        chars = 0
        for i in range(s, e):
            c = data[i]
            if (c < 32 and c != 9) or c == 127 or (c == 0xC2 and data[i + 1] < 0xA0):
                return LINE_SLOW  # a control character (U+0080 to U+009F are C2 80 to C2 9F)
            if c & 0xC0 != 0x80:  # not a UTF-8 continuation byte
                chars += 1
        if chars == 0 or chars > MAX_ZONE_CHARS:
            return LINE_SLOW
        row[4] = s
        row[5] = e - s
    row[6] = _amount_micro(data, starts[columns[_FEE]], ends[columns[_FEE]])
    row[7] = _whole_seconds(data, starts[columns[_BLOCK]], ends[columns[_BLOCK]], 0)
    row[8] = _whole_seconds(data, starts[columns[_INCREMENT]], ends[columns[_INCREMENT]], 1)
    row[9] = _amount_micro(data, starts[columns[_PRICE]], ends[columns[_PRICE]])
    if row[6] < 0 or row[7] < 0 or row[8] < 0 or row[9] < 0:
        return LINE_SLOW
    for k in range(6, len(columns)):  # optional cells: read later, once per distinct text
        row[2 * k - 2] = starts[columns[k]]
        row[2 * k - 1] = ends[columns[k]] - starts[columns[k]]
    return LINE_OK


# --- duplicate prefixes and zones with two rates -------------------------------------


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, nogil=True, inline="always")
def _word(buf: np.ndarray, i: int) -> np.uint64:
    """The 8 bytes at ``i`` as one little-endian word."""
    word = np.uint64(0)
    for k in range(8):
        word |= np.uint64(buf[i + k]) << np.uint64(8 * k)
    return word


@numba.njit(cache=True, nogil=True, inline="always")
def _hash(buf: np.ndarray, at: int, length: int) -> np.uint64:
    h = np.uint64(length)
    i = at
    end = at + length
    while i + 8 <= end:  # a word at a time, then the bytes left
        h = (h ^ _word(buf, i)) * _GOLDEN
        h ^= h >> np.uint64(29)
        i += 8
    tail = np.uint64(0)
    shift = np.uint64(0)
    while i < end:
        tail |= np.uint64(buf[i]) << shift
        shift += np.uint64(8)
        i += 1
    return (h ^ tail) * _GOLDEN


@numba.njit(cache=True, nogil=True, inline="always")
def _same(buf: np.ndarray, a: int, b: int, length: int) -> bool:
    i = 0
    while i + 8 <= length:
        if _word(buf, a + i) != _word(buf, b + i):
            return False
        i += 8
    while i < length:
        if buf[a + i] != buf[b + i]:
            return False
        i += 1
    return True


@numba.njit(cache=True, nogil=True)
def intern_strings(
    buf: np.ndarray, at: np.ndarray, length: np.ndarray, keys: np.ndarray
) -> tuple[Int64Array, Int64Array]:
    """Ids of strings (equal strings, equal id; ids in order of first appearance).

    A string is its bytes, or its key where ``keys[r] >= 0`` (an int64 standing
    for the whole string: a prefix of up to 18 digits). The table starts small
    and doubles, so a few thousand zone names stay in cache; a slot holds all a
    lookup compares (id, hash, where the string is or its key, length or -1 for
    a key), so a lookup reads one slot and the bytes of the string it finds.
    """
    n = len(at)
    bits = 10
    table = np.full((1 << bits, 4), -1, np.int64)
    ids = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    count = 0
    for r in range(n):
        key = keys[r]
        if key >= 0:
            h = np.uint64(key) * _GOLDEN
            where = key
            size = -1
        else:
            where = at[r]
            size = length[r]
            h = _hash(buf, where, size)
        signed = np.int64(h)
        mask = (1 << bits) - 1
        slot = np.int64(h >> np.uint64(64 - bits))
        while True:
            if table[slot, 0] < 0:
                table[slot, 0] = count
                table[slot, 1] = signed
                table[slot, 2] = where
                table[slot, 3] = size
                ids[r] = count
                first[count] = r
                count += 1
                break
            if (
                table[slot, 1] == signed
                and table[slot, 3] == size
                and (
                    table[slot, 2] == where if size < 0 else _same(buf, table[slot, 2], where, size)
                )
            ):
                ids[r] = table[slot, 0]
                break
            slot = (slot + 1) & mask
        if 2 * count > (1 << bits):  # grow: move the slots in use
            bits += 1
            mask = (1 << bits) - 1
            old = table
            table = np.full((1 << bits, 4), -1, np.int64)
            for s in range(len(old)):
                if old[s, 0] >= 0:
                    slot = np.int64(np.uint64(old[s, 1]) >> np.uint64(64 - bits))
                    while table[slot, 0] >= 0:
                        slot = (slot + 1) & mask
                    table[slot] = old[s]
    return ids, first[:count].copy()


@numba.njit(cache=True, nogil=True)
def intern_keys(keys: np.ndarray, ordered: np.ndarray) -> tuple[Int64Array, Int64Array]:
    """``intern_strings`` of strings that all have keys (``keys >= 0``), ``ordered`` being
    ``np.sort(keys)``: only keys that repeat go in a hash table, sized once for them,
    so a deck whose prefixes are all distinct needs none.
    """
    n = len(keys)
    repeats = 0  # keys found more than once
    for i in range(1, n):
        if ordered[i] == ordered[i - 1] and (i == 1 or ordered[i - 1] != ordered[i - 2]):
            repeats += 1
    ids = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    if repeats == 0:
        for r in range(n):
            ids[r] = r
            first[r] = r
        return ids, first
    bits = 4
    while (1 << bits) < 2 * repeats:
        bits += 1
    mask = (1 << bits) - 1
    table = np.full((1 << bits, 2), -1, np.int64)  # [key, its id once it has one]
    for i in range(1, n):
        if ordered[i] == ordered[i - 1] and (i == 1 or ordered[i - 1] != ordered[i - 2]):
            slot = np.int64((np.uint64(ordered[i]) * _GOLDEN) >> np.uint64(64 - bits))
            while table[slot, 0] >= 0:
                slot = (slot + 1) & mask
            table[slot, 0] = ordered[i]
    count = 0
    for r in range(n):
        key = keys[r]
        slot = np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(64 - bits))
        while table[slot, 0] >= 0 and table[slot, 0] != key:
            slot = (slot + 1) & mask
        if table[slot, 0] == key:
            if table[slot, 1] >= 0:
                ids[r] = table[slot, 1]
                continue
            table[slot, 1] = count
        ids[r] = count
        first[count] = r
        count += 1
    return ids, first[:count].copy()


@numba.njit(cache=True, nogil=True)
def cross_check(
    lines: np.ndarray,
    prefix_id: np.ndarray,
    prefixes: int,
    zone_id: np.ndarray,
    zones: int,
    direction: np.ndarray,
    directions: int,
    rates: np.ndarray,
    most: int,
) -> tuple[Int64Array, Int]:
    """Rows in file order: a prefix given again in its direction, else a prefix in
    another zone than in the other direction; and a zone at another rate in its
    direction than its first good row there. Returns ((row, kind, line referred to)
    for the first ``most`` problems, the number of problems in all); kind 0 is a
    duplicate prefix, 1 a zone rate, 2 a prefix's zone; a row's come in kind order
    0 or 2, then 1. ``rates`` holds each row's rate as integers (equal rates, equal
    rows). Only good rows claim a prefix or a zone's rate.
    """
    n = len(lines)
    prefix_line = np.full((prefixes, directions), -1, np.int64)
    both = directions > 1
    prefix_zone = np.full(prefixes if both else 0, -1, np.int64)
    prefix_zone_line = np.full(prefixes if both else 0, -1, np.int64)
    zone_row = np.full((zones, directions), -1, np.int64)
    problems = np.empty((most, 3), np.int64)
    width = rates.shape[1]
    found = 0
    for r in range(n):
        p = prefix_id[r]
        z = zone_id[r]
        d = direction[r]
        kind = -1
        other = 0
        first = zone_row[z, d]
        if prefix_line[p, d] >= 0:
            kind = 0
            other = prefix_line[p, d]
        elif both and prefix_zone[p] >= 0 and prefix_zone[p] != z:
            kind = 2
            other = prefix_zone_line[p]
        if kind >= 0:
            if found < most:
                problems[found, 0] = r
                problems[found, 1] = kind
                problems[found, 2] = other
            found += 1
        rate_differs = False
        if first >= 0:
            for c in range(width):
                if rates[first, c] != rates[r, c]:
                    rate_differs = True
                    break
        if rate_differs:
            if found < most:
                problems[found, 0] = r
                problems[found, 1] = 1
                problems[found, 2] = lines[first]
            found += 1
            continue
        if kind >= 0:
            continue
        prefix_line[p, d] = lines[r]
        if both and prefix_zone[p] < 0:
            prefix_zone[p] = z
            prefix_zone_line[p] = lines[r]
        if first < 0:
            zone_row[z, d] = r
    return problems[: min(found, most)].copy(), found


# --- the parse -----------------------------------------------------------------------
