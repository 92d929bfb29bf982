"""Catalog writes and reads in PostgreSQL: plans, rate decks and area-code tables.

Every change commits in one transaction and then NOTIFYs ``ocs_catalog`` so
that every ``ocs serve`` process swaps in a new snapshot.
"""

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import msgspec
import numba
import numpy as np

from ocs.catalog.snapshot import (
    CATALOG_CHANNEL,
    Plan,
    deck_line_columns,
    plan_from_row,
    read_deck_lines,
)
from ocs.decks.cells import ALL_DIRECTION_BITS, SHAPE_FIELDS
from ocs.decks.code_lists import STANDARD, code_list_lines
from ocs.decks.rate_deck import Deck, DeckRow
from ocs.decks.tariff_sets import (
    Direction,
    StoredTariff,
    read_tariff_sets,
    read_tariffs,
    stored_zones,
    tariffs_document,
)
from ocs.errors import OcsError, Reason, invalid
from ocs.limits import MAX_CALL_DURATION, MAX_LINES
from ocs.minor_units import CurrencyError, minor_unit_exponent
from ocs.numbers.matcher import KEY_DIGITS, POW11, prefix_keys
from ocs.rating.bands import BandSchedule
from ocs.rating.rates import Rate, Tier
from ocs.rating.translation import TranslationSet

CURRENCY_LEN = 3


@dataclass(frozen=True, slots=True)
class DeckImport:
    """The outcome of a tariff deck import: sizes, what changed and how long each step took."""

    plan_id: str
    prefixes: int
    zones: int
    added: int = 0  # prefixes new to the plan
    changed: int = 0  # prefixes moved to another zone
    removed: int = 0  # prefixes gone
    # Seconds each step took: tariffs, lines (sorted and written out), read (the
    # stored deck), write (the new one, while the changes are counted), commit.
    stages: dict[str, float] = field(default_factory=dict, compare=False)


def validate_plan_id(plan_id: str, field: str = "id") -> str:
    """The id itself when 1 to 64 letters, digits, '-', '_' or '.'; else a 400 naming ``field``."""
    if not plan_id or len(plan_id) > 64 or not all(c.isalnum() or c in "-_." for c in plan_id):
        raise invalid(field, "expected 1 to 64 letters, digits, '-', '_' or '.'")
    return plan_id


RESERVATION_POLICIES = ("whole", "slice", "share")
SLICE_SECONDS_MAX = 86_400


def validate_reservation_policy(policy: object, slice_seconds: object) -> tuple[str, int]:
    """A plan's reservation policy and slice length, or a 400 naming the field."""
    if policy not in RESERVATION_POLICIES:
        raise invalid("reservation_policy", f"expected one of {', '.join(RESERVATION_POLICIES)}")
    if (
        isinstance(slice_seconds, bool)
        or not isinstance(slice_seconds, int)
        or not 1 <= slice_seconds <= SLICE_SECONDS_MAX
    ):
        raise invalid("slice_seconds", f"expected whole seconds, 1 to {SLICE_SECONDS_MAX}")
    return str(policy), slice_seconds


def validate_currency(currency: str) -> str:
    """The ISO 4217 code of ``currency``, upper-cased; a 400 naming ``currency`` unless
    it is a code ISO 4217 lists with a minor unit.

    Three letters are not enough: a plan's amounts are invoiced and reported rounded to
    its currency's minor unit, so a code with none (XTS, XAU, XDR), a withdrawn one
    (HRK) or a typo would be stored and then fail every invoice and report that reads it.
    """
    code = currency.strip().upper()
    if len(code) != CURRENCY_LEN or not code.isalpha() or not code.isascii():
        raise invalid("currency", f"expected an ISO 4217 code such as EUR, got {currency!r}")
    try:
        minor_unit_exponent(code)
    except CurrencyError as error:
        raise invalid("currency", str(error)) from None
    return code


