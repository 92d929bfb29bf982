"""Carriers, their cost decks and route sets in PostgreSQL; a plan's routing.

Every change commits in one transaction and then NOTIFYs the catalog channel
(``ocs_catalog``) so that every ``ocs serve`` process swaps in a new snapshot:
``carrier:<id>`` rebuilds that carrier's cost deck only, ``routes:<id>`` rereads
the route sets, ``plan:<id>`` the plan's routing settings (ocs.charging.catalog).

A cost deck is CSV with the header ``prefix,connect_fee,first_block,increment,
price_per_minute`` (any column order), amounts as decimal strings like a plan's
rate deck, durations whole seconds. It is all or nothing: a bad row is reported
with its line number and column (up to 20 at once) and nothing is applied; a
good deck replaces the carrier's whole deck in one transaction.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import asyncpg
import numba
import numpy as np

from ocs.charging.catalog import CATALOG_CHANNEL
from ocs.charging.catalog_store import validate_plan_id
from ocs.charging.deck import MAX_BLOCK_SECONDS, MAX_PREFIX_DIGITS, MAX_REPORTED, DeckError
from ocs.charging.matcher import KEY_DIGITS, _prefix_keys
from ocs.charging.rating import Rate
from ocs.charging.routes import RATE_FIELDS, intern_rates, rates_of
from ocs.errors import OcsError, Reason, invalid
from ocs.money import MoneyError, parse_amount

CARRIER_COLUMNS = ("prefix", "connect_fee", "first_block", "increment", "price_per_minute")
MAX_NAME_CHARS = 200
MAX_ROUTE_SET_CARRIERS = 64


def validate_id(value: object, field: str) -> str:
    """A carrier or route set id: 1 to 64 letters, digits, '-', '_' or '.' (as plan ids)."""
    if not isinstance(value, str):
        raise invalid(field, "expected a string")
    return validate_plan_id(value, field)


@dataclass(frozen=True, slots=True)
class Carrier:
    id: str
    name: str


class CarrierDeck(Sequence[tuple[str, Rate]]):
    """A parsed, valid cost deck, column-wise: no Python object per row.

    Row i (file order) is the prefix ``buf[prefix_at[i]:prefix_at[i] + prefix_len[i]]``
    (digits, no '+') costing ``rates[rate_of[i]]``; ``values[k]`` holds rate k's
    fields (connect fee, first block, increment, price per minute). As a sequence
    it is (prefix, rate) pairs, built on access, for small decks and tests.
    """

    __slots__ = ("buf", "lines", "prefix_at", "prefix_len", "rate_of", "rates", "values")

    def __init__(
        self,
        *,
        buf: np.ndarray,
        lines: np.ndarray,
        prefix_at: np.ndarray,
        prefix_len: np.ndarray,
        rate_of: np.ndarray,
        values: np.ndarray,
    ) -> None:
        self.buf = buf
        self.lines = lines
        self.prefix_at = prefix_at
        self.prefix_len = prefix_len
        self.rate_of = rate_of
        self.values = values
        self.rates = rates_of(values, np.arange(len(values)))

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[int, str, Rate]]) -> CarrierDeck:
        """The column form of valid (line, prefix, rate) rows."""
        fields = np.array(
            [(r.connect_fee, r.first_block, r.increment, r.price_per_minute) for _, _, r in rows],
            np.int64,
        ).reshape(len(rows), RATE_FIELDS)
        encoded = [prefix.encode() for _, prefix, _ in rows]
        prefix_len = np.fromiter(map(len, encoded), np.int64, len(encoded))
        prefix_at = np.zeros(len(encoded), np.int64)
        np.cumsum(prefix_len[:-1], out=prefix_at[1:])
        rate_of, first = intern_rates(fields)
        return cls(
            buf=np.frombuffer(b"".join(encoded), np.uint8),
            lines=np.fromiter((line for line, _, _ in rows), np.int64, len(rows)),
            prefix_at=prefix_at,
            prefix_len=prefix_len,
            rate_of=rate_of,
            values=fields[first],
        )

    def __len__(self) -> int:
        return len(self.lines)

    def prefix(self, i: int) -> str:
        at = int(self.prefix_at[i])
        return bytes(self.buf[at : at + int(self.prefix_len[i])]).decode("ascii")

    def __getitem__(self, i: int) -> tuple[str, Rate]:  # type: ignore[override]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.prefix(i), self.rates[int(self.rate_of[i])]

    def __iter__(self) -> Iterator[tuple[str, Rate]]:
        return (self[i] for i in range(len(self)))


@dataclass(frozen=True, slots=True)
class CarrierDeckImport:
    carrier_id: str
    prefixes: int
    rates: int  # distinct rates


# --- the cost deck CSV: per-row rules (the reference) --------------------------------


def _read_header(header: list[str]) -> dict[str, int]:
    names = [h.strip().lower() for h in header]
    missing = [c for c in CARRIER_COLUMNS if c not in names]
    unknown = [n for n in names if n not in CARRIER_COLUMNS]
    if missing or unknown:
        detail = []
        if missing:
            detail.append("missing column(s) " + ", ".join(missing))
        if unknown:
            detail.append("unknown column(s) " + ", ".join(unknown))
        raise DeckError([(1, "; ".join(detail) + "; expected " + ",".join(CARRIER_COLUMNS))])
    if len(set(names)) != len(names):
        raise DeckError([(1, "a column is given twice; expected " + ",".join(CARRIER_COLUMNS))])
    return {name: names.index(name) for name in CARRIER_COLUMNS}


def _seconds(text: str, column: str, minimum: int) -> int:
    value = text.strip()
    if not (value.isascii() and value.isdigit()):
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


def _is_blank(fields: list[str]) -> bool:
    return all(not f.strip() for f in fields)


def _row_values(fields: list[str], index: dict[str, int]) -> tuple[str, Rate]:
    """(prefix, rate) of one row's fields; ValueError names the column at fault."""
    raw = fields[index["prefix"]]
    prefix = raw.strip().removeprefix("+")
    if not (prefix.isascii() and prefix.isdigit()) or len(prefix) > MAX_PREFIX_DIGITS:
        raise ValueError(f"prefix: expected 1 to 32 digits, got {raw!r}")
    rate = Rate(
        connect_fee=_amount(fields[index["connect_fee"]], "connect_fee"),
        first_block=_seconds(fields[index["first_block"]], "first_block", 0),
        increment=_seconds(fields[index["increment"]], "increment", 1),
        price_per_minute=_amount(fields[index["price_per_minute"]], "price_per_minute"),
    )
    return prefix, rate


