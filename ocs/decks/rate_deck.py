"""A plan's rate deck: CSV parsing and validation, all rows good or nothing applied.

Header: ``prefix,zone,price_per_minute,connect_fee,first_block,increment``
(any column order), and optionally any of ``direction`` and the tariff shape
columns ``per,max_cost,max_cost_mode,surcharge_percent,surcharge_flat,tiers,
band_prices`` (``OPTIONAL_COLUMNS``; what each cell may hold: ocs.decks.cells).
Amounts are decimal strings, durations whole seconds; an empty optional cell is
that field's default. A zone name holds no control character but tab (no NUL,
CR or line feed). Every problem of every bad line is reported, each naming its
line number and column, so an operator can fix a deck in one pass: the first
``MAX_REPORTED`` in the file are listed and the rest counted (ocs.decks.problems).
A line whose cells are good is then checked against the good lines before it,
and every conflict it has is reported.

A tariff is keyed by (zone, direction): all rows of one zone and direction
carry one rate, shape included. A plan's stored deck keys a prefix by plan
only, so a prefix may appear once per direction, in the same zone; it rates
calls in the directions its rows give, and no other (``prefix_directions``).

``parse_deck`` reads a deck by the compiled scan (ocs.decks.scan); the rules
and messages are those of the row-by-row reference, ``parse_deck_rows``
(ocs.decks.reference reads its rows), which the tests hold the fast parse to.
Optional columns ride the same scan: it notes where each of their cells is,
and every distinct cell text is read once by the reference's own rules. A
valid deck pays nothing for the error report: problems are worded only for
lines found bad, and past the first ``MAX_REPORTED`` only counted; a bad deck
costs at most what a valid deck of the same size whose lines all go to the
per-row checks costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import msgspec
import numpy as np

from ocs.decks.cells import (
    ALL_DIRECTION_BITS,
    COLUMNS,
    DIRECTIONS,
    OPTIONAL_COLUMNS,
    SHAPE_FIELDS,
    differing_column,
    direction_bit,
    optional_present,
    read_optional,
)
from ocs.decks.problems import DeckError, LineProblems, Problems, decode_utf8
from ocs.decks.reference import (
    duplicate,
    missing_or_unknown,
    no_rows,
    reference_rows,
    row_values,
)
from ocs.decks.scan import (
    FIRST_LINE,
    LINE_BAD,
    LINE_OK,
    PrefixRows,
    cross_check,
    good_rows,
    intern_strings,
    prefix_ids,
    prefix_text,
    read_lines,
    scan_deck,
    text_at,
    texts_at,
)
from ocs.rating.rates import Rate


@dataclass(frozen=True, slots=True)
class DeckRow:
    """One row of a tariff deck: its line, prefix, zone, rate and direction."""

    line: int
    prefix: str
    zone: str
    rate: Rate
    direction: str = "outbound"


class Deck(PrefixRows[DeckRow]):
    """A parsed, valid deck, column-wise: no Python object per row.

    Rows keep file order. A tariff slot is a zone in one direction, with one
    rate (the deck rules make it so): ``zone_of[i]`` is row i's slot, its
    position in ``zones``/``directions``/``rates`` (without a direction column
    every slot is outbound and a zone has one slot). Row i's prefix is
    ``buf[prefix_at[i]:prefix_at[i] + prefix_len[i]]`` (digits, no '+').
    ``columns``: the optional columns the header named; a shape column not
    named leaves the stored value of that field alone on import. It is a
    sequence of ``DeckRow`` too, built on access, for small decks and tests.
    When a prefix repeats (once per direction), ``first_of_prefix`` holds the
    row that gives each prefix first and ``prefix_of`` each row's prefix, by its
    place in ``first_of_prefix``; both are None otherwise.
    """

    __slots__ = (
        "columns",
        "directions",
        "first_of_prefix",
        "prefix_of",
        "rates",
        "zone_of",
        "zones",
    )

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
        prefix_of: np.ndarray | None = None,
    ) -> None:
        super().__init__(buf, lines, prefix_at, prefix_len)
        self.zone_of = zone_of
        self.zones = zones
        self.rates = rates
        self.directions = ["outbound"] * len(zones) if directions is None else directions
        self.columns = columns
        # Rows that give their prefix first, when a prefix repeats (once per direction).
        self.first_of_prefix = first_of_prefix
        self.prefix_of = prefix_of

    @classmethod
    def from_rows(cls, rows: Sequence[DeckRow], columns: frozenset[str] = frozenset()) -> Deck:
        """The column form of rows from ``parse_deck_rows`` (already validated)."""
        slot_index: dict[tuple[str, str], int] = {}
        rates: list[Rate] = []
        first_row: dict[str, int] = {}
        prefix_id: dict[str, int] = {}
        for n, row in enumerate(rows):
            if slot_index.setdefault((row.zone, row.direction), len(rates)) == len(rates):
                rates.append(row.rate)
            first_row.setdefault(row.prefix, n)
            prefix_id.setdefault(row.prefix, len(prefix_id))
        repeats = len(first_row) < len(rows)
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
                np.fromiter(first_row.values(), np.int64, len(first_row)) if repeats else None
            ),
            prefix_of=(
                np.fromiter((prefix_id[row.prefix] for row in rows), np.int64, len(rows))
                if repeats
                else None
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

    def prefix_directions(self) -> np.ndarray | None:
        """The directions each row of ``by_prefix`` rates calls in, as bits
        (``direction_bit``: 1 outbound, 2 inbound, 3 both), in its row order.

        None when the deck's tariffs are all of one direction: every prefix is rated
        in that one, the direction of its zone's only tariff, and the stored lines
        need not say it. Otherwise a zone with tariffs both ways may hold a prefix
        given for one of them only, which must not rate calls the other way.
        """
        if len(set(self.directions)) < 2:
            return None
        slot_bits = np.fromiter(
            (direction_bit(way) for way in self.directions), np.int64, len(self.directions)
        )
        bits: np.ndarray = slot_bits[self.zone_of]
        if self.first_of_prefix is None or self.prefix_of is None:
            return bits
        # A prefix given twice is given once per direction (the deck rules): both ways.
        twice = np.bincount(self.prefix_of, minlength=len(self.first_of_prefix)) > 1
        first: np.ndarray = bits[self.first_of_prefix]
        first[twice] = ALL_DIRECTION_BITS
        return first

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


def _read_header(header: list[str]) -> dict[str, int]:
    """Each column's position: the six base ones and the optional ones named."""
    names = [h.strip().lower() for h in header]
    detail = missing_or_unknown(names, COLUMNS, OPTIONAL_COLUMNS)
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