def _validate_bound(value: object, field: str, most: int) -> None:
    """Whole number 1 to ``most``, else a 400 naming ``field`` worded as the HTTP API's."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(field, "expected `int`")
    if value < 1:
        raise invalid(field, "expected `int` >= 1")
    if value > most:
        raise invalid(field, f"expected `int` <= {most}")


def validate_plan_limits(max_lines: object, max_call_duration: object) -> None:
    """A plan's line and call-length limits, or a 400 naming the field: the same bounds
    as ``POST /v1/plans``, for the CLI and every other caller of ``create_plan``."""
    _validate_bound(max_lines, "max_lines", MAX_LINES)
    _validate_bound(max_call_duration, "max_call_duration", MAX_CALL_DURATION)


async def create_plan(pool: asyncpg.Pool, plan: Plan) -> Plan:
    """Store a new plan and tell every process to load it; PLAN_EXISTS if the id is taken."""
    validate_currency(plan.currency)
    validate_reservation_policy(plan.reservation_policy, plan.slice_seconds)
    validate_plan_limits(plan.max_lines, plan.max_call_duration)
    async with pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO plans (id, name, currency, credit_limit, min_balance, max_lines,"
                " max_call_duration, reservation_policy, slice_seconds)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                plan.id,
                plan.name,
                plan.currency,
                plan.credit_limit,
                plan.min_balance,
                plan.max_lines,
                plan.max_call_duration,
                plan.reservation_policy,
                plan.slice_seconds,
            )
        except asyncpg.UniqueViolationError:
            raise OcsError(
                Reason.PLAN_EXISTS, f"plan {plan.id!r} exists already", field="id"
            ) from None
        await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"plan:{plan.id}")
    return plan


async def list_plans(pool: asyncpg.Pool) -> list[Plan]:
    """Every stored plan, by id."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM plans ORDER BY id")
    return [plan_from_row(r) for r in rows]


async def _set_plan_json(pool: asyncpg.Pool, plan_id: str, column: str, value: str) -> None:
    """Store one of a plan's JSON settings and tell every process to reload the plan."""
    async with pool.acquire() as conn, conn.transaction():
        # ``column`` is one of this module's own names, never caller input.
        updated = await conn.fetchval(
            f"UPDATE plans SET {column} = $2::jsonb WHERE id = $1 RETURNING id", plan_id, value
        )
        if updated is None:
            raise OcsError(
                Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan_id"
            )
        await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"plan:{plan_id}")


async def set_translation(pool: asyncpg.Pool, plan_id: str, rules: TranslationSet) -> None:
    """Replace a plan's number translation rules."""
    await _set_plan_json(pool, plan_id, "translation", rules.to_json())


async def set_bands(pool: asyncpg.Pool, plan_id: str, schedule: BandSchedule) -> None:
    """Replace a plan's time-band schedule."""
    await _set_plan_json(pool, plan_id, "bands", schedule.to_json())


async def set_tariff_shape(
    pool: asyncpg.Pool,
    plan_id: str,
    zone: str,
    tiers: tuple[Tier, ...],
    max_cost: int,
    cut_at_max_cost: bool,
    surcharge_percent_bp: int = 0,
    surcharge_flat: int = 0,
    band_prices: tuple[tuple[str, int], ...] = (),
    per: int = 60,
    direction: str = "outbound",
) -> None:
    """Give a zone's tariff in one direction graduated tiers and a max cost (the base
    rate stays)."""
    # The whole shape must make a valid rate before it is stored.
    try:
        Rate(
            0,
            0,
            1,
            0,
            tiers=tiers,
            max_cost=max_cost,
            cut_at_max_cost=cut_at_max_cost,
            surcharge_percent_bp=surcharge_percent_bp,
            surcharge_flat=surcharge_flat,
            per=per,
        )
    except ValueError as exc:
        raise invalid("tiers", str(exc)) from None
    async with pool.acquire() as conn, conn.transaction():
        # The plan row's lock orders this after, or before, an import of the plan's deck.
        locked = await conn.fetchval("SELECT 1 FROM plans WHERE id = $1 FOR UPDATE", plan_id)
        stored = (await read_tariff_sets(conn, [plan_id])).get(plan_id) if locked else None
        tariffs = read_tariffs(stored) if stored is not None else []
        at = next(
            (n for n, t in enumerate(tariffs) if t.zone == zone and t.direction == direction),
            None,
        )
        if at is None:
            raise OcsError(
                Reason.NOT_FOUND, f"plan {plan_id!r} has no tariff for zone {zone!r}", field="zone"
            )
        old = tariffs[at].rate
        shaped = Rate(
            old.connect_fee,
            old.first_block,
            old.increment,
            old.price_per_minute,
            tiers=tiers,
            max_cost=max_cost,
            cut_at_max_cost=cut_at_max_cost,
            surcharge_percent_bp=surcharge_percent_bp,
            surcharge_flat=surcharge_flat,
            band_prices=band_prices,
            per=per,
        )
        tariffs[at] = msgspec.structs.replace(tariffs[at], rate=shaped)
        await _write_tariff_set(conn, plan_id, tariffs)
        await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"deck:{plan_id}")


