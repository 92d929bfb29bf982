"""A carrier's cost deck: CSV parsing and validation, all rows good or nothing applied.

A cost deck is CSV with the header ``prefix,connect_fee,first_block,increment,
price_per_minute`` (any column order), amounts as decimal strings like a plan's
rate deck, durations whole seconds (ASCII digits only). It is all or nothing:
every problem of a bad row is reported with its line number and column (the
first ``MAX_REPORTED`` in the file, the rest counted) and nothing is applied.

It is a plan's rate deck (ocs.decks.rate_deck) without zone, direction or
shape columns: it is parsed by the same compiled scan (ocs.decks.scan), per-row
rules and messages (ocs.decks.reference), duplicate check and error collection,
with its own header and row type. A parsed deck holds each distinct rate once
(``intern_rates``); ocs.catalog.routes_store stores it, ocs.catalog.routes
loads it into the serving snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from ocs.decks.problems import DeckError, Problems, decode_utf8
from ocs.decks.reference import duplicate, missing_or_unknown, no_rows, reference_rows, row_values
from ocs.decks.scan import (
    FIRST_LINE,
    PrefixRows,
    duplicate_prefixes,
    good_rows,
    read_lines,
    scan_deck,
)
from ocs.numbers.matcher import Int64Array
from ocs.rating.rates import Rate

CARRIER_COLUMNS = ("prefix", "connect_fee", "first_block", "increment", "price_per_minute")
# A rate as int64 columns: connect_fee, first_block, increment, price_per_minute (Rate's
# order), in a parsed deck's ``values`` and in the catalog's COPY text of a cost deck.
RATE_FIELDS = 4

_MIX = (
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0xC2B2AE3D27D4EB4F),
    np.uint64(0x165667B19E3779F9),
    np.uint64(0x27D4EB2F165667C5),
)


@numba.njit(cache=True, nogil=True)
def intern_rates(values: np.ndarray) -> tuple[Int64Array, Int64Array]:
    """Distinct rows of an (n, 4) int64 array of rate fields, without a Python object per row.

    Returns (ids, first): row r is distinct rate ``ids[r]``, and distinct rate k is
    first found at row ``first[k]`` (ids in order of first appearance).
    """
    n = len(values)
    bits = 4
    while (1 << bits) < 2 * n:
        bits += 1
    mask = (1 << bits) - 1
    table = np.full(1 << bits, -1, np.int64)
    ids = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    count = 0
    for r in range(n):
        h = np.uint64(0)
        for c in range(RATE_FIELDS):
            h = (h ^ np.uint64(values[r, c])) * _MIX[c]
        slot = np.int64(h >> np.uint64(64 - bits))
        while True:
            other = table[slot]
            if other < 0:
                table[slot] = r
                ids[r] = count
                first[count] = r
                count += 1
                break
            same = True
            for c in range(RATE_FIELDS):
                if values[other, c] != values[r, c]:
                    same = False
            if same:
                ids[r] = ids[other]
                break
            slot = (slot + 1) & mask
    return ids, first[:count].copy()


def rates_of(values: np.ndarray, rows: np.ndarray) -> tuple[Rate, ...]:
    """The ``Rate`` of each of ``rows`` (positions in ``values``, an (n, 4) array)."""
    return tuple(
        Rate(connect_fee=fee, first_block=block, increment=increment, price_per_minute=price)
        for fee, block, increment, price in values[rows].tolist()
    )


class CarrierDeck(PrefixRows[tuple[str, Rate]]):
    """A parsed, valid cost deck, column-wise: no Python object per row.

    Row i (file order) is the prefix ``buf[prefix_at[i]:prefix_at[i] + prefix_len[i]]``
    (digits, no '+') costing ``rates[rate_of[i]]``; ``values[k]`` holds rate k's
    fields (connect fee, first block, increment, price per minute). As a sequence
    it is (prefix, rate) pairs, built on access, for small decks and tests.
    """

    __slots__ = ("rate_of", "rates", "values")

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
        super().__init__(buf, lines, prefix_at, prefix_len)
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
        buf, prefix_at, prefix_len = cls._packed([prefix for _, prefix, _ in rows])
        rate_of, first = intern_rates(fields)
        return cls(
            buf=buf,
            lines=np.fromiter((line for line, _, _ in rows), np.int64, len(rows)),
            prefix_at=prefix_at,
            prefix_len=prefix_len,
            rate_of=rate_of,
            values=fields[first],
        )

    def __getitem__(self, i: int) -> tuple[str, Rate]:  # type: ignore[override]
        i = self._position(i)
        return self.prefix(i), self.rates[int(self.rate_of[i])]


def _read_header(header: list[str]) -> dict[str, int]:
    """Each column's position; DeckError for a column missing, unknown or given twice."""
    names = [h.strip().lower() for h in header]
    expected = "expected " + ",".join(CARRIER_COLUMNS)
    detail = missing_or_unknown(names, CARRIER_COLUMNS)
    if detail:
        raise DeckError([(1, "; ".join(detail) + "; " + expected)])
    if len(set(names)) != len(names):
        raise DeckError([(1, "a column is given twice; " + expected)])
    return {name: names.index(name) for name in CARRIER_COLUMNS}


