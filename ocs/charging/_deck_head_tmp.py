"""Rate deck CSV parsing and validation: all rows good, or nothing applied.

Header: ``prefix,zone,price_per_minute,connect_fee,first_block,increment``
(any column order). Amounts are decimal strings, durations whole seconds.
Every error names its line number and column; up to ``MAX_REPORTED`` errors
are reported at once so an operator can fix a deck in one pass.

Carrier decks have a million rows, so the parse is compiled: one numba pass
over the bytes splits the lines and fields and reads every plain row
(``_scan``), and only rows it cannot vouch for (quoting beyond the simple
kind, unusual whitespace, anything malformed) go through the per-row Python
checks below, which also word every error message. Duplicate prefixes and
zones with two rates are found by one more compiled pass in file order.
Rules and messages are those of the row-by-row reference, ``parse_deck_rows``,
which the tests hold the fast parse to; a deck whose quoting the fast parse
does not follow (a quoted field spanning lines, a bare carriage return) is
parsed by the reference outright.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numba
import numpy as np

from ocs.charging.matcher import KEY_DIGITS, _prefix_keys
from ocs.charging.rating import Rate
from ocs.errors import OcsError, Reason
from ocs.money import MoneyError, parse_amount

COLUMNS = ("prefix", "zone", "price_per_minute", "connect_fee", "first_block", "increment")
MAX_REPORTED = 20
MAX_BLOCK_SECONDS = 86_400
MAX_ZONE_CHARS = 200
MAX_PREFIX_DIGITS = 32


@dataclass(frozen=True, slots=True)
class DeckRow:
    line: int
    prefix: str
    zone: str
    rate: Rate


class DeckError(OcsError):
    """A deck with bad rows; ``problems`` lists (line, message)."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        shown = "; ".join(f"line {line}: {message}" for line, message in problems)
        super().__init__(
            Reason.INVALID_DECK, f"rate deck rejected, nothing applied: {shown}", field="deck"
        )

    def to_json(self) -> dict[str, object]:
        body = super().to_json()
        body["error"]["problems"] = [  # type: ignore[index]
            {"line": line, "message": message} for line, message in self.problems
        ]
        return body


class Deck(Sequence[DeckRow]):
    """A parsed, valid deck, column-wise: no Python object per row.

    Rows keep file order. Each zone has one rate (the deck rules make it so);
    ``zone_of[i]`` is row i's position in ``zones``/``rates``. Row i's prefix is
    ``buf[prefix_at[i]:prefix_at[i] + prefix_len[i]]`` (digits, no '+'). It is
    a sequence of ``DeckRow`` too, built on access, for small decks and tests.
    """

    __slots__ = ("buf", "lines", "prefix_at", "prefix_len", "rates", "zone_of", "zones")

    def __init__(
        self,
        *,
        buf: np.ndarray,
        lines: np.ndarray,
        prefix_at: np.ndarray,
        prefix_len: np.ndarray,
        zone_of: np.ndarray,
        zones: list[str],
        rates: list[Rate],
    ) -> None:
        self.buf = buf
        self.lines = lines
        self.prefix_at = prefix_at
        self.prefix_len = prefix_len
        self.zone_of = zone_of
        self.zones = zones
        self.rates = rates

    @classmethod
    def from_rows(cls, rows: Sequence[DeckRow]) -> Deck:
        """The column form of rows from ``parse_deck_rows`` (already validated)."""
        zone_index: dict[str, int] = {}
        rates: list[Rate] = []
        for row in rows:
            if zone_index.setdefault(row.zone, len(rates)) == len(rates):
                rates.append(row.rate)
        encoded = [row.prefix.encode() for row in rows]
        prefix_len = np.fromiter(map(len, encoded), np.int64, len(encoded))
        prefix_at = np.zeros(len(encoded), np.int64)
        np.cumsum(prefix_len[:-1], out=prefix_at[1:])
        return cls(
            buf=np.frombuffer(b"".join(encoded), np.uint8),
            lines=np.fromiter((row.line for row in rows), np.int64, len(rows)),
            prefix_at=prefix_at,
            prefix_len=prefix_len,
            zone_of=np.fromiter((zone_index[row.zone] for row in rows), np.int64, len(rows)),
            zones=list(zone_index),
            rates=rates,
        )

    def __len__(self) -> int:
        return len(self.lines)

    def prefix(self, i: int) -> str:
        at = int(self.prefix_at[i])
        return bytes(self.buf[at : at + int(self.prefix_len[i])]).decode("ascii")

    @overload
    def __getitem__(self, i: int) -> DeckRow: ...

    @overload
    def __getitem__(self, i: slice) -> list[DeckRow]: ...

    def __getitem__(self, i: int | slice) -> DeckRow | list[DeckRow]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        zone = int(self.zone_of[i])
        return DeckRow(
            line=int(self.lines[i]),
            prefix=self.prefix(i),
            zone=self.zones[zone],
            rate=self.rates[zone],
        )

    def __iter__(self) -> Iterator[DeckRow]:
        return (self[i] for i in range(len(self)))