# Each shape field's default, by its Rate field: a stored shape other than these was
# set through the shape API (or by an earlier deck's shape column).
_SHAPE_DEFAULTS = {field: getattr(Rate(0, 0, 1, 0), field) for field in SHAPE_FIELDS.values()}


@dataclass(frozen=True, slots=True)
class _Ordered:
    """Rows of a deck sorted by prefix: their numbers, keys and prefixes in that order."""

    rows: np.ndarray
    keys: np.ndarray
    prefix_at: np.ndarray
    prefix_len: np.ndarray


# A plan's deck, replaced whole: the document of migration 0013.
_WRITE_DECK = (
    "INSERT INTO decks (plan_id, prefixes, lines) VALUES ($1, $2, $3)"
    " ON CONFLICT (plan_id) DO UPDATE"
    " SET prefixes = EXCLUDED.prefixes, lines = EXCLUDED.lines, imported_at = now()"
)


async def import_deck(
    pool: asyncpg.Pool, plan_id: str, deck: Deck | Sequence[DeckRow]
) -> DeckImport:
    """Replace a plan's whole rate deck with ``deck`` in one transaction.

    A plan's prefixes are one value, ``decks.lines`` (migration 0013, decision
    0009): the deck's ``prefix<TAB>zone_id`` lines in prefix order (with
    ``<TAB>directions`` when its tariffs go both ways, migration 0053), written whole
    in place of the old ones, so a million-prefix deck is one value to write and,
    for every serving process, one value to read; readers see the old deck or the
    new one, never a mix. The prefixes are sorted in a thread while the tariffs
    are written, and what changed against the stored deck (prefixes new to the
    plan, moved to another zone, gone) is counted in a thread while the new lines
    are written.

    Tariffs (one per zone and direction: ~41,000 in a real numbering deck) are one
    value too, ``tariff_sets.document`` (migration 0041, ocs.decks.tariff_sets),
    written whole; zones the plan's stored tariffs name need no lookup in
    ``zones``. A shape field whose column the deck has takes the deck's value; one
    whose column it lacks keeps the value stored (set through the shape API) for
    every zone and direction the new deck still rates.
    """
    if not isinstance(deck, Deck):
        deck = Deck.from_rows(deck)
    zones = len(set(deck.zones))
    kept = [field for column, field in SHAPE_FIELDS.items() if column not in deck.columns]
    # The deck stores a prefix once, with the directions it is rated in.
    prefixes = deck.by_prefix()
    directions = deck.prefix_directions()
    stages: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        stages[stage] = round(now - mark, 4)
        mark = now

    # Sorting needs no zone ids: it runs while the plan is locked and the tariffs written.
    ordering = asyncio.create_task(asyncio.to_thread(_prefix_order, prefixes))
    counting: asyncio.Task[tuple[int, int, int]] | None = None
    try:
        async with pool.acquire() as conn:
            async with conn.transaction():
                if (
                    await conn.fetchval("SELECT 1 FROM plans WHERE id = $1 FOR UPDATE", plan_id)
                    is None
                ):
                    raise OcsError(
                        Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan"
                    )
                zone_ids = await _write_tariffs(conn, plan_id, deck, kept)
                lap("tariffs")
                ordered = await ordering
                zone_of_row = zone_ids[prefixes.zone_of]
                lines = await asyncio.to_thread(
                    _deck_lines, prefixes, ordered, zone_of_row, directions
                )
                lap("lines")
                stored = await read_deck_lines(conn, plan_id)
                lap("read")
                counting = asyncio.create_task(
                    asyncio.to_thread(
                        _difference, prefixes, ordered, zone_of_row, stored, directions
                    )
                )
                if len(prefixes):
                    await conn.execute(_WRITE_DECK, plan_id, len(prefixes), lines)
                else:
                    await conn.execute("DELETE FROM decks WHERE plan_id = $1", plan_id)
                lap("write")
                added, changed, removed = await counting
                if added or changed or removed:
                    await mark_prices_changed(conn, plan_id)
                await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"deck:{plan_id}")
            lap("commit")
    finally:  # a failure: no thread's result is waited for
        for task in (ordering, counting):
            if task is not None and not task.done():
                task.cancel()
    return DeckImport(
        plan_id=plan_id,
        prefixes=len(prefixes),
        zones=zones,
        added=added,
        changed=changed,
        removed=removed,
        stages=stages,
    )