def _zone_of_prefix(prefix: str, zone: str, line: int) -> str:
    return (
        f"zone: prefix {prefix} is in zone {zone!r} at line {line};"
        " a prefix has one zone in every direction"
    )


def _other_rate(zone: str, direction: str, line: int, column: str) -> str:
    which = "" if direction == "outbound" else f" {direction}"
    return f"zone: {zone!r} has a different{which} rate at line {line} ({column} differs)"


def parse_deck_rows(text: str) -> list[DeckRow]:
    """The row-by-row reference parse: the rules ``parse_deck`` follows, one row at a time."""
    return _parse_reference(text)[0]


def _parse_reference(text: str) -> tuple[list[DeckRow], frozenset[str]]:
    """The reference's rows, and the optional columns the header named."""
    seen_prefix: dict[tuple[str, str], int] = {}
    prefix_zone: dict[str, tuple[str, int]] = {}
    slot_rate: dict[tuple[str, str], tuple[Rate, int]] = {}

    def read_row(fields: list[str], index: dict[str, int], line: int) -> DeckRow:
        prefix, zone, rate, direction = row_values(fields, index)
        # Checked against the good lines before it: every conflict is reported.
        problems = []
        if (prefix, direction) in seen_prefix:
            problems.append(duplicate(prefix, direction, seen_prefix[prefix, direction]))
        elif (zoned := prefix_zone.get(prefix)) is not None and zoned[0] != zone:
            problems.append(_zone_of_prefix(prefix, *zoned))
        known = slot_rate.get((zone, direction))
        if known is not None and known[0] != rate:
            column = differing_column(rate, known[0])
            problems.append(_other_rate(zone, direction, known[1], column))
        if problems:
            raise LineProblems(problems)
        seen_prefix[prefix, direction] = line
        prefix_zone.setdefault(prefix, (zone, line))
        slot_rate.setdefault((zone, direction), (rate, line))
        return DeckRow(line, prefix, zone, rate, direction)

    rows, index = reference_rows(text, COLUMNS, _read_header, read_row)
    return rows, frozenset(optional_present(index))


def parse_deck(text: str | bytes) -> Deck:
    """Parse a whole deck; raises DeckError listing every problem of every bad line (the
    first MAX_REPORTED, the rest counted). Bytes must be UTF-8: a line that is not is
    refused by number."""
    if isinstance(text, bytes):
        data_bytes = text
        text = decode_utf8(text)
    else:
        data_bytes = text.encode("utf-8", "surrogatepass")
    scanned = scan_deck(data_bytes, _read_header)
    if scanned is None:
        return Deck.from_rows(*_parse_reference(text))
    return _collect(*scanned)


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
            self.code(c, direction if c == "direction" else getattr(rate, SHAPE_FIELDS[c]))
            for c in self.columns
        ]

    def value(self, column: str, code: int) -> object:
        if column in self.ids:
            return self.values[column][code]
        return bool(code) if column == "max_cost_mode" else code

    def rate(self, base: list[int], codes: list[int]) -> Rate:
        """The rate of [connect fee, first block, increment, price] and the codes."""
        shape = {
            SHAPE_FIELDS[c]: self.value(c, code)
            for c, code in zip(self.columns, codes, strict=True)
            if c != "direction"
        }
        return Rate(*base, **shape)  # type: ignore[arg-type]