# --- per-row rules (the reference) ---------------------------------------------------


def _seconds(text: str, column: str, minimum: int) -> int:
    value = text.strip()
    if not value.isdigit():
        raise ValueError(f"{column}: expected whole seconds, got {text!r}")
    number = int(value)
    if not minimum <= number <= MAX_BLOCK_SECONDS:
        raise ValueError(f"{column}: expected {minimum} to {MAX_BLOCK_SECONDS} seconds")
    return number


def _amount(text: str, column: str) -> int:
    try:
        return parse_amount(text)
    except MoneyError as exc:
        raise ValueError(f"{column}: {exc}") from None


def _read_header(header: list[str]) -> dict[str, int]:
    names = [h.strip().lower() for h in header]
    missing = [c for c in COLUMNS if c not in names]
    unknown = [n for n in names if n not in COLUMNS]
    if missing or unknown:
        detail = []
        if missing:
            detail.append("missing column(s) " + ", ".join(missing))
        if unknown:
            detail.append("unknown column(s) " + ", ".join(unknown))
        raise DeckError([(1, "; ".join(detail) + "; expected " + ",".join(COLUMNS))])
    return {name: names.index(name) for name in COLUMNS}


def _row_values(fields: list[str], index: dict[str, int]) -> tuple[str, str, Rate]:
    """(prefix, zone, rate) of one row's fields; ValueError says what is wrong."""
    prefix = fields[index["prefix"]].strip().removeprefix("+")
    if not (prefix.isascii() and prefix.isdigit()) or len(prefix) > MAX_PREFIX_DIGITS:
        raise ValueError(f"prefix: expected 1 to 32 digits, got {fields[index['prefix']]!r}")
    zone = fields[index["zone"]].strip()
    if not zone:
        raise ValueError("zone: must not be empty")
    if len(zone) > MAX_ZONE_CHARS:
        raise ValueError("zone: longer than 200 characters")
    rate = Rate(
        connect_fee=_amount(fields[index["connect_fee"]], "connect_fee"),
        first_block=_seconds(fields[index["first_block"]], "first_block", 0),
        increment=_seconds(fields[index["increment"]], "increment", 1),
        price_per_minute=_amount(fields[index["price_per_minute"]], "price_per_minute"),
    )
    return prefix, zone, rate


def _is_blank(fields: list[str]) -> bool:
    return not fields or all(not f.strip() for f in fields)


def _without_bom(text: str) -> str:
    return text[1:] if text.startswith("\ufeff") else text  # spreadsheets write a BOM


