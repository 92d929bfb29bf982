"""Delivering the outbox: each (event, target) delivery claimed, sent, and marked once.

A delivery row (migration 0037) is made with its event, in the change's
transaction. ``deliver_pending`` claims the due ones with ``FOR UPDATE SKIP
LOCKED`` and a lease (several deliverers share the work; a dead one's claims
come back when their lease runs out), no more than it sends at once, so that
each is sent within its own lease; sends each through its channel's sender (a
webhook's signed POST here; the email sender is given by ``ocs.billing``,
which knows invoices), and marks it as soon as its attempt ends, if the row is
still that attempt's (its lease not taken over by another deliverer):

* delivered (a 2xx, an email accepted by the SMTP server);
* pending again ``webhook_backoff`` seconds later, doubled each attempt
  (a refusal, a timeout, no answer);
* dead after ``webhook_max_attempts`` attempts: kept, listed by
  ``ocs events list --state dead``, sent again by a replay (``requeue``); dead at
  once when the target is refused (a host inside the network, ``egress``);
* skipped: nothing to send (no billing email; before 2026-12-07, no SMTP server
  configured: ``ocs events replay-skipped`` sends those, ``requeue_skipped_emails``).

Which channels a deliverer sends is decided in one place, ``senders_for``: webhooks
always, emails when it is given the email sender (``ocs.billing`` has it) and
``smtp_host`` is set. ``CHANNELS`` names every channel the outbox's trigger makes
rows for (migration 0037's CHECK), so a new one is added here or not at all.
Email deliveries hold at most ``email_in_flight`` sending slots, as one webhook
holds at most ``webhook_in_flight``: an invoice run's backlog of emails leaves the
other slots to the webhooks.

At least once, with an idempotency key: a deliverer killed after the
receiver's 2xx and before the mark sends the event again once the lease runs
out, with the same ``webhook-id`` (``message_id``), so a receiver that keeps
the ids it has taken gets each event exactly once (decision 0029).
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from ocs import metrics
from ocs.config import Settings
from ocs.events import egress, signing, webhooks

log = logging.getLogger("ocs.events.delivery")

CONCURRENCY = 16  # sent at once, and so claimed at once at most
EMAIL_LEASE_S = 300.0  # an email renders a PDF before it is sent
POLL_S = 5.0  # the longest a serving deliverer waits without a notification
CLAIM_AGAIN_S = 1.0  # the longest free sending slots wait for a claim while others send
NOTIFY_CHANNEL = "ocs_event_deliveries"  # the fan-out trigger's pg_notify
MAX_ERROR = 500  # characters of an error kept on the row
# Every delivery channel (migration 0037's CHECK on event_deliveries.channel): the ones
# ``senders_for`` may give, and no other.
CHANNELS = ("webhook", "email")
# The reason an email delivery was skipped by a deliverer without ``smtp_host`` (until
# 2026-12-07; now such a deliverer leaves them pending): what ``requeue_skipped_emails``
# takes, since such a row was never sent.
NO_SMTP = "smtp_host is not set"


@dataclass(frozen=True, slots=True)
class Event:
    """An event of the outbox: its id, kind, subject, data and when it was stored."""

    id: int
    kind: str
    subject: str
    data: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery claimed for one attempt: its event and target (a webhook's URL and
    secret, the secret out of the repr; or the email channel). ``attempts`` counts
    this one; ``leased_until`` is its lease, by which its end is marked (only while
    the row still has this lease: another deliverer's claim after it ran out wins)."""

    id: int
    channel: str
    attempts: int
    event: Event
    webhook_id: str | None = None
    url: str | None = None
    secret: str | None = field(default=None, repr=False)
    leased_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an attempt came to: delivered, failed (retried, then dead), or skipped."""

    delivered: bool
    status: int | None = None
    error: str | None = None
    skipped: bool = False
    permanent: bool = False

    @classmethod
    def ok(cls, status: int | None = None) -> "Outcome":
        """Delivered."""
        return cls(True, status)

    @classmethod
    def failed(cls, error: str, status: int | None = None) -> "Outcome":
        """Not delivered: tried again after the backoff, until the attempts run out."""
        return cls(False, status, error[:MAX_ERROR])

    @classmethod
    def refused(cls, error: str) -> "Outcome":
        """Not delivered, and no attempt can be (the target is refused): dead at once,
        sent again by a replay once the cause is fixed."""
        return cls(False, None, error[:MAX_ERROR], permanent=True)

    @classmethod
    def skip(cls, reason: str) -> "Outcome":
        """Nothing to send, and nothing to retry."""
        return cls(False, None, reason[:MAX_ERROR], skipped=True)


@dataclass(frozen=True, slots=True)
class Context:
    """What a sender may use: the pool, the settings and the HTTP client session."""

    pool: asyncpg.Pool
    settings: Settings
    session: aiohttp.ClientSession


Sender = Callable[[Claimed, Context], Awaitable[Outcome]]


@dataclass(slots=True)
class DeliveryReport:
    """What one ``deliver_pending`` call did: attempts, and how they ended."""

    attempted: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0
    skipped: int = 0


def message_id(event_id: int) -> str:
    """The ``webhook-id`` of an event: the same on every attempt and replay, so that a
    receiver can take each event once (the idempotency key)."""
    return f"evt_{event_id}"


def payload(event: Event) -> bytes:
    """The JSON body of an event's webhook: the same bytes on every attempt."""
    body = {
        "id": message_id(event.id),
        "type": event.kind,
        "timestamp": event.created_at.astimezone(UTC).isoformat(),
        "subject": event.subject,
        "data": event.data,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


async def send_webhook(delivery: Claimed, context: Context) -> Outcome:
    """POST the event, signed (Standard Webhooks), within ``webhook_timeout``: a 2xx
    delivers it. Redirects are not followed: a receiver answers where it is. A host
    inside the network is refused (dead at once) unless ``webhook_allow_private``: an
    IP literal here, a name by the session's connector after its look-up."""
    assert delivery.url is not None and delivery.secret is not None
    body = payload(delivery.event)
    headers = signing.headers(
        delivery.secret, message_id(delivery.event.id), int(time.time()), body
    )
    timeout = aiohttp.ClientTimeout(total=context.settings.webhook_timeout)
    try:
        egress.check_url_host(delivery.url, context.settings.webhook_allow_private)
        async with context.session.post(
            delivery.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        ) as response:
            if 200 <= response.status < 300:
                return Outcome.ok(response.status)
            return Outcome.failed(f"HTTP {response.status}", response.status)
    except egress.PrivateAddressRefused as exc:
        return Outcome.refused(str(exc))
    except TimeoutError:
        return Outcome.failed(f"no answer within {context.settings.webhook_timeout} s")
    except (aiohttp.ClientError, ValueError) as exc:
        # aiohttp quotes the URL (an invalid one), and the URL may carry a token: the
        # row's last_error is shown to viewers, and a dead one is logged.
        return Outcome.failed(error_text(exc, delivery.url))


def senders_for(settings: Settings, email: Sender | None = None) -> Mapping[str, Sender]:
    """What a deliverer sends, by channel: the one rule. Webhooks always; emails when
    given their sender (``ocs.billing``'s, which knows invoices) and ``smtp_host`` is
    set: without it the email rows stay pending (unclaimed) for a deliverer that has
    it, never skipped for good. Every channel given is one of ``CHANNELS`` (a test holds
    them to the schema's)."""
    chosen: dict[str, Sender] = {"webhook": send_webhook}
    if email is not None and settings.smtp_host is not None:
        chosen["email"] = email
    return chosen


# The due deliveries of the given channels, oldest first, each claimed by one deliverer
# (SKIP LOCKED) with a lease. A webhook gets no more than its free slots ($6 less its rows
# leased now, by any deliverer): a receiver that stops answering holds those slots for a
# timeout, not every slot while the other webhooks' events wait behind its backlog. The
# emails are a target of their own, with $7 slots: an invoice run's thousands of emails,
# older than a webhook's event, took every slot until they were all sent. (An email row
# is the one whose webhook_id is NULL: migration 0037's CHECK; counted by the leased
# index of 0055.) A disabled webhook's rows wait until it is enabled again.
_CLAIM_SQL = """
WITH room AS (
    SELECT w.id, $6::int - (SELECT count(*) FROM event_deliveries x
                            WHERE x.webhook_id = w.id AND x.state = 'pending'
                              AND x.leased_until IS NOT NULL AND x.leased_until > $1) AS free
    FROM webhooks w WHERE w.enabled AND 'webhook' = ANY ($2::text[])
), hooked AS (
    SELECT p.id, p.event_id, p.webhook_id, p.next_attempt_at FROM room CROSS JOIN LATERAL (
        SELECT d.id, d.event_id, d.webhook_id, d.next_attempt_at FROM event_deliveries d
        WHERE d.webhook_id = room.id AND d.state = 'pending' AND d.next_attempt_at <= $1
          AND (d.leased_until IS NULL OR d.leased_until <= $1)
        ORDER BY d.next_attempt_at, d.id LIMIT greatest(room.free, 0)
        FOR UPDATE OF d SKIP LOCKED
    ) p
), mail_room AS (
    SELECT $7::int - (SELECT count(*) FROM event_deliveries x
                      WHERE x.webhook_id IS NULL AND x.state = 'pending'
                        AND x.leased_until IS NOT NULL AND x.leased_until > $1) AS free
), mailed AS (
    SELECT d.id, d.event_id, d.webhook_id, d.next_attempt_at FROM event_deliveries d
    WHERE d.channel = 'email' AND 'email' = ANY ($2::text[]) AND d.state = 'pending'
      AND d.next_attempt_at <= $1 AND (d.leased_until IS NULL OR d.leased_until <= $1)
    ORDER BY d.next_attempt_at, d.id
    LIMIT least($3, greatest((SELECT free FROM mail_room), 0))
    FOR UPDATE OF d SKIP LOCKED
), due AS (
    SELECT c.id, c.event_id, c.webhook_id
    FROM (SELECT * FROM hooked UNION ALL SELECT * FROM mailed) c
    ORDER BY c.next_attempt_at, c.id LIMIT $3
)
UPDATE event_deliveries d SET attempts = d.attempts + 1,
       leased_until = $1 + make_interval(secs => CASE WHEN d.channel = 'email' THEN $5::float8
                                                     ELSE $4::float8 END)
FROM due JOIN events e ON e.id = due.event_id LEFT JOIN webhooks w ON w.id = due.webhook_id
WHERE d.id = due.id
RETURNING d.id, d.channel, d.attempts, d.leased_until, d.webhook_id, w.url, w.secret,
          e.id AS event_id, e.kind, e.subject, e.data::text AS data, e.created_at
"""

# An attempt's end: only on the row as that attempt claimed it, still pending with the
# same attempt count and lease. A replay or a removal may have passed it; a deliverer
# that outlived its lease must not clear the lease of the one that claimed it after.
_FINISH_SQL = """
UPDATE event_deliveries SET state = $2, leased_until = NULL, last_status = $3,
       last_error = $4, next_attempt_at = $5,
       delivered_at = CASE WHEN $2 = 'delivered' THEN clock_timestamp() END
WHERE id = $1 AND state = 'pending' AND attempts = $6 AND leased_until = $7
"""


def lease_s(settings: Settings) -> float:
    """How long a claimed webhook delivery is held: twice the timeout, and a margin."""
    return settings.webhook_timeout * 2 + 30.0


def backoff_s(settings: Settings, attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: the backoff,
    doubled each time (1, 2, 4, ... times ``webhook_backoff``); a day at most."""
    return float(min(settings.webhook_backoff * 2 ** min(attempts - 1, 40), 86_400.0))


async def claim(
    pool: asyncpg.Pool,
    settings: Settings,
    now: datetime,
    channels: list[str],
    limit: int = CONCURRENCY,
) -> list[Claimed]:
    """Claim up to ``limit`` due deliveries of these channels (one attempt each), no
    more of one webhook than ``webhook_in_flight`` less those it is being sent now, nor
    of the emails than ``email_in_flight`` less those being sent now."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            _CLAIM_SQL,
            now,
            channels,
            limit,
            lease_s(settings),
            EMAIL_LEASE_S,
            settings.webhook_in_flight,
            settings.email_in_flight,
        )
    return [
        Claimed(
            r["id"],
            r["channel"],
            r["attempts"],
            Event(r["event_id"], r["kind"], r["subject"], json.loads(r["data"]), r["created_at"]),
            r["webhook_id"],
            r["url"],
            r["secret"],
            r["leased_until"],
        )
        for r in sorted(rows, key=lambda r: r["id"])
    ]


async def finish(
    pool: asyncpg.Pool,
    settings: Settings,
    now: datetime,
    delivery: Claimed,
    outcome: Outcome,
    report: DeliveryReport,
) -> None:
    """Mark an attempt's end (delivered, retried later, dead, skipped) and count it;
    nothing is marked when the row is no longer this attempt's (see ``_FINISH_SQL``)."""
    report.attempted += 1
    if outcome.delivered:
        state, due = "delivered", now
    elif outcome.skipped:
        state, due = "skipped", now
    elif outcome.permanent or delivery.attempts >= settings.webhook_max_attempts:
        state, due = "dead", now
    else:
        state = "pending"
        due = now + timedelta(seconds=backoff_s(settings, delivery.attempts))
    async with pool.acquire() as conn:
        status = await conn.execute(
            _FINISH_SQL,
            delivery.id,
            state,
            outcome.status,
            outcome.error,
            due,
            delivery.attempts,
            delivery.leased_until,
        )
    if status.split()[-1] == "0":
        # Replayed, removed, or its lease taken over: whoever has it now marks it.
        log.info(
            "event delivery outcome not recorded: the delivery moved on",
            extra={"delivery": delivery.id, "channel": delivery.channel},
        )
        return
    if state == "delivered":
        report.delivered += 1
    elif state == "skipped":
        report.skipped += 1
    elif state == "dead":
        report.dead += 1
        log.warning(
            "event delivery dead-lettered",
            extra={
                "delivery": delivery.id,
                "event": delivery.event.id,
                "channel": delivery.channel,
                "webhook": delivery.webhook_id,
                "attempts": delivery.attempts,
                "error": outcome.error,
            },
        )
    else:
        report.retrying += 1
    metrics.EVENT_DELIVERIES.labels(
        delivery.channel, "retrying" if state == "pending" else state
    ).inc()


def error_text(exc: BaseException, url: str | None) -> str:
    """What a failed attempt records and logs: the error's class and message, without
    the webhook's URL (``webhooks.redact``)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if url is None else webhooks.redact(text, url)


async def attempt(sender: Sender, delivery: Claimed, context: Context) -> Outcome:
    """One attempt; a sender's unexpected error is a failed attempt, never the loop's."""
    try:
        return await sender(delivery, context)
    except Exception as exc:  # a bug or an outage in one sender must not stop the others
        error = error_text(exc, delivery.url)
        log.error(
            "event delivery failed unexpectedly",
            # A traceback quotes the error as is: only where no URL can be in it.
            exc_info=delivery.url is None,
            extra={"delivery": delivery.id, "channel": delivery.channel, "error": error},
        )
        return Outcome.failed(error)


async def deliver_pending(
    pool: asyncpg.Pool,
    settings: Settings,
    now: datetime | None = None,
    *,
    senders: Mapping[str, Sender] | None = None,
    stopping: asyncio.Event | None = None,
) -> DeliveryReport:
    """Send every delivery due at ``now`` (default: the clock) of the channels that have
    a sender (default: ``senders_for(settings)``, webhooks only), ``CONCURRENCY`` at a
    time; what happened.

    Once ``stopping`` is set nothing more is claimed: the sends in flight finish and
    are marked (within ``CLAIM_AGAIN_S`` of their end), the rest stay pending. A worker
    told to stop (SIGTERM) so ends its pass before systemd's SIGKILL, not mid-send
    with a backlog in hand (an email killed after the SMTP server took it is sent
    again once its lease runs out).

    A delivery is claimed only when a sending slot is free, so its lease starts with
    its send, and marked as soon as its attempt ends: a slow receiver holds only its
    own rows, never a batch that another deliverer would send again once the batch's
    lease ran out. Retries that fall due while it runs (a zero backoff) are sent in
    the same call, until their attempts run out.
    """
    chosen = dict(senders if senders is not None else senders_for(settings))
    channels = sorted(chosen)
    report = DeliveryReport()
    running: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(
        connector=egress.connector(settings.webhook_allow_private)
    ) as session:
        context = Context(pool, settings, session)

        async def deliver(delivery: Claimed) -> None:
            outcome = await attempt(chosen[delivery.channel], delivery, context)
            await finish(pool, settings, now or datetime.now(UTC), delivery, outcome, report)

        try:
            while True:
                free = CONCURRENCY - len(running)
                if free > 0 and (stopping is None or not stopping.is_set()):
                    moment = now or datetime.now(UTC)
                    for delivery in await claim(pool, settings, moment, channels, free):
                        running.add(asyncio.create_task(deliver(delivery)))
                if not running:
                    return report
                # Claimed again at least every CLAIM_AGAIN_S while sending: a receiver that
                # hangs holds its own slots only, and other webhooks' events that came
                # since go out in the free ones, not after its timeout.
                done, running = await asyncio.wait(
                    running, timeout=CLAIM_AGAIN_S, return_when=asyncio.FIRST_COMPLETED
                )
                # PostgreSQL gone while marking: the caller's to handle (each error taken,
                # so that none is reported as never retrieved).
                failed = [e for e in (t.exception() for t in done) if e is not None]
                if failed:
                    raise failed[0]
        finally:
            # Stopped by an error or a cancellation: what is in flight goes back to the
            # pool when its lease runs out.
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)


# When the earliest delivery ``claim`` would take falls due: the same filter (these
# channels, an enabled webhook's), else a row it never takes looks due at every pass
# and the serving loop spins. A target with all its slots leased (a webhook's $2, the
# emails' $3: to another deliverer, this one's pass has ended) has nothing due before
# its first lease ends. The emails are the group whose webhook_id is NULL.
_NEXT_DUE_SQL = """
SELECT min(CASE WHEN t.leased >= (CASE WHEN t.webhook_id IS NULL THEN $3::int ELSE $2::int END)
                THEN GREATEST(t.earliest, t.first_lease_end) ELSE t.earliest END)
FROM (
    SELECT d.webhook_id,
           min(GREATEST(d.next_attempt_at, COALESCE(d.leased_until, d.next_attempt_at)))
               AS earliest,
           count(*) FILTER (WHERE d.leased_until > now()) AS leased,
           min(d.leased_until) FILTER (WHERE d.leased_until > now()) AS first_lease_end
    FROM event_deliveries d
    WHERE d.state = 'pending' AND d.channel = ANY ($1::text[])
      AND (d.webhook_id IS NULL
           OR EXISTS (SELECT 1 FROM webhooks w WHERE w.id = d.webhook_id AND w.enabled))
    GROUP BY d.webhook_id
) t
"""


async def next_due(
    pool: asyncpg.Pool, settings: Settings, channels: Sequence[str] | None = None
) -> datetime | None:
    """When the earliest pending delivery of these channels (default: those of
    ``senders_for(settings)``, as ``deliver_pending``'s) that ``claim`` would take
    falls due (None: none; a disabled webhook's rows wait for it, not for us; a webhook
    with ``webhook_in_flight`` deliveries leased, or the emails with
    ``email_in_flight``, for the first lease to end)."""
    chosen = list(channels if channels is not None else senders_for(settings))
    async with pool.acquire() as conn:
        found: datetime | None = await conn.fetchval(
            _NEXT_DUE_SQL, chosen, settings.webhook_in_flight, settings.email_in_flight
        )
    return found


async def serve_deliveries(
    pool: asyncpg.Pool,
    settings: Settings,
    stopping: asyncio.Event,
    *,
    senders: Mapping[str, Sender] | None = None,
) -> None:
    """Deliver until ``stopping`` is set: at once when an event commits (the fan-out
    trigger's notification), when a retry falls due, and every ``POLL_S`` seconds.

    An error (PostgreSQL away) is logged and the loop goes on after a pause.
    """
    woken = asyncio.Event()
    channels = sorted(senders if senders is not None else senders_for(settings))

    def wake(*_args: object) -> None:
        woken.set()

    listener: asyncpg.Connection | None = None
    log.info("event deliverer started", extra={"channels": channels})
    try:
        while not stopping.is_set():
            pause = POLL_S
            try:
                if listener is None or listener.is_closed():
                    listener = await pool.acquire()
                    await listener.add_listener(NOTIFY_CHANNEL, wake)
                woken.clear()
                await deliver_pending(pool, settings, senders=senders, stopping=stopping)
                if stopping.is_set():
                    break
                due = await next_due(pool, settings, channels)
                if due is not None:
                    pause = min(pause, max((due - datetime.now(UTC)).total_seconds(), 0.01))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("event delivery pass failed", extra={"error": str(exc)})
                if listener is not None:
                    with contextlib.suppress(Exception):
                        await pool.release(listener)
                    listener = None
            waiting = asyncio.ensure_future(woken.wait())
            stopped = asyncio.ensure_future(stopping.wait())
            try:
                await asyncio.wait({waiting, stopped}, timeout=pause, return_when="FIRST_COMPLETED")
            finally:
                waiting.cancel()
                stopped.cancel()
    finally:
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.remove_listener(NOTIFY_CHANNEL, wake)
            with contextlib.suppress(Exception):
                await pool.release(listener)
        log.info("event deliverer stopped")