def parse_carrier_deck_rows(text: str) -> CarrierDeck:
    """The row-by-row reference parse: the rules ``parse_carrier_deck`` follows."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    try:
        header = next(reader)
    except StopIteration:
        raise DeckError(
            [(1, "empty file: expected the header " + ",".join(CARRIER_COLUMNS))]
        ) from None
    index = _read_header(header)
    ncols = len(header)
    rows: list[tuple[int, str, Rate]] = []
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for fields in reader:
        line = reader.line_num
        if _is_blank(fields):
            continue
        if len(fields) != ncols:
            problems.append((line, f"expected {ncols} fields, found {len(fields)}"))
        else:
            try:
                prefix, rate = _row_values(fields, index)
                if prefix in seen:
                    raise ValueError(f"prefix: {prefix} already given at line {seen[prefix]}")
                seen[prefix] = line
                rows.append((line, prefix, rate))
            except ValueError as exc:
                problems.append((line, str(exc)))
        if len(problems) >= MAX_REPORTED:
            break
    if problems:
        raise DeckError(problems)
    if not rows:
        raise DeckError([(2, "no rows: a cost deck needs at least one prefix")])
    return CarrierDeck.from_rows(rows)


# --- the compiled scan -----------------------------------------------------------------

# Line outcomes of _scan; out[n] = [outcome, fields, prefix at, prefix length, 4 rate fields].
_OK, _BLANK, _SLOW, _COUNT = 0, 1, 2, 3
_OUT = 4 + RATE_FIELDS
_MAX_WHOLE_DIGITS = 9  # amounts up to 999,999,999.999999: below money.MAX_AMOUNT


@numba.njit(cache=True, nogil=True, inline="always")
def _is_space(c: int) -> bool:
    # The ASCII characters str.strip() removes.
    return c == 32 or 9 <= c <= 13 or 28 <= c <= 31


@numba.njit(cache=True, nogil=True)
def _micro(data: np.ndarray, start: int, end: int) -> int:
    """Micro-units of a plain amount (digits[.digits], at most 6 places that count), or -1."""
    whole = 0
    i = start
    while i < end and 48 <= data[i] <= 57:
        whole = whole * 10 + (np.int64(data[i]) - 48)
        i += 1
    if i == start or i - start > _MAX_WHOLE_DIGITS:
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
    """A plain count of seconds in [minimum, MAX_BLOCK_SECONDS], or -1."""
    if end == start or end - start > 9:
        return -1
    value = 0
    for i in range(start, end):
        if not 48 <= data[i] <= 57:
            return -1
        value = value * 10 + (np.int64(data[i]) - 48)
    return value if minimum <= value <= MAX_BLOCK_SECONDS else -1


@numba.njit(cache=True, nogil=True)
def _read_row(
    data: np.ndarray, starts: np.ndarray, ends: np.ndarray, columns: np.ndarray, row: np.ndarray
) -> int:
    """A row of plain fields into ``row``; _SLOW for anything else (the reference words it)."""
    for c in range(5):
        s = starts[columns[c]]
        e = ends[columns[c]]
        while s < e and _is_space(data[s]):
            s += 1
        while e > s and _is_space(data[e - 1]):
            e -= 1
        if c == 0:  # the prefix
            if s < e and data[s] == 43:  # '+'
                s += 1
            if not 1 <= e - s <= MAX_PREFIX_DIGITS:
                return _SLOW
            for i in range(s, e):
                if not 48 <= data[i] <= 57:
                    return _SLOW
            row[2] = s
            row[3] = e - s
        elif c == 1 or c == 4:  # connect fee, price per minute
            value = _micro(data, s, e)
            if value < 0:
                return _SLOW
            row[3 + c] = value
        else:  # first block (from 0), increment (from 1)
            value = _whole_seconds(data, s, e, c - 2)
            if value < 0:
                return _SLOW
            row[3 + c] = value
    return _OK


@numba.njit(cache=True, nogil=True)
def _scan(data: np.ndarray, body: int, ncols: int, columns: np.ndarray, out: np.ndarray) -> int:
    """Split the body (no quotes, CR only before LF) into lines and fields and read every
    plain row, in one pass; returns the number of lines. ``columns``: the position of
    prefix, connect fee, first block, increment and price in a row."""
    size = len(data)
    starts = np.empty(ncols, np.int64)
    ends = np.empty(ncols, np.int64)
    n = 0
    i = body
    while i < size:
        j = i
        while j < size and data[j] != 10:
            j += 1
        end = j - 1 if j > i and data[j - 1] == 13 else j
        fields = 0
        blank = True
        slow = False
        s = i
        for k in range(i, end + 1):
            if k == end or data[k] == 44:
                if fields < ncols:
                    starts[fields] = s
                    ends[fields] = k
                fields += 1
                s = k + 1
            else:
                c = data[k]
                if c >= 128 or c == 0:
                    slow = True  # maybe Unicode whitespace: str.strip() decides
                elif not _is_space(c):
                    blank = False
        row = out[n]
        row[1] = fields
        if slow:
            row[0] = _SLOW
        elif blank:
            row[0] = _BLANK
        elif fields != ncols:
            row[0] = _COUNT
        else:
            row[0] = _read_row(data, starts, ends, columns, row)
        n += 1
        i = j + 1
    return n


def parse_carrier_deck(text: str | bytes) -> CarrierDeck:
    """Parse a whole cost deck; raises DeckError naming every bad line (up to 20).

    Rules as for a plan's deck (ocs.charging.deck): a leading '+' on a prefix is
    dropped, blank lines are skipped, a prefix may be given once, a spreadsheet's
    BOM and CRLF line ends are fine; ``parse_carrier_deck_rows`` states them row
    by row. A million-row deck is read by one compiled pass (``_scan``); a line
    it cannot vouch for is read by the reference's rules, which word every
    error, and a deck with quotes or bare carriage returns by the reference
    outright.
    """
    if isinstance(text, str):
        data_bytes = text.encode("utf-8", "surrogatepass")
    else:
        data_bytes = text
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid("deck", "the CSV must be UTF-8 text") from None
    data_bytes = data_bytes.removeprefix(b"\xef\xbb\xbf")
    if b'"' in data_bytes or b"\r" in data_bytes.replace(b"\r\n", b""):
        return parse_carrier_deck_rows(text)
    if not data_bytes:
        raise DeckError([(1, "empty file: expected the header " + ",".join(CARRIER_COLUMNS))])
    newline = data_bytes.find(b"\n")
    header_end = len(data_bytes) if newline < 0 else newline + 1
    header_text = data_bytes[:header_end].decode("utf-8", "surrogatepass")
    header_text = header_text.removesuffix("\n").removesuffix("\r")
    header = header_text.split(",") if header_text else []
    index = _read_header(header)
    ncols = len(header)
    data = np.frombuffer(data_bytes, np.uint8)
    out = np.empty((data_bytes.count(b"\n", header_end) + 1, _OUT), np.int64)
    columns = np.array([index[c] for c in CARRIER_COLUMNS], np.int64)
    out = out[: _scan(data, header_end, ncols, columns, out)]
    return _collect(data, out, index, ncols)


def _collect(data: np.ndarray, out: np.ndarray, index: dict[str, int], ncols: int) -> CarrierDeck:
    """Rows and problems from the scan's outcomes, then the duplicate prefixes."""
    outcome = out[:, 0]
    line_of = np.arange(2, len(out) + 2, dtype=np.int64)  # the header is line 1
    problems: list[tuple[int, str]] = [
        (int(line_of[n]), f"expected {ncols} fields, found {int(out[n, 1])}")
        for n in np.flatnonzero(outcome == _COUNT)[:MAX_REPORTED].tolist()
    ]

    def horizon() -> int:
        """Lines past this one cannot be among the problems reported."""
        if len(problems) < MAX_REPORTED:
            return 1 << 62
        return sorted(line for line, _ in problems)[MAX_REPORTED - 1]

    # Lines the scan left to the reference: with no quotes in the deck, csv fields are
    # the line split on commas.
    slow: dict[int, tuple[str, Rate]] = {}
    cuts = np.flatnonzero(data == 10)  # line n of the body ends at cuts[n + 1]
    for n in np.flatnonzero(outcome == _SLOW).tolist():
        line = n + 2
        if line > horizon():
            break
        stop = int(cuts[n + 1]) if n + 1 < len(cuts) else len(data)
        text = bytes(data[int(cuts[n]) + 1 : stop]).decode("utf-8", "surrogatepass")
        fields = text.removesuffix("\r").split(",") if text.removesuffix("\r") else []
        if _is_blank(fields):
            continue
        if len(fields) != ncols:
            problems.append((line, f"expected {ncols} fields, found {len(fields)}"))
            continue
        try:
            slow[n] = _row_values(fields, index)
        except ValueError as exc:
            problems.append((line, str(exc)))
    good = np.flatnonzero(outcome == _OK)
    if slow:
        good = np.sort(np.concatenate((good, np.fromiter(slow, np.int64, len(slow)))))
    good = good[line_of[good] <= horizon()]
    rows = out[good]
    buf = data
    if slow:
        extra = bytearray()
        for at, n in enumerate(good.tolist()):
            if n in slow:
                prefix, rate = slow[n]
                rows[at, 2:_OUT] = (
                    len(data) + len(extra), len(prefix),
                    rate.connect_fee, rate.first_block, rate.increment, rate.price_per_minute,
                )  # fmt: skip
                extra += prefix.encode("ascii")
        buf = np.concatenate((data, np.frombuffer(bytes(extra), np.uint8)))
    lines = line_of[good]
    problems += _duplicates(buf, rows[:, 2], rows[:, 3], lines)
    if problems:
        raise DeckError(sorted(problems)[:MAX_REPORTED])
    if not len(rows):
        raise DeckError([(2, "no rows: a cost deck needs at least one prefix")])
    values = np.ascontiguousarray(rows[:, 4:_OUT])
    rate_of, first = intern_rates(values)
    return CarrierDeck(
        buf=buf,
        lines=lines,
        prefix_at=rows[:, 2].copy(),
        prefix_len=rows[:, 3].copy(),
        rate_of=rate_of,
        values=values[first],
    )


