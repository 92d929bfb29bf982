"""Rate deck CSV parsing and validation: all rows good, or nothing applied.

Header: ``prefix,zone,price_per_minute,connect_fee,first_block,increment``
(any column order), and optionally any of ``direction`` and the tariff shape
columns ``per,max_cost,max_cost_mode,surcharge_percent,surcharge_flat,tiers,
band_prices`` (``OPTIONAL_COLUMNS``; one-cell syntax in ``parse_tiers`` and
``parse_band_prices``, README "Rate decks"). Amounts are decimal strings,
durations whole seconds; an empty optional cell is that field's default.
A zone name holds no control character but tab (no NUL, CR or line feed).
Every problem of every bad line is reported, each naming its line number and
column, so an operator can fix a deck in one pass: the first ``MAX_REPORTED``
in the file are listed and the rest counted (``DeckError.more``). A line whose
cells are good is then checked against the good lines before it, and every
conflict it has is reported. A CSV line the csv module cannot read (a CR inside
an unquoted field, a field past its size limit) and a line that is not UTF-8
are problems of that line like any other.

A tariff is keyed by (zone, direction): all rows of one zone and direction
carry one rate, shape included. The ``prefixes`` table keys a prefix by plan
only, so a prefix may appear once per direction, in the same zone.

Carrier decks have a million rows, so the parse is compiled: one numba pass
over the bytes splits the lines and fields and reads every plain row
(``_scan``), and only rows it cannot vouch for (quoting beyond the simple
kind, unusual whitespace, anything malformed) go through the per-row Python
checks below, which also word every error message. Duplicate prefixes and
zones with two rates are found by one more compiled pass in file order.
Rules and messages are those of the row-by-row reference, ``parse_deck_rows``,
which the tests hold the fast parse to; a deck whose quoting the fast parse
does not follow (a quoted field spanning lines, a bare carriage return) is
parsed by the reference outright. Optional columns ride the same scan: it
notes where each of their cells is, and every distinct cell text is read once
by the reference's own rules. A valid deck pays nothing for the error report:
problems are worded only for lines found bad, and past the first
``MAX_REPORTED`` only counted; a bad deck costs at most what a valid deck of the
same size whose lines all go to the per-row checks costs.

A carrier's cost deck (ocs.catalog.routes_store) is a deck without zone,
direction and shape columns: it is parsed by the same scan, per-row rules,
duplicate check and error collection, with its own header and row type.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast, overload

import numba
import numpy as np

from ocs.errors import OcsError, Reason
from ocs.money import MoneyError, format_amount, parse_amount
from ocs.numbers.matcher import KEY_DIGITS, Int, Int64Array, prefix_keys
from ocs.rating.rates import Rate, Tier

COLUMNS = ("prefix", "zone", "price_per_minute", "connect_fee", "first_block", "increment")
# Tariff shape columns, each one field of the shape API (PUT .../tariffs/{zone}/shape).
SHAPE_COLUMNS = (
    "per",
    "max_cost",
    "max_cost_mode",
    "surcharge_percent",
    "surcharge_flat",
    "tiers",
    "band_prices",
)
OPTIONAL_COLUMNS = ("direction", *SHAPE_COLUMNS)
DIRECTIONS = ("outbound", "inbound")
MAX_REPORTED = 100  # problems listed at once; the rest are counted
MAX_BLOCK_SECONDS = 86_400
MAX_ZONE_CHARS = 200
MAX_PREFIX_DIGITS = 32
# Shape limits, the shape API's: tiers from second 1 to a week, up to 32 of them;
# a price per 1 to 1,000,000 seconds or units; up to 16 band prices.
MAX_TIERS = 32
MAX_TIER_START = 7 * 24 * 3600
MAX_PER = 1_000_000
MAX_BANDS = 16
MAX_SURCHARGE_PERCENT = 1_000  # tariffs.surcharge_percent_bp is a 32-bit INTEGER


@dataclass(frozen=True, slots=True)
class DeckRow:
    """One row of a tariff deck: its line, prefix, zone, rate and direction."""

    line: int
    prefix: str
    zone: str
    rate: Rate
    direction: str = "outbound"


class DeckError(OcsError):
    """A deck (or another CSV file of prefixes: ``what``) with bad rows.

    ``problems`` lists (line, message), in line order, every problem of each line
    up to MAX_REPORTED in all; ``more`` counts the problems found past those. A
    message about one column starts with its name and a colon (``problem_column``).
    """

    def __init__(
        self,
        problems: list[tuple[int, str]],
        *,
        more: int = 0,
        what: str = "rate deck",
        field: str = "deck",
    ) -> None:
        self.problems = problems
        self.more = more
        self.what = what
        shown = "; ".join(f"line {line}: {message}" for line, message in problems)
        if more:
            shown += f"; and {more} more problem{'s' if more > 1 else ''}"
            shown += f" (only the first {len(problems)} are listed)"
        super().__init__(
            Reason.INVALID_DECK, f"{what} rejected, nothing applied: {shown}", field=field
        )

    def to_json(self) -> dict[str, object]:
        """The error body, with every problem's line, column and message."""
        body = super().to_json()
        error = body["error"]
        assert isinstance(error, dict)
        error["problems"] = [
            {"line": line, "column": problem_column(message), "message": message}
            for line, message in self.problems
        ]
        error["more_problems"] = self.more
        return body


_COLUMN_NAME = re.compile(r"[a-z_]+")


def problem_column(message: str) -> str | None:
    """The column a problem's message is about (the word before its first colon), or
    None for a problem of the whole line (a field count, a byte that is not UTF-8)."""
    name, colon, _ = message.partition(":")
    return name if colon and _COLUMN_NAME.fullmatch(name) else None


