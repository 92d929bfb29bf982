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
    "payment.refunded",
    "dunning.step",
    "account.locked",
    "account.unlocked",
    "number.assigned",
    "number.released",
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


async def emit_from(conn: asyncpg.Connection, kind: str, query: str, *args: object) -> int:
    """Store one event of ``kind`` per row of ``query``, in the caller's transaction, in
    one statement; how many.

    ``query`` is a SELECT of ``subject`` (text) and ``data`` (jsonb) columns, in
    the order the events are to be stored, whose parameters start at ``$2``
    (``$1`` is the kind). For thousands of events from rows already in the
    database (posting a run): the JSON is built there, not sent from here.
    """
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    status = await conn.execute(
        "INSERT INTO events (kind, subject, data)"
        f" SELECT $1, q.subject, q.data FROM ({query}) AS q",
        kind,
        *args,
    )
    return int(status.split()[-1])