def _duplicates(
    buf: np.ndarray, at: np.ndarray, length: np.ndarray, lines: np.ndarray
) -> list[tuple[int, str]]:
    """A prefix given again, naming the line that gave it first (rows in file order)."""

    def text(r: int) -> str:
        return bytes(buf[at[r] : at[r] + length[r]]).decode("ascii")

    found: list[tuple[int, str]] = []
    keys = _prefix_keys(buf, at, length)
    short = np.flatnonzero(length <= KEY_DIGITS)
    order = short[np.argsort(keys[short], kind="stable")]  # ties keep file order
    sorted_keys = keys[order]
    again = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1]) + 1
    if len(again):
        group_start = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        repeated = order[again]
        first = order[group_start[np.searchsorted(group_start, again, side="right") - 1]]
        earliest = np.argsort(lines[repeated], kind="stable")[:MAX_REPORTED]
        for r, f in zip(repeated[earliest].tolist(), first[earliest].tolist(), strict=True):
            found.append((int(lines[r]), f"prefix: {text(r)} already given at line {lines[f]}"))
    seen: dict[str, int] = {}
    for r in np.flatnonzero(length > KEY_DIGITS).tolist():  # longer than a key: as text
        prefix = text(r)
        if prefix in seen:
            found.append((int(lines[r]), f"prefix: {prefix} already given at line {seen[prefix]}"))
        else:
            seen[prefix] = int(lines[r])
    return found


