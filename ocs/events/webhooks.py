"""Webhook endpoints as PostgreSQL stores them (migration 0037): URL, secret, kinds, enabled.

An endpoint takes the events of the kinds it names (none named: every kind)
while it is enabled, from its creation on: the outbox's trigger makes its
deliveries in the transaction that stores each event. Its secret is made
here, answered once by ``create`` (``Created.secret``) and never again: the
list shows no secret, and ``Webhook``'s repr hides it, so no log line holds it.
Its URL may carry a token too (a query, a user or password): ``check_url``
takes only a URL the HTTP client can use, so that no attempt fails on the URL
itself (aiohttp's error would quote it), and ``redact`` takes the URL out of
what a failed attempt records and logs. A disabled endpoint is sent nothing:
its deliveries wait, and ``set_enabled`` makes, when it is enabled again, the
deliveries of the events stored meanwhile (the trigger made none).
"""

import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import yarl

from ocs.errors import OcsError, Reason, invalid
from ocs.events.egress import literal_kind
from ocs.events.outbox import EVENT_KINDS
from ocs.events.signing import new_secret

WEBHOOK_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
URL = re.compile(r"https?://[^\s/?#\x00-\x1f\x7f]+[^\s\x00-\x1f\x7f]*")
# A host name's label (IDNA ones as their xn-- form); "_" is in use on private networks.
HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
MAX_HOST = 253
MAX_URL = 2000
MAX_WEBHOOKS = 1000
MAX_DESCRIPTION = 200
# How long enabling a webhook waits for the transactions storing events to end.
ENABLE_WAIT_MS = 5000

log = logging.getLogger("ocs.events.webhooks")


@dataclass(frozen=True, slots=True)
class Webhook:
    """An endpoint events are POSTed to (its secret kept out of the repr)."""

    id: str
    url: str
    kinds: list[str]
    enabled: bool
    description: str
    created_at: datetime
    secret: str = field(repr=False, default="")


def webhook_of(row: asyncpg.Record) -> Webhook:
    """A stored webhook row as a ``Webhook``."""
    return Webhook(
        row["id"],
        row["url"],
        list(row["kinds"]),
        row["enabled"],
        row["description"],
        row["created_at"],
        row["secret"],
    )


def check_id(webhook_id: str, name: str = "webhook_id") -> str:
    """A webhook id (letters, digits, ``-``, ``_``, ``.``; 64 at most), else 400."""
    if not WEBHOOK_ID.fullmatch(webhook_id):
        raise invalid(name, "an id: 1 to 64 letters, digits, '-', '_' or '.'")
    return webhook_id


def host_ok(parsed: yarl.URL) -> bool:
    """Whether a URL's host is an IP address or a host name a resolver can look up."""
    if parsed.host is None or parsed.raw_host is None:
        return False
    try:
        ipaddress.ip_address(parsed.host)
        return True
    except ValueError:
        pass
    name = parsed.raw_host.removesuffix(".")
    return 0 < len(name) <= MAX_HOST and all(HOST_LABEL.fullmatch(x) for x in name.split("."))


def check_url(url: str, *, allow_private: bool) -> str:
    """An http(s) URL without spaces that the HTTP client can use (a host name or IP
    address, a port from 1 to 65535), else 400 naming ``url`` (never quoting it: it
    may carry a token). Unless ``allow_private`` (``webhook_allow_private``), a host
    that is an address inside the network (loopback, link-local, private, multicast,
    unspecified; ``localhost``) is refused too: a host name pointing there is refused
    at each delivery, after its look-up (``ocs.events.egress``)."""
    if len(url) > MAX_URL or not URL.fullmatch(url):
        raise invalid("url", "an http:// or https:// URL without spaces")
    try:
        parsed = yarl.URL(url)
        port = parsed.explicit_port  # yarl checks its range here
    except ValueError:  # UnicodeError (a bad IDNA name) included
        raise invalid("url", "not a URL an HTTP client can use") from None
    if parsed.scheme not in ("http", "https") or not host_ok(parsed):
        raise invalid("url", "expected a host name or an IP address after the scheme")
    if port == 0:
        raise invalid("url", "expected a port from 1 to 65535")
    kind = None if allow_private or parsed.host is None else literal_kind(parsed.host)
    if kind is not None:
        raise invalid(
            "url",
            f"a {kind} address, inside the network: refused unless webhook_allow_private is on",
        )
    return url


