"""A template compiled to read a file fast: rows to usage records, or to their problems.

``CompiledTemplate(template).read(stream)`` yields, per data row, a ``UsageRecord``
(classified to a rate type) or a ``RowProblem`` naming every problem of the row,
each starting with the part and its column (``start (column 10): ...``). A row a
filter leaves out yields nothing and is counted (``rows_filtered``); every data row
is counted in ``rows_read``. A NUL in any cell, or another control character in a
cell a part maps (``_CONTROL``), is a problem of its row: no record holds one.
``render`` and ``render_header`` write a row back in the file's own format, so that
the rejected rows form a file the same template imports.

The columns are resolved to indices once per file (a header's names when it has
one), and each row goes through one optimistic pass: a row that fails any check is
examined again by ``_problems``, which words every problem, so that the wording is
paid only for bad rows. Start times in a strptime format are read through caches
(``StartParser``): the local hour's start in UTC per distinct "date and hour" text,
and the minutes and seconds per distinct tail, exact across DST changes.

A start is kept from 1970 to before the year 3000 (UTC) in every format, and a call
must end by then; a record id, called number or service longer than a CDR's indexed
column takes, or a member or caller id longer than the real-time path takes (64
characters each), is its row's problem (decision 0032).

Times without an offset are local to the template's time zone; a local time that
occurs twice (the hour a clock goes back) is its first occurrence, and one that
does not exist (the hour a clock skips) is read with the offset before the change,
as Python's ``fold=0`` reads them (02:30 in Toronto on the day clocks go forward is
07:30 UTC).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from operator import itemgetter
from typing import TextIO
from zoneinfo import ZoneInfo

from ocs.balances.accounts import MAX_MEMBER_CHARS
from ocs.charging.lifecycle import MAX_CALL_ID
from ocs.decks.cells import MAX_ZONE_CHARS
from ocs.errors import invalid
from ocs.mediation.reader import Rows, open_rows, write_header, write_row
from ocs.mediation.records import RowProblem, UsageRecord
from ocs.mediation.template import (
    FIELDS,
    CellCondition,
    Column,
    CsvFormat,
    FixedFormat,
    Template,
    cell_pattern,
)
from ocs.numbers.prefixes import MAX_CALLER_CHARS, MAX_DESTINATION_CHARS
from ocs.rating.rates import MAX_QUANTITY

_EPOCH = datetime(1970, 1, 1)
_ONE_MS = timedelta(milliseconds=1)
# Directives whose text has one width for every year 1000-9999: a prefix made of them
# (and plain characters) is sliced at a fixed width (``StartParser``).
_FIXED_WIDTH_DIRECTIVES = frozenset("YmdyjH")
_TAIL_DIRECTIVES = frozenset("MS")
_MAX_CACHED_HOURS = 200_000
# A control character a usage record's part may not hold: every C0 character but tab,
# and DEL. A NUL is refused in any cell: PostgreSQL text cannot store one, and a
# record debited whose CDR PostgreSQL then refuses is money moved with no record.
# Other control characters are refused only in the parts a record takes (they are
# corruption there, never a caller id); an unmapped free-text cell may hold a quoted
# line break.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# --- start times ----------------------------------------------------------------------


def local_ms(local: datetime, zone: ZoneInfo) -> int:
    """Epoch milliseconds of a naive local time in ``zone`` (fold=0, module docstring)."""
    offset = zone.utcoffset(local)
    assert offset is not None
    return (local - offset - _EPOCH) // _ONE_MS


def _local_in_range(local: datetime, zone: ZoneInfo, text: str) -> int:
    """``local_ms`` of a start cell's time, refused (ValueError) outside 1970-3000."""
    try:
        ms = local_ms(local, zone)
    except OverflowError:
        # 9999-12-31 23:00 west of UTC is in the year 10000, which datetime cannot hold
        # (and 0001-01-01 east of it in the year 0): far outside the range either way.
        ms = _YEAR_3000_MS if local.year >= 3000 else -1
    return _in_range(ms, text)


def _aware_ms(moment: datetime) -> int:
    """Epoch milliseconds of a time that carries its own offset."""
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // _ONE_MS