class _LineProblems(ValueError):
    """Every problem of one line, each its own message (str(): all of them)."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


def _messages(exc: ValueError) -> list[str]:
    return exc.messages if isinstance(exc, _LineProblems) else [str(exc)]


_Item = TypeVar("_Item")


class _PrefixRows(Sequence[_Item]):
    """Rows of a parsed deck, column-wise, in file order: row i is line ``lines[i]``
    of the file, its prefix ``buf[prefix_at[i]:prefix_at[i] + prefix_len[i]]``
    (digits, no '+'). A plan's ``Deck`` and a carrier's ``CarrierDeck``
    (ocs.catalog.routes_store) add what else a row has."""

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


class Deck(_PrefixRows[DeckRow]):
    """A parsed, valid deck, column-wise: no Python object per row.

    Rows keep file order. A tariff slot is a zone in one direction, with one
    rate (the deck rules make it so): ``zone_of[i]`` is row i's slot, its
    position in ``zones``/``directions``/``rates`` (without a direction column
    every slot is outbound and a zone has one slot). Row i's prefix is
    ``buf[prefix_at[i]:prefix_at[i] + prefix_len[i]]`` (digits, no '+').
    ``columns``: the optional columns the header named; a shape column not
    named leaves the stored value of that field alone on import. It is a
    sequence of ``DeckRow`` too, built on access, for small decks and tests.
    """

    __slots__ = ("columns", "directions", "first_of_prefix", "rates", "zone_of", "zones")

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
        directions: list[str] | None = None,
        columns: frozenset[str] = frozenset(),
        first_of_prefix: np.ndarray | None = None,
    ) -> None:
        super().__init__(buf, lines, prefix_at, prefix_len)
        self.zone_of = zone_of
        self.zones = zones
        self.rates = rates
        self.directions = ["outbound"] * len(zones) if directions is None else directions
        self.columns = columns
        # Rows that give their prefix first, when a prefix repeats (once per direction).
        self.first_of_prefix = first_of_prefix

    @classmethod
    def from_rows(cls, rows: Sequence[DeckRow], columns: frozenset[str] = frozenset()) -> Deck:
        """The column form of rows from ``parse_deck_rows`` (already validated)."""
        slot_index: dict[tuple[str, str], int] = {}
        rates: list[Rate] = []
        first_row: dict[str, int] = {}
        for n, row in enumerate(rows):
            if slot_index.setdefault((row.zone, row.direction), len(rates)) == len(rates):
                rates.append(row.rate)
            first_row.setdefault(row.prefix, n)
        buf, prefix_at, prefix_len = cls._packed([row.prefix for row in rows])
        slots = np.fromiter(
            (slot_index[row.zone, row.direction] for row in rows), np.int64, len(rows)
        )
        return cls(
            buf=buf,
            lines=np.fromiter((row.line for row in rows), np.int64, len(rows)),
            prefix_at=prefix_at,
            prefix_len=prefix_len,
            zone_of=slots,
            zones=[zone for zone, _ in slot_index],
            rates=rates,
            directions=[direction for _, direction in slot_index],
            columns=columns,
            first_of_prefix=(
                None
                if len(first_row) == len(rows)
                else np.fromiter(first_row.values(), np.int64, len(first_row))
            ),
        )

    def by_prefix(self) -> Deck:
        """One row per prefix (its first), as the plan's ``prefixes`` table holds them.

        The deck itself unless a prefix repeats, which only a direction column allows.
        """
        rows = self.first_of_prefix
        if rows is None:
            return self
        return Deck(
            buf=self.buf,
            lines=self.lines[rows],
            prefix_at=self.prefix_at[rows],
            prefix_len=self.prefix_len[rows],
            zone_of=self.zone_of[rows],
            zones=self.zones,
            rates=self.rates,
            directions=self.directions,
            columns=self.columns,
        )

    @overload
    def __getitem__(self, i: int) -> DeckRow: ...

    @overload
    def __getitem__(self, i: slice) -> list[DeckRow]: ...

    def __getitem__(self, i: int | slice) -> DeckRow | list[DeckRow]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = self._position(i)
        slot = int(self.zone_of[i])
        return DeckRow(
            line=int(self.lines[i]),
            prefix=self.prefix(i),
            zone=self.zones[slot],
            rate=self.rates[slot],
            direction=self.directions[slot],
        )


# --- tariff shape fields, one cell each (the shape API's rules) ----------------------


def parse_direction(text: str) -> str:
    """``outbound`` (also for an empty cell) or ``inbound``, in any letter case."""
    value = text.strip().lower()
    if not value:
        return "outbound"
    if value not in DIRECTIONS:
        raise ValueError(f"expected outbound or inbound, got {text!r}")
    return value


def _whole(text: str, minimum: int, maximum: int, what: str) -> int:
    value = text.strip()
    if (
        not (value.isascii() and value.isdigit())
        or len(value) > 12
        or not minimum <= int(value) <= maximum
    ):
        raise ValueError(f"expected {what} from {minimum} to {maximum}, got {text!r}")
    return int(value)


def _optional_amount(text: str) -> int:
    """An amount in micro-units; an empty cell is 0."""
    return parse_amount(text) if text.strip() else 0


def parse_per(text: str) -> int:
    """Seconds or units the price is for: 60 (per minute; also an empty cell), 1 (per unit)..."""
    if not text.strip():
        return 60
    return _whole(text, 1, MAX_PER, "a whole number of seconds or units")


def parse_max_cost_mode(text: str) -> bool:
    """True to cut the call at the max cost (``cut``), False for ``free`` (or an empty cell)."""
    value = text.strip().lower()
    if value not in ("", "free", "cut"):
        raise ValueError(f"expected free (the rest of the call is free) or cut, got {text!r}")
    return value == "cut"


def parse_surcharge_percent(text: str) -> int:
    """A percentage such as ``2.5`` in basis points (250); an empty cell is 0."""
    try:
        # "2.5" (percent) is 2.5e6 micro-units of a percent, 250 basis points.
        micro = _optional_amount(text)
        if micro % 10_000:
            raise MoneyError("at most two decimal places")
        if micro > MAX_SURCHARGE_PERCENT * 1_000_000:
            raise MoneyError(f"at most {MAX_SURCHARGE_PERCENT}")
    except MoneyError as exc:
        raise ValueError(f'a percentage such as "2.5": {exc}') from None
    return micro // 10_000


TIER_SYNTAX = "from_second:price_per_minute[:increment[:flat]]"


def parse_tiers(text: str) -> tuple[Tier, ...]:
    """Graduated tiers in one cell: ``from_second:price_per_minute[:increment[:flat]]``
    entries separated by ``|``, starts in increasing order; increment 1 and flat 0 when
    left out; an empty cell is no tiers. ``900:0.10:60`` is "from second 900, 0.10 per
    minute (per ``per``) in 60-second steps"; ``900:0.10:60:1.00|3600:0.05:60`` adds
    1.00 once when the call passes second 900 and a cheaper tier from the hour.
    """
    cell = text.strip()
    if not cell:
        return ()
    entries = cell.split("|")
    if len(entries) > MAX_TIERS:
        raise ValueError(f"at most {MAX_TIERS} tiers, found {len(entries)}")
    tiers: list[Tier] = []
    for n, entry in enumerate(entries, 1):
        parts = [part.strip() for part in entry.split(":")]
        where = f"tier {n} {entry.strip()!r}"
        if not 2 <= len(parts) <= 4:
            raise ValueError(f"{where}: expected {TIER_SYNTAX}, e.g. 900:0.10:60")
        try:
            start = _whole(parts[0], 1, MAX_TIER_START, "the second it starts at")
        except ValueError as exc:
            raise ValueError(f"{where}: from_second: {exc}") from None
        try:
            price = parse_amount(parts[1])
        except MoneyError as exc:
            raise ValueError(f"{where}: price_per_minute: {exc}") from None
        try:
            increment = 1 if len(parts) < 3 else _whole(parts[2], 1, MAX_BLOCK_SECONDS, "seconds")
        except ValueError as exc:
            raise ValueError(f"{where}: increment: {exc}") from None
        try:
            flat = 0 if len(parts) < 4 else parse_amount(parts[3])
        except MoneyError as exc:
            raise ValueError(f"{where}: flat: {exc}") from None
        if tiers and start <= tiers[-1].start:
            raise ValueError(
                f"{where}: tiers must start at distinct seconds, in order"
                f" ({start} is not after {tiers[-1].start})"
            )
        tiers.append(Tier(start=start, price_per_minute=price, increment=increment, flat=flat))
    return tuple(tiers)


def parse_band_prices(text: str) -> tuple[tuple[str, int], ...]:
    """The base price per time band: ``band=price`` entries separated by ``|``
    (``peak=0.10|offpeak=0.05``), sorted by band as the catalog holds them; an empty
    cell is none. A band the plan's schedule names but the cell does not pays the
    base ``price_per_minute``.
    """
    cell = text.strip()
    if not cell:
        return ()
    entries = cell.split("|")
    if len(entries) > MAX_BANDS:
        raise ValueError(f"at most {MAX_BANDS} band prices, found {len(entries)}")
    prices: dict[str, int] = {}
    for n, entry in enumerate(entries, 1):
        band, equals, price = entry.partition("=")
        band = band.strip()
        where = f"band price {n} {entry.strip()!r}"
        if not equals or not band:
            raise ValueError(f"{where}: expected band=price, e.g. peak=0.10|offpeak=0.05")
        if band in prices:
            raise ValueError(f"{where}: band {band!r} is priced twice")
        if (control := control_character(band)) is not None:
            raise ValueError(f"{where}: band {control}")
        try:
            prices[band] = parse_amount(price)
        except MoneyError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return tuple(sorted(prices.items()))


# Each optional column: its reader, and the Rate field it sets (direction sets none).
_READERS = {
    "direction": parse_direction,
    "per": parse_per,
    "max_cost": _optional_amount,
    "max_cost_mode": parse_max_cost_mode,
    "surcharge_percent": parse_surcharge_percent,
    "surcharge_flat": _optional_amount,
    "tiers": parse_tiers,
    "band_prices": parse_band_prices,
}
RATE_FIELDS = {
    "per": "per",
    "max_cost": "max_cost",
    "max_cost_mode": "cut_at_max_cost",
    "surcharge_percent": "surcharge_percent_bp",
    "surcharge_flat": "surcharge_flat",
    "tiers": "tiers",
    "band_prices": "band_prices",
}


def _read_optional(column: str, text: str) -> object:
    """One optional cell's value; ValueError names the column."""
    try:
        return _READERS[column](text)
    except ValueError as exc:  # MoneyError included
        raise ValueError(f"{column}: {exc}") from None