def redact(text: str, url: str) -> str:
    """``text`` (an error's message) without the URL, or any part of it that may be a
    secret (its query, fragment, user and password): "<url>" and "<redacted>" instead.
    Works on a URL stored before ``check_url`` was strict, which yarl cannot parse."""
    rest = url.partition("://")[2]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo = authority.rpartition("@")[0]
    whole = {url}
    parts = {url.partition("?")[2], url.partition("#")[2], *userinfo.split(":", 1)}
    try:
        parsed = yarl.URL(url)
        whole |= {str(parsed), parsed.human_repr()}
        parts |= {
            parsed.raw_query_string,
            parsed.query_string,
            parsed.raw_fragment,
            parsed.fragment,
            parsed.raw_user or "",
            parsed.user or "",
            parsed.raw_password or "",
            parsed.password or "",
        }
    except ValueError:
        pass
    # Longest first: a whole URL before the parts it contains.
    for found in sorted(whole - {""}, key=len, reverse=True):
        text = text.replace(found, "<url>")
    for found in sorted(parts - {""}, key=len, reverse=True):
        text = text.replace(found, "<redacted>")
    return text


def check_kinds(kinds: list[str]) -> list[str]:
    """Event kinds, each one ocs announces, without repeats (sorted); else 400."""
    for at, kind in enumerate(kinds):
        if kind not in EVENT_KINDS:
            raise invalid(f"kinds[{at}]", f"expected one of {', '.join(EVENT_KINDS)}")
    return sorted(set(kinds))


async def create(
    pool: asyncpg.Pool,
    url: str,
    *,
    allow_private: bool,
    webhook_id: str | None = None,
    kinds: list[str] | None = None,
    enabled: bool = True,
    description: str = "",
) -> Webhook:
    """Store a new endpoint with a fresh secret: the webhook, its secret included
    (the only time it is answered). A given id in use is refused (400), and a URL
    ``check_url`` refuses (``allow_private``: the ``webhook_allow_private`` setting)."""
    the_id = check_id(webhook_id, "id") if webhook_id is not None else f"wh_{secrets.token_hex(8)}"
    wanted = check_kinds(kinds or [])
    if len(description) > MAX_DESCRIPTION:
        raise invalid("description", f"at most {MAX_DESCRIPTION} characters")
    async with pool.acquire() as conn:
        try:
            row = await conn.fetchrow(
                "INSERT INTO webhooks (id, url, secret, kinds, enabled, description)"
                " VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
                the_id,
                check_url(url, allow_private=allow_private),
                new_secret(),
                wanted,
                enabled,
                description,
            )
        except asyncpg.UniqueViolationError:
            raise invalid("id", f"webhook {the_id!r} exists already") from None
    assert row is not None
    return webhook_of(row)


async def list_webhooks(pool: asyncpg.Pool) -> list[Webhook]:
    """Every endpoint, by id."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM webhooks ORDER BY id LIMIT $1", MAX_WEBHOOKS)
    return [webhook_of(r) for r in rows]


async def get(pool: asyncpg.Pool, webhook_id: str) -> Webhook:
    """One endpoint; NOT_FOUND naming ``webhook_id`` when there is none."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM webhooks WHERE id = $1", check_id(webhook_id))
    if row is None:
        raise OcsError(Reason.NOT_FOUND, f"no webhook {webhook_id!r}", field="webhook_id")
    return webhook_of(row)


