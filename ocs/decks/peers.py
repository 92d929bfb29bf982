"""Rate decks exported from peer billing systems, read as a plan's rate deck.

``read_peer_deck(format, data)`` reads an A2Billing ratecard export, an ASTPP
origination rate export or a MagnusBilling rate list (``PEER_FORMATS``) into
the ``Deck`` that ``ocs.decks.rate_deck.parse_deck`` gives for ocs's own CSV,
for ``ocs.catalog.store.import_deck``; ``peer_deck_to_ocs`` writes it as ocs
deck CSV instead. docs/peer-decks.md tables every column of each export and
what becomes of it. The rules:

* All or nothing, as ocs's own decks: every problem of every bad line is
  reported with its line number and the peer's column name (``DeckError``;
  the first ``MAX_REPORTED``, the rest counted), and nothing is imported.
* Money is exact: a decimal string becomes micro-units through ocs.money,
  never a float; more than six decimals is a problem, not a rounding.
* A column that moves money in the peer but cannot be rated the same way in
  ocs (a minimum call cost, progressive rates, a grace added to every call,
  free short calls, a disconnect charge with a threshold) is refused on any row
  where it is not zero: never dropped. Columns that move no customer money
  (trunks, tags, creation dates, the carrier's buy rates) are ignored; a
  column the format does not have is refused.
* Billing blocks are mapped exactly. A2Billing and MagnusBilling bill at least
  ``initblock`` and round the whole call up to ``billingblock``; ocs rounds the
  time after its first block, the same when initblock is a multiple of
  billingblock. Otherwise the deck carries a tier: the first block, one step
  to initblock rounded up to billingblock, then billingblock steps. ASTPP's
  included seconds are free seconds before its initial increment: a base tier
  priced 0 and tiers from there. The tiers are the export's, always: every peer
  deck declares the ``tiers`` column (``PEER_COLUMNS``), so an import replaces
  the tiers an earlier export or the shape API set, even where it has none.
* Zones: the destination name. A name whose rows carry different rates is
  split, each rate a zone named ``"<name> (<its first prefix>)"``; a row with no
  name (ASTPP writes ``--``) is a zone named by its prefix.
* A header that names a currency (ASTPP's ``Cost / Min(USD)``) must name the
  plan's (``currency=``). Every rate is outbound: what a customer pays to call.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

from ocs.decks.cells import (
    COLUMNS,
    MAX_BLOCK_SECONDS,
    MAX_ZONE_CHARS,
    control_character,
    format_tiers,
)
from ocs.decks.problems import (
    DeckError,
    Problems,
    csv_problem,
    decode_utf8,
    field_count,
)
from ocs.decks.rate_deck import Deck, DeckRow
from ocs.decks.reference import is_blank
from ocs.money import MoneyError, format_amount, parse_amount
from ocs.numbers.matcher import MAX_PREFIX_DIGITS
from ocs.rating.rates import Rate, Tier
from ocs.whole_numbers import whole_number

PEER_FORMATS = ("a2billing", "astpp", "magnusbilling")
# The optional ocs columns every peer deck declares, tiered or not (``Deck.columns``).
PEER_COLUMNS = frozenset({"tiers"})

_WHOLE_WEEK = ("0", "10079")  # A2Billing's starttime/endtime: minutes of the week
_ASTPP_PATTERN = re.compile(r"\^(\d+)\.\*")
_CURRENCY = re.compile(r"\(\s*([A-Za-z]{3})\s*\)")
_DECIMAL_COMMA = re.compile(r"\s*[+-]?\d+,\d+\s*")


# --- one row's cells ---------------------------------------------------------------------


class _Cells:
    """One row's cells by the peer's column name, and the problems found reading them.

    A column the file lacks reads as an empty cell: its default. Each problem is
    worded ``"<column>: ..."``, with the file's own header label when it differs.
    ``amounts`` holds the amounts read so far in the file, by their text: an
    export repeats a few prices and many zeros.
    """

    def __init__(
        self,
        values: dict[str, str],
        labels: dict[str, str],
        decimal_comma: bool,
        amounts: dict[str, int],
    ):
        self.values = values
        self.labels = labels
        self.decimal_comma = decimal_comma
        self.amounts = amounts
        self.problems: list[str] = []

    def text(self, column: str) -> str:
        """The cell, stripped ("" when the file has no such column)."""
        value = self.values.get(column)
        return value.strip() if value else ""

    def problem(self, column: str, message: str) -> None:
        """Note a problem of ``column``."""
        label = self.labels.get(column, column)
        where = "" if _label(label)[0] == column else f' (column "{label.strip()}")'
        self.problems.append(f"{column}: {message}{where}")

    def amount(self, column: str) -> int:
        """An amount in micro-units; an empty cell is 0."""
        text = self.text(column)
        known = self.amounts.get(text)
        if known is not None:
            return known
        if self.decimal_comma and _DECIMAL_COMMA.fullmatch(text):
            text = text.replace(",", ".")  # a ';' file may write 0,012 for 0.012
        if not text:
            return 0
        try:
            micro = parse_amount(text)
        except MoneyError as exc:
            self.problem(column, str(exc))
            return 0
        self.amounts[self.text(column)] = micro
        return micro

    def seconds(self, column: str) -> int:
        """Whole seconds from 0 to a day; an empty cell is 0."""
        text = self.text(column)
        if not text:
            return 0
        seconds = whole_number(text, MAX_BLOCK_SECONDS)
        if seconds is None:
            self.problem(
                column, f"expected whole seconds from 0 to {MAX_BLOCK_SECONDS}, got {text[:40]!r}"
            )
            return 0
        return seconds

    def refuse_amount(self, column: str, why: str) -> None:
        """A problem when the money column is not zero: ocs cannot charge it the same way."""
        if column in self.values and self.amount(column):
            self.problem(column, f"{self.text(column)}: {why}")

    def refuse_seconds(self, column: str, why: str) -> None:
        """A problem when the seconds column is not zero."""
        if column in self.values and self.seconds(column):
            self.problem(column, f"{self.text(column)}: {why}")


# --- the formats -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Format:
    """One peer's export: its columns, how a row reads and which columns it may leave out.

    ``aliases`` maps a header label, normalized (``_label``), to the peer's column;
    ``ignored`` are columns read but moving no customer money; ``positional`` is
    the column order of a file without a header line (empty: a header is needed).
    """

    title: str
    prefix: str
    price: str
    names: tuple[str, ...]  # columns that name the destination, the first present wins
    aliases: dict[str, str]
    ignored: frozenset[str]
    positional: tuple[str, ...]
    read_prefix: Callable[[str], str]
    read_rate: Callable[[_Cells], Rate | None]


def _digit_prefix(text: str) -> str:
    """A prefix of digits (a leading '+' dropped); ValueError says why not."""
    value = text.strip()
    if value.lower() in ("defaultprefix", "^defaultprefix.*"):
        raise ValueError(
            "defaultprefix (the rate of every destination without its own) has no ocs"
            " equivalent: give the prefixes it covers, e.g. one row for each of 1 to 9"
        )
    digits = value.removeprefix("+")
    if digits.isascii() and digits.isdigit() and len(digits) <= MAX_PREFIX_DIGITS:
        return digits
    if value.startswith("_") or any(c in value for c in "[]X.*|"):
        raise ValueError(f"{text!r} is a dial pattern; ocs rates digit prefixes, one row each")
    raise ValueError(f"expected 1 to {MAX_PREFIX_DIGITS} digits, got {text!r}")


def _astpp_prefix(text: str) -> str:
    """ASTPP's pattern ``^44.*`` (as its database holds it) or the digits its export writes."""
    pattern = _ASTPP_PATTERN.fullmatch(text.strip())
    return _digit_prefix(pattern.group(1) if pattern else text)


