"""Catalog writes and reads in PostgreSQL: plans and rate decks.

Every change commits in one transaction and then NOTIFYs ``ocs_catalog`` so
that every ``ocs serve`` process swaps in a new snapshot.
"""

import asyncio
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import numba
import numpy as np

from ocs.charging.bands import BandSchedule
from ocs.charging.catalog import (
    CATALOG_CHANNEL,
    Plan,
    _copy_columns,
    copy_prefixes,
    plan_from_row,
    tiers_to_json,
)
from ocs.charging.deck import RATE_FIELDS, Deck, DeckRow
from ocs.charging.matcher import KEY_DIGITS, _prefix_keys
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


async def import_deck(
    pool: asyncpg.Pool, plan_id: str, deck: Deck | Sequence[DeckRow]
) -> DeckImport:
    """Replace a plan's whole rate deck with ``deck`` in one transaction.

    Operators reload decks daily with few changes, and every row written costs
    PostgreSQL its foreign-key and CHECK triggers (~11 µs a row), so only the
    difference is written: the current deck is read with COPY, compared in
    numpy, and rows are deleted, updated and COPYed in as needed. A first
    import, or one that changes most rows, replaces the rows wholesale.

    Tariffs (one per zone and direction) are few and written whole. A shape
    field whose column the deck has takes the deck's value; one whose column it
    lacks keeps the value stored (set through the shape API) for every zone and
    direction the new deck still rates.
    """
    if not isinstance(deck, Deck):
        deck = Deck.from_rows(deck)
    zone_names = list(dict.fromkeys(deck.zones))
    kept = [(db, shaped) for c, (db, shaped) in _SHAPE_COLUMNS.items() if c not in deck.columns]
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT 1 FROM plans WHERE id = $1 FOR UPDATE", plan_id) is None:
            raise OcsError(Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan")
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
                [
                    (plan_id, r["zone_id"], r["direction"], *(r[db] for db, _ in kept))
                    for r in shapes
                ],
            )
        # The prefixes table holds a prefix once, whatever the directions it is rated in.
        prefixes = deck.by_prefix()
        zone_of_row = zone_ids[prefixes.zone_of]
        current = await copy_prefixes(conn, plan_id)
        writes = await asyncio.to_thread(_plan_rows, prefixes, zone_of_row, current)
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
                _copy_text, _copy_field(plan_id), prefixes, zone_of_row, writes.added
            )
            await conn.copy_to_table(
                "prefixes",
                source=io.BytesIO(payload),
                columns=["plan_id", "prefix", "zone_id"],
                format="text",
            )
        await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"deck:{plan_id}")
    return DeckImport(
        plan_id=plan_id,
        prefixes=len(prefixes),
        zones=len(zone_names),
        added=len(writes.added),
        changed=len(writes.changed),
        removed=writes.removed_count,
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


def _copy_text(plan: bytes, deck: Deck, zone_of_row: np.ndarray, rows: np.ndarray) -> bytes:
    """COPY text of (plan, prefix, zone id) for ``rows`` of the deck, in prefix order.

    Sorted rows insert into the primary-key index leaf after leaf, not all over it.
    """
    keys = _prefix_keys(deck.buf, deck.prefix_at[rows], deck.prefix_len[rows])
    rows = rows[np.argsort(keys, kind="stable")]
    out = _copy_lines(
        np.frombuffer(plan, np.uint8), deck.buf, deck.prefix_at, deck.prefix_len, zone_of_row, rows
    )
    return out.tobytes()


@numba.njit(cache=True, nogil=True)
def _copy_lines(
    plan: np.ndarray,
    buf: np.ndarray,
    prefix_at: np.ndarray,
    prefix_len: np.ndarray,
    zone: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    size = 0
    for r in rows:
        size += len(plan) + prefix_len[r] + 22  # two tabs, a newline, 19 digits at most
    out = np.empty(size, np.uint8)
    digits = np.empty(20, np.uint8)
    n = 0
    for r in rows:
        out[n : n + len(plan)] = plan
        n += len(plan)
        out[n] = 9
        n += 1
        at = prefix_at[r]
        for i in range(prefix_len[r]):
            out[n + i] = buf[at + i]
        n += prefix_len[r]
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
