"""Admin API tokens: made, listed, revoked and checked, kept as SHA-256 digests only.

A token is ``ocs_`` and 43 URL-safe characters (256 random bits). It is shown
once, by ``create``; the database keeps its digest, so neither PostgreSQL nor a
log line ever holds a usable token. Each token has a role:

* ``viewer``: reads (GET) of the admin API;
* ``operator``: reads, and the day-to-day work on accounts: creating and
  changing accounts, top-ups, members, caller ids, counters, PIN batches,
  cutting a live call;
* ``admin``: everything, the catalog included (plans, decks, area codes,
  carriers, route sets, NAS clients, number handling);
* ``switch``: the call lifecycle and the PIN queries only, for a switch or an
  IVR where ``switch_token_required`` asks them for a token (an admin token
  does too); nothing of the admin API.

The first start makes a ``bootstrap`` admin token when no admin token exists
(``ensure_bootstrap_admin_token``), so that the admin API, closed by default,
has a key from the first minute.
"""

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ocs.config import Settings
from ocs.errors import OcsError, Reason, invalid

log = logging.getLogger("ocs.api_tokens")

ADMIN_ROLES = ("viewer", "operator", "admin")  # each can do what the ones before it can
ROLES = (*ADMIN_ROLES, "switch")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # fullmatch: no trailing newline slips by
_PREFIX = "ocs_"
BOOTSTRAP_NAME = "bootstrap"
# pg_advisory_xact_lock key ("ocs_boot"): workers and processes starting at once
# bootstrap one token between them.
_BOOTSTRAP_LOCK = 0x6F63735F626F6F74


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as listed: never the token itself, which nobody can see again."""

    name: str
    role: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TokenHolder:
    """Who presented a token: its name (what per-token limits count against, the PIN
    guard's) and its role."""

    name: str
    role: str


def digest(token: str) -> bytes:
    """What the database keeps of a token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_token() -> str:
    """A fresh token: ``ocs_`` and 256 random bits."""
    return _PREFIX + secrets.token_urlsafe(32)


def may(role: str, needed: str) -> bool:
    """Whether a token of ``role`` may do what needs ``needed``."""
    if needed == "switch":
        return role in ("switch", "admin")
    if role == "switch":
        return False
    return ADMIN_ROLES.index(role) >= ADMIN_ROLES.index(needed)


async def create(pool: asyncpg.Pool, name: str, role: str) -> str:
    """A new token named ``name`` with ``role``; returns the token, shown this once."""
    if not _NAME.fullmatch(name):
        raise invalid("name", "expected 1 to 64 letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise invalid("role", f"expected one of {', '.join(ROLES)}, got {role!r}")
    token = new_token()
    try:
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO api_tokens (name, role, digest) VALUES ($1, $2, $3)",
                name,
                role,
                digest(token),
            )
    except asyncpg.UniqueViolationError:
        raise OcsError(
            Reason.INVALID_FIELD, f"name: a token named {name!r} exists", field="name"
        ) from None
    return token


async def revoke(pool: asyncpg.Pool, name: str) -> bool:
    """Delete a token by name: it stops working at once. False if there is none."""
    async with pool.acquire() as conn:
        return bool(await conn.fetchval("DELETE FROM api_tokens WHERE name = $1 RETURNING 1", name))


async def listed(pool: asyncpg.Pool) -> list[TokenInfo]:
    """Every token's name, role and creation time, by name."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT name, role, created_at FROM api_tokens ORDER BY name")
    return [TokenInfo(r["name"], r["role"], r["created_at"]) for r in rows]


async def holder_of(pool: asyncpg.Pool, token: str) -> TokenHolder | None:
    """The name and role of a presented token, or None when it is no token of ours."""
    # No check of the ``ocs_`` prefix: a bootstrap token chosen by the operator
    # (admin_bootstrap_token) may look like anything.
    wanted = digest(token)
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT name, role, digest FROM api_tokens WHERE digest = $1", wanted
        )
    # The lookup is by digest; the comparison again in constant time costs nothing.
    if row is None or not hmac.compare_digest(bytes(row["digest"]), wanted):
        return None
    return TokenHolder(str(row["name"]), str(row["role"]))


async def role_of(pool: asyncpg.Pool, token: str) -> str | None:
    """The role of a presented token, or None when it is no token of ours."""
    holder = await holder_of(pool, token)
    return None if holder is None else holder.role


async def any_token(pool: asyncpg.Pool) -> bool:
    """Whether a token exists: with ``admin_token_required = false``, until one does,
    the admin API is open (admin_auth)."""
    async with pool.acquire() as conn:
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM api_tokens)"))


async def ensure_bootstrap_admin_token(
    pool: asyncpg.Pool, settings: Settings, keep: Callable[[str], None] | None = None
) -> str | None:
    """Make the first admin token when none exists; the token to show, or None.

    The token is ``settings.admin_bootstrap_token`` when set, else a fresh one.
    Only a fresh token is returned, for the caller to show this once: one the
    operator chose is theirs already and is never shown or logged. None also when
    an admin token exists. Only the digest is stored. An advisory lock makes
    processes starting at once (``--workers``, two hosts on one database) create
    one token between them. ``keep``, when given, is handed a fresh token before
    its digest is stored (``ocs serve`` writes it to a file): if it raises, no
    token is stored, and nobody holds an admin token that nobody can read.
    """
    given = settings.admin_bootstrap_token
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _BOOTSTRAP_LOCK)
        admins = await conn.fetchval("SELECT count(*) FROM api_tokens WHERE role = 'admin'")
        if admins:
            if given is not None:
                stored = await conn.fetchval(
                    "SELECT role FROM api_tokens WHERE digest = $1", digest(given)
                )
                if stored != "admin":
                    # The operator expects this token to work: say why it does not.
                    log.warning(
                        "admin_bootstrap_token not stored: an admin token exists already;"
                        " `ocs tokens create --name NAME --role admin` makes another",
                        extra={"admin_tokens": admins},
                    )
            return None
        token = given if given is not None else new_token()
        if await conn.fetchval("SELECT role FROM api_tokens WHERE digest = $1", digest(token)):
            # The chosen token is another role's already: it cannot be an admin's too.
            log.warning(
                "admin_bootstrap_token not stored: it is already a token of another role;"
                " choose another or use `ocs tokens create --name NAME --role admin`"
            )
            return None
        # Another role's token may hold the name already.
        name = BOOTSTRAP_NAME
        if await conn.fetchval("SELECT 1 FROM api_tokens WHERE name = $1", name):
            name = f"{BOOTSTRAP_NAME}-{secrets.token_hex(4)}"
        await conn.execute(
            "INSERT INTO api_tokens (name, role, digest) VALUES ($1, 'admin', $2)",
            name,
            digest(token),
        )
        if keep is not None and given is None:
            keep(token)  # before the commit: a failure rolls the token back
    log.info(
        "bootstrap admin token created",
        extra={"token_name": name, "source": "setting" if given is not None else "generated"},
    )
    return None if given is not None else token