# --- writes ------------------------------------------------------------------------------


async def _notify(conn: asyncpg.Connection, payload: str) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, payload)


async def create_carrier(pool: asyncpg.Pool, carrier_id: str, name: str) -> tuple[Carrier, bool]:
    """Create a carrier, or rename an existing one; (carrier, whether it is new)."""
    validate_id(carrier_id, "id")
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise invalid("name", f"expected 1 to {MAX_NAME_CHARS} printable characters")
    async with pool.acquire() as conn, conn.transaction():
        created = await conn.fetchval(
            "INSERT INTO carriers (id, name) VALUES ($1, $2)"
            " ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name"
            " RETURNING (xmax = 0)",
            carrier_id,
            name,
        )
        await _notify(conn, f"carrier:{carrier_id}")
    return Carrier(carrier_id, name), bool(created)


async def list_carriers(pool: asyncpg.Pool) -> list[Carrier]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, name FROM carriers ORDER BY id")
    return [Carrier(r["id"], r["name"]) for r in rows]


async def import_carrier_rates(
    pool: asyncpg.Pool, carrier_id: str, deck: CarrierDeck | str | bytes
) -> CarrierDeckImport:
    """Replace a carrier's whole cost deck in one transaction (parsing it first if text).

    The rows go in by one COPY, its text written by a compiled pass in prefix
    order (rows then fill the primary-key index leaf after leaf).
    """
    validate_id(carrier_id, "carrier_id")
    if not isinstance(deck, CarrierDeck):
        deck = await asyncio.to_thread(parse_carrier_deck, deck)
    payload = await asyncio.to_thread(_copy_text, carrier_id.encode(), deck)
    async with pool.acquire() as conn, conn.transaction():
        found = await conn.fetchval("SELECT 1 FROM carriers WHERE id = $1 FOR UPDATE", carrier_id)
        if found is None:
            raise OcsError(
                Reason.NOT_FOUND, f"carrier {carrier_id!r} does not exist", field="carrier_id"
            )
        await conn.execute("DELETE FROM carrier_rates WHERE carrier_id = $1", carrier_id)
        await conn.copy_to_table(
            "carrier_rates",
            source=io.BytesIO(payload),
            columns=["carrier_id", *CARRIER_COLUMNS],
            format="text",
        )
        await _notify(conn, f"carrier:{carrier_id}")
    return CarrierDeckImport(carrier_id, len(deck), len(deck.rates))


