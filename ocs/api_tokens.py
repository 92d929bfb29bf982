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
"""

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ocs.errors import OcsError, Reason, invalid

ADMIN_ROLES = ("viewer", "operator", "admin")  # each can do what the ones before it can
ROLES = (*ADMIN_ROLES, "switch")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # fullmatch: no trailing newline slips by
_PREFIX = "ocs_"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as listed: never the token itself, which nobody can see again."""

    name: str
    role: str
    created_at: datetime


def digest(token: str) -> bytes:
    """What the database keeps of a token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


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
    token = _PREFIX + secrets.token_urlsafe(32)
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


async def role_of(pool: asyncpg.Pool, token: str) -> str | None:
    """The role of a presented token, or None when it is no token of ours."""
    if not token.startswith(_PREFIX):
        return None
    wanted = digest(token)
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT role, digest FROM api_tokens WHERE digest = $1", wanted)
    # The lookup is by digest; the comparison again in constant time costs nothing.
    if row is None or not hmac.compare_digest(bytes(row["digest"]), wanted):
        return None
    return str(row["role"])


async def any_token(pool: asyncpg.Pool) -> bool:
    """Whether a token exists: until one does, the admin API is open (admin_auth)."""
    async with pool.acquire() as conn:
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM api_tokens)"))