def _compact(micro: int) -> str:
    """An amount as the shortest decimal string that reads back the same."""
    text = format_amount(micro)
    return text.rstrip("0").rstrip(".")


def format_tiers(tiers: Sequence[Tier]) -> str:
    """The ``tiers`` cell for ``tiers``: ``parse_tiers(format_tiers(t)) == tuple(t)``."""
    return "|".join(
        f"{t.start}:{_compact(t.price_per_minute)}:{t.increment}:{_compact(t.flat)}" for t in tiers
    )


def format_band_prices(band_prices: Sequence[tuple[str, int]]) -> str:
    """The ``band_prices`` cell; ValueError for a band name a cell cannot carry."""
    for band, _ in band_prices:
        if not band or band != band.strip() or "|" in band or "=" in band:
            raise ValueError(f"band {band!r} cannot be written in a deck cell")
    return "|".join(f"{band}={_compact(price)}" for band, price in band_prices)


def shape_cells(rate: Rate, direction: str = "outbound") -> dict[str, str]:
    """The optional columns' cells for a tariff: a deck row with them reads back ``rate``."""
    percent = rate.surcharge_percent_bp
    return {
        "direction": direction,
        "per": str(rate.per),
        "max_cost": _compact(rate.max_cost),
        "max_cost_mode": "cut" if rate.cut_at_max_cost else "free",
        "surcharge_percent": f"{percent // 100}.{percent % 100:02d}".rstrip("0").rstrip("."),
        "surcharge_flat": _compact(rate.surcharge_flat),
        "tiers": format_tiers(rate.tiers),
        "band_prices": format_band_prices(rate.band_prices),
    }