async def _write_tariffs(
    conn: asyncpg.Connection, plan_id: str, deck: Deck, kept: list[str]
) -> np.ndarray:
    """Write the plan's tariffs, one document (ocs.decks.tariff_sets), creating zones
    new to the catalog; the zone id of each tariff slot.

    Zones the plan's stored tariffs name take their ids from there; only the others
    are looked up (and added) in ``zones``. ``kept``: the shape fields (Rate's names)
    the deck has no column for; each takes its stored value where a tariff of the
    same zone and direction has one other than the default.
    """
    stored = (await read_tariff_sets(conn, [plan_id])).get(plan_id)
    ids, shaped = stored_zones(stored) if stored is not None else ({}, {})
    missing = [zone for zone in dict.fromkeys(deck.zones) if zone not in ids]
    if missing:
        ids.update(await _zone_ids(conn, missing))
    zone_ids = np.fromiter((ids[zone] for zone in deck.zones), np.int64, len(deck.zones))
    slot_ids = zone_ids.tolist()
    rates = list(deck.rates)
    if kept and shaped:  # most decks: neither shape columns nor shapes set through the API
        for slot, way in enumerate(deck.directions):
            rate = shaped.get((slot_ids[slot], way))
            if rate is not None and any(getattr(rate, f) != _SHAPE_DEFAULTS[f] for f in kept):
                rates[slot] = msgspec.structs.replace(
                    rates[slot], **{f: getattr(rate, f) for f in kept}
                )
    # Sorted by zone id, then direction, as the document is.
    outbound = np.fromiter((way == "outbound" for way in deck.directions), np.bool_, len(rates))
    await _write_tariff_set(
        conn,
        plan_id,
        [
            StoredTariff(slot_ids[n], deck.zones[n], _direction(deck.directions[n]), rates[n])
            for n in np.lexsort((outbound, zone_ids)).tolist()
        ],
    )
    return zone_ids


def _direction(way: str) -> Direction:
    """A deck's direction as the document types it (the deck rules allow no other)."""
    return "inbound" if way == "inbound" else "outbound"


async def _zone_ids(conn: asyncpg.Connection, names: list[str]) -> dict[str, int]:
    """Ids of zone names, adding the ones the catalog does not have yet, in a few
    statements whatever their number (a real numbering deck has ~41,000 zones)."""
    found = await conn.fetchval(
        "SELECT array_agg(z.id ORDER BY w.n) FROM unnest($1::text[]) WITH ORDINALITY"
        " AS w (name, n) LEFT JOIN zones z USING (name)",
        names,
    )
    ids = {name: zone_id for name, zone_id in zip(names, found, strict=True) if zone_id is not None}
    new = [name for name in names if name not in ids]
    if not new:
        return ids
    try:
        # A plain insert: ON CONFLICT's speculative insertion costs twice as much a row.
        # In a savepoint, so that a name another transaction added meanwhile fails it alone.
        async with conn.transaction():
            rows = await conn.fetch(
                "INSERT INTO zones (name) SELECT unnest($1::text[]) RETURNING id, name", new
            )
    except asyncpg.UniqueViolationError:
        rows = await conn.fetch(
            "INSERT INTO zones (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING"
            " RETURNING id, name",
            new,
        )
    ids.update((r["name"], r["id"]) for r in rows)
    if len(ids) < len(names):  # added meanwhile by another transaction, now committed
        rows = await conn.fetch(
            "SELECT id, name FROM zones WHERE name = ANY($1::text[])",
            [name for name in names if name not in ids],
        )
        ids.update((r["name"], r["id"]) for r in rows)
    return ids


async def mark_prices_changed(conn: asyncpg.Connection, plan_id: str) -> None:
    """Note, in the writing transaction, that the plan's prices changed now
    (``plans.prices_changed_at``, migration 0060): its deck's zones, its tariffs or its
    rates by rate type. Decks and tariffs have no effective dates, so a usage import
    rates a late record at the prices of its import; it counts the records that started
    before this time (decision 0050)."""
    await conn.execute("UPDATE plans SET prices_changed_at = now() WHERE id = $1", plan_id)


