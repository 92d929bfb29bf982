"""Events and their deliveries as operators see them, and the replay of a delivery.

``list_events`` answers the outbox newest first, each event with its
deliveries (filtered by a delivery state: ``dead`` lists what needs a look).
``requeue`` makes deliveries of an event pending again, due now, with their
attempts reset: those not delivered (dead, or pending), so that replaying an
event for a dead webhook does not email the customer its invoice again; a
delivered (or skipped) one only when its webhook is named (it is sent again
with the same ``webhook-id``, which a receiver may drop). A delivery being sent
at that moment is left to that attempt: clearing its lease would let another
deliverer send it at the same time.

``requeue_skipped_emails`` sends the emails a deliverer without ``smtp_host``
skipped (until 2026-12-07 it marked them skipped for good): only those rows,
never sent, so no email is sent twice; of a kind, of events stored between two
days, so that an operator can leave out stale dunning reminders.
"""

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg

from ocs.errors import OcsError, Reason, invalid
from ocs.events.delivery import NO_SMTP
from ocs.events.outbox import EVENT_KINDS
from ocs.events.webhooks import check_id

DELIVERY_STATES = ("pending", "delivered", "dead", "skipped")
MAX_EVENTS = 1000
MAX_ID = 2**63 - 1

# An event's deliveries made due now, attempts reset: without a webhook named, only
# those not delivered (a delivered email must not reach the customer twice); never
# one leased to a deliverer sending it now (a pending row with a live lease).
_REQUEUE_SQL = """
UPDATE event_deliveries SET state = 'pending', attempts = 0, next_attempt_at = now(),
       leased_until = NULL, delivered_at = NULL, last_status = NULL, last_error = NULL
WHERE event_id = $1
  AND ($2::text IS NULL AND state IN ('dead', 'pending') OR webhook_id = $2)
  AND NOT (state = 'pending' AND leased_until > now())
RETURNING *
"""

# The email deliveries skipped for want of an SMTP server, made due now as new ones:
# only rows still skipped for that reason (never sent: nothing is mailed twice; a
# second replay, or one racing this, finds them pending and leaves them), of events of
# the kind and days asked.
_REQUEUE_SKIPPED_SQL = """
UPDATE event_deliveries d SET state = 'pending', attempts = 0, next_attempt_at = now(),
       leased_until = NULL, delivered_at = NULL, last_status = NULL, last_error = NULL
FROM events e
WHERE e.id = d.event_id AND d.channel = 'email' AND d.state = 'skipped'
  AND d.last_error = $1
  AND ($2::text IS NULL OR e.kind = $2)
  AND ($3::timestamptz IS NULL OR e.created_at >= $3)
  AND ($4::timestamptz IS NULL OR e.created_at < $4)
RETURNING d.id
"""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One (event, target) delivery: its channel, webhook, state and attempts so far."""

    id: int
    event_id: int
    channel: str
    webhook_id: str | None
    state: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event of the outbox with its deliveries."""

    id: int
    kind: str
    subject: str
    data: dict[str, Any]
    created_at: datetime
    deliveries: list[Delivery]


def delivery_of(row: asyncpg.Record) -> Delivery:
    """A stored delivery row as a ``Delivery``."""
    return Delivery(
        row["id"],
        row["event_id"],
        row["channel"],
        row["webhook_id"],
        row["state"],
        row["attempts"],
        row["next_attempt_at"],
        row["last_status"],
        row["last_error"],
        row["delivered_at"],
    )


def check_event_id(event_id: int, name: str = "event_id") -> int:
    """An event id within a bigint's range, else 400 naming the field."""
    if not 1 <= event_id <= MAX_ID:
        raise invalid(name, "expected a positive whole number")
    return event_id


