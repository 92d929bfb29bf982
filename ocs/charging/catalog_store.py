"""Catalog writes and reads in PostgreSQL: plans and rate decks.

Every change commits in one transaction and then NOTIFYs ``ocs_catalog`` so
that every ``ocs serve`` process swaps in a new snapshot.
"""

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import numba
import numpy as np

from ocs.charging.bands import BandSchedule
from ocs.charging.catalog import (
    CATALOG_CHANNEL,
    HAS_PREFIX_TABLE,
    Plan,
    _copy_columns,
    copy_prefixes,
    plan_from_row,
    prefix_table,
    tiers_to_json,
)
from ocs.charging.deck import RATE_FIELDS, Deck, DeckRow
from ocs.charging.matcher import KEY_DIGITS, POW11, _prefix_keys
from ocs.charging.rating import Rate, Tier
from ocs.charging.translation import TranslationSet
from ocs.errors import OcsError, Reason, invalid

CURRENCY_LEN = 3


@dataclass(frozen=True, slots=True)
class DeckImport:
    plan_id: str
    prefixes: int
    zones: int
    added: int = 0  # rows written: new prefixes (or all of them, replacing)
    changed: int = 0  # prefixes moved to another zone
    removed: int = 0  # prefixes deleted
    # Seconds each step took: tariffs, then read, plan, write (by difference) or copy,
    # index, analyze, attach (a first deck), then commit.
    stages: dict[str, float] = field(default_factory=dict, compare=False)


def validate_plan_id(plan_id: str, field: str = "id") -> str:
    if not plan_id or len(plan_id) > 64 or not all(c.isalnum() or c in "-_." for c in plan_id):
        raise invalid(field, "expected 1 to 64 letters, digits, '-', '_' or '.'")
    return plan_id


def validate_currency(currency: str) -> str:
    code = currency.strip().upper()
    if len(code) != CURRENCY_LEN or not code.isalpha() or not code.isascii():
        raise invalid("currency", f"expected an ISO 4217 code such as EUR, got {currency!r}")
    return code


async def create_plan(pool: asyncpg.Pool, plan: Plan) -> Plan:
    async with pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO plans (id, name, currency, credit_limit, min_balance, max_lines,"
                " max_call_duration) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                plan.id,
                plan.name,
                plan.currency,
                plan.credit_limit,
                plan.min_balance,
                plan.max_lines,
                plan.max_call_duration,
            )
        except asyncpg.UniqueViolationError:
            raise OcsError(
                Reason.PLAN_EXISTS, f"plan {plan.id!r} exists already", field="id"
            ) from None
        await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"plan:{plan.id}")
    return plan


async def list_plans(pool: asyncpg.Pool) -> list[Plan]:
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
    await _set_plan_json(pool, plan_id, "translation", rules.to_json())


async def set_bands(pool: asyncpg.Pool, plan_id: str, schedule: BandSchedule) -> None:
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
        updated = await conn.fetchval(
            "UPDATE tariffs t SET tiers = $3::jsonb, max_cost = $4, cut_at_max_cost = $5,"
            " surcharge_percent_bp = $6, surcharge_flat = $7, band_prices = $8::jsonb, per = $9"
            " FROM zones z WHERE z.id = t.zone_id AND t.plan_id = $1 AND z.name = $2"
            " AND t.direction = $10 RETURNING t.plan_id",
            plan_id,
            zone,
            tiers_to_json(tiers),
            max_cost,
            cut_at_max_cost,
            surcharge_percent_bp,
            surcharge_flat,
            json.dumps(dict(band_prices)),
            per,
            direction,
        )
        if updated is None:
            raise OcsError(
                Reason.NOT_FOUND, f"plan {plan_id!r} has no tariff for zone {zone!r}", field="zone"
            )
        await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"deck:{plan_id}")


# The tariffs table's shape columns, by the deck column that sets each one, and what
# a stored value other than the default (a shape set through the API) looks like.
_SHAPE_COLUMNS = {
    "per": ("per", "per <> 60"),
    "max_cost": ("max_cost", "max_cost > 0"),
    "max_cost_mode": ("cut_at_max_cost", "cut_at_max_cost"),
    "surcharge_percent": ("surcharge_percent_bp", "surcharge_percent_bp > 0"),
    "surcharge_flat": ("surcharge_flat", "surcharge_flat > 0"),
    "tiers": ("tiers", "tiers <> '[]'"),
    "band_prices": ("band_prices", "band_prices <> '{}'"),
}
_JSON_COLUMNS = ("tiers", "band_prices")
_TARIFF_COLUMNS = [
    "plan_id",
    "zone_id",
    "direction",
    "connect_fee",
    "first_block",
    "increment",
    "price_per_minute",
    *(db for db, _ in _SHAPE_COLUMNS.values()),
]


