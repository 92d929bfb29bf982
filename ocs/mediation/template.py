"""A usage import template: how one supplier's or switch's usage file maps to usage records.

A template says how to read the file (``format``: CSV or fixed-width), which of the
file's columns hold each part of a record (``columns``), how to read the start time,
the duration and the quantity, which rows are usage at all (``filters``), which rate
type each row is (``classify``, first matching rule wins) and what a row must hold
(``validate``). ``template_from_json`` reads and checks a definition, refusing a bad one
naming the field (``columns.start``, ``classify[0].when.cells[1].regex``);
``template_to_json`` writes one back. The JSON reference is docs/mediation-templates.md.

A row is **usage of a service** when it has a service (its ``service`` cell, or the
template's fixed ``service`` when the cell is empty or not mapped), measured by its
``quantity`` in whole units; any other row is a **call**, measured by its ``duration``
in whole seconds.
"""

from __future__ import annotations

import codecs
import io
import re
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import re2

from ocs.errors import OcsError, invalid

# A template's and a supplier's name, as the usage_templates table checks them.
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_RATE_TYPE_CHARS = 100  # rate_type_overrides.from_rate_type
MAX_COLUMN_INDEX = 9_999
MAX_SKIP_LINES = 1_000
MAX_RULES = 10_000
MAX_PREFIXES = 100_000
START_FORMATS = ("iso8601", "epoch", "epoch_ms")
DURATION_UNITS = ("seconds", "milliseconds", "hh:mm:ss")
# The parts of a record a template maps to the file's columns, in UsageRecord's order.
FIELDS = (
    "record_id",
    "account",
    "member",
    "caller",
    "called",
    "service",
    "start",
    "duration",
    "quantity",
    "direction",
)

Column = str | int
Direction = Literal["inbound", "outbound"]


class CsvFormat(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,
    tag="csv",
    tag_field="kind",
):
    """A delimited text file. ``quote`` None reads quote characters as plain text;
    ``header`` says the first row (after ``skip_lines`` physical lines) names the columns."""

    delimiter: str = ","
    quote: str | None = '"'
    header: bool = False
    skip_lines: int = 0
    encoding: str = "utf-8-sig"


class FixedFormat(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,
    tag="fixed",
    tag_field="kind",
):
    """A fixed-width text file: each field is ``[start, width]``, a 0-based character
    offset into the line and a width; a field's text is stripped of surrounding blanks."""

    fields: dict[str, tuple[int, int]]
    skip_lines: int = 0
    encoding: str = "utf-8-sig"


Format = CsvFormat | FixedFormat