class StartParser:
    """Reads a start cell into epoch milliseconds; a ValueError says what is wrong.

    A strptime format of a fixed-width date-and-hour prefix (``%Y-%m-%d %H``) and a
    minutes-and-seconds tail (``:%M:%S``) is read from two dicts: the UTC start of the
    local hour per prefix text, filled on first sight by the exact reading and only for
    an hour the zone's offset does not change within; and the milliseconds into the
    hour per tail text, every valid tail listed up front. Any other text (not zero
    padded, an hour with a DST change, a bad time) is read the exact way.
    """

    def __init__(self, fmt: str, zone: ZoneInfo) -> None:
        self.format = fmt
        self.zone = zone
        self._hours: dict[str, int] = {}
        self._tails: dict[str, int] = {}
        self._width = 0
        self.parse: Callable[[str], int]
        if fmt == "epoch":
            self.parse = self._epoch
        elif fmt == "epoch_ms":
            self.parse = self._epoch_ms
        elif fmt == "iso8601":
            self.parse = self._iso8601
        elif self._split():
            self.parse = self._cached
        else:
            self.parse = self._exact

    def _split(self) -> bool:
        """Set up the prefix and tail caches, or say the format does not allow them."""
        fmt = self.format
        at = fmt.find("%H")
        if at < 0:
            return False
        prefix, tail = fmt[: at + 2], fmt[at + 2 :]
        directives = re.findall(r"%(.)", prefix.replace("%%", ""))
        if not set(directives) <= _FIXED_WIDTH_DIRECTIVES:
            return False
        if not set(re.findall(r"%(.)", tail.replace("%%", ""))) <= _TAIL_DIRECTIVES:
            return False
        self._width = len(datetime(2001, 2, 3, 4).strftime(prefix))
        for minute in range(60):
            for second in range(60 if "%S" in tail else 1):
                text = datetime(2001, 2, 3, 4, minute, second).strftime(tail)
                self._tails[text] = (minute * 60 + second) * 1000
        return True

    def _cached(self, text: str) -> int:
        """A time from the caches, or read the exact way (filling the hour's cache)."""
        base = self._hours.get(text[: self._width])
        if base is not None:
            into = self._tails.get(text[self._width :])
            if into is not None:
                return base + into
        return self._exact(text)

    def _exact(self, text: str) -> int:
        """A time read by strptime; a canonical one's hour goes to the cache."""
        try:
            moment = datetime.strptime(text, self.format)
        except ValueError:
            raise ValueError(f"{text!r} is not a time in the format {self.format}") from None
        if moment.tzinfo is not None:
            return _in_range(_aware_ms(moment), text)
        ms = _local_in_range(moment, self.zone, text)
        if self._width and moment.strftime(self.format) == text:
            hour = moment.replace(minute=0, second=0, microsecond=0)
            last = hour.replace(minute=59, second=59, microsecond=999_999)
            if self.zone.utcoffset(hour) == self.zone.utcoffset(last):
                base = local_ms(hour, self.zone)
                # Only an hour wholly in range is cached: a cached time is not checked
                # again (a zone's half-hour offset puts an hour across the year 3000).
                if base >= 0 and base + 3_600_000 <= _YEAR_3000_MS:
                    if len(self._hours) >= _MAX_CACHED_HOURS:
                        self._hours.clear()
                    self._hours[text[: self._width]] = base
        return ms

    def _iso8601(self, text: str) -> int:
        """An ISO 8601 time; without an offset, local to the template's zone."""
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an ISO 8601 time") from None
        if moment.tzinfo is not None:
            return _in_range(_aware_ms(moment), text)
        return _local_in_range(moment, self.zone, text)

    @staticmethod
    def _epoch(text: str) -> int:
        """Seconds since 1970-01-01 UTC, decimals allowed (cut to the millisecond)."""
        try:
            seconds = int(text)
        except ValueError:
            exact = _number(text, "seconds since 1970")
            return _in_range(int((exact * 1000).to_integral_value(ROUND_FLOOR)), text, True)
        return _in_range(seconds * 1000, text, True)

    @staticmethod
    def _epoch_ms(text: str) -> int:
        """Milliseconds since 1970-01-01 UTC."""
        try:
            ms = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number of milliseconds since 1970") from None
        return _in_range(ms, text, True)


# 3000-01-01 UTC: a later start is a cell in another unit (milliseconds read as
# seconds), or a date no usage has (9999-12-31, a switch's "never"), whose end the
# ledger writer could not date (the year 10000): a start from 1970 to 3000 is kept,
# in every format (decision 0032).
_YEAR_3000_MS = 32_503_680_000_000