def _tariff_record(plan_id: str, zone_id: int, direction: str, rate: Rate) -> tuple:
    """A tariffs row (``_TARIFF_COLUMNS``) of a deck's rate."""
    shape = []
    for column in _SHAPE_COLUMNS:
        value = getattr(rate, RATE_FIELDS[column])
        if column == "tiers":
            value = tiers_to_json(value)
        elif column == "band_prices":
            value = json.dumps(dict(value))
        shape.append(value)
    return (
        plan_id,
        zone_id,
        direction,
        rate.connect_fee,
        rate.first_block,
        rate.increment,
        rate.price_per_minute,
        *shape,
    )


@dataclass(frozen=True, slots=True)
class _Writes:
    """What an import writes: rows of the deck to COPY in (by row number), rows to
    re-zone, prefixes to delete; or everything anew."""

    added: np.ndarray
    changed: list[tuple[str, int]]
    removed: list[str]
    removed_count: int
    replace_all: bool


@dataclass(frozen=True, slots=True)
class _Ordered:
    """Rows of a deck sorted by prefix: their numbers, keys and prefixes in that order."""

    rows: np.ndarray
    keys: np.ndarray
    prefix_at: np.ndarray
    prefix_len: np.ndarray

    def part(self, start: int, stop: int) -> "_Ordered":
        return _Ordered(
            self.rows[start:stop],
            self.keys[start:stop],
            self.prefix_at[start:stop],
            self.prefix_len[start:stop],
        )


async def import_deck(
    pool: asyncpg.Pool, plan_id: str, deck: Deck | Sequence[DeckRow]
) -> DeckImport:
    """Replace a plan's whole rate deck with ``deck`` in one transaction.

    Operators reload decks daily with few changes, so only the difference is
    written: the current deck is read with COPY, compared in numpy, and rows
    are deleted, updated and COPYed in as needed; one that changes most rows
    replaces them wholesale. A plan's first deck goes into a partition of its
    own (migration 0012): COPYed into a fresh table, its primary key built
    once over the filled table (several times faster than keeping the index
    up to date row by row) and attached to ``prefixes``, all in the same
    transaction, so the deck is there whole or not at all.

    Tariffs (one per zone and direction) are few and written whole. A shape
    field whose column the deck has takes the deck's value; one whose column it
    lacks keeps the value stored (set through the shape API) for every zone and
    direction the new deck still rates.
    """
    if not isinstance(deck, Deck):
        deck = Deck.from_rows(deck)
    zone_names = list(dict.fromkeys(deck.zones))
    kept = [(db, shaped) for c, (db, shaped) in _SHAPE_COLUMNS.items() if c not in deck.columns]
    # The prefixes table holds a prefix once, whatever the directions it is rated in.
    prefixes = deck.by_prefix()
    stages: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        stages[stage] = round(now - mark, 4)
        mark = now

    async with pool.acquire() as conn:
        async with conn.transaction():
            if await conn.fetchval("SELECT 1 FROM plans WHERE id = $1 FOR UPDATE", plan_id) is None:
                raise OcsError(
                    Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan"
                )
            table = prefix_table(plan_id)
            everything = np.arange(len(prefixes), dtype=np.int64)
            ordering = None
            if not await conn.fetchval(HAS_PREFIX_TABLE, table):
                # A first deck is written whole, in prefix order; sorting needs no zone
                # ids, so it runs in a thread while the tariffs are written.
                ordering = asyncio.create_task(
                    asyncio.to_thread(_prefix_order, prefixes, everything)
                )
            try:
                zone_ids = await _write_tariffs(conn, plan_id, deck, zone_names, kept)
                lap("tariffs")
                if ordering is None:
                    writes = await _write_difference(conn, plan_id, table, prefixes, zone_ids, lap)
                else:
                    writes = _Writes(everything, [], [], 0, replace_all=False)
                    ordered = await ordering
                    await _new_partition(
                        conn, plan_id, table, prefixes, ordered, zone_ids[prefixes.zone_of], lap
                    )
            finally:
                if ordering is not None and not ordering.done():
                    ordering.cancel()
            await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"deck:{plan_id}")
        lap("commit")
    return DeckImport(
        plan_id=plan_id,
        prefixes=len(prefixes),
        zones=len(zone_names),
        added=len(writes.added),
        changed=len(writes.changed),
        removed=writes.removed_count,
        stages=stages,
    )