def _copy_text(carrier: bytes, deck: CarrierDeck) -> bytes:
    """COPY text of (carrier, prefix, connect fee, first block, increment, price) rows,
    in prefix order. ``carrier`` is a validated id: nothing in it needs escaping."""
    keys = _prefix_keys(deck.buf, deck.prefix_at, deck.prefix_len)
    rows = np.argsort(keys, kind="stable")
    out = _copy_lines(
        np.frombuffer(carrier, np.uint8),
        deck.buf,
        deck.prefix_at,
        deck.prefix_len,
        deck.values,
        deck.rate_of,
        rows,
    )
    return out.tobytes()


@numba.njit(cache=True, nogil=True)
def _copy_lines(
    carrier: np.ndarray,
    buf: np.ndarray,
    prefix_at: np.ndarray,
    prefix_len: np.ndarray,
    values: np.ndarray,
    rate_of: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    size = 0
    for r in rows:
        size += len(carrier) + prefix_len[r] + 6 + RATE_FIELDS * 19
    out = np.empty(size, np.uint8)
    digits = np.empty(20, np.uint8)
    n = 0
    for r in rows:
        out[n : n + len(carrier)] = carrier
        n += len(carrier)
        out[n] = 9
        n += 1
        at = prefix_at[r]
        for i in range(prefix_len[r]):
            out[n + i] = buf[at + i]
        n += prefix_len[r]
        for c in range(RATE_FIELDS):
            out[n] = 9
            n += 1
            value = values[rate_of[r], c]
            k = 0
            while True:
                digits[k] = 48 + value % 10
                value //= 10
                k += 1
                if value == 0:
                    break
            for i in range(k):
                out[n + i] = digits[k - 1 - i]
            n += k
        out[n] = 10
        n += 1
    return out[:n]


def validate_carrier_list(carriers: object, field: str = "carriers") -> tuple[str, ...]:
    """A route set's carriers: a list of distinct carrier ids, in the order to try them."""
    if not isinstance(carriers, list | tuple) or len(carriers) > MAX_ROUTE_SET_CARRIERS:
        raise invalid(field, f"expected a list of at most {MAX_ROUTE_SET_CARRIERS} carrier ids")
    ids: list[str] = []
    for n, carrier_id in enumerate(carriers):
        ids.append(validate_id(carrier_id, f"{field}[{n}]"))
        if carrier_id in ids[:-1]:
            raise invalid(f"{field}[{n}]", f"carrier {carrier_id!r} is given twice")
    return tuple(ids)


async def set_route_set(
    pool: asyncpg.Pool, route_set_id: str, carriers: Sequence[str]
) -> tuple[str, ...]:
    """Create a route set or replace its carriers with ``carriers``, in that order."""
    validate_id(route_set_id, "route_set_id")
    ids = validate_carrier_list(list(carriers))
    async with pool.acquire() as conn, conn.transaction():
        # Locked so that a carrier cannot go between the check and the insert.
        existing = {
            r["id"]
            for r in await conn.fetch(
                "SELECT id FROM carriers WHERE id = ANY($1::text[]) FOR SHARE", list(ids)
            )
        }
        for n, carrier_id in enumerate(ids):
            if carrier_id not in existing:
                raise OcsError(
                    Reason.NOT_FOUND,
                    f"carriers[{n}]: carrier {carrier_id!r} does not exist",
                    field=f"carriers[{n}]",
                )
        await conn.execute(
            "INSERT INTO route_sets (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", route_set_id
        )
        await conn.execute("DELETE FROM route_set_carriers WHERE route_set_id = $1", route_set_id)
        await conn.execute(
            "INSERT INTO route_set_carriers (route_set_id, position, carrier_id)"
            " SELECT $1, c.n - 1, c.id FROM unnest($2::text[]) WITH ORDINALITY AS c (id, n)",
            route_set_id,
            list(ids),
        )
        await _notify(conn, f"routes:{route_set_id}")
    return ids


async def set_plan_routing(
    pool: asyncpg.Pool, plan_id: str, route_set_id: str | None, allow_negative_margin: bool
) -> None:
    """Give a plan a route set (None: no routing) and its negative-margin policy."""
    if route_set_id is not None:
        validate_id(route_set_id, "route_set")
    async with pool.acquire() as conn, conn.transaction():
        if route_set_id is not None:
            found = await conn.fetchval(
                "SELECT 1 FROM route_sets WHERE id = $1 FOR SHARE", route_set_id
            )
            if found is None:
                raise OcsError(
                    Reason.NOT_FOUND,
                    f"route_set: route set {route_set_id!r} does not exist",
                    field="route_set",
                )
        updated = await conn.fetchval(
            "UPDATE plans SET route_set_id = $2, allow_negative_margin = $3"
            " WHERE id = $1 RETURNING id",
            plan_id,
            route_set_id,
            allow_negative_margin,
        )
        if updated is None:
            raise OcsError(
                Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan_id"
            )
        await _notify(conn, f"plan:{plan_id}")