def differing_column(a: Rate, b: Rate) -> str:
    """The first deck column in which two rates differ ("" when they are equal)."""
    for column in ("price_per_minute", "connect_fee", "first_block", "increment"):
        if getattr(a, column) != getattr(b, column):
            return column
    for column, field in RATE_FIELDS.items():
        if getattr(a, field) != getattr(b, field):
            return column
    return ""


# --- per-row rules (the reference) ---------------------------------------------------


def _seconds(text: str, column: str, minimum: int, *, ascii_digits: bool = False) -> int:
    """Whole seconds in [minimum, MAX_BLOCK_SECONDS]. A plan's deck takes any digits
    ``str.isdigit`` does, a cost deck (``ascii_digits``) ASCII ones only."""
    value = text.strip()
    if not value.isdigit() or (ascii_digits and not value.isascii()):
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


def _missing_or_unknown(
    names: list[str], columns: Sequence[str], optional: Sequence[str] = ()
) -> list[str]:
    """What a header lacks and what it has that no column is, in words (empty: neither)."""
    missing = [c for c in columns if c not in names]
    unknown = [n for n in names if n not in columns and n not in optional]
    detail = []
    if missing:
        detail.append("missing column(s) " + ", ".join(missing))
    if unknown:
        detail.append("unknown column(s) " + ", ".join(unknown))
    return detail


def _read_header(header: list[str]) -> dict[str, int]:
    """Each column's position: the six base ones and the optional ones named."""
    names = [h.strip().lower() for h in header]
    detail = _missing_or_unknown(names, COLUMNS, OPTIONAL_COLUMNS)
    known = (*COLUMNS, *OPTIONAL_COLUMNS)
    twice = sorted({n for n in names if names.count(n) > 1 and n in known})
    if twice:
        detail.append("column(s) given twice " + ", ".join(twice))
    if detail:
        raise DeckError(
            [
                (
                    1,
                    "; ".join(detail)
                    + "; expected "
                    + ",".join(COLUMNS)
                    + " and optionally "
                    + ",".join(OPTIONAL_COLUMNS),
                )
            ]
        )
    return {name: names.index(name) for name in known if name in names}


def _optional_present(index: dict[str, int]) -> list[str]:
    return [c for c in OPTIONAL_COLUMNS if c in index]


# The base columns after prefix and zone, in the order their problems are reported:
# (column, minimum seconds), -1 for an amount.
_BASE_VALUES = (("connect_fee", -1), ("first_block", 0), ("increment", 1), ("price_per_minute", -1))


def _row_values(
    fields: list[str], index: dict[str, int], *, ascii_digits: bool = False
) -> tuple[str, str, Rate, str]:
    """(prefix, zone, rate, direction) of one row's fields; ValueError (``_LineProblems``)
    names every column that is wrong, in column order.

    A deck without a zone column (a carrier's cost deck) has zone "" on every row.
    """
    problems: list[str] = []
    raw_prefix = fields[index["prefix"]]
    prefix = raw_prefix.strip().removeprefix("+")
    if not (prefix.isascii() and prefix.isdigit()) or len(prefix) > MAX_PREFIX_DIGITS:
        problems.append(f"prefix: expected 1 to 32 digits, got {raw_prefix!r}")
    zone = ""
    if "zone" in index:
        zone = fields[index["zone"]].strip()
        if not zone:
            problems.append("zone: must not be empty")
        elif len(zone) > MAX_ZONE_CHARS:
            problems.append("zone: longer than 200 characters")
        elif (control := control_character(zone)) is not None:
            problems.append(f"zone: {control}")
    values: list[int] = []  # connect fee, first block, increment, price: Rate's order
    for column, minimum in _BASE_VALUES:
        text = fields[index[column]]
        try:
            if minimum < 0:
                values.append(_amount(text, column))
            else:
                values.append(_seconds(text, column, minimum, ascii_digits=ascii_digits))
        except ValueError as exc:
            problems.append(str(exc))
    direction = "outbound"
    shape: dict[str, object] = {}
    for column in OPTIONAL_COLUMNS:
        at = index.get(column)
        if at is not None:
            try:
                value = _read_optional(column, fields[at])
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if column == "direction":
                direction = cast(str, value)  # _read_optional reads a direction as str
            else:
                shape[RATE_FIELDS[column]] = value
    if problems:
        raise _LineProblems(problems)
    rate = Rate(*values, **shape)  # type: ignore[arg-type]
    return prefix, zone, rate, direction