async def _write_tariffs(
    conn: asyncpg.Connection,
    plan_id: str,
    deck: Deck,
    zone_names: list[str],
    kept: list[tuple[str, str]],
) -> np.ndarray:
    """Write the deck's zones and the plan's tariffs; the zone id of each tariff slot."""
    await conn.execute(
        "INSERT INTO zones (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING",
        zone_names,
    )
    ids = {
        r["name"]: r["id"]
        for r in await conn.fetch("SELECT id, name FROM zones WHERE name = ANY($1)", zone_names)
    }
    # Zone id of each tariff slot (a zone in one direction).
    zone_ids = np.array([ids[name] for name in deck.zones], np.int64)
    shapes = []
    if kept:
        # The values of shape fields the deck has no column for, where not the default.
        shapes = await conn.fetch(
            f"SELECT zone_id, direction, {', '.join(db for db, _ in kept)} FROM tariffs"
            f" WHERE plan_id = $1 AND ({' OR '.join(shaped for _, shaped in kept)})",
            plan_id,
        )
    await conn.execute("DELETE FROM tariffs WHERE plan_id = $1", plan_id)
    await conn.copy_records_to_table(
        "tariffs",
        records=[
            _tariff_record(plan_id, zone_id, direction, rate)
            for zone_id, direction, rate in zip(
                zone_ids.tolist(), deck.directions, deck.rates, strict=True
            )
        ],
        columns=_TARIFF_COLUMNS,
    )
    if shapes:
        # ``kept`` holds this module's own column names, never caller input.
        sets = ", ".join(
            f"{db} = ${n}{'::jsonb' if db in _JSON_COLUMNS else ''}"
            for n, (db, _) in enumerate(kept, 4)
        )
        await conn.executemany(
            f"UPDATE tariffs SET {sets} WHERE plan_id = $1 AND zone_id = $2 AND direction = $3",
            [(plan_id, r["zone_id"], r["direction"], *(r[db] for db, _ in kept)) for r in shapes],
        )
    return zone_ids


_PREFIX_COLUMNS = ["plan_id", "prefix", "zone_id"]
_PLAN_DEFAULT = (
    "SELECT format('ALTER TABLE %I ALTER COLUMN plan_id SET DEFAULT %L', $1::text, $2::text)"
)
# The statement that makes a filled table (with its primary key) the plan's partition.
_ATTACH = (
    "SELECT format('ALTER TABLE prefixes ATTACH PARTITION %I FOR VALUES IN (%L)',"
    " $1::text, $2::text)"
)
# Rows a chunk of COPY text holds: each is written in a thread while the one
# before it is sent, so the text costs next to nothing beside PostgreSQL's COPY.
_COPY_CHUNK = 1 << 16


async def _new_partition(
    conn: asyncpg.Connection,
    plan_id: str,
    table: str,
    deck: Deck,
    ordered: _Ordered,
    zone_of_row: np.ndarray,
    lap: Callable[[str], None],
) -> None:
    """A plan's first deck: a fresh table filled by COPY, then indexed, then attached.

    The table is new in this transaction: no other session sees it before the
    commit, and a failure anywhere drops it with the rest. Rows go in sorted by
    prefix, so building the primary key sorts presorted input.
    """
    await conn.execute(f'CREATE TABLE "{table}" (LIKE prefixes)')
    # Every row's plan_id is the plan's: the column's default, not a field of each
    # COPY line (~10% less for PostgreSQL to parse).
    await conn.execute(await conn.fetchval(_PLAN_DEFAULT, table, plan_id))
    await conn.copy_to_table(
        table,
        source=_copy_chunks(deck, ordered, zone_of_row),
        columns=["prefix", "zone_id"],
        format="text",
    )
    await conn.execute(f'ALTER TABLE "{table}" ALTER COLUMN plan_id DROP DEFAULT')
    lap("copy")
    # The sort in memory (the default 64 MB spills a million-row deck to disk when no
    # parallel worker is free to help); SET LOCAL settings end with the transaction.
    await conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
    await conn.execute(f'ALTER TABLE "{table}" ADD PRIMARY KEY (plan_id, prefix)')
    lap("index")
    # Statistics now, not when autovacuum comes by: without them the planner takes
    # plan_id = $1 for a rare value, and a re-import's row-wise writes scan the
    # whole deck. A small sample does for two columns, one constant, one unique.
    await conn.execute("SET LOCAL default_statistics_target = 10")
    await conn.execute(f'ANALYZE "{table}"')
    lap("analyze")
    # Scans the table once, checking its rows are the plan's.
    await conn.execute(await conn.fetchval(_ATTACH, table, plan_id))
    lap("attach")