def _read_optional_cells(
    data: np.ndarray,
    out: np.ndarray,
    shapes: _Shapes,
    codes: np.ndarray,
    problems: Problems,
) -> None:
    """Codes of the plain rows' optional cells, each distinct cell text read once by the
    reference's rules; a row with a bad cell becomes LINE_BAD, every bad cell reported."""
    plain = np.flatnonzero(out[:, 0] == LINE_OK)
    bad_cells = np.zeros(len(plain), np.int64)
    bad_of: list[np.ndarray] = []  # per column: whether each plain row's cell is bad
    text_ids: list[np.ndarray] = []
    errors: list[list[str]] = []
    for k, column in enumerate(shapes.columns):
        at = out[plain, 10 + 2 * k]
        length = out[plain, 11 + 2 * k]
        ids, firsts = intern_strings(data, at, length, np.full(len(plain), -1, np.int64))
        code_of = np.zeros(len(firsts), np.int64)
        bad_text = np.zeros(len(firsts), np.bool_)
        messages = [""] * len(firsts)
        for t, r in enumerate(firsts.tolist()):
            try:
                value = read_optional(column, text_at(data, at[r], length[r]))
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
    out[plain[bad], 0] = LINE_BAD
    # Rows past the first ``most`` bad ones cannot be listed: they are counted.
    problems.skip(int(bad_cells[bad[problems.most :]].sum()))
    for b in bad[: problems.most].tolist():
        for k in range(len(shapes.columns)):
            if bad_of[k][b]:
                problems.add(int(plain[b]) + FIRST_LINE, errors[k][int(text_ids[k][b])])


def _collect(data: np.ndarray, out: np.ndarray, index: dict[str, int], ncols: int) -> Deck:
    """Rows and problems from the scan's outcomes, then the cross-row checks."""
    optional = optional_present(index)
    problems = Problems()
    shapes = _Shapes(optional)
    codes = np.zeros((len(out), len(optional)), np.int64)
    if optional:
        _read_optional_cells(data, out, shapes, codes, problems)
    slow_rows = read_lines(data, out, ncols, problems, lambda fields: row_values(fields, index))
    good, rows, buf = good_rows(data, out, slow_rows)
    if optional:
        for n, (_, _, rate, row_direction) in slow_rows.items():
            codes[n] = shapes.codes(rate, row_direction)
    prefix_id, prefix_first = prefix_ids(buf, rows)
    zone_id, zone_first = intern_strings(
        buf, rows[:, 4], rows[:, 5], np.full(len(rows), -1, np.int64)
    )
    lines = good + FIRST_LINE
    has_direction = "direction" in optional
    direction = codes[good, 0] if has_direction else np.zeros(len(rows), np.int64)
    shape_at = 1 if has_direction else 0  # the shape columns' codes: codes[:, shape_at:]
    rates = (
        np.concatenate((rows[:, 6:10], codes[good, shape_at:]), axis=1)
        if len(optional) > shape_at
        else rows[:, 6:10]
    )
    crossed, crossed_count = cross_check(
        lines,
        prefix_id,
        len(prefix_first),
        zone_id,
        len(zone_first),
        direction,
        2 if has_direction else 1,
        rates,
        problems.most,
    )
    problems.skip(crossed_count - len(crossed))

    def rate_of(r: int) -> Rate:
        return shapes.rate(rows[r, 6:10].tolist(), codes[good[r]].tolist())

    for r, kind, other in crossed.tolist():
        way = DIRECTIONS[int(direction[r])]
        prefix = prefix_text(buf, rows, r)
        if kind == 0:
            problems.add(int(lines[r]), duplicate(prefix, way, other))
            continue
        first = int(np.searchsorted(lines, other))  # the row at that line
        if kind == 2:
            zone = text_at(buf, rows[first, 4], rows[first, 5])
            problems.add(int(lines[r]), _zone_of_prefix(prefix, zone, other))
        else:
            zone = text_at(buf, rows[r, 4], rows[r, 5])
            column = differing_column(rate_of(r), rate_of(first))
            problems.add(int(lines[r]), _other_rate(zone, way, other, column))
    if problems.found:
        raise problems.error()
    if not len(rows):
        raise no_rows("deck")
    if has_direction:
        # A tariff slot is a zone in one direction, in order of first appearance.
        slot_of, slot_first = intern_strings(buf, rows[:, 4], rows[:, 5], zone_id * 2 + direction)
    else:
        slot_of, slot_first = zone_id, zone_first
    zones = texts_at(buf, rows[slot_first, 4], rows[slot_first, 5])
    if optional:
        rates_of_slots = [rate_of(r) for r in slot_first.tolist()]
    else:
        # Rate's array form is [connect fee, first block, increment, price]: the columns'
        # order. A real numbering deck has ~41,000 zones, each with a rate of its own.
        rates_of_slots = msgspec.convert(rows[slot_first, 6:10].tolist(), list[Rate])
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
        prefix_of=prefix_id if len(prefix_first) < len(rows) else None,
    )


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
    both_ways = parse_deck(shaped)
    assert len(both_ways.by_prefix()) == 2
    directions = both_ways.prefix_directions()
    assert directions is not None and directions.tolist() == [ALL_DIRECTION_BITS, 1]