def control_character(text: str) -> str | None:
    """What is wrong with a name holding a control character (a NUL, a line break, a
    C1 control; a tab is allowed), or None. PostgreSQL cannot store a NUL in text, and
    a line break in a name is a CSV export gone wrong."""
    for char in text:
        code = ord(char)
        if (code < 32 and code != 9) or 127 <= code < 160:
            return f"holds the control character U+{code:04X}; names are printable text"
    return None


def _is_blank(fields: list[str]) -> bool:
    return not fields or all(not f.strip() for f in fields)


def _without_bom(text: str) -> str:
    return text[1:] if text.startswith("\ufeff") else text  # spreadsheets write a BOM


def _duplicate(prefix: str, direction: str, line: int) -> str:
    also = "" if direction == "outbound" else f" for {direction}"
    return f"prefix: {prefix} already given{also} at line {line}"


def _zone_of_prefix(prefix: str, zone: str, line: int) -> str:
    return (
        f"zone: prefix {prefix} is in zone {zone!r} at line {line};"
        " a prefix has one zone in every direction"
    )


def _other_rate(zone: str, direction: str, line: int, column: str) -> str:
    which = "" if direction == "outbound" else f" {direction}"
    return f"zone: {zone!r} has a different{which} rate at line {line} ({column} differs)"


def _empty_file(columns: Sequence[str]) -> DeckError:
    return DeckError([(1, "empty file: expected the header " + ",".join(columns))])


def _no_rows(what: str) -> DeckError:
    return DeckError([(2, f"no rows: a {what} needs at least one prefix")])


_Row = TypeVar("_Row")


def _reference_rows(
    text: str,
    columns: Sequence[str],
    read_header: Callable[[list[str]], dict[str, int]],
    read_row: Callable[[list[str], dict[str, int], int], _Row],
    what: str = "deck",
) -> tuple[list[_Row], dict[str, int]]:
    """The row-by-row reference: the csv module's rows of ``text`` after the header,
    blank ones skipped, each of the header's width read by ``read_row(fields, index,
    line)`` (ValueError: that line's problems, ``_LineProblems`` for several), and the
    column positions. Raises DeckError listing the first MAX_REPORTED problems and
    counting the rest, or when no row is left. ``columns`` name the header an empty
    file lacks; ``what`` is the kind of deck, for "no rows".
    """
    reader = csv.reader(io.StringIO(_without_bom(text)))
    try:
        header = next(reader)
    except StopIteration:
        raise _empty_file(columns) from None
    except csv.Error as exc:
        raise DeckError([(1, _csv_problem(exc))]) from None
    index = read_header(header)
    ncols = len(header)
    rows: list[_Row] = []
    problems = _Problems()
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # the reader goes on at the next line
            problems.add(reader.line_num, _csv_problem(exc))
            continue
        line = reader.line_num
        if _is_blank(fields):
            continue
        if len(fields) != ncols:
            problems.add(line, _field_count(ncols, len(fields)))
            continue
        try:
            rows.append(read_row(fields, index, line))
        except ValueError as exc:
            for message in _messages(exc):
                problems.add(line, message)
    if problems.found:
        raise problems.error()
    if not rows:
        raise _no_rows(what)
    return rows, index


def _csv_problem(exc: csv.Error) -> str:
    """A csv module error in words an operator can act on."""
    text = str(exc)
    if text.startswith("new-line character seen in unquoted field"):
        return (
            "a carriage return (CR) inside an unquoted field: quote the field,"
            " or save the file with one kind of line end"
        )
    if text.startswith("field larger than field limit"):
        return f"a field longer than {csv.field_size_limit()} characters (a quote left open?)"
    return f"cannot read this CSV line: {text}"


def decode_utf8(
    data: bytes, what: str = "rate deck", field: str = "deck", first_line: int = 1
) -> str:
    """``data`` as text; DeckError naming each line that is not UTF-8 (``first_line``:
    the number of the first line in ``data``)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    problems = _Problems()
    for line, raw in enumerate(data.split(b"\n"), first_line):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.add(
                line,
                f"not UTF-8 text: byte {exc.start + 1} of the line is 0x{raw[exc.start]:02X};"
                " save the file as UTF-8",
            )
    raise problems.error(what, field)


def _field_count(ncols: int, found: int) -> str:
    return f"expected {ncols} fields, found {found}"


def parse_deck_rows(text: str) -> list[DeckRow]:
    """The row-by-row reference parse: the rules ``parse_deck`` follows, one row at a time."""
    return _parse_reference(text)[0]


def _parse_reference(text: str) -> tuple[list[DeckRow], frozenset[str]]:
    """The reference's rows, and the optional columns the header named."""
    seen_prefix: dict[tuple[str, str], int] = {}
    prefix_zone: dict[str, tuple[str, int]] = {}
    slot_rate: dict[tuple[str, str], tuple[Rate, int]] = {}

    def read_row(fields: list[str], index: dict[str, int], line: int) -> DeckRow:
        prefix, zone, rate, direction = _row_values(fields, index)
        # Checked against the good lines before it: every conflict is reported.
        problems = []
        if (prefix, direction) in seen_prefix:
            problems.append(_duplicate(prefix, direction, seen_prefix[prefix, direction]))
        elif (zoned := prefix_zone.get(prefix)) is not None and zoned[0] != zone:
            problems.append(_zone_of_prefix(prefix, *zoned))
        known = slot_rate.get((zone, direction))
        if known is not None and known[0] != rate:
            column = differing_column(rate, known[0])
            problems.append(_other_rate(zone, direction, known[1], column))
        if problems:
            raise _LineProblems(problems)
        seen_prefix[prefix, direction] = line
        prefix_zone.setdefault(prefix, (zone, line))
        slot_rate.setdefault((zone, direction), (rate, line))
        return DeckRow(line, prefix, zone, rate, direction)

    rows, index = _reference_rows(text, COLUMNS, _read_header, read_row)
    return rows, frozenset(_optional_present(index))


