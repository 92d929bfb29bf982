"""Rate deck CSV parsing and validation: all rows good, or nothing applied.

Header: ``prefix,zone,price_per_minute,connect_fee,first_block,increment``
(any column order). Amounts are decimal strings, durations whole seconds.
Every error names its line number and column; up to ``MAX_REPORTED`` errors
are reported at once so an operator can fix a deck in one pass.
"""

import csv
import io
from dataclasses import dataclass

from ocs.charging.rating import Rate
from ocs.errors import OcsError, Reason
from ocs.money import MoneyError, parse_amount

COLUMNS = ("prefix", "zone", "price_per_minute", "connect_fee", "first_block", "increment")
MAX_REPORTED = 20
MAX_BLOCK_SECONDS = 86_400


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


def parse_deck(text: str) -> list[DeckRow]:
    """Parse a whole deck; raises DeckError naming every bad line (up to MAX_REPORTED)."""
    if text.startswith("\ufeff"):
        text = text[1:]  # spreadsheets write a byte-order mark
    reader = csv.reader(io.StringIO(text))
    problems: list[tuple[int, str]] = []
    try:
        header = next(reader)
    except StopIteration:
        raise DeckError([(1, "empty file: expected the header " + ",".join(COLUMNS))]) from None
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
    index = {name: names.index(name) for name in COLUMNS}
    rows: list[DeckRow] = []
    seen_prefix: dict[str, int] = {}
    zone_rate: dict[str, tuple[Rate, int]] = {}
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(names):
            problems.append((line, f"expected {len(names)} fields, found {len(fields)}"))
        else:
            try:
                rows.append(_row(line, fields, index, seen_prefix, zone_rate))
            except ValueError as exc:
                problems.append((line, str(exc)))
        if len(problems) >= MAX_REPORTED:
            break
    if problems:
        raise DeckError(problems)
    if not rows:
        raise DeckError([(2, "no rows: a deck needs at least one prefix")])
    return rows


def _row(
    line: int,
    fields: list[str],
    index: dict[str, int],
    seen_prefix: dict[str, int],
    zone_rate: dict[str, tuple[Rate, int]],
) -> DeckRow:
    prefix = fields[index["prefix"]].strip().removeprefix("+")
    if not (prefix.isascii() and prefix.isdigit()) or len(prefix) > 32:
        raise ValueError(f"prefix: expected 1 to 32 digits, got {fields[index['prefix']]!r}")
    zone = fields[index["zone"]].strip()
    if not zone:
        raise ValueError("zone: must not be empty")
    if len(zone) > 200:
        raise ValueError("zone: longer than 200 characters")
    rate = Rate(
        connect_fee=_amount(fields[index["connect_fee"]], "connect_fee"),
        first_block=_seconds(fields[index["first_block"]], "first_block", 0),
        increment=_seconds(fields[index["increment"]], "increment", 1),
        price_per_minute=_amount(fields[index["price_per_minute"]], "price_per_minute"),
    )
    if prefix in seen_prefix:
        raise ValueError(f"prefix: {prefix} already given at line {seen_prefix[prefix]}")
    known = zone_rate.get(zone)
    if known is not None and known[0] != rate:
        raise ValueError(f"zone: {zone!r} has a different rate at line {known[1]}")
    seen_prefix[prefix] = line
    zone_rate.setdefault(zone, (rate, line))
    return DeckRow(line=line, prefix=prefix, zone=zone, rate=rate)