async def _write_tariff_set(
    conn: asyncpg.Connection, plan_id: str, tariffs: list[StoredTariff]
) -> None:
    """Replace the plan's stored tariffs (sorted by zone id, then direction) whole; the
    plan's prices changed when the document did (not for the same tariffs again)."""
    if not tariffs:
        done = await conn.execute("DELETE FROM tariff_sets WHERE plan_id = $1", plan_id)
    else:
        done = await conn.execute(
            "INSERT INTO tariff_sets (plan_id, tariffs, document) VALUES ($1, $2, $3)"
            " ON CONFLICT (plan_id) DO UPDATE SET tariffs = EXCLUDED.tariffs,"
            " document = EXCLUDED.document, updated_at = now()"
            " WHERE tariff_sets.document IS DISTINCT FROM EXCLUDED.document",
            plan_id,
            len(tariffs),
            tariffs_document(tariffs),
        )
    # The command tag ("INSERT 0 1", "DELETE 0") tells whether a row was written.
    if not done.endswith(" 0"):
        await mark_prices_changed(conn, plan_id)


def _difference(
    deck: Deck,
    ordered: _Ordered,
    zone_of_row: np.ndarray,
    stored: bytes,
    directions: np.ndarray | None = None,
) -> tuple[int, int, int]:
    """(added, changed, removed) between the stored deck's lines and the new deck:
    prefixes new to the plan, moved to another zone (or, where both documents say
    which, to other directions), gone. ``directions``: the new rows' (by row)."""
    if not stored:
        return len(deck), 0, 0
    old_buf = np.frombuffer(stored, np.uint8)
    old_at, old_len, old_zone, old_ways = deck_line_columns(old_buf)
    old_keys = prefix_keys(old_buf, old_at, old_len)
    new_keys = ordered.keys.copy()
    new_zone = zone_of_row[ordered.rows]
    if directions is not None and old_ways is not None:
        # A move between directions counts as a change, as a move between zones does.
        shift = int(ALL_DIRECTION_BITS).bit_length()
        new_zone = (new_zone << shift) | directions[ordered.rows]
        old_zone = (old_zone << shift) | old_ways
    # Keys hold 18 digits; longer prefixes (never seen in practice) are compared as text.
    old_long = old_len > KEY_DIGITS
    new_long = ordered.prefix_len > KEY_DIGITS
    old_keys[old_long] = -1 - np.arange(int(old_long.sum()))
    new_keys[new_long] = -(1 << 62) - np.arange(int(new_long.sum()))
    _, new_at, old_at_common = np.intersect1d(
        new_keys, old_keys, assume_unique=True, return_indices=True
    )
    changed = int(np.count_nonzero(new_zone[new_at] != old_zone[old_at_common]))
    common = len(new_at)
    if old_long.any() and new_long.any():
        old_text = {
            bytes(old_buf[a : a + n]): z
            for a, n, z in zip(
                old_at[old_long].tolist(),
                old_len[old_long].tolist(),
                old_zone[old_long].tolist(),
                strict=True,
            )
        }
        for i in np.flatnonzero(new_long).tolist():
            at = int(ordered.prefix_at[i])
            zone = old_text.get(bytes(deck.buf[at : at + int(ordered.prefix_len[i])]))
            if zone is not None:
                common += 1
                changed += zone != int(new_zone[i])
    return len(new_keys) - common, changed, len(old_keys) - common


def _prefix_order(deck: Deck) -> _Ordered:
    """The deck's rows in prefix order, their columns gathered in that order."""
    keys = prefix_keys(deck.buf, deck.prefix_at, deck.prefix_len)
    long = np.flatnonzero(deck.prefix_len > KEY_DIGITS)
    if len(long):
        # A key holds 18 digits; the rest of a longer prefix (32 at most) breaks the tie.
        rest = np.zeros(len(keys), np.int64)
        rest[long] = prefix_keys(
            deck.buf, deck.prefix_at[long] + KEY_DIGITS, deck.prefix_len[long] - KEY_DIGITS
        )
        order = np.lexsort((rest, keys))
    else:
        order = np.argsort(keys)
    return _Ordered(order, keys[order], deck.prefix_at[order], deck.prefix_len[order])


def _deck_lines(
    deck: Deck, ordered: _Ordered, zone_of_row: np.ndarray, directions: np.ndarray | None = None
) -> bytes:
    """The ``decks.lines`` of ordered rows: ``prefix<TAB>zone_id<LF>`` each, or
    ``prefix<TAB>zone_id<TAB>directions<LF>`` given ``directions`` (by row, as
    ``Deck.prefix_directions`` gives them).

    One sequential pass over the gathered columns; prefixes of up to KEY_DIGITS
    digits are written from their keys (reading the deck's buffer and columns in
    sorted, that is random, order cost ~0.5 µs a row).
    """
    ways = _NO_DIRECTIONS if directions is None else directions[ordered.rows]
    return _copy_lines(
        deck.buf,
        ordered.keys,
        ordered.prefix_at,
        ordered.prefix_len,
        zone_of_row[ordered.rows],
        ways,
    ).tobytes()


