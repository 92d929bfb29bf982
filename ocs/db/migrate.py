"""Versioned SQL migrations, applied in order, each once, under an advisory lock.

Files in ``ocs/db/migrations`` are named ``NNNN_name.sql``; the version is the
number. Several processes may start at once: a PostgreSQL advisory lock makes
them apply migrations one at a time, and each sees what the others did.
"""

import logging
import re
from importlib import resources

import asyncpg

log = logging.getLogger("ocs.db")

_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# An arbitrary constant shared by every ocs process: "ocs" in ASCII.
_LOCK_KEY = 0x6F6373


def available_migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every shipped migration, in version order."""
    found = []
    for entry in resources.files("ocs.db").joinpath("migrations").iterdir():
        match = _NAME_RE.match(entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(pool: asyncpg.Pool) -> list[int]:
    """Apply pending migrations; returns the versions applied now."""
    applied_now: list[int] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in available_migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                log.info("applied migration", extra={"version": version, "migration": name})
                applied_now.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now