def _carrier_row(fields: list[str], index: dict[str, int]) -> tuple[str, str, Rate, str]:
    """(prefix, "", rate, "outbound") of one row's fields; ValueError names the column."""
    return row_values(fields, index, ascii_digits=True)


def parse_carrier_deck_rows(text: str) -> CarrierDeck:
    """The row-by-row reference parse: the rules ``parse_carrier_deck`` follows."""
    seen: dict[str, int] = {}

    def read_row(fields: list[str], index: dict[str, int], line: int) -> tuple[int, str, Rate]:
        prefix, _, rate, _ = _carrier_row(fields, index)
        if prefix in seen:
            raise ValueError(duplicate(prefix, "outbound", seen[prefix]))
        seen[prefix] = line
        return line, prefix, rate

    rows, _ = reference_rows(text, CARRIER_COLUMNS, _read_header, read_row, "cost deck")
    return CarrierDeck.from_rows(rows)


def parse_carrier_deck(text: str | bytes) -> CarrierDeck:
    """Parse a whole cost deck; raises DeckError listing every problem of every bad line
    (the first ``MAX_REPORTED``, the rest counted).

    Rules as for a plan's deck (ocs.decks.rate_deck): a leading '+' on a prefix is
    dropped, blank lines are skipped, a prefix may be given once, a spreadsheet's
    BOM and CRLF line ends are fine; ``parse_carrier_deck_rows`` states them row
    by row. A million-row deck is read by the plan deck's compiled pass; a line
    it cannot vouch for is read by the reference's rules, which word every
    error, and a deck whose quoting it does not follow by the reference outright.
    """
    if isinstance(text, str):
        data_bytes = text.encode("utf-8", "surrogatepass")
    else:
        data_bytes = text
        text = decode_utf8(text)
    scanned = scan_deck(data_bytes, _read_header)
    if scanned is None:
        return parse_carrier_deck_rows(text)
    data, out, index, ncols = scanned
    problems = Problems()
    slow = read_lines(data, out, ncols, problems, lambda fields: _carrier_row(fields, index))
    good, rows, buf = good_rows(data, out, slow)
    lines = good + FIRST_LINE
    duplicate_prefixes(buf, rows, lines, problems)
    if problems.found:
        raise problems.error()
    if not len(rows):
        raise no_rows("cost deck")
    values = np.ascontiguousarray(rows[:, 6:10])  # connect fee, first block, increment, price
    rate_of, first = intern_rates(values)
    return CarrierDeck(
        buf=buf,
        lines=lines,
        prefix_at=rows[:, 2].copy(),
        prefix_len=rows[:, 3].copy(),
        rate_of=rate_of,
        values=values[first],
    )


def warm_up() -> None:
    """Compile, or load from the on-disk cache, the kernels a cost deck import runs."""
    header = ",".join(CARRIER_COLUMNS)
    deck = parse_carrier_deck(f"{header}\n44,0,60,60,0.01\n+447,0.15,30,6,0.06\n4,0,60,60,0.01\n")
    assert len(deck) == 3 and len(deck.rates) == 2