def _in_range(ms: int, text: str, number: bool = False) -> int:
    """``ms``, a start read from ``text`` (``number``: a count of seconds or
    milliseconds), unless it is before 1970 or from the year 3000 on."""
    if ms < 0:
        raise ValueError(f"{text!r} is before 1970")
    if ms >= _YEAR_3000_MS:
        hint = ": a number in another unit?" if number else ""
        raise ValueError(f"{text!r} is after the year 3000{hint}")
    return ms


# --- durations and quantities ---------------------------------------------------------

# A decimal cell longer than this is no duration or quantity (and an exponent's digits
# would take as long to expand as they are large: "1e1000000" is nine characters).
_MAX_DECIMAL = 40


def _number(text: str, what: str) -> Decimal:
    """A cell's non-negative decimal number, written out in plain digits."""
    if len(text) > _MAX_DECIMAL or "e" in text or "E" in text:
        raise ValueError(f"{text!r} is not a number of {what} in plain digits")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number of {what}") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not a number of {what}")
    if value < 0:
        raise ValueError(f"{text!r} is negative")
    return value


def _at_most(value: int, text: str, what: str) -> int:
    """``value``, unless it is more than a record may hold (``MAX_QUANTITY``)."""
    if value > MAX_QUANTITY:
        raise ValueError(f"{text!r} is more {what} than a record holds ({MAX_QUANTITY:,})")
    return value


def seconds_parser(unit: str) -> Callable[[str], int]:
    """The reader of a duration cell in ``unit``, to whole seconds (rounded up)."""
    if unit == "milliseconds":
        return _milliseconds
    if unit == "hh:mm:ss":
        return _clock
    return _seconds


def _seconds(text: str) -> int:
    """Whole seconds; decimals rounded up."""
    try:
        seconds = int(text)
    except ValueError:
        seconds = int(_number(text, "seconds").to_integral_value(ROUND_CEILING))
    if seconds < 0:
        raise ValueError(f"{text!r} is negative")
    return _at_most(seconds, text, "seconds")


