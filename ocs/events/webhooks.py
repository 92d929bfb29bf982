"""Webhook endpoints as PostgreSQL stores them (migration 0037): URL, secret, kinds, enabled.

An endpoint takes the events of the kinds it names (none named: every kind)
from its creation on: the outbox's trigger makes its deliveries in the
transaction that stores each event, enabled or not (migration 0070). Its secret is made
here, answered once by ``create`` (``Created.secret``) and never again: the
list shows no secret, and ``Webhook``'s repr hides it, so no log line holds it.
Its URL may carry a token too (a query, a user or password): ``check_url``
takes only a URL the HTTP client can use, so that no attempt fails on the URL
itself (aiohttp's error would quote it), and ``redact`` takes the URL out of
what a failed attempt records and logs. A disabled endpoint is sent nothing:
no deliverer claims its deliveries, which wait until ``set_enabled`` enables it
again (a flag, and the deliverers woken: no scan of the outbox, no lock).
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


async def set_enabled(pool: asyncpg.Pool, webhook_id: str, enabled: bool) -> Webhook:
    """Disable or enable an endpoint; the endpoint as it is now. NOT_FOUND naming
    ``webhook_id`` when there is none; unchanged when it is so already (no log line).

    Disabled, its deliveries wait (no deliverer claims them; an attempt already under
    way ends as it does), and the trigger goes on making those of the events stored
    meanwhile. Enabled again, the serving deliverers are woken at commit and send them
    with the others, by due time then id: in the order stored."""
    check_id(webhook_id)
    async with pool.acquire() as conn, conn.transaction():
        # Only a changed flag is written (and logged): the same state asked twice is
        # no state change.
        row = await conn.fetchrow(
            "UPDATE webhooks SET enabled = $2 WHERE id = $1 AND enabled <> $2 RETURNING *",
            webhook_id,
            enabled,
        )
        if row is None:
            unchanged = await conn.fetchrow("SELECT * FROM webhooks WHERE id = $1", webhook_id)
            if unchanged is None:
                raise OcsError(Reason.NOT_FOUND, f"no webhook {webhook_id!r}", field="webhook_id")
            return webhook_of(unchanged)
        if enabled:
            # Its waiting rows may be due already: the serving deliverers wake at commit.
            await conn.execute("SELECT pg_notify('ocs_event_deliveries', '')")
    log.info(
        "webhook enabled" if enabled else "webhook disabled",
        extra={"webhook": webhook_id, "enabled": enabled},
    )
    return webhook_of(row)