async def remove(pool: asyncpg.Pool, webhook_id: str) -> Webhook:
    """Delete an endpoint and its deliveries (none is sent after); the endpoint removed."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "DELETE FROM webhooks WHERE id = $1 RETURNING *", check_id(webhook_id)
        )
    if row is None:
        raise OcsError(Reason.NOT_FOUND, f"no webhook {webhook_id!r}", field="webhook_id")
    return webhook_of(row)


# The events a webhook did not get while it was disabled: those of the kinds it takes,
# stored since its creation, with no delivery to it (the outbox's trigger makes rows for
# enabled webhooks only), oldest first, so that they are sent in the order stored.
_CATCH_UP_SQL = """
INSERT INTO event_deliveries (event_id, channel, webhook_id)
SELECT e.id, 'webhook', $1 FROM events e
WHERE e.created_at >= $2 AND (cardinality($3::text[]) = 0 OR e.kind = ANY ($3::text[]))
  AND NOT EXISTS (SELECT 1 FROM event_deliveries d
                  WHERE d.event_id = e.id AND d.webhook_id = $1 AND d.channel = 'webhook')
ORDER BY e.id
ON CONFLICT DO NOTHING
"""


async def set_enabled(pool: asyncpg.Pool, webhook_id: str, enabled: bool) -> Webhook:
    """Disable or enable an endpoint; the endpoint as it is now. NOT_FOUND naming
    ``webhook_id`` when there is none; unchanged when it is so already (no log line).

    Disabled, its deliveries wait (no deliverer claims them; an attempt already under
    way ends as it does) and the events stored meanwhile are kept for it: enabling it
    makes their deliveries, oldest first, and the deliverers send them with its waiting
    ones. Enabling waits up to ``ENABLE_WAIT_MS`` for the transactions writing events to
    end (503 ``unavailable`` naming ``webhook_id`` if they do not: try again), so that
    no event stored at that instant is missed by both the trigger and the catch-up."""
    check_id(webhook_id)
    async with pool.acquire() as conn, conn.transaction():
        # NO KEY UPDATE: a delivery row being inserted for it (its foreign key's KEY
        # SHARE) does not hold this up.
        row = await conn.fetchrow(
            "SELECT * FROM webhooks WHERE id = $1 FOR NO KEY UPDATE", webhook_id
        )
        if row is None:
            raise OcsError(Reason.NOT_FOUND, f"no webhook {webhook_id!r}", field="webhook_id")
        if row["enabled"] == enabled:
            return webhook_of(row)
        changed = await conn.fetchrow(
            "UPDATE webhooks SET enabled = $2 WHERE id = $1 RETURNING *", webhook_id, enabled
        )
        assert changed is not None
        caught_up = await catch_up(conn, webhook_of(changed)) if enabled else 0
    log.info(
        "webhook enabled" if enabled else "webhook disabled",
        extra={"webhook": webhook_id, "enabled": enabled, "caught_up": caught_up},
    )
    return webhook_of(changed)


async def catch_up(conn: asyncpg.Connection, hook: Webhook) -> int:
    """In the transaction enabling ``hook``: the deliveries of the events it missed while
    disabled, made; how many. Holds the events table (SHARE) so that every transaction
    that stored an event while it looked disabled has ended and is seen here, and one
    storing an event after this commit sees it enabled (the trigger makes its row)."""
    await conn.execute("SELECT set_config('lock_timeout', $1, true)", f"{ENABLE_WAIT_MS}ms")
    try:
        await conn.execute("LOCK TABLE events IN SHARE MODE")
    except asyncpg.LockNotAvailableError:
        raise OcsError(
            Reason.UNAVAILABLE,
            f"events are being stored (a billing run?): webhook {hook.id!r} can be enabled"
            " once they are; try again",
            field="webhook_id",
        ) from None
    status = await conn.execute(_CATCH_UP_SQL, hook.id, hook.created_at, hook.kinds)
    made = int(status.split()[-1])
    # Its waiting rows are due now or soon: the serving deliverers wake at commit.
    await conn.execute("SELECT pg_notify('ocs_event_deliveries', '')")
    return made
