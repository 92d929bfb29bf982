"""Catalog writes and reads in PostgreSQL: plans and rate decks.

Every change commits in one transaction and then NOTIFYs ``ocs_catalog`` so
that every ``ocs serve`` process swaps in a new snapshot.
"""

from dataclasses import dataclass

import asyncpg

from ocs.charging.catalog import CATALOG_CHANNEL, Plan
from ocs.charging.deck import DeckRow
from ocs.errors import OcsError, Reason, invalid

CURRENCY_LEN = 3


@dataclass(frozen=True, slots=True)
class DeckImport:
    plan_id: str
    prefixes: int
    zones: int


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
    return [
        Plan(
            id=r["id"],
            name=r["name"],
            currency=r["currency"],
            credit_limit=r["credit_limit"],
            min_balance=r["min_balance"],
            max_lines=r["max_lines"],
            max_call_duration=r["max_call_duration"],
        )
        for r in rows
    ]


async def import_deck(pool: asyncpg.Pool, plan_id: str, rows: list[DeckRow]) -> DeckImport:
    """Replace a plan's whole rate deck with ``rows`` in one transaction."""
    zone_names = sorted({row.zone for row in rows})
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT 1 FROM plans WHERE id = $1 FOR UPDATE", plan_id) is None:
            raise OcsError(Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan")
        await conn.execute(
            "INSERT INTO zones (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING",
            zone_names,
        )
        zone_ids = {
            r["name"]: r["id"]
            for r in await conn.fetch("SELECT id, name FROM zones WHERE name = ANY($1)", zone_names)
        }
        await conn.execute("DELETE FROM prefixes WHERE plan_id = $1", plan_id)
        await conn.execute("DELETE FROM tariffs WHERE plan_id = $1", plan_id)
        rates = {row.zone: row.rate for row in rows}
        await conn.copy_records_to_table(
            "tariffs",
            records=[
                (
                    plan_id,
                    zone_ids[zone],
                    "outbound",
                    r.connect_fee,
                    r.first_block,
                    r.increment,
                    r.price_per_minute,
                )
                for zone, r in rates.items()
            ],
            columns=[
                "plan_id",
                "zone_id",
                "direction",
                "connect_fee",
                "first_block",
                "increment",
                "price_per_minute",
            ],
        )
        await conn.copy_records_to_table(
            "prefixes",
            records=[(plan_id, row.prefix, zone_ids[row.zone]) for row in rows],
            columns=["plan_id", "prefix", "zone_id"],
        )
        await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"deck:{plan_id}")
    return DeckImport(plan_id=plan_id, prefixes=len(rows), zones=len(rates))