def _milliseconds(text: str) -> int:
    """Milliseconds, rounded up to whole seconds."""
    try:
        ms = int(text)
    except ValueError:
        ms = int(_number(text, "milliseconds").to_integral_value(ROUND_CEILING))
    if ms < 0:
        raise ValueError(f"{text!r} is negative")
    return _at_most(-(-ms // 1000), text, "seconds")


def _clock(text: str) -> int:
    """``H:MM:SS`` (hours of any width) to seconds."""
    parts = text.split(":")
    if len(parts) == 3 and all(part.isdigit() and part.isascii() for part in parts):
        hours, minutes, seconds = (int(part) for part in parts)
        if minutes < 60 and seconds < 60 and len(parts[1]) == len(parts[2]) == 2:
            return _at_most(hours * 3600 + minutes * 60 + seconds, text, "seconds")
    raise ValueError(f"{text!r} is not a duration like 1:02:03 (hours:minutes:seconds)")


_ROUNDING = {"up": ROUND_CEILING, "down": ROUND_FLOOR, "nearest": ROUND_HALF_UP}


def quantity_parser(divide_by: int, rounding: str) -> Callable[[str], int]:
    """The reader of a quantity cell: divided by ``divide_by``, rounded to whole units."""
    mode = _ROUNDING[rounding]

    def parse(text: str) -> int:
        try:
            amount = int(text)
        except ValueError:
            exact = _number(text, "units") / divide_by
            return _at_most(int(exact.to_integral_value(mode)), text, "units")
        if amount < 0:
            raise ValueError(f"{text!r} is negative")
        if mode == ROUND_CEILING:
            units = -(-amount // divide_by)
        elif mode == ROUND_FLOOR:
            units = amount // divide_by
        else:
            units = (2 * amount + divide_by) // (2 * divide_by)
        return _at_most(units, text, "units")

    return parse


# --- cells ------------------------------------------------------------------------------


def cell_test(condition: CellCondition, index: int) -> Callable[[list[str]], bool]:
    """A condition on one cell as a test of a row (already long enough)."""
    negate = condition.negate
    if condition.regex is not None:
        search = cell_pattern(condition.regex).search
        return lambda row: (search(row[index]) is None) is negate
    equals = condition.equals
    values = frozenset((equals,) if isinstance(equals, str) else equals or ())
    return lambda row: (row[index] in values) is not negate


def _all(tests: list[Callable[[list[str]], bool]]) -> Callable[[list[str]], bool] | None:
    """One test that every test holds, or None for no tests."""
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    return lambda row: all(test(row) for test in tests)


class _Rule:
    """A classification rule with its columns resolved (see ``template.Rule``)."""

    __slots__ = ("callee", "caller", "cells", "direction", "rate_type", "services")

    def __init__(
        self,
        rate_type: str,
        direction: str | None,
        callee: tuple[str, ...] | None,
        caller: tuple[str, ...] | None,
        services: frozenset[str] | None,
        cells: Callable[[list[str]], bool] | None,
    ) -> None:
        self.rate_type = rate_type
        self.direction = direction
        self.callee = callee
        self.caller = caller
        self.services = services
        self.cells = cells


class _Plan:
    """A template's columns resolved for one file: indices, tests, rules."""

    def __init__(self, template: Template, indices: dict[str, int], names: list[str]) -> None:
        self.indices = indices  # template part -> column index, mapped parts only
        self.names = names  # the file's column names, by index (none: no header)
        self.labels = {
            part: _label(part, names[index] if index < len(names) else index)
            for part, index in indices.items()
        }
        # An unmapped part reads the empty cell appended to every row (index -1).
        self.get = itemgetter(*(indices.get(part, -1) for part in FIELDS))
        self.need_mapped = 1 + max(indices.values())
        self.need = self.need_mapped
        self.required = tuple(indices[part] for part in template.validate.required)

        def resolve(column: Column, field: str) -> int:
            index = _index(column, names, field)
            self.need = max(self.need, index + 1)
            return index

        self.keep = _all(
            [
                cell_test(cell, resolve(cell.column, f"filters[{n}].column"))
                for n, cell in enumerate(template.filters)
            ]
        )
        self.rules = []
        for n, rule in enumerate(template.classify):
            when = rule.when
            tests = [
                cell_test(cell, resolve(cell.column, f"classify[{n}].when.cells[{m}].column"))
                for m, cell in enumerate(when.cells)
            ]
            self.rules.append(
                _Rule(
                    rule.rate_type,
                    when.direction,
                    when.called_prefix,
                    when.caller_prefix,
                    frozenset(when.service) if when.service is not None else None,
                    _all(tests),
                )
            )


def _column_label(names: list[str], index: int) -> str:
    """How a problem names a column no part maps: by its header name, else its index."""
    if index < len(names):
        return f'column "{names[index]}"'
    return f"column {index}"


def _control_text(text: str, nul_only: bool = False) -> str:
    """What is wrong with a cell that holds a control character (``nul_only``: a NUL):
    which, and where."""
    at = text.index("\x00") if nul_only else _first_control(text)
    char = text[at]
    what = "a NUL character" if char == "\x00" else "a control character"
    return f"holds {what} ({char!r} at character {at + 1}), which a record cannot hold"


def _first_control(text: str) -> int:
    """Where the first control character of ``text`` (``_CONTROL``) is."""
    found = _CONTROL.search(text)
    assert found is not None
    return found.start()


def _label(part: str, column: str | int) -> str:
    """How a problem names a part and its column: ``start (column "answer")``."""
    if column == part:
        return part
    if isinstance(column, int):
        return f"{part} (column {column})"
    return f'{part} (column "{column}")'


def _index(column: Column, names: list[str], field: str) -> int:
    """A column's index in the file: itself, or its place among the header's names."""
    if isinstance(column, int):
        return column
    found = [n for n, name in enumerate(names) if name.strip() == column.strip()]
    if not found:
        raise invalid(field, f"the file's header has no column {column!r}")
    if len(found) > 1:
        raise invalid(field, f"the file's header names {column!r} {len(found)} times")
    return found[0]


class CompiledTemplate:
    """A template ready to read files (module docstring); counters add up over reads."""

    def __init__(self, template: Template) -> None:
        self.template = template
        self.rows_read = 0
        self.rows_filtered = 0
        self.header: tuple[str, ...] | None = None
        self._rows: Rows | None = None
        zone = ZoneInfo(template.start.time_zone)
        self.start = StartParser(template.start.format, zone)
        self._seconds = seconds_parser(template.duration_unit)
        self._units = quantity_parser(template.quantity.divide_by, template.quantity.round)
        direction = template.direction
        self._directions: dict[str, str] = (
            dict(direction.map)
            if direction.map is not None
            else {
                text: value
                for value in ("inbound", "outbound")
                for text in (value, value.upper(), value.capitalize())
            }
        )

    def _plan(self, header: tuple[str, ...] | None) -> _Plan:
        """The template's columns resolved against this file (its header, if any)."""
        fmt = self.template.format
        names = list(fmt.fields) if isinstance(fmt, FixedFormat) else list(header or ())
        indices = {}
        for part in FIELDS:
            column = getattr(self.template.columns, part)
            if column is not None:
                indices[part] = _index(column, names, f"columns.{part}")
        if isinstance(fmt, CsvFormat) and not fmt.header:
            names = []
        return _Plan(self.template, indices, names)

    def read(self, stream: TextIO) -> Iterator[UsageRecord | RowProblem]:
        """The file's rows as records or problems. Its preamble and header are read now:
        a header without a column the template names raises OcsError (invalid_field)."""
        rows = open_rows(stream, self.template.format)
        self._rows = rows
        self.header = rows.header
        fmt = self.template.format
        if isinstance(fmt, CsvFormat) and fmt.header and rows.header is None:
            return iter(())  # an empty file
        return self._records(rows, self._plan(rows.header))

    def render(self, cells: tuple[str, ...]) -> str:
        """A row's cells back in the file's format, with a trailing line break."""
        return write_row(self.template.format, cells)

    def render_header(self) -> str | None:
        """What comes before the data in the file last read (skipped lines, header)."""
        return None if self._rows is None else write_header(self._rows)

    def _records(self, rows: Rows, plan: _Plan) -> Iterator[UsageRecord | RowProblem]:
        """The optimistic pass (module docstring); a bad row goes to ``_problems``."""
        get, keep, need, need_mapped = plan.get, plan.keep, plan.need, plan.need_mapped
        required, rules = plan.required, plan.rules
        start_ms, seconds, units = self.start.parse, self._seconds, self._units
        directions = self._directions
        default_direction = self.template.direction.default
        default_rate_type = self.template.default_rate_type
        fixed_service = self.template.service
        max_seconds = self.template.validate.max_duration
        max_units = self.template.validate.max_quantity
        control = _CONTROL.search
        read = filtered = 0
        try:
            for line, row, cells in rows:
                read += 1
                width = len(row)
                if width < need:
                    row.extend([""] * (need - width))
                row.append("")
                if keep is not None and not keep(row):
                    filtered += 1
                    continue
                (
                    record_id,
                    account,
                    member,
                    caller,
                    called,
                    service,
                    start,
                    duration,
                    quantity,
                    direction,
                ) = get(row)
                service = service or fixed_service
                try:
                    if width < need_mapped or not record_id or len(record_id) > MAX_CALL_ID:
                        raise ValueError
                    # Joined: one search a row (a cell's character never joins another's
                    # into a control character); a hit is worded, and may be harmless.
                    if control("".join(cells)) and self._controls(plan, row, width, cells):
                        raise ValueError
                    when = start_ms(start)
                    if service:
                        if len(service) > MAX_ZONE_CHARS:
                            raise ValueError
                        amount = units(quantity)
                        if max_units is not None and amount > max_units:
                            raise ValueError
                    else:
                        amount = seconds(duration)
                        if max_seconds is not None and amount > max_seconds:
                            raise ValueError
                        if when + amount * 1000 > _YEAR_3000_MS:
                            raise ValueError
                    if (
                        len(called) > MAX_DESTINATION_CHARS
                        or len(member) > MAX_MEMBER_CHARS
                        or len(caller) > MAX_CALLER_CHARS
                    ):
                        raise ValueError
                    way = directions[direction] if direction else default_direction
                    if not (account or member or caller):
                        raise ValueError
                    for index in required:
                        if not row[index]:
                            raise ValueError
                except (ValueError, KeyError, OverflowError):
                    self.rows_read += read
                    self.rows_filtered += filtered
                    read = filtered = 0
                    yield RowProblem(line, tuple(self._problems(plan, row, width, cells)), cells)
                    continue
                rate_type = default_rate_type
                for rule in rules:
                    if rule.direction is not None and rule.direction != way:
                        continue
                    if rule.callee is not None and not (called and called.startswith(rule.callee)):
                        continue
                    if rule.caller is not None and not (caller and caller.startswith(rule.caller)):
                        continue
                    if rule.services is not None and service not in rule.services:
                        continue
                    if rule.cells is not None and not rule.cells(row):
                        continue
                    rate_type = rule.rate_type
                    break
                # The counters are right whenever the consumer holds a row.
                self.rows_read += read
                self.rows_filtered += filtered
                read = filtered = 0
                yield UsageRecord(
                    line,
                    record_id,
                    account or None,
                    member or None,
                    caller or None,
                    called or None,
                    service or None,
                    way,
                    when,
                    amount,
                    rate_type,
                    cells,
                )
        finally:
            self.rows_read += read
            self.rows_filtered += filtered

    @staticmethod
    def _controls(plan: _Plan, row: list[str], width: int, cells: tuple[str, ...]) -> list[str]:
        """The problems of a row's control characters (``_CONTROL``), each naming its
        column: any in a part the template maps, a NUL in any cell (a fixed-width line's
        NUL outside its fields is the line's)."""
        problems: list[str] = []
        mapped: set[int] = set()
        for part, index in plan.indices.items():
            mapped.add(index)
            if index < width and _CONTROL.search(row[index]):
                problems.append(f"{plan.labels[part]}: {_control_text(row[index])}")
        for index in range(width):
            if index not in mapped and "\x00" in row[index]:
                problems.append(
                    f"{_column_label(plan.names, index)}: {_control_text(row[index], True)}"
                )
        line = "".join(cells)
        if not problems and "\x00" in line:
            problems.append(f"line: {_control_text(line, True)}")
        return problems

    def _problems(
        self, plan: _Plan, row: list[str], width: int, cells: tuple[str, ...]
    ) -> list[str]:
        """Every problem of a row the optimistic pass refused, each naming its column."""
        t = self.template
        labels, indices = plan.labels, plan.indices
        problems: list[str] = []
        flagged: set[str] = set()  # the parts a problem names already
        value = {part: row[index] for part, index in indices.items()}

        def problem(part: str, text: str) -> None:
            problems.append(f"{labels[part]}: {text}")
            flagged.add(part)

        problems.extend(self._controls(plan, row, width, cells))

        for part, index in indices.items():
            if index >= width:
                problem(part, f"missing, the row has {width} cells")
        missing = {part for part, index in indices.items() if index >= width}

        def check(
            part: str, parse: Callable[[str], int], limit: int | None, unit: str
        ) -> int | None:
            """The part's value read, or None after its problem is noted."""
            if part in missing:
                return None
            if not value.get(part):
                problem(part, "empty")
                return None
            try:
                amount = parse(value[part])
            except (ValueError, OverflowError) as exc:
                problem(part, str(exc))
                return None
            if limit is not None and amount > limit:
                problem(part, f"{amount} {unit}, more than the {limit} allowed")
            return amount

        def at_most(part: str, chars: int, what: str) -> None:
            text = value.get(part)
            if part not in missing and text and len(text) > chars:
                problem(part, f"{len(text):,} characters, more than the {chars} {what} may have")

        if "record_id" not in missing and not value["record_id"]:
            problem("record_id", "empty")
        # Stored in indexed CDR columns, which refuse a longer text (decision 0032).
        at_most("record_id", MAX_CALL_ID, "a record id")
        at_most("called", MAX_DESTINATION_CHARS, "a called number")
        at_most("service", MAX_ZONE_CHARS, "a service's name")
        # Kept in the CDR and looked up among members and caller ids, which hold no longer
        # one: as the real-time path takes them (POST /v1/calls, RADIUS).
        at_most("member", MAX_MEMBER_CHARS, "a member")
        at_most("caller", MAX_CALLER_CHARS, "a caller id")
        when = check("start", self.start.parse, None, "")
        service = value.get("service") or t.service
        if service:
            check("quantity", self._units, t.validate.max_quantity, "units")
        else:
            seconds = check("duration", self._seconds, t.validate.max_duration, "seconds")
            if when is not None and seconds is not None and when + seconds * 1000 > _YEAR_3000_MS:
                problem("duration", f"{seconds} seconds from its start end after the year 3000")
        direction = value.get("direction")
        if direction and "direction" not in missing and direction not in self._directions:
            known = ", ".join(t.direction.map or ("inbound", "outbound"))
            problem("direction", f"{direction!r} is not one of {known}")
        identities = [part for part in ("account", "member", "caller") if part in indices]
        if not any(value[part] for part in identities) and not set(identities) & missing:
            if len(identities) == 1:
                problem(identities[0], "empty")
            else:
                names = ", ".join(labels[part] for part in identities)
                problems.append(f"{names}: all empty; one of them must say whose usage it is")
                flagged.update(identities)
        for part in t.validate.required:
            if part not in flagged and not value[part]:
                problem(part, "empty")
        assert problems, "the optimistic pass refuses a row only for a problem worded here"
        return problems
