"""Versioned SQL migrations, applied in order, each once, under an advisory lock.

Files in ``ocs/db/migrations`` are named ``NNNN_name.sql``; the version is the
number, and ``schema_migrations`` records each applied version with its name. Several
processes may start at once: a PostgreSQL advisory lock makes them apply migrations one
at a time, and each sees what the others did.

A version is used once, ever (``ocs/db/migrations/README.md``): the runner refuses to
start when two files share a version, when a recorded version's name is not its file's,
when a version not applied is lower than the highest applied (a file added below
what a database already has would never have been applied elsewhere in order), or when
the database has a version above every shipped file (a newer release migrated it: this
older code does not know its schema).

``migrate`` applies what is pending; ``check_migrated`` (a process started with
``migrate_on_start = false``) applies nothing and refuses a database with anything
pending, so that only ``ocs db migrate`` changes the schema.

Each file runs in one transaction whose lock waits are bounded (``migration_steps``); a
version may also have a step run after it in many transactions (a backfill), recorded as
unfinished until it is done and resumed by the next start if it was stopped.
"""

import asyncio
import logging
import re
from importlib import resources

import asyncpg

from ocs.config import ConfigError
from ocs.db.migration_steps import STEPS, MigrationLockTimeout, Progress, in_transaction

log = logging.getLogger("ocs.db")

_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# An arbitrary constant shared by every ocs process: "ocs" in ASCII.
_LOCK_KEY = 0x6F6373
# How often a process waiting for another's migrations tries the lock again.
LOCK_POLL_S = 0.2
# A line of SQL comment: a file made of these only has no statement to run.
_COMMENT_RE = re.compile(r"--[^\n]*")


class MigrationRefused(ConfigError):
    """The shipped migrations and the database's record disagree: nothing is applied.

    A ``ConfigError``: the command stops with one line and the configuration exit code
    (2), which the systemd units do not restart: starting again changes nothing until the
    installed release or ``ocs db migrate`` does."""


class MigrationBlocked(Exception):
    """A migration gave up waiting for a table another transaction kept locked; what it
    did was rolled back.

    Not a ``ConfigError``: the transaction ends sooner or later, and a later start applies
    the migration, so the command stops with one line and exit code 1, which the systemd
    units restart (decision 0009, addendum 2026-12-07)."""


def available_migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every shipped migration, in version order.

    ``MigrationRefused`` when a ``.sql`` file is not named ``NNNN_name.sql`` or two share
    a version."""
    found = []
    for entry in resources.files("ocs.db").joinpath("migrations").iterdir():
        match = _NAME_RE.match(entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text(encoding="utf-8")))
        elif entry.name.endswith(".sql"):
            raise MigrationRefused(
                f"migration file {entry.name}: not named NNNN_name.sql (lower case)"
            )
    found.sort()
    check_unique(found)
    return found


def check_unique(migrations: list[tuple[int, str, str]]) -> None:
    """``MigrationRefused`` naming the files of any version used twice."""
    names: dict[int, list[str]] = {}
    for version, name, _ in migrations:
        names.setdefault(version, []).append(f"{version:04d}_{name}.sql")
    twice = {v: files for v, files in names.items() if len(files) > 1}
    if twice:
        said = "; ".join(" and ".join(sorted(files)) for files in twice.values())
        raise MigrationRefused(f"migrations: one version, several files: {said}")


def check_against_applied(migrations: list[tuple[int, str, str]], applied: dict[int, str]) -> None:
    """``MigrationRefused`` when the database has a version newer than every shipped
    file, a recorded version's name is not its file's, or a version not applied is below
    the highest applied one."""
    check_not_newer(migrations, applied)
    wrong = [
        f"{version:04d} is {applied[version]!r} in schema_migrations, {name!r} in"
        f" {version:04d}_{name}.sql"
        for version, name, _ in migrations
        if version in applied and applied[version] != name
    ]
    if wrong:
        raise MigrationRefused(
            "migrations: a version applied under another name (each version names one"
            " migration, for ever): " + "; ".join(wrong)
        )
    highest = max(applied, default=0)
    below = [f"{v:04d}_{name}.sql" for v, name, _ in migrations if v not in applied and v < highest]
    if below:
        raise MigrationRefused(
            f"migrations: {', '.join(below)} not applied, below {highest:04d} already"
            " applied: a new migration takes a version above every shipped one"
        )


def check_not_newer(migrations: list[tuple[int, str, str]], applied: dict[int, str]) -> None:
    """``MigrationRefused`` naming the applied versions above every shipped file.

    A newer release migrated the database (a host upgraded first, or a rollback of the
    code alone): this release's code would run on a schema it does not know (after 0062
    an older billing worker's every posting breaks a CHECK), so it does not start."""
    known = max((version for version, _, _ in migrations), default=0)
    newer = [f"{v:04d}_{applied[v]}" for v in sorted(applied) if v > known]
    if newer:
        raise MigrationRefused(
            f"migrations: the database has {', '.join(newer)} applied, newer than {known:04d},"
            " the highest this ocs knows: a newer release migrated it; run that release"
            " (or a later one), never this one, on it"
        )


