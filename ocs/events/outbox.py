"""The outbox: an event is written in the transaction of the change it announces.

``emit`` inserts one row into ``events`` (migration 0032) on the caller's
connection, inside the caller's transaction: if the change rolls back, so does
its event, and once the change commits its event is stored and will be
delivered (webhooks, email) by the delivery side, which reads this table.
Nothing else writes events.
"""

import json
from typing import Any

import asyncpg

# The events ocs announces (issue 14, item 4): "<what>.<happened>".
EVENT_KINDS = (
    "subscription.created",
    "subscription.activated",
    "subscription.changed",
    "subscription.suspended",
    "subscription.resumed",
    "subscription.cancelled",
    "invoice.posted",
    "payment.received",
    "dunning.step",
    "account.locked",
    "account.unlocked",
)


async def emit(conn: asyncpg.Connection, kind: str, subject: str, data: dict[str, Any]) -> int:
    """Store an event in the caller's transaction; its id.

    ``kind`` is one of ``EVENT_KINDS``; ``subject`` what it is about (an
    account id, or an invoice's); ``data`` its JSON body (plain values: amounts
    as decimal strings or integer micro-units, instants as ISO 8601 text).
    """
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return int(
        await conn.fetchval(
            "INSERT INTO events (kind, subject, data) VALUES ($1, $2, $3::jsonb) RETURNING id",
            kind,
            subject,
            json.dumps(data, sort_keys=True),
        )
    )


async def emit_many(
    conn: asyncpg.Connection, kind: str, items: list[tuple[str, dict[str, Any]]]
) -> list[int]:
    """Store events of one kind in the caller's transaction, in one statement; their ids.

    ``items`` are (subject, data) pairs, as ``emit`` takes them. Posting a run
    announces thousands of invoices at once: one INSERT, not one per invoice.
    """
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    if not items:
        return []
    rows = await conn.fetch(
        "INSERT INTO events (kind, subject, data)"
        " SELECT $1, s, d::jsonb FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS i(s, d, n)"
        " ORDER BY n RETURNING id",
        kind,
        [subject for subject, _data in items],
        [json.dumps(data, sort_keys=True) for _subject, data in items],
    )
    return sorted(int(r["id"]) for r in rows)