def parse_deck_rows(text: str) -> list[DeckRow]:
    """The row-by-row reference parse: the rules ``parse_deck`` follows, one row at a time."""
    reader = csv.reader(io.StringIO(_without_bom(text)))
    try:
        header = next(reader)
    except StopIteration:
        raise DeckError([(1, "empty file: expected the header " + ",".join(COLUMNS))]) from None
    index = _read_header(header)
    ncols = len(header)
    rows: list[DeckRow] = []
    problems: list[tuple[int, str]] = []
    seen_prefix: dict[str, int] = {}
    zone_rate: dict[str, tuple[Rate, int]] = {}
    for fields in reader:
        line = reader.line_num
        if _is_blank(fields):
            continue
        if len(fields) != ncols:
            problems.append((line, f"expected {ncols} fields, found {len(fields)}"))
        else:
            try:
                prefix, zone, rate = _row_values(fields, index)
                if prefix in seen_prefix:
                    raise ValueError(
                        f"prefix: {prefix} already given at line {seen_prefix[prefix]}"
                    )
                known = zone_rate.get(zone)
                if known is not None and known[0] != rate:
                    raise ValueError(f"zone: {zone!r} has a different rate at line {known[1]}")
                seen_prefix[prefix] = line
                zone_rate.setdefault(zone, (rate, line))
                rows.append(DeckRow(line=line, prefix=prefix, zone=zone, rate=rate))
            except ValueError as exc:
                problems.append((line, str(exc)))
        if len(problems) >= MAX_REPORTED:
            break
    if problems:
        raise DeckError(problems)
    if not rows:
        raise DeckError([(2, "no rows: a deck needs at least one prefix")])
    return rows


# --- the compiled scan ---------------------------------------------------------------

# Line outcomes of _scan.
_OK, _BLANK, _SLOW, _COUNT = 0, 1, 2, 3
# Columns in the order _scan takes their positions.
_PREFIX, _ZONE, _PRICE, _FEE, _BLOCK, _INCREMENT = range(6)


@numba.njit(cache=True, nogil=True, inline="always")
def _is_space(c: int) -> bool:
    # The ASCII characters str.strip() removes.
    return c == 32 or 9 <= c <= 13 or 28 <= c <= 31


@numba.njit(cache=True, nogil=True)
def _amount_micro(data: np.ndarray, start: int, end: int) -> int:
    """Micro-units of a plain amount (digits[.digits]), or -1 for anything else."""
    whole = 0
    i = start
    while i < end and 48 <= data[i] <= 57:
        whole = whole * 10 + (np.int64(data[i]) - 48)
        i += 1
    if i == start or i - start > 9:
        return -1
    fraction = 0
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


@numba.njit(cache=True, nogil=True)
def _whole_seconds(data: np.ndarray, start: int, end: int, minimum: int) -> int:
    """Seconds of a plain count in [minimum, MAX_BLOCK_SECONDS], or -1."""
    if end == start or end - start > 9:
        return -1
    value = 0
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
    zone at, zone length, connect fee, first block, increment, price]. Plain
    means what the reference reads the same way without the csv module: fields
    split on ',', optionally in double quotes without quotes inside, ASCII
    whitespace around values, values of the simple forms. _SLOW lines go to the
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
        outcome = _OK
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
                        outcome = _SLOW  # an escaped quote: unescaping is the reference's
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
                    outcome = _SLOW  # a literal quote, a NUL
                k += 1
            if stop < 0:
                return -1
            if s == i:  # unquoted
                e = k
            elif k > after_quote:
                outcome = _SLOW  # text after the closing quote
            while s < e and _is_space(data[s]):
                s += 1
            while e > s and _is_space(data[e - 1]):
                e -= 1
            if s < e:
                blank = False
                if data[s] >= 128 or data[e - 1] >= 128:
                    outcome = _SLOW  # maybe Unicode whitespace: strip() decides
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
        if outcome == _OK:
            if blank:
                outcome = _BLANK
            elif fields != ncols:
                outcome = _COUNT
            else:
                outcome = _read_row(data, starts, ends, columns, row)
        row[0] = outcome
        n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _read_row(
    data: np.ndarray, starts: np.ndarray, ends: np.ndarray, columns: np.ndarray, row: np.ndarray
) -> int:
    s = starts[columns[_PREFIX]]
    e = ends[columns[_PREFIX]]
    if s < e and data[s] == 43:  # '+'
        s += 1
    if not 1 <= e - s <= MAX_PREFIX_DIGITS:
        return _SLOW
    for i in range(s, e):
        if not 48 <= data[i] <= 57:
            return _SLOW
    row[2] = s
    row[3] = e - s
    s = starts[columns[_ZONE]]
    e = ends[columns[_ZONE]]
    chars = 0
    for i in range(s, e):
        if data[i] & 0xC0 != 0x80:  # not a UTF-8 continuation byte
            chars += 1
    if chars == 0 or chars > MAX_ZONE_CHARS:
        return _SLOW
    row[4] = s
    row[5] = e - s
    row[6] = _amount_micro(data, starts[columns[_FEE]], ends[columns[_FEE]])
    row[7] = _whole_seconds(data, starts[columns[_BLOCK]], ends[columns[_BLOCK]], 0)
    row[8] = _whole_seconds(data, starts[columns[_INCREMENT]], ends[columns[_INCREMENT]], 1)
    row[9] = _amount_micro(data, starts[columns[_PRICE]], ends[columns[_PRICE]])
    if row[6] < 0 or row[7] < 0 or row[8] < 0 or row[9] < 0:
        return _SLOW
    return _OK