async def list_events(
    pool: asyncpg.Pool,
    *,
    state: str | None = None,
    kind: str | None = None,
    subject: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[StoredEvent]:
    """Events newest first (ids below ``before_id`` to page on), of a kind or subject,
    or with a delivery in ``state``; each with all its deliveries."""
    if state is not None and state not in DELIVERY_STATES:
        raise invalid("state", f"expected one of {', '.join(DELIVERY_STATES)}")
    if kind is not None and kind not in EVENT_KINDS:
        raise invalid("kind", f"expected one of {', '.join(EVENT_KINDS)}")
    if not 1 <= limit <= MAX_EVENTS:
        raise invalid("limit", f"from 1 to {MAX_EVENTS}")
    async with pool.acquire() as conn:
        events = await conn.fetch(
            "SELECT id, kind, subject, data::text AS data, created_at FROM events e"
            " WHERE ($1::text IS NULL OR EXISTS (SELECT 1 FROM event_deliveries d"
            "                                    WHERE d.event_id = e.id AND d.state = $1))"
            "   AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR subject = $3)"
            "   AND ($4::bigint IS NULL OR id < $4)"
            " ORDER BY id DESC LIMIT $5",
            state,
            kind,
            subject,
            before_id,
            limit,
        )
        deliveries = await conn.fetch(
            "SELECT * FROM event_deliveries WHERE event_id = ANY ($1::bigint[]) ORDER BY id",
            [e["id"] for e in events],
        )
    by_event: dict[int, list[Delivery]] = {}
    for row in deliveries:
        by_event.setdefault(row["event_id"], []).append(delivery_of(row))
    return [
        StoredEvent(
            e["id"],
            e["kind"],
            e["subject"],
            json.loads(e["data"]),
            e["created_at"],
            by_event.get(e["id"], []),
        )
        for e in events
    ]


async def requeue(
    pool: asyncpg.Pool, event_id: int, webhook_id: str | None = None
) -> list[Delivery]:
    """Make an event's deliveries not delivered (dead or pending; or its delivery to one
    webhook, whatever its state) pending and due now, attempts reset; the deliveries
    re-queued (none being sent at that moment: it is left to its attempt). For a
    webhook the event had no delivery to (created after it), one is made.
    NOT_FOUND: no such event, or webhook; 400 naming ``webhook_id``: a webhook that
    does not take the kind, or is disabled."""
    check_event_id(event_id)
    if webhook_id is not None:
        check_id(webhook_id)
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT 1 FROM events WHERE id = $1", event_id) is None:
            raise OcsError(Reason.NOT_FOUND, f"no event {event_id}", field="event_id")
        if webhook_id is not None:
            target = await conn.fetchrow(
                "SELECT cardinality(w.kinds) = 0 OR e.kind = ANY (w.kinds) AS takes, w.enabled"
                " FROM webhooks w, events e WHERE w.id = $1 AND e.id = $2",
                webhook_id,
                event_id,
            )
            if target is None:
                raise OcsError(Reason.NOT_FOUND, f"no webhook {webhook_id!r}", field="webhook_id")
            if not target["takes"]:
                # A partner sees only the kinds it subscribed to, replayed or not.
                raise invalid("webhook_id", f"webhook {webhook_id!r} does not take this kind")
            if not target["enabled"]:
                # Nothing is sent to a disabled webhook: the replay would only wait.
                raise invalid("webhook_id", f"webhook {webhook_id!r} is disabled")
            await conn.execute(
                "INSERT INTO event_deliveries (event_id, channel, webhook_id)"
                " VALUES ($1, 'webhook', $2) ON CONFLICT DO NOTHING",
                event_id,
                webhook_id,
            )
        rows = await conn.fetch(_REQUEUE_SQL, event_id, webhook_id)
        if rows:
            # The serving deliverers wake for it at commit, as for a new event.
            await conn.execute("SELECT pg_notify('ocs_event_deliveries', '')")
    return sorted((delivery_of(r) for r in rows), key=lambda d: d.id)


def day_start(day: date | None) -> datetime | None:
    """The start of a day in UTC (None: no bound)."""
    return None if day is None else datetime.combine(day, time(), UTC)


async def requeue_skipped_emails(
    pool: asyncpg.Pool,
    *,
    kind: str | None = None,
    since: date | None = None,
    until: date | None = None,
) -> int:
    """Make the email deliveries skipped because no SMTP server was configured pending
    and due now (of events of ``kind``, stored from ``since`` to ``until`` inclusive,
    UTC days); how many. A delivered email, or one skipped for another reason (no
    billing email), is left as it is. 400 naming ``kind``, or ``until`` (before
    ``since``)."""
    if kind is not None and kind not in EVENT_KINDS:
        raise invalid("kind", f"expected one of {', '.join(EVENT_KINDS)}")
    if since is not None and until is not None and until < since:
        raise invalid("until", "expected a day on or after since")
    # The day after ``until``: none after the last day a date can name.
    after = None if until is None or until == date.max else day_start(until + timedelta(days=1))
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(_REQUEUE_SKIPPED_SQL, NO_SMTP, kind, day_start(since), after)
        if rows:
            # The serving deliverers wake for them at commit, as for new events.
            await conn.execute("SELECT pg_notify('ocs_event_deliveries', '')")
    return len(rows)