async def _copy_chunks(
    deck: Deck, ordered: _Ordered, zone_of_row: np.ndarray
) -> AsyncIterator[bytes]:
    """COPY text (prefix, zone id) of ordered rows in chunks, each written in a thread
    while the one before it is sent."""
    tasks: list[asyncio.Task[bytes]] = []
    try:
        for start in range(0, len(ordered.keys), _COPY_CHUNK):
            chunk = ordered.part(start, start + _COPY_CHUNK)
            tasks.append(
                asyncio.create_task(asyncio.to_thread(_ordered_text, b"", deck, chunk, zone_of_row))
            )
            if len(tasks) > 1:
                yield await tasks.pop(0)
        while tasks:
            yield await tasks.pop(0)
    finally:  # the COPY failed: nobody waits for the chunk being written
        for task in tasks:
            task.cancel()


async def _write_difference(
    conn: asyncpg.Connection,
    plan_id: str,
    table: str,
    deck: Deck,
    zone_ids: np.ndarray,
    lap: Callable[[str], None],
) -> _Writes:
    """Write what changed between the plan's stored prefixes and ``deck``."""
    zone_of_row = zone_ids[deck.zone_of]
    current = await copy_prefixes(conn, plan_id)
    lap("read")
    writes = await asyncio.to_thread(_plan_rows, deck, zone_of_row, current)
    lap("plan")
    if writes.replace_all:
        await conn.execute("DELETE FROM prefixes WHERE plan_id = $1", plan_id)
    else:
        if writes.removed:
            await conn.execute(
                "DELETE FROM prefixes WHERE plan_id = $1 AND prefix = ANY($2::text[])",
                plan_id,
                writes.removed,
            )
        if writes.changed:
            await conn.execute(
                "UPDATE prefixes p SET zone_id = u.zone_id"
                " FROM unnest($2::text[], $3::bigint[]) AS u (prefix, zone_id)"
                " WHERE p.plan_id = $1 AND p.prefix = u.prefix",
                plan_id,
                [prefix for prefix, _ in writes.changed],
                [zone for _, zone in writes.changed],
            )
    if len(writes.added):
        payload = await asyncio.to_thread(
            _copy_text, _copy_field(plan_id), deck, zone_of_row, writes.added
        )
        await conn.copy_to_table(
            table, source=io.BytesIO(payload), columns=_PREFIX_COLUMNS, format="text"
        )
    lap("write")
    return writes


# Past this share of changed rows, DELETE + COPY of everything beats row-wise writes.
_REPLACE_SHARE = 0.25


def _plan_rows(deck: Deck, zone_of_row: np.ndarray, current: bytes) -> _Writes:
    """Compare the new deck with the plan's current rows (COPY text) by prefix."""
    everything = np.arange(len(deck), dtype=np.int64)
    if not current:
        return _Writes(everything, [], [], 0, replace_all=False)
    old_buf = np.frombuffer(current, np.uint8)
    old_at, old_len, old_zone = _copy_columns(old_buf)
    old_keys = _prefix_keys(old_buf, old_at, old_len)
    new_keys = _prefix_keys(deck.buf, deck.prefix_at, deck.prefix_len)
    # Keys hold 18 digits; longer prefixes (never seen in practice) are compared as text.
    old_long = old_len > KEY_DIGITS
    new_long = deck.prefix_len > KEY_DIGITS
    old_keys[old_long] = -1 - np.arange(int(old_long.sum()))
    new_keys[new_long] = -(1 << 62) - np.arange(int(new_long.sum()))
    common, new_at, old_at_common = np.intersect1d(
        new_keys, old_keys, assume_unique=True, return_indices=True
    )
    del common
    rezoned = zone_of_row[new_at] != old_zone[old_at_common]
    added_mask = np.ones(len(deck), bool)
    added_mask[new_at] = False
    removed_mask = np.ones(len(old_keys), bool)
    removed_mask[old_at_common] = False
    if old_long.any() or new_long.any():
        old_text = {
            bytes(old_buf[a : a + n]).decode(): (i, z)
            for i, (a, n, z) in enumerate(
                zip(old_at.tolist(), old_len.tolist(), old_zone.tolist(), strict=True)
            )
            if n > KEY_DIGITS
        }
        for i in np.flatnonzero(new_long).tolist():
            hit = old_text.get(deck.prefix(i))
            if hit is not None:
                added_mask[i] = False
                removed_mask[hit[0]] = False
                if hit[1] != zone_of_row[i]:
                    new_at = np.append(new_at, i)
                    rezoned = np.append(rezoned, True)
    writes = int(added_mask.sum()) + int(rezoned.sum()) + int(removed_mask.sum())
    if writes > _REPLACE_SHARE * max(len(deck), len(old_keys)):
        return _Writes(everything, [], [], len(old_keys), replace_all=True)
    changed = [(deck.prefix(i), int(zone_of_row[i])) for i in new_at[rezoned].tolist()]
    removed = [
        bytes(old_buf[a : a + n]).decode()
        for a, n in zip(old_at[removed_mask].tolist(), old_len[removed_mask].tolist(), strict=True)
    ]
    return _Writes(np.flatnonzero(added_mask), changed, removed, len(removed), replace_all=False)


