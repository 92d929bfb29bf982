"""The row-by-row reference parse of a deck: the csv module, one row at a time.

It states every per-row rule and words every message: the compiled scan
(ocs.decks.scan) is held to it by the tests, hands it every line it cannot
vouch for, and gives it a whole deck whose quoting it does not follow. A plan's
rate deck (ocs.decks.rate_deck) and a carrier's cost deck (ocs.decks.cost_deck)
add their headers and their cross-row rules.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

from ocs.decks.cells import (
    MAX_BLOCK_SECONDS,
    MAX_ZONE_CHARS,
    OPTIONAL_COLUMNS,
    SHAPE_FIELDS,
    control_character,
    read_optional,
)
from ocs.decks.problems import (
    DeckError,
    LineProblems,
    Problems,
    csv_problem,
    field_count,
    line_messages,
)
from ocs.money import MoneyError, parse_amount
from ocs.numbers.matcher import MAX_PREFIX_DIGITS
from ocs.rating.rates import Rate


def _seconds(text: str, column: str, minimum: int, *, ascii_digits: bool = False) -> int:
    """Whole seconds in [minimum, MAX_BLOCK_SECONDS]. A plan's deck takes any decimal
    digits (``str.isdecimal``: what ``int`` reads), a cost deck (``ascii_digits``) ASCII
    ones only."""
    value = text.strip()
    # Not isdigit: it takes superscripts and circled digits ("²"), which int refuses.
    if not value.isdecimal() or (ascii_digits and not value.isascii()):
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


def missing_or_unknown(
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


# The base columns after prefix and zone, in the order their problems are reported:
# (column, minimum seconds), -1 for an amount.
_BASE_VALUES = (("connect_fee", -1), ("first_block", 0), ("increment", 1), ("price_per_minute", -1))


def row_values(
    fields: list[str], index: dict[str, int], *, ascii_digits: bool = False
) -> tuple[str, str, Rate, str]:
    """(prefix, zone, rate, direction) of one row's fields; ValueError (``LineProblems``)
    names every column that is wrong, in column order.

    A deck without a zone column (a carrier's cost deck) has zone "" on every row.
    """
    problems: list[str] = []
    raw_prefix = fields[index["prefix"]]
    prefix = raw_prefix.strip().removeprefix("+")
    if not (prefix.isascii() and prefix.isdigit()) or len(prefix) > MAX_PREFIX_DIGITS:
        problems.append(f"prefix: expected 1 to {MAX_PREFIX_DIGITS} digits, got {raw_prefix!r}")
    zone = ""
    if "zone" in index:
        zone = fields[index["zone"]].strip()
        if not zone:
            problems.append("zone: must not be empty")
        elif len(zone) > MAX_ZONE_CHARS:
            problems.append(f"zone: longer than {MAX_ZONE_CHARS} characters")
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
                value = read_optional(column, fields[at])
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if column == "direction":
                direction = cast(str, value)  # read_optional reads a direction as str
            else:
                shape[SHAPE_FIELDS[column]] = value
    if problems:
        raise LineProblems(problems)
    rate = Rate(*values, **shape)  # type: ignore[arg-type]
    return prefix, zone, rate, direction


def is_blank(fields: list[str]) -> bool:
    """Whether a row has no field, or only empty or blank ones: it is skipped."""
    return not fields or all(not f.strip() for f in fields)


def _without_bom(text: str) -> str:
    return text[1:] if text.startswith("\ufeff") else text  # spreadsheets write a BOM


def duplicate(prefix: str, direction: str, line: int) -> str:
    """The problem of a prefix given again in its direction, first given at ``line``."""
    also = "" if direction == "outbound" else f" for {direction}"
    return f"prefix: {prefix} already given{also} at line {line}"


def _empty_file(columns: Sequence[str]) -> DeckError:
    return DeckError([(1, "empty file: expected the header " + ",".join(columns))])


def no_rows(what: str) -> DeckError:
    """The error of a file (``what``: the kind of deck) with a header and no row."""
    return DeckError([(2, f"no rows: a {what} needs at least one prefix")])


_Row = TypeVar("_Row")


def reference_rows(
    text: str,
    columns: Sequence[str],
    read_header: Callable[[list[str]], dict[str, int]],
    read_row: Callable[[list[str], dict[str, int], int], _Row],
    what: str = "deck",
) -> tuple[list[_Row], dict[str, int]]:
    """The row-by-row reference: the csv module's rows of ``text`` after the header,
    blank ones skipped, each of the header's width read by ``read_row(fields, index,
    line)`` (ValueError: that line's problems, ``LineProblems`` for several), and the
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
        raise DeckError([(1, csv_problem(exc))]) from None
    index = read_header(header)
    ncols = len(header)
    rows: list[_Row] = []
    problems = Problems()
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # the reader goes on at the next line
            problems.add(reader.line_num, csv_problem(exc))
            continue
        line = reader.line_num
        if is_blank(fields):
            continue
        if len(fields) != ncols:
            problems.add(line, field_count(ncols, len(fields)))
            continue
        try:
            rows.append(read_row(fields, index, line))
        except ValueError as exc:
            for message in line_messages(exc):
                problems.add(line, message)
    if problems.found:
        raise problems.error()
    if not rows:
        raise no_rows(what)
    return rows, index