# --- duplicate prefixes and zones with two rates -------------------------------------


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, nogil=True, inline="always")
def _same(buf: np.ndarray, a: int, b: int, length: int) -> bool:
    for i in range(length):  # noqa: SIM110 - numba compiles loops, not generators
        if buf[a + i] != buf[b + i]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _intern(buf: np.ndarray, at: np.ndarray, length: np.ndarray, keys: np.ndarray) -> tuple:
    """Ids of strings (equal strings, equal id; ids in order of first appearance).

    A string is its bytes, or its key where ``keys[r] >= 0`` (an int64 standing
    for the whole string: a prefix of up to 18 digits). The table starts small
    and doubles, so a few thousand zone names stay in cache.
    """
    n = len(at)
    bits = 10
    table = np.full(1 << bits, -1, np.int64)
    hashes = np.empty(n, np.uint64)
    ids = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    count = 0
    for r in range(n):
        if keys[r] >= 0:
            h = np.uint64(keys[r]) * _GOLDEN
        else:
            h = np.uint64(length[r])
            for i in range(at[r], at[r] + length[r]):
                h = ((h << np.uint64(5)) | (h >> np.uint64(59))) ^ np.uint64(buf[i])
            h *= _GOLDEN
        hashes[r] = h
        mask = (1 << bits) - 1
        slot = np.int64(h >> np.uint64(64 - bits))
        while True:
            other = table[slot]
            if other < 0:
                table[slot] = r
                ids[r] = count
                first[count] = r
                count += 1
                break
            if keys[r] >= 0:
                same = keys[other] == keys[r]
            else:
                same = (
                    hashes[other] == h
                    and keys[other] < 0
                    and length[other] == length[r]
                    and _same(buf, at[other], at[r], length[r])
                )
            if same:
                ids[r] = ids[other]
                break
            slot = (slot + 1) & mask
        if 2 * count > (1 << bits):  # grow: rehash the representatives
            bits += 1
            mask = (1 << bits) - 1
            table = np.full(1 << bits, -1, np.int64)
            for c in range(count):
                slot = np.int64(hashes[first[c]] >> np.uint64(64 - bits))
                while table[slot] >= 0:
                    slot = (slot + 1) & mask
                table[slot] = first[c]
    return ids, first[:count].copy()