class Columns(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where each part of a record is in the file: a header name or a 0-based index for
    CSV (only an index for a header-less one), a field name for fixed-width."""

    record_id: Column
    start: Column
    account: Column | None = None
    member: Column | None = None
    caller: Column | None = None
    called: Column | None = None
    service: Column | None = None
    duration: Column | None = None
    quantity: Column | None = None
    direction: Column | None = None


class StartTime(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How the start cell reads: ``iso8601``, ``epoch`` (seconds, decimals allowed),
    ``epoch_ms`` or a strptime format; a time without an offset is local to ``time_zone``."""

    format: str = "iso8601"
    time_zone: str = "UTC"


class QuantityRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A usage quantity to whole units: the cell divided by ``divide_by``, then rounded."""

    divide_by: int = 1
    round: Literal["up", "down", "nearest"] = "up"


class DirectionRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The direction cell's values (``map``; without one, ``inbound`` and ``outbound`` in
    lower case, capitals or capitalized) and the direction of a row without one (an
    empty cell, or no direction column)."""

    map: dict[str, Direction] | None = None
    default: Direction = "outbound"


def cell_pattern(regex: str) -> Any:
    """A template's cell regex, compiled by RE2 (decision 0047): its time grows with the
    cell's length only, so no pattern an operator writes can hold up the serving process
    (Python's backtracking ``re`` takes seconds on ``^(a+)+$`` against 25 letters).
    Raises ``re2.error`` for what RE2 does not take: backreferences and lookarounds."""
    options = re2.Options()
    options.log_errors = False  # refused with a 400; RE2 would also print it to stderr
    return re2.compile(regex, options)


class CellCondition(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A test of one cell: equal to one of ``equals``, or ``regex`` found in it (RE2's
    search, see ``cell_pattern``; anchor with ^ and $), the outcome reversed by ``negate``.
    A cell the row lacks is empty."""

    column: Column
    equals: str | tuple[str, ...] | None = None
    regex: str | None = None
    negate: bool = False


class Condition(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """When a classification rule applies: every condition given holds (AND)."""

    direction: Direction | None = None
    called_prefix: tuple[str, ...] | None = None
    caller_prefix: tuple[str, ...] | None = None
    service: tuple[str, ...] | None = None
    cells: tuple[CellCondition, ...] = ()


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A classification rule: rows its ``when`` holds for are of ``rate_type``."""

    rate_type: str
    when: Condition = Condition()


class Validation(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What a row must hold beyond what every row needs: ``required`` parts non-empty,
    a call at most ``max_duration`` seconds, usage at most ``max_quantity`` units."""

    required: tuple[str, ...] = ()
    max_duration: int | None = 86_400
    max_quantity: int | None = None


class Template(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A usage import template (module docstring); build one with ``template_from_json``."""

    name: str
    supplier: str
    format: Format
    columns: Columns
    description: str = ""
    start: StartTime = StartTime()
    duration_unit: Literal["seconds", "milliseconds", "hh:mm:ss"] = "seconds"
    service: str | None = None
    quantity: QuantityRule = QuantityRule()
    direction: DirectionRule = DirectionRule()
    classify: tuple[Rule, ...] = ()
    default_rate_type: str | None = None
    filters: tuple[CellCondition, ...] = ()
    validate: Validation = Validation()


def template_from_json(data: object) -> Template:
    """A template from its JSON definition (decoded), checked; refused naming the field."""
    try:
        template = msgspec.convert(data, Template)
    except msgspec.ValidationError as exc:
        raise _field_error(exc) from None
    _check(template)
    return template


def template_to_json(template: Template) -> dict[str, object]:
    """A template's JSON definition, every key written: ``template_from_json`` reads it back."""
    # Through JSON, so that tuples come back as lists (to_builtins keeps them tuples).
    data: dict[str, object] = msgspec.json.decode(msgspec.json.encode(template))
    return data


def time_zone(template: Template) -> ZoneInfo:
    """The template's start time zone (checked by ``template_from_json``)."""
    return ZoneInfo(template.start.time_zone)


# --- checking a definition -------------------------------------------------------------

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_NAMED = re.compile(r"(unknown|required) field `(?P<name>[^`]*)`")
# A rate type a template gives: as rate_type_overrides.from_rate_type holds one.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _field_error(error: msgspec.ValidationError) -> OcsError:
    """A msgspec validation error naming the field (``classify[0].rate_type``)."""
    message = str(error)
    path = ""
    at = _AT.search(message)
    if at is not None:
        # A dict's value is at "[...]", msgspec not saying which key: the dict is named.
        path = at.group("path").lstrip(".").replace("[...]", "")
        message = message[: at.start()]
    named = _NAMED.search(message)
    if named is not None:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
        message = "unknown key" if named.group(1) == "unknown" else "is required"
    return invalid(path or "template", message[:1].lower() + message[1:])


def _check(t: Template) -> None:
    """Everything msgspec's types do not say (module docstring); the first problem raises."""
    for key in ("name", "supplier"):
        value = getattr(t, key)
        if not NAME_PATTERN.fullmatch(value):
            raise invalid(key, f"{value!r}: 1 to 64 of A-Z a-z 0-9 . _ -")
    if len(t.description) > 500:
        raise invalid("description", "at most 500 characters")
    _check_format(t.format)
    _check_columns(t)
    _check_start(t.start)
    if t.quantity.divide_by < 1:
        raise invalid("quantity.divide_by", "a whole number of 1 or more")
    if t.direction.map is not None:
        if not t.direction.map:
            raise invalid("direction.map", "maps no value; leave it out instead")
        if "" in t.direction.map:
            raise invalid("direction.map", "an empty cell takes direction.default")
    if t.service is not None and not 1 <= len(t.service) <= 100:
        raise invalid("service", "1 to 100 characters")
    if len(t.classify) > MAX_RULES:
        raise invalid("classify", f"at most {MAX_RULES} rules")
    for n, rule in enumerate(t.classify):
        _check_rate_type(f"classify[{n}].rate_type", rule.rate_type)
        _check_condition(t, f"classify[{n}].when", rule.when)
    if t.default_rate_type is not None:
        _check_rate_type("default_rate_type", t.default_rate_type)
    for n, cell in enumerate(t.filters):
        _check_cell(t, f"filters[{n}]", cell)
    _check_validation(t)


def _check_format(fmt: Format) -> None:
    """The file's format: one-character delimiter and quote, a text encoding, sane fields."""
    if not 0 <= fmt.skip_lines <= MAX_SKIP_LINES:
        raise invalid("format.skip_lines", f"0 to {MAX_SKIP_LINES}")
    try:
        io.TextIOWrapper(io.BytesIO(b""), encoding=fmt.encoding)
        codecs.lookup(fmt.encoding)
    except (LookupError, ValueError):
        raise invalid("format.encoding", f"not a text encoding: {fmt.encoding!r}") from None
    if isinstance(fmt, CsvFormat):
        for key, char in (("delimiter", fmt.delimiter), ("quote", fmt.quote)):
            if char is not None and (len(char) != 1 or char in "\r\n"):
                raise invalid(f"format.{key}", f"one character, not a line break: {char!r}")
        if fmt.delimiter == fmt.quote:
            raise invalid("format.quote", "the same character as the delimiter")
        return
    if not fmt.fields:
        raise invalid("format.fields", "names no field")
    for name, (start, width) in fmt.fields.items():
        if not name:
            raise invalid("format.fields", "a field's name is empty")
        if start < 0 or width < 1:
            raise invalid(
                f"format.fields.{name}", "[start, width]: start 0 or more, width 1 or more"
            )


def _check_column(t: Template, field: str, column: Column) -> None:
    """A column that exists in the template's kind of file (see ``Columns``)."""
    fmt = t.format
    if isinstance(fmt, FixedFormat):
        if not isinstance(column, str) or column not in fmt.fields:
            raise invalid(field, f"{column!r} is not one of format.fields: {', '.join(fmt.fields)}")
        return
    if isinstance(column, int):
        if not 0 <= column <= MAX_COLUMN_INDEX:
            raise invalid(field, f"a 0-based column index, 0 to {MAX_COLUMN_INDEX}")
        return
    if not fmt.header:
        raise invalid(field, f"{column!r}: the file has no header, name a column by its index")
    if not column:
        raise invalid(field, "an empty column name")


def _check_columns(t: Template) -> None:
    """Every column exists; the record's identity and measure are there (module docstring)."""
    cols = t.columns
    for name in FIELDS:
        column = getattr(cols, name)
        if column is not None:
            _check_column(t, f"columns.{name}", column)
    if cols.account is None and cols.member is None and cols.caller is None:
        raise invalid("columns.account", "map account, member or caller: who the usage is for")
    has_service = cols.service is not None or t.service is not None
    if cols.duration is None and t.service is None:
        raise invalid("columns.duration", "required: a row without a service is a call")
    if has_service and cols.quantity is None:
        raise invalid("columns.quantity", "required: a row with a service is measured by it")
    if cols.quantity is not None and not has_service:
        raise invalid("columns.quantity", "only usage of a service has one: map columns.service")


def _check_start(start: StartTime) -> None:
    """A start format that reads back a full date and time; an IANA time zone."""
    try:
        ZoneInfo(start.time_zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise invalid("start.time_zone", f"not an IANA time zone: {start.time_zone!r}") from None
    if start.format in START_FORMATS:
        return
    if "%" not in start.format:
        raise invalid("start.format", f"one of {', '.join(START_FORMATS)} or a strptime format")
    # The format must carry the year, month, day, hour and minute: a sample written with it
    # reads back the same (a part left out reads back as its default, 1900-01-01 00:00).
    sample = datetime(2001, 2, 3, 16, 5, 0)
    if "%z" in start.format:
        sample = sample.replace(tzinfo=UTC)
    try:
        back = datetime.strptime(sample.strftime(start.format), start.format)
    except ValueError as exc:
        raise invalid("start.format", f"not a strptime format: {exc}") from None
    if back.replace(second=0, microsecond=0) != sample:
        raise invalid("start.format", "reads no full date and time (year to minute)")


def _check_rate_type(field: str, name: str) -> None:
    """A rate type's name: 1 to 100 printable characters, no space at either end (the
    rule of a stored rate type, so any name a template gives can be overridden)."""
    if not 1 <= len(name) <= MAX_RATE_TYPE_CHARS or _CONTROL.search(name):
        raise invalid(field, f"1 to {MAX_RATE_TYPE_CHARS} printable characters")
    if name != name.strip():
        raise invalid(field, "must not begin or end with a space")


def _check_cell(t: Template, field: str, cell: CellCondition) -> None:
    """A cell condition: an existing column, exactly one of equals and regex."""
    _check_column(t, f"{field}.column", cell.column)
    if (cell.equals is None) == (cell.regex is None):
        raise invalid(field, "give exactly one of equals and regex")
    if isinstance(cell.equals, tuple) and not cell.equals:
        raise invalid(f"{field}.equals", "an empty list")
    if cell.regex is not None:
        try:
            cell_pattern(cell.regex)
        except re2.error as exc:
            reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
            raise invalid(
                f"{field}.regex",
                f"not a regular expression RE2 takes (no backreferences or lookarounds): {reason}",
            ) from None


def _check_prefixes(field: str, prefixes: tuple[str, ...] | None) -> None:
    """A list of number prefixes: non-empty, each non-empty."""
    if prefixes is None:
        return
    if not prefixes or len(prefixes) > MAX_PREFIXES:
        raise invalid(field, f"1 to {MAX_PREFIXES} prefixes")
    if any(not prefix for prefix in prefixes):
        raise invalid(field, "an empty prefix matches every number")


def _check_condition(t: Template, field: str, when: Condition) -> None:
    """A rule's conditions, each on something the template reads."""
    cols = t.columns
    _check_prefixes(f"{field}.called_prefix", when.called_prefix)
    if when.called_prefix is not None and cols.called is None:
        raise invalid(f"{field}.called_prefix", "the template maps no columns.called")
    _check_prefixes(f"{field}.caller_prefix", when.caller_prefix)
    if when.caller_prefix is not None and cols.caller is None:
        raise invalid(f"{field}.caller_prefix", "the template maps no columns.caller")
    if when.service is not None:
        if not when.service:
            raise invalid(f"{field}.service", "an empty list")
        if cols.service is None and t.service is None:
            raise invalid(f"{field}.service", "the template reads no service")
    for n, cell in enumerate(when.cells):
        _check_cell(t, f"{field}.cells[{n}]", cell)


def _check_validation(t: Template) -> None:
    """``validate``: required parts the template maps, limits of 0 or more."""
    for n, name in enumerate(t.validate.required):
        if name not in FIELDS:
            raise invalid(f"validate.required[{n}]", f"{name!r} is not one of {', '.join(FIELDS)}")
        if getattr(t.columns, name) is None:
            raise invalid(f"validate.required[{n}]", f"the template maps no columns.{name}")
    for key in ("max_duration", "max_quantity"):
        limit = getattr(t.validate, key)
        if limit is not None and limit < 0:
            raise invalid(f"validate.{key}", "0 or more")