# --- the compiled scan ---------------------------------------------------------------

# Line outcomes of _scan.
_OK, _BLANK, _SLOW, _COUNT = 0, 1, 2, 3
# Columns in the order _scan takes their positions.
_PREFIX, _ZONE, _PRICE, _FEE, _BLOCK, _INCREMENT = range(6)


@numba.njit(cache=True, nogil=True, inline="always")
def _is_space(c: int) -> bool:
    # The ASCII characters str.strip() removes.
    return c == 32 or 9 <= c <= 13 or 28 <= c <= 31


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


@numba.njit(cache=True, nogil=True, inline="always")
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
                return _SLOW  # a control character (U+0080 to U+009F are C2 80 to C2 9F)
            if c & 0xC0 != 0x80:  # not a UTF-8 continuation byte
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
    for k in range(6, len(columns)):  # optional cells: read later, once per distinct text
        row[2 * k - 2] = starts[columns[k]]
        row[2 * k - 1] = ends[columns[k]] - starts[columns[k]]
    return _OK


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
def _intern(
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
def _intern_keys(keys: np.ndarray, ordered: np.ndarray) -> tuple[Int64Array, Int64Array]:
    """``_intern`` of strings that all have keys (``keys >= 0``), ``ordered`` being
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
def _cross_check(
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

_BAD = 4  # an outcome set after the scan: a plain row with a bad optional cell
_FIRST_LINE = 2  # out[n] is line n + 2 of the file: the header is line 1


def parse_deck(text: str | bytes) -> Deck:
    """Parse a whole deck; raises DeckError listing every problem of every bad line (the
    first MAX_REPORTED, the rest counted). Bytes must be UTF-8: a line that is not is
    refused by number."""
    if isinstance(text, bytes):
        data_bytes = text
        text = decode_utf8(text)
    else:
        data_bytes = text.encode("utf-8", "surrogatepass")
    scanned = _scan_deck(data_bytes, _read_header)
    if scanned is None:
        return Deck.from_rows(*_parse_reference(text))
    return _collect(*scanned)


def _scan_deck(
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
        raise DeckError([(1, _csv_problem(exc))]) from None
    index = read_header(header)
    ncols = len(header)
    columns = [index.get(c, -1) for c in COLUMNS] + [index[c] for c in _optional_present(index)]
    data = np.frombuffer(data_bytes, np.uint8)
    out = np.empty((_count_lines(data, header_end), 2 * len(columns) - 2), np.int64)
    positions = np.array(columns, np.int64)
    scanned = _scan(data, header_end, ncols, positions, out) if header_end < len(data) else 0
    if scanned < 0:
        return None
    return data, out[:scanned], index, ncols


class _Shapes:
    """The optional columns' values as int64 codes, one column each, for the compiled
    cross-check (equal values, equal codes): a direction by its place in DIRECTIONS,
    numbers as themselves, tiers and band prices by the order they first appear."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = columns
        self.ids: dict[str, dict[object, int]] = {"tiers": {}, "band_prices": {}}
        self.values: dict[str, list[object]] = {"tiers": [], "band_prices": []}

    def code(self, column: str, value: object) -> int:
        if column == "direction":
            return DIRECTIONS.index(value)
        if column in self.ids:
            ids = self.ids[column]
            if value not in ids:
                ids[value] = len(ids)
                self.values[column].append(value)
            return ids[value]
        if isinstance(value, int):  # the numeric columns (max_cost_mode's bool is an int)
            return int(value)
        raise TypeError(f"{column}: expected a number, got {value!r}")

    def codes(self, rate: Rate, direction: str) -> list[int]:
        return [
            self.code(c, direction if c == "direction" else getattr(rate, RATE_FIELDS[c]))
            for c in self.columns
        ]

    def value(self, column: str, code: int) -> object:
        if column in self.ids:
            return self.values[column][code]
        return bool(code) if column == "max_cost_mode" else code

    def rate(self, base: list[int], codes: list[int]) -> Rate:
        """The rate of [connect fee, first block, increment, price] and the codes."""
        shape = {
            RATE_FIELDS[c]: self.value(c, code)
            for c, code in zip(self.columns, codes, strict=True)
            if c != "direction"
        }
        return Rate(*base, **shape)  # type: ignore[arg-type]


def _read_optional_cells(
    data: np.ndarray,
    out: np.ndarray,
    shapes: _Shapes,
    codes: np.ndarray,
    problems: _Problems,
) -> None:
    """Codes of the plain rows' optional cells, each distinct cell text read once by the
    reference's rules; a row with a bad cell becomes _BAD, every bad cell reported."""
    plain = np.flatnonzero(out[:, 0] == _OK)
    bad_cells = np.zeros(len(plain), np.int64)
    bad_of: list[np.ndarray] = []  # per column: whether each plain row's cell is bad
    text_ids: list[np.ndarray] = []
    errors: list[list[str]] = []
    for k, column in enumerate(shapes.columns):
        at = out[plain, 10 + 2 * k]
        length = out[plain, 11 + 2 * k]
        ids, firsts = _intern(data, at, length, np.full(len(plain), -1, np.int64))
        code_of = np.zeros(len(firsts), np.int64)
        bad_text = np.zeros(len(firsts), np.bool_)
        messages = [""] * len(firsts)
        for t, r in enumerate(firsts.tolist()):
            try:
                value = _read_optional(column, _text(data, at[r], length[r]))
            except ValueError as exc:
                bad_text[t] = True
                messages[t] = str(exc)
                continue
            code_of[t] = shapes.code(column, value)
        codes[plain, k] = code_of[ids]
        bad_of.append(bad_text[ids])
        bad_cells += bad_of[-1]
        text_ids.append(ids)
        errors.append(messages)
    bad = np.flatnonzero(bad_cells)
    out[plain[bad], 0] = _BAD
    # Rows past the first MAX_REPORTED bad ones cannot be listed: they are counted.
    problems.skip(int(bad_cells[bad[MAX_REPORTED:]].sum()))
    for b in bad[:MAX_REPORTED].tolist():
        for k in range(len(shapes.columns)):
            if bad_of[k][b]:
                problems.add(int(plain[b]) + _FIRST_LINE, errors[k][int(text_ids[k][b])])


def _collect(data: np.ndarray, out: np.ndarray, index: dict[str, int], ncols: int) -> Deck:
    """Rows and problems from the scan's outcomes, then the cross-row checks."""
    optional = _optional_present(index)
    problems = _Problems()
    shapes = _Shapes(optional)
    codes = np.zeros((len(out), len(optional)), np.int64)
    if optional:
        _read_optional_cells(data, out, shapes, codes, problems)
    slow_rows = _read_lines(data, out, ncols, problems, lambda fields: _row_values(fields, index))
    good, rows, buf = _good_rows(data, out, slow_rows)
    if optional:
        for n, (_, _, rate, row_direction) in slow_rows.items():
            codes[n] = shapes.codes(rate, row_direction)
    prefix_id, prefix_first = _prefix_ids(buf, rows)
    zone_id, zone_first = _intern(buf, rows[:, 4], rows[:, 5], np.full(len(rows), -1, np.int64))
    lines = good + _FIRST_LINE
    has_direction = "direction" in optional
    direction = codes[good, 0] if has_direction else np.zeros(len(rows), np.int64)
    shape_at = 1 if has_direction else 0  # the shape columns' codes: codes[:, shape_at:]
    rates = (
        np.concatenate((rows[:, 6:10], codes[good, shape_at:]), axis=1)
        if len(optional) > shape_at
        else rows[:, 6:10]
    )
    crossed, crossed_count = _cross_check(
        lines,
        prefix_id,
        len(prefix_first),
        zone_id,
        len(zone_first),
        direction,
        2 if has_direction else 1,
        rates,
        MAX_REPORTED,
    )
    problems.skip(crossed_count - len(crossed))

    def rate_of(r: int) -> Rate:
        return shapes.rate(rows[r, 6:10].tolist(), codes[good[r]].tolist())

    for r, kind, other in crossed.tolist():
        way = DIRECTIONS[int(direction[r])]
        prefix = _prefix_text(buf, rows, r)
        if kind == 0:
            problems.add(int(lines[r]), _duplicate(prefix, way, other))
            continue
        first = int(np.searchsorted(lines, other))  # the row at that line
        if kind == 2:
            zone = _text(buf, rows[first, 4], rows[first, 5])
            problems.add(int(lines[r]), _zone_of_prefix(prefix, zone, other))
        else:
            zone = _text(buf, rows[r, 4], rows[r, 5])
            column = differing_column(rate_of(r), rate_of(first))
            problems.add(int(lines[r]), _other_rate(zone, way, other, column))
    if problems.found:
        raise problems.error()
    if not len(rows):
        raise _no_rows("deck")
    if has_direction:
        # A tariff slot is a zone in one direction, in order of first appearance.
        slot_of, slot_first = _intern(buf, rows[:, 4], rows[:, 5], zone_id * 2 + direction)
    else:
        slot_of, slot_first = zone_id, zone_first
    zones = [_text(buf, rows[r, 4], rows[r, 5]) for r in slot_first.tolist()]
    if optional:
        rates_of_slots = [rate_of(r) for r in slot_first.tolist()]
    else:
        rates_of_slots = [
            Rate(connect_fee=fee, first_block=block, increment=increment, price_per_minute=price)
            for fee, block, increment, price in rows[slot_first, 6:10].tolist()
        ]
    return Deck(
        buf=buf,
        lines=lines,
        prefix_at=rows[:, 2].copy(),
        prefix_len=rows[:, 3].copy(),
        zone_of=slot_of,
        zones=zones,
        rates=rates_of_slots,
        directions=[DIRECTIONS[int(d)] for d in direction[slot_first].tolist()],
        columns=frozenset(optional),
        first_of_prefix=prefix_first if len(prefix_first) < len(rows) else None,
    )


class _Problems:
    """Problems found so far: the first MAX_REPORTED by line, kept, and a count of the
    rest. Problems of one line keep the order they were added in."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self.cut = 0  # problems found that are not among the first MAX_REPORTED

    def add(self, line: int, message: str) -> None:
        self.found.append((line, message))
        if len(self.found) >= 4 * MAX_REPORTED:
            self._trim()

    def skip(self, count: int) -> None:
        """Count problems known to lie past MAX_REPORTED others, without their words."""
        self.cut += count

    def _trim(self) -> None:
        self.found.sort(key=lambda problem: problem[0])  # stable: a line's order stays
        self.cut += max(0, len(self.found) - MAX_REPORTED)
        del self.found[MAX_REPORTED:]

    def error(self, what: str = "rate deck", field: str = "deck") -> DeckError:
        """The DeckError listing the first problems and counting the rest."""
        self._trim()
        return DeckError(self.found, more=self.cut, what=what, field=field)


def _read_lines(
    data: np.ndarray,
    out: np.ndarray,
    ncols: int,
    problems: _Problems,
    row_values: Callable[[list[str]], tuple[str, str, Rate, str]],
) -> dict[int, tuple[str, str, Rate, str]]:
    """The problems of lines the scan found with another number of fields than the
    header's, and the lines it left to the reference: read as the csv module reads
    them, each by ``row_values`` (its (prefix, zone, rate, direction); ValueError: its
    problems). Returns the good ones' values by ``out`` row."""
    counts = np.flatnonzero(out[:, 0] == _COUNT)
    for n in counts[:MAX_REPORTED].tolist():
        problems.add(n + _FIRST_LINE, _field_count(ncols, int(out[n, 1])))
    problems.skip(max(0, len(counts) - MAX_REPORTED))
    slow = np.flatnonzero(out[:, 0] == _SLOW).tolist()
    rows: dict[int, tuple[str, str, Rate, str]] = {}
    if not slow:
        return rows
    cuts = np.flatnonzero(data == 10)  # line n of the body ends at cuts[n + 1]
    for n in slow:
        line = n + _FIRST_LINE
        start = int(cuts[n]) + 1
        stop = int(cuts[n + 1]) if n + 1 < len(cuts) else len(data)
        text = bytes(data[start:stop]).decode("utf-8", "surrogatepass")
        try:
            fields = next(csv.reader([text]), [])
        except csv.Error as exc:  # a field over the csv module's size limit
            problems.add(line, _csv_problem(exc))
            continue
        if _is_blank(fields):
            continue
        if len(fields) != ncols:
            problems.add(line, _field_count(ncols, len(fields)))
            continue
        try:
            rows[n] = row_values(fields)
        except ValueError as exc:
            for message in _messages(exc):
                problems.add(line, message)
    return rows


def _good_rows(
    data: np.ndarray, out: np.ndarray, slow_rows: dict[int, tuple[str, str, Rate, str]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(good, rows, buf): the ``out`` rows of good lines in file order, those rows, the
    ones the reference read (``slow_rows``) filled in with their prefix and zone
    appended to the bytes, and those bytes (``data`` itself when no line went to the
    reference). ``rows`` is a view of ``out`` when the good lines are its first rows
    (those the reference read filled in in ``out``), else a copy."""
    good = np.flatnonzero(out[:, 0] == _OK)
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


def _prefix_ids(buf: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_intern`` of the rows' prefixes: up to KEY_DIGITS digits by key, longer by bytes
    (``_intern_keys`` when none is longer)."""
    keys = prefix_keys(buf, rows[:, 2], rows[:, 3])
    keys[rows[:, 3] > KEY_DIGITS] = -1
    if not (keys < 0).any():
        return _intern_keys(keys, np.sort(keys))
    return _intern(buf, rows[:, 2], rows[:, 3], keys)


def _prefix_text(buf: np.ndarray, rows: np.ndarray, r: int) -> str:
    return bytes(buf[rows[r, 2] : rows[r, 2] + rows[r, 3]]).decode("ascii")


def _duplicate_prefixes(
    buf: np.ndarray, rows: np.ndarray, lines: np.ndarray, problems: _Problems
) -> None:
    """The cross-row check of a deck without zones or directions (a carrier's cost
    deck): each prefix given again, naming the line that gave it first."""
    n = len(rows)
    prefix_id, prefix_first = _prefix_ids(buf, rows)
    one = np.zeros(n, np.int64)  # one zone and one direction, with no rate to compare
    no_rate = np.empty((n, 0), np.int64)
    crossed, crossed_count = _cross_check(
        lines, prefix_id, len(prefix_first), one, 1, one, 1, no_rate, MAX_REPORTED
    )
    problems.skip(crossed_count - len(crossed))
    for r, _, other in crossed.tolist():
        problems.add(int(lines[r]), _duplicate(_prefix_text(buf, rows, r), "outbound", other))


def _text(buf: np.ndarray, at: int, length: int) -> str:
    return bytes(buf[at : at + length]).decode("utf-8", "surrogatepass")


def warm_up() -> None:
    """Compile, or load from the on-disk cache, the kernels a deck import runs.

    Three decks: a plain one (its buffer is the text's, read-only), one with a
    row left to the reference (its buffer is a copy with that row appended), and
    one with optional columns (their cells read and compared as well).
    """
    header = "prefix,zone,price_per_minute,connect_fee,first_block,increment"
    plain = '44,"UK, Fixed",0.01,0,60,60\n+447, UK Mobile ,0.06,0,30,6\n'
    with_slow_row = '49,"Ger""many",.012,0,1,1\n' + "4" * 20 + ",X,1,0,1,1\n"
    shaped = (
        f"{header},direction,max_cost,tiers\n"
        "44,UK,0.01,0,60,60,outbound,1.00,900:0.1:60\n"
        "44,UK,0.01,0,60,60,inbound,,\n"
        '49,"Ger""many",.012,0,1,1,,,\n'
    )
    assert len(parse_deck(f"{header}\n{plain}")) == len(parse_deck(f"{header}\n{with_slow_row}"))
    assert len(parse_deck(shaped).by_prefix()) == 2