@numba.njit(cache=True, nogil=True)
def _cross_check(
    lines: np.ndarray, prefix_id: np.ndarray, zone_id: np.ndarray, rates: np.ndarray, most: int
) -> np.ndarray:
    """Rows in file order: a prefix given again, or a zone at another rate than its
    first good row. Returns (row, kind, line referred to) for the first ``most``
    problems; kind 0 is a duplicate prefix, 1 a zone rate. Only good rows claim a
    prefix or a zone's rate.
    """
    n = len(lines)
    prefix_line = np.full(n, -1, np.int64)
    zone_row = np.full(n, -1, np.int64)
    problems = np.empty((n, 3), np.int64)
    found = 0
    for r in range(n):
        if found == most:
            break
        p = prefix_id[r]
        z = zone_id[r]
        if prefix_line[p] >= 0:
            problems[found, 0] = r
            problems[found, 1] = 0
            problems[found, 2] = prefix_line[p]
            found += 1
            continue
        first = zone_row[z]
        if first >= 0:
            differs = False
            for c in range(4):
                if rates[first, c] != rates[r, c]:
                    differs = True
            if differs:
                problems[found, 0] = r
                problems[found, 1] = 1
                problems[found, 2] = lines[first]
                found += 1
                continue
        prefix_line[p] = lines[r]
        if first < 0:
            zone_row[z] = r
    return problems[:found].copy()


# --- the parse -----------------------------------------------------------------------


def parse_deck(text: str | bytes) -> Deck:
    """Parse a whole deck; raises DeckError naming every bad line (up to MAX_REPORTED)."""
    if isinstance(text, bytes):
        data_bytes = text
        text = text.decode("utf-8")
    else:
        data_bytes = text.encode("utf-8", "surrogatepass")
    if data_bytes.startswith(b"\xef\xbb\xbf"):
        data_bytes = data_bytes[3:]
    newline = data_bytes.find(b"\n")
    header_end = len(data_bytes) if newline < 0 else newline + 1
    header_text = data_bytes[:header_end].decode("utf-8", "surrogatepass")
    core = header_text.removesuffix("\n").removesuffix("\r")
    if not data_bytes or '"' in header_text or "\r" in core:
        return Deck.from_rows(parse_deck_rows(text))
    header = next(csv.reader([header_text]), [])
    index = _read_header(header)
    ncols = len(header)
    data = np.frombuffer(data_bytes, np.uint8)
    out = np.empty((_count_lines(data, header_end), 10), np.int64)
    columns = np.array([index[c] for c in COLUMNS], np.int64)
    scanned = _scan(data, header_end, ncols, columns, out) if header_end < len(data) else 0
    if scanned < 0:
        return Deck.from_rows(parse_deck_rows(text))
    return _collect(data, out[:scanned], index, ncols)


def _collect(data: np.ndarray, out: np.ndarray, index: dict[str, int], ncols: int) -> Deck:
    """Rows and problems from the scan's outcomes, then the cross-row checks."""
    outcome = out[:, 0]
    line_of = np.arange(2, len(out) + 2, dtype=np.int64)  # the header is line 1
    problems = _Problems()
    for n in np.flatnonzero(outcome == _COUNT)[:MAX_REPORTED].tolist():
        problems.add(int(line_of[n]), f"expected {ncols} fields, found {int(out[n, 1])}")
    slow_rows = _read_slow_lines(data, out, index, ncols, problems)
    good = np.flatnonzero(outcome == _OK)
    if slow_rows:
        good = np.sort(np.concatenate((good, np.fromiter(slow_rows, np.int64, len(slow_rows)))))
    # Rows past the last problem reported cannot change what is reported.
    good = good[line_of[good] < problems.horizon]
    rows = out[good]
    buf = data
    if slow_rows:
        # Their prefixes and zones as the reference read them, appended to the buffer.
        extra = bytearray()
        for at, n in enumerate(good.tolist()):
            if n in slow_rows:
                prefix, zone, rate = slow_rows[n]
                p = prefix.encode()
                z = zone.encode("utf-8", "surrogatepass")
                rows[at, 2:10] = (
                    len(data) + len(extra), len(p), len(data) + len(extra) + len(p), len(z),
                    rate.connect_fee, rate.first_block, rate.increment, rate.price_per_minute,
                )  # fmt: skip
                extra += p + z
        buf = np.concatenate((data, np.frombuffer(bytes(extra), np.uint8)))
    prefix_keys = _prefix_keys(buf, rows[:, 2], rows[:, 3])
    prefix_keys[rows[:, 3] > KEY_DIGITS] = -1  # a key holds 18 digits: longer ones by bytes
    prefix_id, _ = _intern(buf, rows[:, 2], rows[:, 3], prefix_keys)
    zone_id, zone_first = _intern(buf, rows[:, 4], rows[:, 5], np.full(len(rows), -1, np.int64))
    lines = line_of[good]
    crossed = _cross_check(lines, prefix_id, zone_id, rows[:, 6:10], MAX_REPORTED)
    for r, kind, other in crossed.tolist():
        if kind == 0:
            prefix = bytes(buf[rows[r, 2] : rows[r, 2] + rows[r, 3]]).decode("ascii")
            problems.add(int(lines[r]), f"prefix: {prefix} already given at line {other}")
        else:
            zone = _text(buf, rows[r, 4], rows[r, 5])
            problems.add(int(lines[r]), f"zone: {zone!r} has a different rate at line {other}")
    if problems.found:
        raise DeckError(problems.first())
    if not len(rows):
        raise DeckError([(2, "no rows: a deck needs at least one prefix")])
    zones = [_text(buf, rows[r, 4], rows[r, 5]) for r in zone_first.tolist()]
    rates = [
        Rate(connect_fee=fee, first_block=block, increment=increment, price_per_minute=price)
        for fee, block, increment, price in rows[zone_first, 6:10].tolist()
    ]
    return Deck(
        buf=buf,
        lines=lines,
        prefix_at=rows[:, 2].copy(),
        prefix_len=rows[:, 3].copy(),
        zone_of=zone_id,
        zones=zones,
        rates=rates,
    )