async def check_migrated(pool: asyncpg.Pool) -> None:
    """Apply nothing; ``MigrationRefused`` unless the database has exactly the shipped
    migrations, every step finished. The pending ones are named, with ``ocs db migrate``
    (a process started with ``migrate_on_start = false``)."""
    async with pool.acquire() as conn:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        # SELECT *: a database migrated before ``finished`` existed has every step done.
        rows = await conn.fetch("SELECT * FROM schema_migrations") if exists else []
    migrations = available_migrations()
    check_against_applied(migrations, {r["version"]: r["name"] for r in rows})
    done = {r["version"] for r in rows}
    pending = [
        f"{r['version']:04d}_{r['name']} (its step unfinished)"
        for r in sorted(rows, key=lambda r: r["version"])
        if not r.get("finished", True)
    ]
    pending += [f"{v:04d}_{name}" for v, name, _ in migrations if v not in done]
    if pending:
        # A new database has every migration pending: one readable line, not 60 names.
        said = (
            ", ".join(pending)
            if len(pending) <= 10
            else f"{pending[0]} ... {pending[-1]} ({len(pending)} migrations)"
        )
        raise MigrationRefused(
            f"migrations pending: {said}; migrate_on_start is false: apply them with"
            " `ocs db migrate`, then start"
        )


async def migrate(pool: asyncpg.Pool, *, progress: Progress | None = None) -> list[int]:
    """Apply pending migrations (finishing any step left unfinished); returns the
    versions applied now. ``progress`` is told after each range a step commits.

    ``MigrationRefused`` when the shipped files and the database disagree (nothing is
    applied); ``MigrationBlocked`` when a table stayed locked (the versions before the
    one it waited for stay applied)."""
    async with pool.acquire() as conn:
        # A role's statement_timeout would stop a long step (a backfill, an index build)
        # at every start. The pool resets it.
        await conn.execute("SET statement_timeout = 0")
        await _lock(conn)
        try:
            return await _migrate_locked(conn, progress)
        except MigrationLockTimeout as exc:
            raise MigrationBlocked(str(exc)) from exc
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
            await conn.execute("RESET statement_timeout")


async def _lock(conn: asyncpg.Connection) -> None:
    """The migration lock, tried every LOCK_POLL_S while another process holds it.

    Not waited for in ``pg_advisory_lock``: a backend waiting there holds a snapshot, and
    a step's ``CREATE INDEX CONCURRENTLY`` run by the holder waits for every older snapshot
    to end. Each waits for the other: PostgreSQL cancels one as a deadlock, an ``ocs``
    start failing for nothing (or the build, left INVALID). Between tries this process
    holds no snapshot."""
    waiting = False
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
        if not waiting:
            # One line: a start that seems stuck says what it waits for.
            log.info("waiting for another process's migrations")
            waiting = True
        await asyncio.sleep(LOCK_POLL_S)


async def _migrate_locked(conn: asyncpg.Connection, progress: Progress | None) -> list[int]:
    """``migrate`` under the advisory lock."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    # false while the version's step (migration_steps) has not run to its end.
    await conn.execute(
        "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS finished BOOLEAN NOT NULL"
        " DEFAULT true"
    )
    rows = await conn.fetch("SELECT version, name, finished FROM schema_migrations")
    migrations = available_migrations()
    check_unique(migrations)
    check_against_applied(migrations, {r["version"]: r["name"] for r in rows})
    for row in sorted(rows, key=lambda r: r["version"]):
        if not row["finished"]:
            log.info("resuming migration step", extra={"version": row["version"]})
            await _run_step(conn, row["version"], progress)
    done = {r["version"] for r in rows}
    applied_now: list[int] = []
    for version, name, sql in migrations:
        if version in done:
            continue
        await _apply(conn, version, name, sql)
        if version in STEPS:
            await _run_step(conn, version, progress)
        log.info("applied migration", extra={"version": version, "migration": name})
        applied_now.append(version)
    return applied_now


async def _apply(conn: asyncpg.Connection, version: int, name: str, sql: str) -> None:
    """One file in one transaction, recorded in it (unfinished when it has a step)."""

    async def run() -> None:
        """The file's SQL and its record."""
        if _COMMENT_RE.sub("", sql).strip():
            # asyncpg fails on a query with no statement (a file whose work is its step).
            await conn.execute(sql)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, finished) VALUES ($1, $2, $3)",
            version,
            name,
            version not in STEPS,
        )

    await in_transaction(conn, run, f"{version:04d}_{name}")


async def _run_step(conn: asyncpg.Connection, version: int, progress: Progress | None) -> None:
    """The step registered for ``version``, then its record marked finished."""
    step = STEPS.get(version)
    if step is None:
        raise MigrationRefused(
            f"migration {version:04d}: recorded unfinished, but this version of ocs has no"
            " step for it"
        )
    await step(conn, progress)
    await conn.execute("UPDATE schema_migrations SET finished = true WHERE version = $1", version)
