"""A plan's IVR default in PostgreSQL: read and set (decision 0030).

A change commits and NOTIFYs the catalog channel (``ivr:<plan>``) in one
transaction, so that every serving process rereads the plans' IVR defaults into
its snapshot, keeping every deck (ocs.catalog.snapshot).
"""

from __future__ import annotations

import asyncpg

from ocs.catalog.plan_ivr import IVR_CHANGED, PlanIvr, plan_ivr_from_row
from ocs.catalog.snapshot import CATALOG_CHANNEL
from ocs.errors import OcsError, Reason


def _unknown_plan(plan_id: str) -> OcsError:
    return OcsError(Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan_id")


async def set_plan_ivr(pool: asyncpg.Pool, settings: PlanIvr) -> PlanIvr:
    """Set a plan's IVR default (insert or replace); 404 for an unknown plan."""
    settings.validate()
    async with pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO plan_ivr (plan_id, announce, language, voicemail_enabled,"
                " voicemail_server) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (plan_id) DO UPDATE"
                " SET announce = EXCLUDED.announce, language = EXCLUDED.language,"
                " voicemail_enabled = EXCLUDED.voicemail_enabled,"
                " voicemail_server = EXCLUDED.voicemail_server",
                settings.plan_id,
                settings.announce,
                settings.language,
                settings.voicemail_enabled,
                settings.voicemail_server,
            )
        except asyncpg.ForeignKeyViolationError:
            raise _unknown_plan(settings.plan_id) from None
        await conn.execute(
            "SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"{IVR_CHANGED}:{settings.plan_id}"
        )
    return settings


async def plan_ivr(pool: asyncpg.Pool, plan_id: str) -> PlanIvr:
    """A plan's IVR default (the defaults when it has none set); 404 for an unknown plan."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT p.id AS plan_id, i.announce, i.language, i.voicemail_enabled,"
            " i.voicemail_server FROM plans p LEFT JOIN plan_ivr i ON i.plan_id = p.id"
            " WHERE p.id = $1",
            plan_id,
        )
    if row is None:
        raise _unknown_plan(plan_id)
    return PlanIvr(plan_id) if row["announce"] is None else plan_ivr_from_row(row)