class _Problems:
    """Problems found so far, and the line past which none can be among those reported."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self.horizon = 1 << 62

    def add(self, line: int, message: str) -> None:
        self.found.append((line, message))
        if len(self.found) >= MAX_REPORTED:
            self.found = self.first()
            self.horizon = self.found[-1][0]

    def first(self) -> list[tuple[int, str]]:
        return sorted(self.found, key=lambda problem: problem[0])[:MAX_REPORTED]


def _read_slow_lines(
    data: np.ndarray, out: np.ndarray, index: dict[str, int], ncols: int, problems: _Problems
) -> dict[int, tuple[str, str, Rate]]:
    """Lines the scan left to the reference, read as the csv module reads them, in order,
    until no later line can be among the problems reported."""
    slow = np.flatnonzero(out[:, 0] == _SLOW).tolist()
    rows: dict[int, tuple[str, str, Rate]] = {}
    if not slow:
        return rows
    cuts = np.flatnonzero(data == 10)  # line n of the body ends at cuts[n + 1]
    for n in slow:
        line = n + 2
        if line >= problems.horizon:
            break
        start = int(cuts[n]) + 1
        stop = int(cuts[n + 1]) if n + 1 < len(cuts) else len(data)
        fields = next(csv.reader([bytes(data[start:stop]).decode("utf-8", "surrogatepass")]), [])
        if _is_blank(fields):
            continue
        if len(fields) != ncols:
            problems.add(line, f"expected {ncols} fields, found {len(fields)}")
            continue
        try:
            rows[n] = _row_values(fields, index)
        except ValueError as exc:
            problems.add(line, str(exc))
    return rows


def _text(buf: np.ndarray, at: int, length: int) -> str:
    return bytes(buf[at : at + length]).decode("utf-8", "surrogatepass")


def warm_up() -> None:
    """Compile, or load from the on-disk cache, the kernels a deck import runs.

    Two decks: a plain one (its buffer is the text's, read-only) and one with a
    row left to the reference (its buffer is a copy with that row appended).
    """
    header = "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"
    plain = '44,"UK, Fixed",0.01,0,60,60\n+447, UK Mobile ,0.06,0,30,6\n'
    with_slow_row = '49,"Ger""many",.012,0,1,1\n' + "4" * 20 + ",X,1,0,1,1\n"
    assert len(parse_deck(header + plain)) == len(parse_deck(header + with_slow_row)) == 2