# Lines that carry no directions: their zones' tariffs say which (``_copy_lines``).
_NO_DIRECTIONS = np.zeros(0, np.int64)


@numba.njit(cache=True, nogil=True)
def _copy_lines(
    buf: np.ndarray,
    keys: np.ndarray,
    prefix_at: np.ndarray,
    prefix_len: np.ndarray,
    zone: np.ndarray,
    ways: np.ndarray,
) -> np.ndarray:
    with_ways = len(ways) > 0  # one digit after a tab, on every line or on none
    size = 0
    for r in range(len(keys)):
        size += prefix_len[r] + 23  # two tabs, a newline, 19 digits and 1 at most
    out = np.empty(size, np.uint8)
    digits = np.empty(20, np.uint8)
    n = 0
    for r in range(len(keys)):
        length = prefix_len[r]
        if length <= KEY_DIGITS:
            # The key's base-11 digits are the prefix's digits plus one, then zeros.
            key = keys[r] // POW11[KEY_DIGITS - length]
            for i in range(length - 1, -1, -1):
                out[n + i] = 47 + key % 11
                key //= 11
        else:
            at = prefix_at[r]
            for i in range(length):
                out[n + i] = buf[at + i]
        n += length
        out[n] = 9
        n += 1
        value = zone[r]
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
        if with_ways:
            out[n] = 9
            out[n + 1] = 48 + ways[r]
            n += 2
        out[n] = 10
        n += 1
    return out[:n]


# --- area-code tables (ocs.decks.code_lists) ---------------------------------------


async def import_code_list(
    pool: asyncpg.Pool, entries: list[tuple[str, str]], plan_id: str = STANDARD
) -> int:
    """Replace the standard table (``plan_id`` STANDARD) or a plan's custom list whole;
    returns how many prefixes it names. PLAN_NOT_FOUND for an unknown plan."""
    async with pool.acquire() as conn, conn.transaction():
        if plan_id != STANDARD:
            await _lock_plan(conn, plan_id)
        await conn.execute(
            "INSERT INTO code_lists (plan_id, codes, lines) VALUES ($1, $2, $3)"
            " ON CONFLICT (plan_id) DO UPDATE SET codes = EXCLUDED.codes,"
            " lines = EXCLUDED.lines, imported_at = now()",
            plan_id,
            len(entries),
            code_list_lines(entries),
        )
        await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"codes:{plan_id}")
    return len(entries)


async def remove_code_list(pool: asyncpg.Pool, plan_id: str = STANDARD) -> bool:
    """Drop a list (a plan's: the plan goes back to the standard table); False if none."""
    async with pool.acquire() as conn, conn.transaction():
        if plan_id != STANDARD:
            await _lock_plan(conn, plan_id)
        gone = await conn.fetchval("DELETE FROM code_lists WHERE plan_id = $1 RETURNING 1", plan_id)
        if gone:
            await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"codes:{plan_id}")
    return bool(gone)


async def _lock_plan(conn: asyncpg.Connection, plan_id: str) -> None:
    """Lock a plan's row for the transaction: PLAN_NOT_FOUND when there is none."""
    if await conn.fetchval("SELECT 1 FROM plans WHERE id = $1 FOR UPDATE", plan_id) is None:
        raise OcsError(Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan")


def warm_up() -> None:
    """Compile, or load from the on-disk cache, the kernels an import runs besides the parse."""
    from ocs.decks.rate_deck import parse_deck

    header = "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"
    both_ways = header.strip() + ",direction\n44,A,1,0,1,1,outbound\n447,A,2,0,1,1,inbound\n"
    for text in (header + "44,A,1,0,1,1\n", header + '447,"B""",1,0,1,1\n', both_ways):
        deck = parse_deck(text)
        directions = deck.prefix_directions()
        zone_of_row = np.zeros(len(deck), np.int64)
        ordered = _prefix_order(deck)
        lines = _deck_lines(deck, ordered, zone_of_row, directions)
        _difference(deck, ordered, zone_of_row, lines, directions)
