"""A rate deck's columns and what one cell of each may hold: read a cell, write one back.

The base columns (``COLUMNS``) are a rate; the optional ones are ``direction``
and the tariff shape columns (``SHAPE_COLUMNS``), each one field of the shape
API (PUT .../tariffs/{zone}/shape), with the shape API's limits: one-cell syntax
in ``parse_tiers`` and ``parse_band_prices``, README "Rate decks". An empty
optional cell is that field's default. ``format_tiers``, ``format_band_prices``
and ``shape_cells`` write cells these readers read back the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from ocs.money import MoneyError, format_amount, parse_amount
from ocs.rating.rates import Rate, Tier

# The base columns, in the order the compiled scan takes their positions (ocs.decks.scan).
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
# A tariff's directions; a row without a direction cell (or with an empty one) is outbound.
DIRECTIONS = ("outbound", "inbound")
# The directions a stored deck line rates its prefix in, as bits (decks.lines, migration
# 0053): 1 outbound, 2 inbound, 3 both.
ALL_DIRECTION_BITS = (1 << len(DIRECTIONS)) - 1
MAX_BLOCK_SECONDS = 86_400  # a first block or an increment: at most a day
MAX_ZONE_CHARS = 200
# Shape limits, the shape API's: tiers from second 1 to a week, up to 32 of them;
# a price per 1 to 1,000,000 seconds or units; up to 16 band prices.
MAX_TIERS = 32
MAX_TIER_START = 7 * 24 * 3600
MAX_PER = 1_000_000
MAX_BANDS = 16
MAX_SURCHARGE_PERCENT = 1_000  # tariffs.surcharge_percent_bp is a 32-bit INTEGER


def control_character(text: str) -> str | None:
    """What is wrong with a name holding a control character (a NUL, a line break, a
    C1 control; a tab is allowed), or None. PostgreSQL cannot store a NUL in text, and
    a line break in a name is a CSV export gone wrong."""
    for char in text:
        code = ord(char)
        if (code < 32 and code != 9) or 127 <= code < 160:
            return f"holds the control character U+{code:04X}; names are printable text"
    return None


def direction_bit(direction: str) -> int:
    """The bit of a direction in a deck line's directions: 1 outbound, 2 inbound."""
    return 1 << DIRECTIONS.index(direction)


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


# Each optional column's reader.
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
# Each shape column's Rate field (direction sets none).
SHAPE_FIELDS = {
    "per": "per",
    "max_cost": "max_cost",
    "max_cost_mode": "cut_at_max_cost",
    "surcharge_percent": "surcharge_percent_bp",
    "surcharge_flat": "surcharge_flat",
    "tiers": "tiers",
    "band_prices": "band_prices",
}


def read_optional(column: str, text: str) -> object:
    """One optional cell's value; ValueError names the column."""
    try:
        return _READERS[column](text)
    except ValueError as exc:  # MoneyError included
        raise ValueError(f"{column}: {exc}") from None


def optional_present(index: dict[str, int]) -> list[str]:
    """The optional columns a header's column positions name, in OPTIONAL_COLUMNS order."""
    return [c for c in OPTIONAL_COLUMNS if c in index]


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
    for column, field in SHAPE_FIELDS.items():
        if getattr(a, field) != getattr(b, field):
            return column
    return ""