def _copy_field(text: str) -> bytes:
    """``text`` as a COPY text-format field."""
    escaped = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    return escaped.replace("\r", "\\r").encode()


def _prefix_order(deck: Deck, rows: np.ndarray) -> _Ordered:
    """``rows`` of the deck in prefix order, their columns gathered in that order.

    Sorted rows insert into the primary-key index leaf after leaf, not all over
    it, and make building the index a sort of presorted input.
    """
    at = deck.prefix_at[rows]
    length = deck.prefix_len[rows]
    keys = _prefix_keys(deck.buf, at, length)
    order = np.argsort(keys)
    return _Ordered(rows[order], keys[order], at[order], length[order])


def _copy_text(plan: bytes, deck: Deck, zone_of_row: np.ndarray, rows: np.ndarray) -> bytes:
    """COPY text of (plan, prefix, zone id) for ``rows`` of the deck, in prefix order."""
    return _ordered_text(plan, deck, _prefix_order(deck, rows), zone_of_row)


def _ordered_text(plan: bytes, deck: Deck, ordered: _Ordered, zone_of_row: np.ndarray) -> bytes:
    """COPY text of (plan, prefix, zone id) of ordered rows; of (prefix, zone id)
    when ``plan`` is empty (it never is a plan id: those are 1 to 64 characters).

    One sequential pass over the gathered columns; prefixes of up to KEY_DIGITS
    digits are written from their keys (reading the deck's buffer and columns in
    sorted, that is random, order cost ~0.5 µs a row).
    """
    out = _copy_lines(
        np.frombuffer(plan, np.uint8),
        deck.buf,
        ordered.keys,
        ordered.prefix_at,
        ordered.prefix_len,
        zone_of_row[ordered.rows],
    )
    return out.tobytes()


@numba.njit(cache=True, nogil=True)
def _copy_lines(
    plan: np.ndarray,
    buf: np.ndarray,
    keys: np.ndarray,
    prefix_at: np.ndarray,
    prefix_len: np.ndarray,
    zone: np.ndarray,
) -> np.ndarray:
    size = 0
    for r in range(len(keys)):
        size += len(plan) + prefix_len[r] + 22  # two tabs, a newline, 19 digits at most
    out = np.empty(size, np.uint8)
    digits = np.empty(20, np.uint8)
    n = 0
    for r in range(len(keys)):
        if len(plan):
            for i in range(len(plan)):
                out[n + i] = plan[i]
            n += len(plan)
            out[n] = 9
            n += 1
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
        out[n] = 10
        n += 1
    return out[:n]


def warm_up() -> None:
    """Compile, or load from the on-disk cache, the kernels an import runs besides the parse."""
    from ocs.charging.deck import parse_deck

    header = "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"
    for text in (header + "44,A,1,0,1,1\n", header + '447,"B""",1,0,1,1\n'):
        deck = parse_deck(text)
        zone_of_row = np.zeros(len(deck), np.int64)
        _plan_rows(deck, zone_of_row, b"44\t1\n4\t2\n")
        _copy_text(b"plan", deck, zone_of_row, np.arange(len(deck), dtype=np.int64))