def _block_rate(fee: int, initblock: int, billingblock: int, price: int) -> Rate:
    """A2Billing's and MagnusBilling's billing: at least ``initblock`` seconds, the whole
    call rounded up to ``billingblock`` past it (0: per second), as an ocs rate."""
    step = max(billingblock, 1)
    if initblock % step == 0:  # initblock + steps after it = the whole call in steps
        return Rate(fee, initblock, step, price)
    # One step from initblock to the next multiple of billingblock, then billingblock steps.
    edge = -(-initblock // step) * step
    return Rate(fee, initblock, edge - initblock, price, tiers=(Tier(edge, price, step),))


def _active(cells: _Cells, on: str, off: str) -> None:
    """A problem for a rate the peer marks inactive (``on``/``off``: its stored values)."""
    status = cells.text("status").lower()
    if status in ("", on, "active"):
        return
    if status in (off, "inactive"):
        cells.problem("status", "an inactive rate, which the peer does not rate by: delete the row")
    else:
        cells.problem("status", f"expected Active or Inactive, got {cells.text('status')!r}")


_PROGRESSIVE = tuple(f"{kind}{step}" for step in "abc" for kind in ("stepcharge", "charge"))


def _a2billing_rate(cells: _Cells) -> Rate | None:
    """An A2Billing ratecard row (cc_ratecard's columns) as an ocs rate."""
    price = cells.amount("rateinitial")
    fee = cells.amount("connectcharge")
    disconnect = cells.amount("disconnectcharge")
    if disconnect and cells.seconds("disconnectcharge_after"):
        cells.problem(
            "disconnectcharge_after",
            f"{cells.text('disconnectcharge_after')}: the disconnect charge applies only from"
            " that many seconds; ocs charges a fixed amount on every answered call: set 0",
        )
    cells.refuse_amount("minimal_cost", "a minimum call cost, which ocs does not apply")
    for column in _PROGRESSIVE:
        cells.refuse_amount(column, "progressive rates cannot be imported; set ocs tiers instead")
    cells.refuse_amount("additional_block_charge", "an extra charge per block of time")
    cells.refuse_seconds("additional_grace", "seconds added to every call before rating")
    cells.refuse_seconds("rounding_calltime", "a call time rounding ocs does not apply")
    start = cells.text("starttime") or _WHOLE_WEEK[0]
    end = cells.text("endtime") or _WHOLE_WEEK[1]
    if (start, end) != _WHOLE_WEEK:
        cells.problem(
            "starttime" if start != "0" else "endtime",
            f"the rate holds from minute {start} to {end} of the week only; ocs prices"
            " times of the week by its time bands (PUT /v1/plans/{id}/bands)",
        )
    stop = cells.text("stopdate")
    if stop and not stop.startswith("0000"):
        cells.problem(
            "stopdate",
            f"the rate ends on {stop}; ocs rates have no end date: import only the"
            " rates in force, with stopdate empty",
        )
    initblock, billingblock = cells.seconds("initblock"), cells.seconds("billingblock")
    if cells.problems:
        return None
    # A disconnect charge on every answered call is a connect fee in ocs.
    return _block_rate(fee + disconnect, initblock, billingblock, price)


def _magnusbilling_rate(cells: _Cells) -> Rate | None:
    """A MagnusBilling rate row (pkg_rate's columns) as an ocs rate."""
    price = cells.amount("rateinitial")
    fee = cells.amount("connectcharge")
    cells.refuse_amount(
        "disconnectcharge",
        "MagnusBilling's rating does not charge it: set 0 (or add it to connectcharge"
        " if customers paid it on every call)",
    )
    cells.refuse_seconds(
        "minimal_time_charge",
        "calls up to that many seconds are free in MagnusBilling, ocs charges every"
        " answered call: set 0",
    )
    cells.refuse_seconds("additional_grace", "seconds added to calls, which ocs does not apply")
    _active(cells, "1", "0")
    initblock, billingblock = cells.seconds("initblock"), cells.seconds("billingblock")
    if cells.problems:
        return None
    return _block_rate(fee, initblock, billingblock, price)


def _astpp_rate(cells: _Cells) -> Rate | None:
    """An ASTPP origination rate row as an ocs rate.

    ASTPP bills a call of d seconds: the connection cost, nothing more for
    d <= included seconds, else the initial increment whole and the rest in
    increments (0 or an empty increment: per second).
    """
    fee = cells.amount("connectcost")
    price = cells.amount("cost")
    included = cells.seconds("includedseconds")
    first, step = cells.seconds("init_inc"), max(cells.seconds("inc"), 1)
    _active(cells, "0", "1")
    if cells.problems:
        return None
    if not included:
        return Rate(fee, first, step, price)
    # Free seconds first: a base tier priced 0, then the initial increment and the steps.
    tiers = (
        (Tier(included, price, first), Tier(included + first, price, step))
        if first
        else (Tier(included, price, step),)
    )
    return Rate(fee, 0, 1, 0, tiers=tiers)


def _names(text: str) -> tuple[str, ...]:
    """Column names written one after another, space-separated."""
    return tuple(text.split())


def _same(names: tuple[str, ...]) -> dict[str, str]:
    """Header labels that are the column's own name."""
    return {name: name for name in names}


_A2BILLING = _Format(
    title="A2Billing",
    prefix="dialprefix",
    price="rateinitial",
    names=("dest_name", "destination"),
    aliases=_same(
        _names(
            "dialprefix dest_name destination rateinitial initblock billingblock connectcharge"
            " disconnectcharge disconnectcharge_after minimal_cost additional_block_charge"
            " additional_grace rounding_calltime starttime endtime stopdate"
        )
        + _PROGRESSIVE
    ),
    # What moves no customer money, or only with a column checked above (timechargea
    # with chargea, rounding_threshold with rounding_calltime...).
    ignored=frozenset(
        _names(
            "id idtariffplan buyrate buyrateinitblock buyrateincrement startdate id_trunk"
            " musiconhold id_outbound_cidgroup tag is_merged announce_time_correction"
            " freetimetocall_package_offer timechargea timechargeb timechargec billingblocka"
            " billingblockb billingblockc rounding_threshold additional_block_charge_time"
        )
    ),
    positional=(),
    read_prefix=_digit_prefix,
    read_rate=_a2billing_rate,
)

# MagnusBilling's rate import file, in its order (a file without a header line).
_MAGNUSBILLING_COLUMNS = _names(
    "dialprefix destination rateinitial initblock billingblock minimal_time_charge"
    " connectcharge disconnectcharge"
)
_MAGNUSBILLING = _Format(
    title="MagnusBilling",
    prefix="dialprefix",
    price="rateinitial",
    names=("destination",),
    aliases={
        **_same((*_MAGNUSBILLING_COLUMNS, "additional_grace", "status")),
        "prefix": "dialprefix",
    },
    ignored=frozenset(
        _names(
            "id id_plan id_prefix id_trunk id_trunk_group package_offer buyrate"
            " buyrateinitblock buyrateincrement"
        )
    ),
    positional=_MAGNUSBILLING_COLUMNS,
    read_prefix=_digit_prefix,
    read_rate=_magnusbilling_rate,
)

_ASTPP = _Format(
    title="ASTPP",
    prefix="pattern",
    price="cost",
    names=("comment",),
    aliases={
        **_same(_names("pattern comment connectcost includedseconds cost init_inc inc status")),
        # The labels of ASTPP's export and import files, old and new.
        "code": "pattern",
        "destination": "comment",
        "connection cost": "connectcost",
        "connect cost": "connectcost",
        "grace time": "includedseconds",
        "included seconds": "includedseconds",
        "cost/min": "cost",
        "per minute cost": "cost",
        "initial increment": "init_inc",
        "increment": "inc",
    },
    ignored=frozenset(
        {
            *_names(
                "id country country_id pricelist_id reseller reseller_id creation_date"
                " last_modified_date priority precedence strip prepend trunk_id"
            ),
            "rate group",
            "created date",
            "modified date",
            "force trunk",
        }
    ),
    positional=_names("pattern comment connectcost includedseconds cost init_inc inc")
    + _names("precedence strip prepend"),
    read_prefix=_astpp_prefix,
    read_rate=_astpp_rate,
)

_FORMATS = {"a2billing": _A2BILLING, "astpp": _ASTPP, "magnusbilling": _MAGNUSBILLING}


# --- the header ----------------------------------------------------------------------------


def _label(text: str) -> tuple[str, str | None]:
    """A header label normalized (lower case, one space, no currency), and its currency:
    ``"Cost / Min(USD)"`` -> ``("cost/min", "USD")``."""
    currency = None
    found = _CURRENCY.search(text)
    if found is not None:
        currency = found.group(1).upper()
        text = text[: found.start()] + text[found.end() :]
    name = " ".join(text.lower().split()).replace(" /", "/").replace("/ ", "/")
    return name, currency


def _looks_like_prefix(cell: str) -> bool:
    """Whether a first cell is data (a prefix or ASTPP pattern), not a header label."""
    value = cell.strip().lstrip("+^")
    return value[:1].isdigit()


@dataclass(frozen=True, slots=True)
class _Header:
    """Where each of the peer's columns is, the labels the file gives them, and whether
    the first line is a row (a file without a header line)."""

    index: dict[str, int]
    labels: dict[str, str]
    first_is_row: bool
    unnamed: tuple[int, ...] = ()  # fields under an empty label (a trailing delimiter)


def _read_header(fmt: _Format, first: list[str], currency: str | None) -> _Header:
    """The columns of the first line; DeckError (line 1) for every problem of it."""
    what = f"{fmt.title} rate export"
    if fmt.positional and first and _looks_like_prefix(first[0]):
        if not 3 <= len(first) <= len(fmt.positional):
            order = ",".join(fmt.positional)
            raise DeckError(
                [(1, f"expected 3 to {len(fmt.positional)} fields ({order}), found {len(first)}")],
                what=what,
            )
        columns = fmt.positional[: len(first)]
        return _Header({c: n for n, c in enumerate(columns)}, {c: c for c in columns}, True)
    if first and _looks_like_prefix(first[0]):
        raise DeckError(
            [(1, f"a {fmt.title} export needs its header line, e.g. {fmt.prefix},{fmt.price}")],
            what=what,
        )
    problems: list[str] = []
    index: dict[str, int] = {}
    labels: dict[str, str] = {}
    currencies: dict[str, str] = {}
    unknown: list[str] = []
    unnamed: list[int] = []
    for n, raw in enumerate(first):
        name, named_currency = _label(raw.removeprefix("\ufeff"))
        if not name:
            unnamed.append(n)
            continue
        column = fmt.aliases.get(name, name if name in fmt.ignored else None)
        if column is None:
            unknown.append(raw.strip())
            continue
        if column in index:
            problems.append(f"{column}: given twice")
            continue
        index[column], labels[column] = n, raw.removeprefix("\ufeff")
        if named_currency is not None:
            currencies[column] = named_currency
    if unknown:
        problems.append(
            "unknown column(s) " + ", ".join(unknown) + f": not among {fmt.title}'s rate columns"
            " (docs/peer-decks.md lists them)"
        )
    for column in (fmt.prefix, fmt.price):
        if column not in index:
            problems.append(f"{column}: missing column")
    for column, named in currencies.items():
        if currency is not None and named != currency:
            problems.append(f"{column}: prices in {named}, the plan's currency is {currency}")
        elif named != next(iter(currencies.values())):
            problems.append(f"{column}: prices in {named}, another column's in another currency")
    if problems:
        raise DeckError([(1, message) for message in problems], what=what)
    return _Header(index, labels, False, tuple(unnamed))


# --- the rows --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Row:
    """A good row: its line, prefix, destination name (None: none given) and rate."""

    line: int
    prefix: str
    name: str | None
    rate: Rate


def _read_row(
    fmt: _Format,
    header: _Header,
    fields: list[str],
    line: int,
    decimal_comma: bool,
    amounts: dict[str, int],
) -> tuple[_Row | None, list[str], str]:
    """The row at ``line``, or None and its problems; and the column its name came from."""
    values = {column: fields[at] for column, at in header.index.items()}
    cells = _Cells(values, header.labels, decimal_comma, amounts)
    prefix = ""
    try:
        prefix = fmt.read_prefix(cells.text(fmt.prefix))
    except ValueError as exc:
        cells.problem(fmt.prefix, str(exc))
    name_column = next((c for c in fmt.names if c in header.index), fmt.prefix)
    text = cells.text(name_column) if name_column != fmt.prefix else ""
    # ASTPP's export writes -- for a rate without a destination: the prefix names it.
    name = None if text in ("", "--") else text
    if len(text) > MAX_ZONE_CHARS:
        cells.problem(name_column, f"longer than {MAX_ZONE_CHARS} characters")
    elif (control := control_character(text)) is not None:
        cells.problem(name_column, control)
    rate = fmt.read_rate(cells)
    if cells.problems or rate is None:
        return None, cells.problems, name_column
    return _Row(line, prefix, name, rate), [], name_column


def _delimiter(text: str) -> str:
    """';' when the first line has more of them than commas (a spreadsheet's CSV), else ','."""
    first = text.split("\n", 1)[0]
    return ";" if first.count(";") > first.count(",") else ","


def _rows(fmt: _Format, text: str, currency: str | None) -> tuple[list[_Row], Problems, str]:
    """The good rows of an export in file order, the problems of the bad ones, and the
    column that names destinations. Header problems raise DeckError at once."""
    delimiter = _delimiter(text)
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")), delimiter=delimiter)
    what = f"{fmt.title} rate export"
    try:
        first = next(reader)
    except StopIteration:
        raise DeckError(
            [(1, f"empty file: expected a {fmt.title} rate export")], what=what
        ) from None
    except csv.Error as exc:
        raise DeckError([(1, csv_problem(exc))], what=what) from None
    header = _read_header(fmt, first, currency)
    ncols = len(first)
    problems = Problems()
    rows: list[_Row] = []
    name_column = fmt.prefix
    amounts: dict[str, int] = {"": 0}

    def take(fields: list[str], line: int) -> None:
        nonlocal name_column
        if is_blank(fields):
            return
        if len(fields) != ncols:
            problems.add(line, field_count(ncols, len(fields)))
            return
        for at in header.unnamed:
            if fields[at].strip():
                problems.add(line, f"field {at + 1} holds {fields[at]!r} under no column name")
        row, messages, name_column = _read_row(fmt, header, fields, line, delimiter == ";", amounts)
        for message in messages:
            problems.add(line, message)
        if row is not None:
            rows.append(row)

    if header.first_is_row:
        take(first, 1)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # the reader goes on at the next line
            problems.add(reader.line_num, csv_problem(exc))
            continue
        take(fields, reader.line_num)
    return rows, problems, name_column


def _zoned(fmt: _Format, rows: list[_Row], problems: Problems, name_column: str) -> list[DeckRow]:
    """The good rows checked against the ones before them (a prefix once, a zone one
    rate), each in its zone: its destination name, split by rate when that name carries
    several (``"Germany (4915)"``), or its prefix when it has none."""
    seen: dict[str, int] = {}
    unique: list[_Row] = []
    for row in rows:
        if row.prefix in seen:
            problems.add(
                row.line, f"{fmt.prefix}: {row.prefix} already given at line {seen[row.prefix]}"
            )
            continue
        seen[row.prefix] = row.line
        unique.append(row)
    rates_of: dict[str, dict[Rate, str]] = {}  # name -> each of its rates -> first prefix
    for row in unique:
        rates_of.setdefault(row.name or row.prefix, {}).setdefault(row.rate, row.prefix)
    zone_rate: dict[str, tuple[Rate, int]] = {}
    deck: list[DeckRow] = []
    for row in unique:
        name = row.name or row.prefix
        rates = rates_of[name]
        zone = name if len(rates) == 1 else f"{name} ({rates[row.rate]})"
        if len(zone) > MAX_ZONE_CHARS:
            problems.add(
                row.line,
                f"{name_column}: {zone!r} is longer than {MAX_ZONE_CHARS}"
                " characters (the name of one of its rates)",
            )
            continue
        known = zone_rate.setdefault(zone, (row.rate, row.line))
        if known[0] != row.rate:
            problems.add(
                row.line,
                f"{name_column}: zone {zone!r} is also the zone of line {known[1]}, at a"
                " different rate: rename one of the destinations",
            )
            continue
        deck.append(DeckRow(row.line, row.prefix, zone, row.rate))
    return deck


def read_peer_deck(format: str, data: str | bytes, *, currency: str | None = None) -> Deck:
    """A peer's rate export (``format`` one of ``PEER_FORMATS``) as an ocs deck.

    ``currency``: the plan's; an export whose header names another is refused.
    Raises DeckError listing every problem of every bad line (the first
    MAX_REPORTED, the rest counted), each ``"<peer column>: ..."``; ValueError
    for a format that is not a peer's.
    """
    fmt = _FORMATS.get(format)
    if fmt is None:
        raise ValueError(f"expected one of {', '.join(PEER_FORMATS)}, not {format!r}")
    what = f"{fmt.title} rate export"
    text = decode_utf8(data, what) if isinstance(data, bytes) else data
    rows, problems, name_column = _rows(fmt, text, currency)
    deck = _zoned(fmt, rows, problems, name_column)
    if problems.found:
        raise problems.error(what)
    if not deck:
        raise DeckError([(2, f"no rows: the {fmt.title} export holds no rate")], what=what)
    # A peer's billing blocks are its zones' tiers (or their absence): the deck owns the
    # column, so a re-import replaces the tiers an earlier export (or the shape API) set.
    return Deck.from_rows(deck, PEER_COLUMNS)


def _compact(micro: int) -> str:
    """An amount as the shortest decimal string that reads back the same."""
    return format_amount(micro).rstrip("0").rstrip(".")


def peer_deck_to_ocs(format: str, data: str | bytes, *, currency: str | None = None) -> str:
    """A peer's rate export as ocs deck CSV (``parse_deck`` reads it back to the same
    deck); always with a ``tiers`` column (empty where a zone has none), so that importing
    it replaces every zone's tiers as importing the export does. Refused as
    ``read_peer_deck`` refuses."""
    deck = read_peer_deck(format, data, currency=currency)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*COLUMNS, "tiers"])
    for row in deck:
        rate = row.rate
        cells = [
            row.prefix,
            row.zone,
            _compact(rate.price_per_minute),
            _compact(rate.connect_fee),
            str(rate.first_block),
            str(rate.increment),
        ]
        writer.writerow([*cells, format_tiers(rate.tiers)])
    return out.getvalue()
