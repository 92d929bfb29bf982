"""The migration runner (decision 0009, addendum 2026-12-07).

Versions are used once: a database whose record disagrees with the shipped files (a
version applied under another name, two files with one version, a file added below what
the database has) stops every ``ocs`` start with one line naming them, exit code 2, and
nothing applied. Migration 0062's backfill runs in id ranges of their own transactions:
a reader of ``invoices`` goes on while it runs, a stopped backfill is resumed by the next
start, and the asks stored are those of the released single-UPDATE rule. A role's
``statement_timeout`` does not stop a migration, and a table kept locked by another
transaction stops it after a few bounded tries instead of queueing readers behind it:
that start exits 1, which the systemd units restart, and a later start applies it.

Upgrades: a database a newer release migrated stops every start of this one (it does not
know that schema), and with ``migrate_on_start = false`` a process finding migrations
pending stops, naming them, until ``ocs db migrate`` applies them.

Migration 0064's index on the ledger is built ``CONCURRENTLY`` by its step: the ledger
writer inserts meanwhile, a build stopped half-way (an INVALID index) is built again by
the next start, and a process waiting its turn meanwhile is not cancelled as a deadlock.
"""

import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import date
from importlib import resources
from pathlib import Path

import asyncpg
import pytest

from ocs.billing import posting
from ocs.billing.number_sets import CHARGED_AFTER
from ocs.config import Settings
from ocs.db import migrate as migrate_module
from ocs.db import migration_steps
from ocs.db.migrate import (
    MigrationBlocked,
    MigrationRefused,
    available_migrations,
    check_migrated,
    check_unique,
    migrate,
)
from ocs.runtime import prepare_schema
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, customer, invoices, run
from tests.conftest import eventually, with_database


def test_shipped_migration_versions_are_unique_and_the_gaps_stay_empty() -> None:
    names = [
        entry.name
        for entry in resources.files("ocs.db").joinpath("migrations").iterdir()
        if entry.name.endswith(".sql")
    ]
    versions = [int(name[:4]) for name in names]
    assert all(re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", name) for name in names), names
    assert len(versions) == len(set(versions)), sorted(names)
    # Skipped once, never to be filled: a database past them would refuse to start.
    assert {57, 61}.isdisjoint(versions)
    assert [v for v, _, _ in available_migrations()] == sorted(versions)


def test_two_files_with_one_version_are_named() -> None:
    with pytest.raises(MigrationRefused) as refused:
        check_unique([(55, "a", ""), (56, "old_forms_gone", ""), (56, "other", "")])
    assert "0056_old_forms_gone.sql and 0056_other.sql" in str(refused.value)


@pytest.fixture
async def fresh_url(backend_urls: tuple[str, str]) -> AsyncIterator[str]:
    """The URL of a new empty database of its own, dropped after the test."""
    admin = await asyncpg.connect(backend_urls[1])
    name = f"ocs_migrations_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(backend_urls[1], name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def fresh_pool(fresh_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on ``fresh_url``."""
    pool = await asyncpg.create_pool(fresh_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


async def recorded(pool: asyncpg.Pool) -> dict[int, str]:
    """schema_migrations: version -> name."""
    rows = await pool.fetch("SELECT version, name FROM schema_migrations")
    return {r["version"]: r["name"] for r in rows}


async def test_a_version_applied_under_another_name_stops_the_start(
    fresh_pool: asyncpg.Pool, fresh_url: str, redis_url: str, tmp_path: Path
) -> None:
    await migrate(fresh_pool)
    # As a database migrated with the other of two 0056 files once was.
    await fresh_pool.execute("UPDATE schema_migrations SET name = 'other' WHERE version = 56")
    with pytest.raises(MigrationRefused) as refused:
        await migrate(fresh_pool)
    assert "0056 is 'other' in schema_migrations, 'old_forms_gone' in 0056_old_forms_gone.sql" in (
        str(refused.value)
    )
    # Every ocs command migrates first: it stops there, as on a configuration error.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocs",
        "db",
        "migrate",
        "--database-url",
        fresh_url,
        "--redis-url",
        redis_url,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert "0056 is 'other' in schema_migrations" in stderr.decode()


async def test_two_files_with_one_version_stop_the_start_and_apply_nothing(
    fresh_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = available_migrations()
    monkeypatch.setattr(
        migrate_module,
        "available_migrations",
        lambda: sorted([m for m in shipped if m[0] <= 56] + [(56, "other", "CREATE TABLE x ()")]),
    )
    with pytest.raises(MigrationRefused) as refused:
        await migrate(fresh_pool)
    assert "0056_old_forms_gone.sql and 0056_other.sql" in str(refused.value)
    assert await recorded(fresh_pool) == {}


async def test_a_version_below_the_highest_applied_is_refused_not_applied_late(
    fresh_pool: asyncpg.Pool,
) -> None:
    await migrate(fresh_pool)
    # As if 0056 had been added to a release after 0064 was applied.
    await fresh_pool.execute("DELETE FROM schema_migrations WHERE version = 56")
    highest = max(await recorded(fresh_pool))
    with pytest.raises(MigrationRefused) as refused:
        await migrate(fresh_pool)
    assert f"0056_old_forms_gone.sql not applied, below {highest:04d} already applied" in str(
        refused.value
    )
    assert 56 not in await recorded(fresh_pool)


async def migrated_to(pool: asyncpg.Pool, last: int) -> None:
    """``pool``'s database migrated up to version ``last``, as a release that shipped it."""
    shipped = available_migrations()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            migrate_module, "available_migrations", lambda: [m for m in shipped if m[0] <= last]
        )
        await migrate(pool)


CURRENCIES = ["EUR", "JPY", "KWD", "CLF", "USD"]
INVOICES = 3_000

# Posted invoices of every currency (one a day of an account's), some drafts; due and new
# charges spread over 0..50 units with odd micro-units (some paid ahead: due 0), so asks
# round up and down.
INSERT_INVOICES = """
INSERT INTO invoices (account_id, plan_id, state, number, period_start, period_end,
    period_label, currency, invoice_date, taxes_calculated, previous_balance, debited,
    new_charges, closing_balance, amount_due)
SELECT lower(c), lower(c), CASE WHEN g % 17 = 0 THEN 'draft' ELSE 'posted' END,
    CASE WHEN g % 17 = 0 THEN NULL ELSE 'INV-' || g END,
    timestamptz '2000-01-01Z' + g * interval '1 day',
    timestamptz '2000-01-02Z' + g * interval '1 day', 'day ' || g, c, date '2026-04-01',
    true, new - due, new, new, -due, due
FROM generate_series(1, $1) g,
    LATERAL (SELECT ($2::text[])[1 + g % array_length($2::text[], 1)] AS c) cur,
    LATERAL (SELECT CASE WHEN g % 11 = 0 THEN 0 ELSE (g::bigint * 7919 * 1013) % 50000000
                    END AS due,
                    (g::bigint * 104729 * 7) % 40000000 + (g % 3) * 500 AS new) amounts
"""
# Some paid under the old rule: the exact ask, or what a bank pays (cut to cents).
PAY_SOME = """
UPDATE invoices SET amount_paid = CASE WHEN id % 2 = 0 THEN GREATEST(LEAST(amount_due,
        new_charges), 0) ELSE GREATEST(LEAST(amount_due, new_charges), 0) / 10000 * 10000 END,
    paid_at = CASE WHEN id % 2 = 0 THEN timestamptz '2026-04-20Z' END
WHERE state = 'posted' AND id % 5 = 0
"""
# The rule as released in the single-UPDATE 0062: what each posted invoice asks.
OLD_RULE = """
WITH minor (code, exponent) AS (VALUES
    ('BHD', 3), ('BIF', 0), ('CLF', 4), ('CLP', 0), ('DJF', 0), ('GNF', 0),
    ('IQD', 3), ('ISK', 0), ('JOD', 3), ('JPY', 0), ('KMF', 0), ('KRW', 0),
    ('KWD', 3), ('LYD', 3), ('OMR', 3), ('PYG', 0), ('RWF', 0), ('TND', 3),
    ('UGX', 0), ('UYI', 0), ('UYW', 4), ('VND', 0), ('VUV', 0), ('XAF', 0),
    ('XOF', 0), ('XPF', 0)
),
asks AS (
    SELECT i.id, GREATEST(LEAST(i.amount_due, i.new_charges), 0) AS exact,
           (10::numeric ^ (6 - COALESCE(m.exponent, 2)))::bigint AS step
    FROM invoices i LEFT JOIN minor m ON m.code = i.currency::text
    WHERE i.state = 'posted'
)
SELECT i.id, CASE
        WHEN i.amount_paid >= a.exact
            THEN LEAST((a.exact + a.step / 2) / a.step * a.step, i.amount_paid)
        ELSE (a.exact + a.step / 2) / a.step * a.step
    END AS asked, i.paid_at IS NOT NULL AS paid_before, i.amount_paid
FROM invoices i JOIN asks a ON a.id = i.id
"""


async def invoices_before_0062(pool: asyncpg.Pool) -> tuple[dict[int, int], set[int]]:
    """A database at 0061 with INVOICES invoices; what the released rule asks of each
    posted one, and which are paid afterwards (before, or settled by the rounded ask)."""
    await migrated_to(pool, 61)
    for c in CURRENCIES:
        await pool.execute(
            "INSERT INTO plans (id, name, currency) VALUES ($1, $1, $2)", c.lower(), c
        )
        await pool.execute(
            "INSERT INTO accounts (id, plan_id, currency, credit_limit, max_lines, status)"
            " VALUES ($1, $1, $2, 0, 1, 'active')",
            c.lower(),
            c,
        )
    await pool.execute(INSERT_INVOICES, INVOICES, CURRENCIES)
    await pool.execute(PAY_SOME)
    rows = await pool.fetch(OLD_RULE)
    asks = {r["id"]: r["asked"] for r in rows}
    settled = {r["id"] for r in rows if r["asked"] > 0 and r["amount_paid"] >= r["asked"]}
    paid_before = {r["id"] for r in rows if r["paid_before"]}
    # Some paid in cents are settled by the rounded ask: the backfill marks them paid.
    assert settled - paid_before
    return asks, paid_before | settled


async def stored_asks(pool: asyncpg.Pool) -> tuple[dict[int, int], set[int]]:
    """Each posted invoice's stored ask, and which posted ones are paid."""
    rows = await pool.fetch("SELECT id, amount_asked, paid_at FROM invoices WHERE state = 'posted'")
    return {r["id"]: r["amount_asked"] for r in rows}, {
        r["id"] for r in rows if r["paid_at"] is not None
    }


async def test_0062_backfills_in_ranges_the_released_rule_while_readers_go_on(
    fresh_pool: asyncpg.Pool, fresh_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected_asks, expected_paid = await invoices_before_0062(fresh_pool)
    assert len(expected_asks) > 2_500 and len(set(expected_asks.values())) > 1_000
    assert {r[0] for r in await fresh_pool.fetch("SELECT DISTINCT currency FROM invoices")} == set(
        CURRENCIES
    )
    monkeypatch.setattr(migration_steps, "BACKFILL_RANGE", 200)
    seen: list[tuple[int, int]] = []
    reader = await asyncpg.connect(fresh_url)

    async def read_while_filling(version: int, done: int, total: int) -> None:
        """Once, after the first range: another connection reads invoices, bounded."""
        if seen:
            return
        # Blocked by a lock, it would fail here (after 5 s) instead of hanging the test.
        await reader.execute("SET lock_timeout = 5000")
        row = await reader.fetchrow(
            "SELECT count(*) FILTER (WHERE amount_asked IS NOT NULL) AS filled,"
            " count(*) FILTER (WHERE state = 'posted') AS posted FROM invoices"
        )
        seen.append((row["filled"], row["posted"]))

    try:
        await migrate(fresh_pool, progress=read_while_filling)
    finally:
        await reader.close()
    # The reader saw the first range filled and the rest not yet: it ran mid-backfill.
    [(filled, posted)] = seen
    assert 0 < filled < posted == len(expected_asks)
    assert await stored_asks(fresh_pool) == (expected_asks, expected_paid)
    validated = await fresh_pool.fetch(
        "SELECT conname, convalidated FROM pg_constraint WHERE conrelid = 'invoices'::regclass"
        " AND conname IN ('invoices_posted_asks', 'invoices_amount_asked_check')"
    )
    assert {r["conname"]: r["convalidated"] for r in validated} == {
        "invoices_posted_asks": True,
        "invoices_amount_asked_check": True,
    }
    assert await fresh_pool.fetchval("SELECT bool_and(finished) FROM schema_migrations")


async def test_a_backfill_stopped_half_way_is_finished_by_the_next_start(
    fresh_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected_asks, expected_paid = await invoices_before_0062(fresh_pool)
    monkeypatch.setattr(migration_steps, "BACKFILL_RANGE", 500)

    async def killed(version: int, done: int, total: int) -> None:
        """The process stopped after the first range (systemd's start timeout)."""
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await migrate(fresh_pool, progress=killed)
    asks, _ = await stored_asks(fresh_pool)
    assert 0 < sum(a is not None for a in asks.values()) < len(asks)
    assert not await fresh_pool.fetchval(
        "SELECT finished FROM schema_migrations WHERE version = 62"
    )
    # 0063 and 0064 wait for it.
    assert max(await recorded(fresh_pool)) == 62

    await migrate(fresh_pool)
    assert await stored_asks(fresh_pool) == (expected_asks, expected_paid)
    assert max(await recorded(fresh_pool)) == max(v for v, _, _ in available_migrations())


async def test_a_role_statement_timeout_does_not_stop_a_migration_waiting_its_turn(
    fresh_pool: asyncpg.Pool, fresh_url: str
) -> None:
    database = await fresh_pool.fetchval("SELECT current_database()")
    await fresh_pool.execute(f'ALTER DATABASE "{database}" SET statement_timeout = 200')
    # Pooled connections opened after this read the database's setting.
    await fresh_pool.expire_connections()
    other = await asyncpg.connect(fresh_url)
    try:
        # Another process migrating: this one waits for the lock, longer than 200 ms.
        await other.execute("SELECT pg_advisory_lock($1)", migrate_module._LOCK_KEY)
        migrating = asyncio.create_task(migrate(fresh_pool))

        since = await other.fetchval("SELECT clock_timestamp()")

        async def waited_past_the_timeout() -> bool:
            if migrating.done():
                migrating.result()  # its error, if it failed
                return False
            # It tries the lock again and again (never waiting in it: see the test of
            # 0064's build below), still trying a second after it began.
            return bool(
                await other.fetchval(
                    "SELECT true FROM pg_stat_activity WHERE datname = current_database()"
                    " AND query = 'SELECT pg_try_advisory_lock($1)'"
                    " AND query_start > $1::timestamptz + interval '1 second'",
                    since,
                )
            )

        await eventually(waited_past_the_timeout, what="a migration waiting past the timeout")
        await other.execute("SELECT pg_advisory_unlock($1)", migrate_module._LOCK_KEY)
        applied = await migrating
    finally:
        await other.close()
    assert max(applied) == max(v for v, _, _ in available_migrations())


async def test_a_table_locked_by_a_long_transaction_stops_the_migration_after_a_few_tries(
    fresh_pool: asyncpg.Pool, fresh_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrated_to(fresh_pool, 60)
    monkeypatch.setattr(migration_steps, "LOCK_TIMEOUT_MS", 100)
    monkeypatch.setattr(migration_steps, "LOCK_TRIES", 3)
    monkeypatch.setattr(migration_steps, "LOCK_RETRY_PAUSE_S", 0.0)
    billing = await asyncpg.connect(fresh_url)
    try:
        # A billing run reading invoices in a long transaction: 0062's ALTER must wait.
        transaction = billing.transaction()
        await transaction.start()
        await billing.fetchval("SELECT count(*) FROM invoices")
        with pytest.raises(MigrationBlocked) as blocked:
            await asyncio.wait_for(migrate(fresh_pool), 30)
        assert "migration 0062_invoice_amount_asked: a table it changes stayed locked" in str(
            blocked.value
        )
        assert max(await recorded(fresh_pool)) == 60
        await transaction.rollback()
    finally:
        await billing.close()
    await migrate(fresh_pool)
    assert 62 in await recorded(fresh_pool)


# Run before ``ocs``'s command line by ``run_ocs(..., prelude=SHORT_LOCK_WAITS)``: a
# migration gives up on a locked table after 3 tries of 100 ms, not 5 of 5 s.
SHORT_LOCK_WAITS = (
    "from ocs.db import migration_steps as steps\n"
    "steps.LOCK_TIMEOUT_MS, steps.LOCK_TRIES, steps.LOCK_RETRY_PAUSE_S = 100, 3, 0.0\n"
)


async def test_a_start_a_table_lock_stopped_exits_1_for_its_unit_to_start_it_again(
    fresh_pool: asyncpg.Pool, fresh_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Exit code 1, not 2: the units restart on 1 (RestartPreventExitStatus=2) and the lock
    is released sooner or later, when a restart applies the migration."""
    await migrated_to(fresh_pool, 60)
    stores = {"database_url": fresh_url, "redis_url": redis_url, "cwd": tmp_path}
    billing = await asyncpg.connect(fresh_url)
    try:
        # A billing run reading invoices in a long transaction: 0062's ALTER must wait.
        transaction = billing.transaction()
        await transaction.start()
        await billing.fetchval("SELECT count(*) FROM invoices")
        # The --workers parent migrates (and is refused) before it starts any worker.
        for command in [("serve",), ("serve", "--workers", "2"), ("billing-worker", "--once")]:
            code, stdout, stderr = await run_ocs(*command, **stores, prelude=SHORT_LOCK_WAITS)
            assert (code, stdout) == (1, ""), (command, stderr)
            assert (
                "ocs: migration 0062_invoice_amount_asked: a table it changes stayed locked by"
                " another transaction (3 tries of 100 ms)"
            ) in stderr, (command, stderr)
            assert "configuration error" not in stderr, (command, stderr)
            assert max(await recorded(fresh_pool)) == 60
        await transaction.rollback()
    finally:
        await billing.close()
    # The start after the lock is gone migrates and runs (the worker's one pass).
    code, _, stderr = await run_ocs("billing-worker", "--once", **stores, prelude=SHORT_LOCK_WAITS)
    assert code == 0, stderr
    assert max(await recorded(fresh_pool)) == max(v for v, _, _ in available_migrations())


async def run_ocs(
    *args: str, database_url: str, redis_url: str, cwd: Path, prelude: str = "", **settings: str
) -> tuple[int, str, str]:
    """``ocs *args`` in a process of its own on these stores, with ``settings`` as
    ``OCS_<KEY>`` variables: (exit code, stdout, stderr). ``prelude``: Python run in that
    process before the command line."""
    env = {k: v for k, v in os.environ.items() if k != "OCS_MIGRATE_ON_START"}
    env.update({f"OCS_{key.upper()}": value for key, value in settings.items()})
    # Nothing listens where a test runs beside others: no RADIUS, any free HTTP port.
    env.update(OCS_DATABASE_URL=database_url, OCS_REDIS_URL=redis_url, OCS_DATA_DIR=str(cwd))
    env.update(OCS_RADIUS_ENABLED="false", OCS_HTTP_PORT="0")
    entry = ["-c", f"{prelude}\nimport sys\nfrom ocs.cli import main\nsys.exit(main())"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *(entry if prelude else ["-m", "ocs"]),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    try:
        # A refused start ends at once; one that was not refused would serve on.
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def highest_shipped() -> tuple[int, str]:
    """(version, name) of the last shipped migration."""
    version, name, _ = available_migrations()[-1]
    return version, name


async def test_a_database_a_newer_release_migrated_stops_every_start_of_this_one(
    fresh_pool: asyncpg.Pool, fresh_url: str, redis_url: str, tmp_path: Path
) -> None:
    await migrate(fresh_pool)
    known, _ = highest_shipped()
    # What a newer release recorded: this one has no such file and does not know the schema.
    await fresh_pool.execute(
        "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_a_newer_release')",
        known + 1,
    )
    before = await recorded(fresh_pool)
    line = (
        f"the database has {known + 1:04d}_from_a_newer_release applied, newer than"
        f" {known:04d}, the highest this ocs knows"
    )
    with pytest.raises(MigrationRefused, match=line):
        await migrate(fresh_pool)
    with pytest.raises(MigrationRefused, match=line):
        await check_migrated(fresh_pool)
    stores = {"database_url": fresh_url, "redis_url": redis_url, "cwd": tmp_path}
    for command, settings in [
        (("serve",), {}),
        (("plans", "list"), {"migrate_on_start": "false"}),
        (("db", "migrate"), {}),
    ]:
        code, stdout, stderr = await run_ocs(*command, **stores, **settings)
        assert (code, stdout) == (2, ""), (command, stderr)
        assert f"ocs: configuration error: migrations: {line}" in stderr, (command, stderr)
    assert await recorded(fresh_pool) == before


async def test_without_migrate_on_start_a_pending_migration_stops_the_start_until_db_migrate(
    fresh_pool: asyncpg.Pool, fresh_url: str, redis_url: str, tmp_path: Path
) -> None:
    last, name = highest_shipped()
    await migrated_to(fresh_pool, last - 1)
    before = await recorded(fresh_pool)
    stores = {"database_url": fresh_url, "redis_url": redis_url, "cwd": tmp_path}
    # The --workers parent looks before it starts any worker.
    for command in [("serve",), ("serve", "--workers", "2"), ("plans", "list")]:
        code, stdout, stderr = await run_ocs(*command, **stores, migrate_on_start="false")
        assert (code, stdout) == (2, ""), (command, stderr)
        assert (
            f"ocs: configuration error: migrations pending: {last:04d}_{name};"
            " migrate_on_start is false: apply them with `ocs db migrate`, then start"
        ) in stderr, (command, stderr)
        assert await recorded(fresh_pool) == before
    # `ocs db migrate` is the step that applies them, whatever the setting.
    code, stdout, stderr = await run_ocs("db", "migrate", **stores, migrate_on_start="false")
    assert code == 0, stderr
    assert json.loads(stdout) == {"applied_now": [last]}
    assert await recorded(fresh_pool) == {**before, last: name}
    code, stdout, stderr = await run_ocs("plans", "list", **stores, migrate_on_start="false")
    assert (code, json.loads(stdout)) == (0, {"plans": []}), stderr


async def test_with_migrate_on_start_a_command_applies_what_is_pending(
    fresh_pool: asyncpg.Pool, fresh_url: str, redis_url: str, tmp_path: Path
) -> None:
    last, name = highest_shipped()
    await migrated_to(fresh_pool, last - 1)
    stores = {"database_url": fresh_url, "redis_url": redis_url, "cwd": tmp_path}
    code, stdout, stderr = await run_ocs("plans", "list", **stores)
    assert (code, json.loads(stdout)) == (0, {"plans": []}), stderr
    assert (await recorded(fresh_pool))[last] == name


async def test_without_migrate_on_start_an_unfinished_step_or_a_new_database_is_refused(
    fresh_pool: asyncpg.Pool,
) -> None:
    shipped = available_migrations()
    first, last = shipped[0], shipped[-1]
    off = Settings(migrate_on_start=False)
    with pytest.raises(MigrationRefused) as refused:
        await prepare_schema(off, fresh_pool)
    # A new database: every version pending, said in one readable line, nothing created.
    assert (
        f"migrations pending: {first[0]:04d}_{first[1]} ... {last[0]:04d}_{last[1]}"
        f" ({len(shipped)} migrations);" in str(refused.value)
    )
    assert await fresh_pool.fetchval("SELECT to_regclass('schema_migrations')") is None
    assert await prepare_schema(Settings(), fresh_pool) == [v for v, _, _ in shipped]
    assert await prepare_schema(off, fresh_pool) == []
    # 0062's backfill stopped half-way: a process that may not migrate does not resume it.
    await fresh_pool.execute("UPDATE schema_migrations SET finished = false WHERE version = 62")
    with pytest.raises(MigrationRefused) as refused:
        await prepare_schema(off, fresh_pool)
    assert "migrations pending: 0062_invoice_amount_asked (its step unfinished);" in str(
        refused.value
    )


# Fee lines as releases before 0066 wrote them, on a posted invoice: bundle ``pro``
# ("Pro") has rules 1 "monthly fee", 2 "monthly fee extra" (whose text begins with rule
# 1's) and 3 "setup". A line of a bundle renamed since ("Old"), a fee line naming no
# subscription bundle (before 0052) and a usage line keep no rule.
FEE_LINES_BEFORE_0066 = [
    ("Pro: monthly fee 2026-02-10..2026-03-10, 10.00 per monthly", True, 1),
    ("Pro: monthly fee extra 2026-02-10..2026-03-10, 2.00 per monthly", True, 2),
    ("Pro: setup (one-off)", True, 3),
    ("Old: monthly fee 2026-02-10..2026-03-10, 10.00 per monthly", True, None),
    ("Pro: monthly fee 2026-01-10..2026-02-10, 10.00 per monthly", False, None),
]


async def fee_lines_before_0066(pool: asyncpg.Pool) -> int:
    """A database at 0064 with a posted invoice holding ``FEE_LINES_BEFORE_0066`` and a
    usage line; its id."""
    await migrated_to(pool, 64)
    await pool.execute("INSERT INTO plans (id, name, currency) VALUES ('p', 'p', 'EUR')")
    await pool.execute(
        "INSERT INTO accounts (id, plan_id, currency, credit_limit, max_lines, status)"
        " VALUES ('a1', 'p', 'EUR', 0, 1, 'active')"
    )
    await pool.execute("INSERT INTO bundles (id, name, currency) VALUES ('pro', 'Pro', 'EUR')")
    await pool.execute(
        "INSERT INTO bundle_rules (bundle_id, position, kind, description, amount,"
        " periodicity, timing) VALUES"
        " ('pro', 1, 'flat_fee', 'monthly fee', 10000000, 'monthly', 'upfront'),"
        " ('pro', 2, 'flat_fee', 'monthly fee extra', 2000000, 'monthly', 'upfront'),"
        " ('pro', 3, 'flat_fee', 'setup', 30000000, 'one_shot', 'upfront')"
    )
    sub = await pool.fetchval(
        "INSERT INTO subscriptions (account_id, plan_id, start_date, status)"
        " VALUES ('a1', 'p', '2026-01-01', 'active') RETURNING id"
    )
    held = await pool.fetchval(
        "INSERT INTO subscription_bundles (subscription_id, bundle_id, start_date)"
        " VALUES ($1, 'pro', '2026-01-10') RETURNING id",
        sub,
    )
    invoice = await pool.fetchval(
        "INSERT INTO invoices (account_id, plan_id, period_start, period_end, period_label,"
        " currency, invoice_date, taxes_calculated) VALUES ('a1', 'p', '2026-01-01Z',"
        " '2026-02-01Z', '2026-01', 'EUR', '2026-02-01', true) RETURNING id"
    )
    for position, (description, named, _) in enumerate(FEE_LINES_BEFORE_0066, 1):
        await pool.execute(
            "INSERT INTO invoice_lines (invoice_id, position, kind, description, amount,"
            " exact_amount, moves_money, subscription_bundle_id)"
            " VALUES ($1, $2, 'bundle_fee', $3, 1000000, 1000000, true, $4)",
            invoice,
            position,
            description,
            held if named else None,
        )
    await pool.execute(
        "INSERT INTO invoice_lines (invoice_id, position, kind, description, amount,"
        " exact_amount, moves_money, subscription_bundle_id)"
        " VALUES ($1, 99, 'usage', 'Pro: monthly fee calls', 0, 0, false, $2)",
        invoice,
        held,
    )
    await pool.execute(
        "UPDATE invoices SET state = 'posted', number = 'INV-1', amount_asked = 0 WHERE id = $1",
        invoice,
    )
    return invoice


async def test_0066_names_the_rule_of_the_fee_lines_posted_before_it(
    fresh_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each fee line of a posted invoice gets the position of the rule its text names (the
    longest of those it begins with), in ranges of two lines; the posted lines' other
    columns stay as they were, and a rule once named is final."""
    invoice = await fee_lines_before_0066(fresh_pool)
    monkeypatch.setattr(migration_steps, "BACKFILL_RANGE", 2)
    before = await fresh_pool.fetch(
        "SELECT * FROM invoice_lines WHERE invoice_id = $1 ORDER BY position", invoice
    )
    await migrate(fresh_pool)

    rows = await fresh_pool.fetch(
        "SELECT * FROM invoice_lines WHERE invoice_id = $1 ORDER BY position", invoice
    )
    assert [(r["description"], r["bundle_rule_position"]) for r in rows] == [
        *((description, position) for description, _, position in FEE_LINES_BEFORE_0066),
        ("Pro: monthly fee calls", None),
    ]
    # A column a later migration adds (0071's adjustment) is not compared.
    unchanged = [
        {k: r[k] for k in dict(b) if k != "bundle_rule_position"}
        for r, b in zip(rows, before, strict=True)
    ]
    assert unchanged == [
        {k: v for k, v in b.items() if k != "bundle_rule_position"} for b in before
    ]
    with pytest.raises(asyncpg.CheckViolationError):
        await fresh_pool.execute(
            "UPDATE invoice_lines SET bundle_rule_position = 2 WHERE invoice_id = $1"
            " AND bundle_rule_position = 1",
            invoice,
        )
    assert await fresh_pool.fetchval("SELECT bool_and(finished) FROM schema_migrations")


async def test_0066_names_a_rule_only_on_a_flat_fee_line_and_only_a_flat_fee_rule_of_its_bundle(
    fresh_pool: asyncpg.Pool,
) -> None:
    """After the backfill, a posted line's rule can still be named once, as the backfill
    does: on a flat fee line naming its subscription bundle, a flat fee rule of that
    bundle. Any other line, or a position no flat fee rule of the bundle holds, stays as
    posted."""
    invoice = await fee_lines_before_0066(fresh_pool)
    await migrate(fresh_pool)

    async def name_rule(description: str, position: int) -> None:
        await fresh_pool.execute(
            "UPDATE invoice_lines SET bundle_rule_position = $3 WHERE invoice_id = $1"
            " AND description = $2",
            invoice,
            description,
            position,
        )

    renamed, unnamed = FEE_LINES_BEFORE_0066[3][0], FEE_LINES_BEFORE_0066[4][0]
    for description, position in ((renamed, 9), (unnamed, 1), ("Pro: monthly fee calls", 1)):
        with pytest.raises(asyncpg.CheckViolationError, match="posted invoice are final"):
            await name_rule(description, position)
    await name_rule(renamed, 1)
    rows = await fresh_pool.fetch(
        "SELECT description, bundle_rule_position FROM invoice_lines WHERE invoice_id = $1"
        " ORDER BY position",
        invoice,
    )
    assert [(r["description"], r["bundle_rule_position"]) for r in rows] == [
        *((d, 1 if d == renamed else p) for d, _, p in FEE_LINES_BEFORE_0066),
        ("Pro: monthly fee calls", None),
    ]


async def test_0066_leaves_a_line_two_rules_of_one_text_could_bill_to_its_text(
    services: Services,
) -> None:
    """Bundle ``pro`` has two flat fees both described "monthly fee" (10.00 and 3.00,
    upfront), taken from February 10: January's posted invoice bills both periods from
    Feb 10, its lines written as before 0066 (no rule named). The backfill cannot tell
    which rule each line bills, and names neither: February bills each fee's period from
    March 10 only, neither of January's again."""
    await billed_plan(services)
    await services.pool.execute(
        "INSERT INTO bundles (id, name, currency) VALUES ('pro', 'Pro', 'EUR')"
    )
    await services.pool.execute(
        "INSERT INTO bundle_rules (bundle_id, position, kind, description, amount,"
        " periodicity, timing) VALUES"
        " ('pro', 1, 'flat_fee', 'monthly fee', 10000000, 'monthly', 'upfront'),"
        " ('pro', 2, 'flat_fee', 'monthly fee', 3000000, 'monthly', 'upfront')"
    )
    sub = await customer(services, "a1", None, date(2026, 1, 1))
    await services.pool.execute(
        "INSERT INTO subscription_bundles (subscription_id, bundle_id, start_date)"
        " VALUES ($1, 'pro', '2026-02-10')",
        sub,
    )
    january = await run(services, "2026-01", invoice_date=date(2026, 2, 1))
    await posting.post(services.pool, services.store, run_id=january)
    # As lines from before 0066 are (the posted lines' guard set aside for it).
    await services.pool.execute("ALTER TABLE invoice_lines DISABLE TRIGGER invoice_lines_frozen")
    try:
        await services.pool.execute(
            "UPDATE invoice_lines SET bundle_rule_position = NULL WHERE kind = 'bundle_fee'"
        )
    finally:
        await services.pool.execute("ALTER TABLE invoice_lines ENABLE TRIGGER invoice_lines_frozen")
    async with services.pool.acquire() as conn:
        await migration_steps.STEPS[66](conn, None)
    await run(services, "2026-02", invoice_date=date(2026, 3, 1))

    fees = {
        i["label"]: sorted(
            (line["description"], line["amount"])
            for line in i["lines"]
            if line["description"].startswith("Pro:")
        )
        for i in await invoices(services)
    }
    assert fees == {
        "2026-01": [
            ("Pro: monthly fee 2026-02-10..2026-03-10, 10.00 per monthly", 10 * EUR),
            ("Pro: monthly fee 2026-02-10..2026-03-10, 3.00 per monthly", 3 * EUR),
        ],
        "2026-02": [
            ("Pro: monthly fee 2026-03-10..2026-04-10, 10.00 per monthly", 10 * EUR),
            ("Pro: monthly fee 2026-03-10..2026-04-10, 3.00 per monthly", 3 * EUR),
        ],
    }


# Ledger rows as the writer keeps them: calls, and one payment credit ("pay:<id>") in 50.
INSERT_LEDGER = """
INSERT INTO ledger (entry_id, account_id, kind, amount, balance_after, reference, occurred_at)
SELECT 'b0-' || g, 'acct' || g % 10, CASE WHEN g % 50 = 0 THEN 'topup' ELSE 'call' END,
    CASE WHEN g % 50 = 0 THEN 5000000 ELSE -1234 END, 0,
    CASE WHEN g % 50 = 0 THEN 'pay:' || g ELSE 'call-' || g END,
    timestamptz '2026-11-01Z' + g * interval '1 minute'
FROM generate_series(1, $1) g
"""
LEDGER_ROWS = 5_000
# The lookup ocs.billing.credit makes, over every payment credit.
CREDITS = "SELECT count(*) FROM ledger WHERE reference LIKE 'pay:%'"


async def ledger_at_0063(pool: asyncpg.Pool) -> None:
    """A database at 0063 (before the payment credit index) with LEDGER_ROWS rows."""
    await migrated_to(pool, 63)
    await pool.execute(INSERT_LEDGER, LEDGER_ROWS)


async def insert_credit(conn: asyncpg.Connection, payment: str) -> None:
    """One payment credit's ledger row, as the ledger writer inserts it."""
    await conn.execute(
        "INSERT INTO ledger (entry_id, account_id, kind, amount, balance_after, reference,"
        " occurred_at) VALUES ($1, 'acct1', 'topup', 1000000, 0, $2, now())",
        f"b1-{payment}",
        f"pay:{payment}",
    )


async def credit_index(pool: asyncpg.Pool) -> tuple[bool, str] | None:
    """(valid, definition) of ledger_payment_credit_idx, or None when there is none."""
    row = await pool.fetchrow(
        "SELECT indisvalid, pg_get_indexdef(indexrelid) AS definition FROM pg_index"
        " WHERE indexrelid = to_regclass('ledger_payment_credit_idx')"
    )
    return None if row is None else (row["indisvalid"], row["definition"])


async def credits_by_the_index(pool: asyncpg.Pool) -> int:
    """How many payment credits the lookup finds, read through the index (it fails if
    the planner cannot use it: an INVALID index is never used)."""
    async with pool.acquire() as conn:
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {CREDITS}"))
        assert "ledger_payment_credit_idx" in plan, plan
        return int(await conn.fetchval(CREDITS))


INDEX_DEFINITION = (
    "CREATE INDEX ledger_payment_credit_idx ON public.ledger USING btree (reference)"
    " WHERE (reference ~~ 'pay:%'::text)"
)


# Numbers given back before 0068, as number_sets.release wrote their events: 4420100
# twice, 4420102 once; 4420101 only taken (an assigned event's day is not an end).
RELEASES_BEFORE_0068 = [
    ("number.released", "4420100", "2026-02-01"),
    ("number.assigned", "4420101", "2026-02-20"),
    ("number.released", "4420100", "2026-03-05"),
    ("number.released", "4420102", "2026-02-10"),
]


async def test_0068_dates_the_numbers_given_back_before_it_and_indexes_their_charges(
    fresh_pool: asyncpg.Pool,
) -> None:
    await migrated_to(fresh_pool, 67)
    await fresh_pool.execute("INSERT INTO number_sets (id, kind) VALUES ('dids', 'did')")
    await fresh_pool.execute(
        "INSERT INTO number_set_numbers (number, number_set_id)"
        " VALUES ('4420100', 'dids'), ('4420101', 'dids'), ('4420102', 'dids')"
    )
    for kind, number, on in RELEASES_BEFORE_0068:
        await fresh_pool.execute(
            "INSERT INTO events (kind, subject, data) VALUES ($1, 'n1', $2::jsonb)",
            kind,
            json.dumps({"account_id": "n1", "number": number, "on": on}),
        )
    assert 68 in await migrate(fresh_pool)

    # A take is not dated before these (a hold free of charge left no other end).
    rows = await fresh_pool.fetch("SELECT number, freed_on FROM number_set_numbers")
    assert {r["number"]: r["freed_on"] for r in rows} == {
        "4420100": date(2026, 3, 5),
        "4420101": None,
        "4420102": date(2026, 2, 10),
    }
    assert await fresh_pool.fetchval(
        "SELECT indisvalid FROM pg_index"
        " WHERE indexrelid = to_regclass('account_numbers_number_idx')"
    )
    # The take's check that no one else is charged for the number after its day reads
    # the number's rows through it, not the whole table.
    async with fresh_pool.acquire() as conn:
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0] for r in await conn.fetch(f"EXPLAIN {CHARGED_AFTER}", "4420100", date(2026, 3, 1))
        )
    assert "account_numbers_number_idx" in plan, plan
    assert await fresh_pool.fetchval("SELECT finished FROM schema_migrations WHERE version = 68")


async def build_waiting(pool: asyncpg.Pool, migrating: asyncio.Task[list[int]]) -> int:
    """The pid of the backend migrating once it waits for a lock other than the migration
    lock: 0064's index build behind a transaction still writing the ledger. Read outside
    any transaction: one sees the same pg_stat_activity until it ends."""
    pid = 0

    async def waiting() -> bool:
        nonlocal pid
        if migrating.done():
            migrating.result()  # its error, if it failed
            return False
        pid = await pool.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND wait_event <> 'advisory'"
        )
        return pid is not None

    await eventually(waiting, what="0064's index build waiting for a ledger writer")
    return pid


async def test_0064_builds_its_index_while_the_ledger_writer_inserts(
    fresh_pool: asyncpg.Pool, fresh_url: str
) -> None:
    await ledger_at_0063(fresh_pool)
    in_flight = await asyncpg.connect(fresh_url)
    writer = await asyncpg.connect(fresh_url)
    try:
        # The ledger writer's batch not committed yet when the migration starts.
        transaction = in_flight.transaction()
        await transaction.start()
        await insert_credit(in_flight, "before")
        migrating = asyncio.create_task(migrate(fresh_pool))
        await build_waiting(fresh_pool, migrating)
        # Held back by the build, the next batch would fail here (after 1 s) instead of
        # hanging the test: the build waits, the writer and readers go on.
        await writer.execute("SET lock_timeout = 1000")
        await insert_credit(writer, "during")
        assert await writer.fetchval(CREDITS) == LEDGER_ROWS // 50 + 1
        assert not migrating.done()
        await transaction.commit()
        applied = await asyncio.wait_for(migrating, 60)
    finally:
        await in_flight.close()
        await writer.close()
    assert 64 in applied
    assert await credit_index(fresh_pool) == (True, INDEX_DEFINITION)
    # Every credit, those written while it was built included, is found through it.
    assert await credits_by_the_index(fresh_pool) == LEDGER_ROWS // 50 + 2
    assert await fresh_pool.fetchval("SELECT finished FROM schema_migrations WHERE version = 64")


async def test_an_index_build_stopped_half_way_is_built_again_by_the_next_start(
    fresh_pool: asyncpg.Pool, fresh_url: str
) -> None:
    await ledger_at_0063(fresh_pool)
    in_flight = await asyncpg.connect(fresh_url)
    try:
        transaction = in_flight.transaction()
        await transaction.start()
        await insert_credit(in_flight, "before")
        migrating = asyncio.create_task(migrate(fresh_pool))
        pid = await build_waiting(fresh_pool, migrating)
        # The build stopped half-way (a process killed, a statement cancelled).
        await fresh_pool.execute("SELECT pg_cancel_backend($1)", pid)
        with pytest.raises(asyncpg.QueryCanceledError):
            await asyncio.wait_for(migrating, 60)
        await transaction.commit()
    finally:
        await in_flight.close()
    # It left the index INVALID: never used by the lookup, yet kept up by every insert.
    assert await credit_index(fresh_pool) == (False, INDEX_DEFINITION)
    assert not await fresh_pool.fetchval(
        "SELECT finished FROM schema_migrations WHERE version = 64"
    )

    await migrate(fresh_pool)
    assert await credit_index(fresh_pool) == (True, INDEX_DEFINITION)
    assert await credits_by_the_index(fresh_pool) == LEDGER_ROWS // 50 + 1
    assert await fresh_pool.fetchval("SELECT finished FROM schema_migrations WHERE version = 64")


async def test_a_start_waiting_its_turn_during_an_index_build_is_not_cancelled(
    fresh_pool: asyncpg.Pool, fresh_url: str
) -> None:
    await ledger_at_0063(fresh_pool)
    in_flight = await asyncpg.connect(fresh_url)
    try:
        transaction = in_flight.transaction()
        await transaction.start()
        await insert_credit(in_flight, "before")
        building = asyncio.create_task(migrate(fresh_pool))
        pid = await build_waiting(fresh_pool, building)
        # Another ocs process starting meanwhile (the billing worker, a CLI command).
        waiting = asyncio.create_task(migrate(fresh_pool))

        async def waiting_its_turn() -> bool:
            if waiting.done():
                waiting.result()
                return False
            return bool(
                await fresh_pool.fetchval(
                    "SELECT true FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> $1 AND query LIKE 'SELECT pg_%advisory_lock($1)'",
                    pid,
                )
            )

        await eventually(waiting_its_turn, what="a second migration waiting for the lock")
        # The build goes on to wait for older snapshots: a process waiting inside
        # pg_advisory_lock held one, and PostgreSQL cancelled it (or the build) as a
        # deadlock after deadlock_timeout.
        await transaction.commit()
        applied = await asyncio.wait_for(asyncio.gather(building, waiting), 60)
    finally:
        await in_flight.close()
    # 0064 and every later version were applied once, by the first; the second found none.
    assert applied == [[v for v, _, _ in available_migrations() if v >= 64], []]
    assert await credit_index(fresh_pool) == (True, INDEX_DEFINITION)


# Invoices at 0064 with usage snapshots: a posted one, a void one (voided as
# ``ocs.billing.void`` leaves it), a draft, and a posted one whose snapshot names
# transactions this cluster has not reached (read in another cluster before a move). Each
# later one's late usage was compared with the one before's snapshot.
SNAPSHOT_STATES = ["posted", "void", "draft", "posted"]


async def snapshots_before_0065(pool: asyncpg.Pool) -> list[int]:
    """A database at 0064 holding the ``SNAPSHOT_STATES`` invoices of account a1; their ids."""
    await migrated_to(pool, 64)
    await pool.execute("INSERT INTO plans (id, name, currency) VALUES ('p', 'p', 'EUR')")
    await pool.execute(
        "INSERT INTO accounts (id, plan_id, currency, credit_limit, max_lines, status)"
        " VALUES ('a1', 'p', 'EUR', 0, 1, 'active')"
    )
    ids: list[int] = []
    for month, state in enumerate(SNAPSHOT_STATES, 1):
        foreign = month == len(SNAPSHOT_STATES)
        invoice = await pool.fetchval(
            "INSERT INTO invoices (account_id, plan_id, period_start, period_end,"
            " period_label, currency, invoice_date, taxes_calculated, usage_snapshot,"
            " late_after_snapshot, created_at)"
            " VALUES ('a1', 'p', make_timestamptz(2026, $1, 1, 0, 0, 0, 'UTC'),"
            " make_timestamptz(2026, $1 + 1, 1, 0, 0, 0, 'UTC'), '2026-' || $1, 'EUR',"
            " make_date(2026, $1 + 1, 1), true,"
            " CASE WHEN $2 THEN '4000000000:4000000000:'::pg_snapshot"
            " ELSE pg_current_snapshot() END,"
            " (SELECT usage_snapshot FROM invoices WHERE id = $3),"
            " make_timestamptz(2026, $1 + 1, 1, 3, 0, 0, 'UTC')) RETURNING id",
            month,
            foreign,
            ids[-1] if ids else None,
        )
        if state != "draft":
            await pool.execute(
                "UPDATE invoices SET state = 'posted', number = 'INV-' || id, amount_asked = 0"
                " WHERE id = $1",
                invoice,
            )
        if state == "void":
            await pool.execute(
                "UPDATE invoices SET state = 'void', voided_at = now(), amount_paid = 0,"
                " paid_at = NULL WHERE id = $1",
                invoice,
            )
        ids.append(invoice)
    return ids


async def test_a_draft_an_older_release_writes_after_0065_names_its_snapshot(
    fresh_pool: asyncpg.Pool,
) -> None:
    """The old processes keep serving while the new release migrates: a draft the old
    code writes after 0065's step carries no cluster or read time, and its late calls were
    compared neither by id nor by time (never billed). The database names them."""
    await snapshots_before_0065(fresh_pool)
    await migrate(fresh_pool)
    here = await fresh_pool.fetchval("SELECT system_identifier FROM pg_control_system()")
    # As the release before 0065 drafts: the snapshot alone.
    old_way, began = await fresh_pool.fetchrow(
        "INSERT INTO invoices (account_id, plan_id, period_start, period_end, period_label,"
        " currency, invoice_date, taxes_calculated, usage_snapshot)"
        " VALUES ('a1', 'p', '2026-08-01Z', '2026-09-01Z', '2026-08', 'EUR', '2026-09-01',"
        " true, pg_current_snapshot()) RETURNING id, now()"
    )
    named = await fresh_pool.fetchrow(
        "SELECT usage_snapshot_system, usage_snapshot_at FROM invoices WHERE id = $1", old_way
    )
    assert (named["usage_snapshot_system"], named["usage_snapshot_at"]) == (here, began)
    # Drafted again the old way: named again, by that transaction.
    again = await fresh_pool.fetchval(
        "UPDATE invoices SET usage_snapshot = pg_current_snapshot() WHERE id = $1 RETURNING now()",
        old_way,
    )
    assert (
        await fresh_pool.fetchval("SELECT usage_snapshot_at FROM invoices WHERE id = $1", old_way)
        == again
    )
    # This release names them itself: left as written.
    await fresh_pool.execute(
        "UPDATE invoices SET usage_snapshot = pg_current_snapshot(), usage_snapshot_system = 7,"
        " usage_snapshot_at = '2026-09-01 00:00:05Z' WHERE id = $1",
        old_way,
    )
    kept = await fresh_pool.fetchrow(
        "SELECT usage_snapshot_system, usage_snapshot_at FROM invoices WHERE id = $1", old_way
    )
    assert (kept["usage_snapshot_system"], kept["usage_snapshot_at"].isoformat()) == (
        7,
        "2026-09-01T00:00:05+00:00",
    )


async def test_0065_names_the_cluster_of_posted_and_void_invoices_snapshots(
    fresh_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that voided an invoice upgrades: every snapshot is dated by its invoice's
    creation and named this cluster's, unless it names transactions this cluster has not
    reached; the earlier snapshot by the invoice that read it. A void invoice stays final."""
    ids = await snapshots_before_0065(fresh_pool)
    monkeypatch.setattr(migration_steps, "BACKFILL_RANGE", 2)
    await migrate(fresh_pool)

    here = await fresh_pool.fetchval("SELECT system_identifier FROM pg_control_system()")
    rows = await fresh_pool.fetch(
        "SELECT id, state, created_at, usage_snapshot_system, usage_snapshot_at,"
        " late_after_system, late_after_at FROM invoices ORDER BY id"
    )
    created = [r["created_at"] for r in rows]
    assert [r["id"] for r in rows] == ids
    assert [r["state"] for r in rows] == SNAPSHOT_STATES
    assert [(r["usage_snapshot_system"], r["usage_snapshot_at"]) for r in rows] == [
        (here, created[0]),
        (here, created[1]),
        (here, created[2]),
        (None, created[3]),
    ]
    assert [(r["late_after_system"], r["late_after_at"]) for r in rows] == [
        (None, None),
        (here, created[0]),
        (here, created[1]),
        (here, created[2]),
    ]
    assert await fresh_pool.fetchval("SELECT bool_and(finished) FROM schema_migrations")
    # Named once: the void invoice's snapshot is not renamed, nor anything else changed.
    for change in (
        "usage_snapshot_at = now()",
        "usage_snapshot_system = 1",
        "late_after_at = NULL",
        "number = 'X-1'",
    ):
        with pytest.raises(asyncpg.CheckViolationError, match="void -> void"):
            await fresh_pool.execute(f"UPDATE invoices SET {change} WHERE id = $1", ids[1])


async def webhook_rows(pool: asyncpg.Pool) -> list[tuple[int, str]]:
    """Every webhook delivery row: (event id, webhook), in event then webhook order."""
    rows = await pool.fetch(
        "SELECT event_id, webhook_id FROM event_deliveries WHERE channel = 'webhook'"
        " ORDER BY event_id, webhook_id"
    )
    return [(r["event_id"], r["webhook_id"]) for r in rows]


async def store_event(pool: asyncpg.Pool, kind: str) -> int:
    """An event of ``kind`` stored as ``outbox.emit`` stores it; its id."""
    return int(
        await pool.fetchval(
            "INSERT INTO events (kind, subject, data) VALUES ($1, 'a1', '{}') RETURNING id", kind
        )
    )


async def test_0070_makes_a_disabled_webhooks_deliveries_so_that_its_events_wait(
    fresh_pool: asyncpg.Pool,
) -> None:
    """A database with a disabled webhook upgrades: the events stored after 0070 get a row
    for it as for an enabled one (by its kinds), so enabling it needs no catch-up."""
    await migrated_to(fresh_pool, 69)
    await fresh_pool.execute(
        "INSERT INTO webhooks (id, url, secret, kinds, enabled) VALUES"
        " ('on', 'http://e.com/a', 'whsec_a', '{}', true),"
        " ('off', 'http://e.com/b', 'whsec_b', '{}', false),"
        " ('off-payments', 'http://e.com/c', 'whsec_c', '{payment.received}', false)"
    )
    before = await store_event(fresh_pool, "payment.received")
    assert await webhook_rows(fresh_pool) == [(before, "on")]  # as released: enabled only

    await migrate(fresh_pool)
    assert 70 in await recorded(fresh_pool)
    paid = await store_event(fresh_pool, "payment.received")
    posted = await store_event(fresh_pool, "invoice.posted")
    assert await webhook_rows(fresh_pool) == [
        (before, "on"),
        (paid, "off"),
        (paid, "off-payments"),
        (paid, "on"),
        (posted, "off"),
        (posted, "on"),
    ]
    # The email rows are made as 0039 made them: only for an account with a billing email.
    assert await fresh_pool.fetchval("SELECT count(*) FROM event_deliveries") == 6


# A bundle name as long as one may be (200 characters): a take-back's or reversal's
# description, cut at 200, ends inside it, before the words that said what it was.
LONG_NAME = "Professional unlimited calling bundle " * 5 + "x" * 10
# Fee lines as releases before 0071 wrote them: (bundle, description, exact amount, the
# adjustment 0071 marks). Bundle ``odd`` is named like a take-back: its fee charge is none.
ODD_NAME = "Credit of 1.00 on Pro taken back: promo"
FEE_LINES_BEFORE_0071 = [
    ("pro", "Pro: monthly fee 2026-02, 10.00 per monthly", 10_000_000, None),
    ("pro", "Credit: Pro: monthly fee 2026-02 unused (9/28 days)", -3_214_286, None),
    (
        "pro",
        "Credit of 3.21 on Pro: monthly fee 2026-02 taken back: invoice INV-1 was voided",
        3_214_286,
        "take_back",
    ),
    (
        "pro",
        "Take-back of 3.21 on Pro: monthly fee 2026-02 reversed: taken back by invoice"
        " INV-3, the credit's invoice INV-2 was voided",
        -3_214_286,
        "take_back_reversal",
    ),
    ("long", f"Credit of 3.21 on {LONG_NAME}: monthly fee 2026-02"[:200], 3_214_286, "take_back"),
    (
        "long",
        f"Take-back of 3.21 on {LONG_NAME}: monthly fee 2026-02"[:200],
        -3_214_286,
        "take_back_reversal",
    ),
    ("odd", f"{ODD_NAME}: monthly fee 2026-02, 10.00 per monthly", 10_000_000, None),
]


async def fee_adjustments_before_0071(pool: asyncpg.Pool) -> tuple[int, int]:
    """A database at 0070 holding ``FEE_LINES_BEFORE_0071`` on a void invoice, each
    reversed by its posted credit note's line; the two invoices' ids."""
    await migrated_to(pool, 70)
    await pool.execute("INSERT INTO plans (id, name, currency) VALUES ('p', 'p', 'EUR')")
    await pool.execute(
        "INSERT INTO accounts (id, plan_id, currency, credit_limit, max_lines, status)"
        " VALUES ('a1', 'p', 'EUR', 0, 1, 'active')"
    )
    sub = await pool.fetchval(
        "INSERT INTO subscriptions (account_id, plan_id, start_date, status)"
        " VALUES ('a1', 'p', '2026-01-01', 'active') RETURNING id"
    )
    held = {}
    for bundle, name in (("pro", "Pro"), ("long", LONG_NAME), ("odd", ODD_NAME)):
        await pool.execute(
            "INSERT INTO bundles (id, name, currency) VALUES ($1, $2, 'EUR')", bundle, name
        )
        await pool.execute(
            "INSERT INTO bundle_rules (bundle_id, position, kind, description, amount,"
            " periodicity, timing)"
            " VALUES ($1, 1, 'flat_fee', 'monthly fee', 10000000, 'monthly', 'upfront')",
            bundle,
        )
        held[bundle] = await pool.fetchval(
            "INSERT INTO subscription_bundles (subscription_id, bundle_id, start_date)"
            " VALUES ($1, $2, '2026-01-01') RETURNING id",
            sub,
            bundle,
        )
    invoice = await pool.fetchval(
        "INSERT INTO invoices (account_id, plan_id, period_start, period_end, period_label,"
        " currency, invoice_date, taxes_calculated) VALUES ('a1', 'p', '2026-03-01Z',"
        " '2026-04-01Z', '2026-03', 'EUR', '2026-04-01', true) RETURNING id"
    )
    for position, (bundle, description, exact, _) in enumerate(FEE_LINES_BEFORE_0071, 1):
        await pool.execute(
            "INSERT INTO invoice_lines (invoice_id, position, kind, description, amount,"
            " exact_amount, moves_money, subscription_bundle_id, bundle_rule_position)"
            " VALUES ($1, $2, 'bundle_fee', $3, $4, $4, true, $5, 1)",
            invoice,
            position,
            description,
            exact,
            held[bundle],
        )
    await pool.execute(
        "UPDATE invoices SET state = 'posted', number = 'INV-3', amount_asked = 0 WHERE id = $1",
        invoice,
    )
    note = await pool.fetchval(
        "INSERT INTO invoices (account_id, plan_id, kind, period_start, period_end,"
        " period_label, currency, invoice_date, taxes_calculated, voids_invoice_id)"
        " VALUES ('a1', 'p', 'credit_note', '2026-03-01Z', '2026-04-01Z', '2026-03', 'EUR',"
        " '2026-04-10', true, $1) RETURNING id",
        invoice,
    )
    await pool.execute(
        "INSERT INTO invoice_lines (invoice_id, position, kind, description, amount,"
        " exact_amount, moves_money, reverses_line)"
        " SELECT $2, position, 'reversal', 'Reversal: ' || description, -amount,"
        " -exact_amount, true, id FROM invoice_lines WHERE invoice_id = $1",
        invoice,
        note,
    )
    await pool.execute(
        "UPDATE invoices SET state = 'posted', number = 'CN-1', amount_asked = 0 WHERE id = $1",
        note,
    )
    await pool.execute(
        "UPDATE invoices SET state = 'void', voided_at = now(), amount_paid = 0 WHERE id = $1",
        invoice,
    )
    return invoice, note


async def adjustments(pool: asyncpg.Pool, invoice: int) -> list[tuple[str, str | None]]:
    """The invoice's lines as (description, adjustment), in order."""
    rows = await pool.fetch(
        "SELECT description, adjustment FROM invoice_lines WHERE invoice_id = $1 ORDER BY position",
        invoice,
    )
    return [(r["description"], r["adjustment"]) for r in rows]


async def test_0071_marks_the_take_backs_and_reversals_written_before_it(
    fresh_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database upgraded with take-backs and reversals on a void invoice and its posted
    credit note: each is marked by what its description says, those cut inside a long
    bundle name too, in ranges of two lines; a fee charge or credit stays unmarked (one of
    a bundle named like a take-back too), the lines' other columns stay as they were, and
    a mark once set is final. The CHECK is validated."""
    invoice, note = await fee_adjustments_before_0071(fresh_pool)
    monkeypatch.setattr(migration_steps, "BACKFILL_RANGE", 2)
    before = await fresh_pool.fetch("SELECT * FROM invoice_lines ORDER BY invoice_id, position")
    await migrate(fresh_pool)

    assert await adjustments(fresh_pool, invoice) == [
        (description, adjustment) for _, description, _, adjustment in FEE_LINES_BEFORE_0071
    ]
    assert await adjustments(fresh_pool, note) == [
        (f"Reversal: {description}", adjustment)
        for _, description, _, adjustment in FEE_LINES_BEFORE_0071
    ]
    rows = await fresh_pool.fetch("SELECT * FROM invoice_lines ORDER BY invoice_id, position")
    assert [{k: v for k, v in r.items() if k != "adjustment"} for r in rows] == [
        dict(r) for r in before
    ]
    assert await fresh_pool.fetchval("SELECT bool_and(finished) FROM schema_migrations")
    assert await fresh_pool.fetchval(
        "SELECT convalidated FROM pg_constraint WHERE conname = 'invoice_lines_adjustment'"
    )
    # Each change touches the lines of one invoice only: which row the trigger refuses
    # first follows the table's physical order, and the two invoices' states differ.
    for change, state in (
        (f"adjustment = NULL WHERE adjustment = 'take_back' AND invoice_id = {invoice}", "void"),
        ("adjustment = 'take_back' WHERE position = 1 AND kind = 'bundle_fee'", "void"),
        ("adjustment = 'take_back' WHERE position = 1 AND kind = 'reversal'", "posted"),
    ):
        with pytest.raises(asyncpg.CheckViolationError, match=f"{state} invoice are final"):
            await fresh_pool.execute(f"UPDATE invoice_lines SET {change}")


async def test_a_take_back_an_older_release_writes_after_0071_is_marked(
    fresh_pool: asyncpg.Pool,
) -> None:
    """The old processes keep serving while the new release migrates: a take-back or
    reversal they write after 0071's step is unmarked, and would be read as a fee charge
    or credit. The database marks them, by the step's rule; a line written marked, and a
    fee charge of a bundle named like a take-back, are left as written. A mark other than
    a take-back's or a reversal's, or on a line that is no fee's, is refused."""
    await fee_adjustments_before_0071(fresh_pool)
    await migrate(fresh_pool)
    draft = await fresh_pool.fetchval(
        "INSERT INTO invoices (account_id, plan_id, period_start, period_end, period_label,"
        " currency, invoice_date, taxes_calculated) VALUES ('a1', 'p', '2026-04-01Z',"
        " '2026-05-01Z', '2026-04', 'EUR', '2026-05-01', true) RETURNING id"
    )
    held = dict(await fresh_pool.fetch("SELECT bundle_id, id FROM subscription_bundles"))
    written = [
        *FEE_LINES_BEFORE_0071,
        ("pro", "Pro: monthly fee 2026-02, marked as this release would not", 1, "take_back"),
    ]
    for position, (bundle, description, exact, marked) in enumerate(written, 1):
        # As the release before 0071 wrote them: no adjustment (but the last, marked).
        await fresh_pool.execute(
            "INSERT INTO invoice_lines (invoice_id, position, kind, description, amount,"
            " exact_amount, moves_money, subscription_bundle_id, bundle_rule_position,"
            " adjustment) VALUES ($1, $2, 'bundle_fee', $3, $4, $4, true, $5, 1, $6)",
            draft,
            position,
            description,
            exact,
            held[bundle],
            marked if position == len(written) else None,
        )
    assert await adjustments(fresh_pool, draft) == [
        (description, marked) for _, description, _, marked in written
    ]
    for change in (
        "adjustment = 'reversal' WHERE position = 1",
        "kind = 'recurring' WHERE adjustment = 'take_back'",
    ):
        with pytest.raises(asyncpg.CheckViolationError, match="invoice_lines_adjustment"):
            await fresh_pool.execute(
                f"UPDATE invoice_lines SET {change} AND invoice_id = $1", draft
            )


async def carriers_before_0076(
    pool: asyncpg.Pool, plans: dict[str, tuple[str, str | None]]
) -> None:
    """A database at the release before 0076 with ``plans`` (id -> currency, route set),
    route sets rs1 (a, c), rs2 (b, c) and rs3 (d), and carriers a to e (e in none)."""
    await migrated_to(pool, 75)
    await pool.execute(
        "INSERT INTO carriers (id, name) SELECT c, upper(c) FROM unnest($1::text[]) c",
        ["a", "b", "c", "d", "e"],
    )
    await pool.execute("INSERT INTO route_sets (id) VALUES ('rs1'), ('rs2'), ('rs3')")
    await pool.execute(
        "INSERT INTO route_set_carriers (route_set_id, position, carrier_id) VALUES"
        " ('rs1', 0, 'a'), ('rs1', 1, 'c'), ('rs2', 0, 'b'), ('rs2', 1, 'c'), ('rs3', 0, 'd')"
    )
    for plan_id, (currency, route_set) in plans.items():
        await pool.execute(
            "INSERT INTO plans (id, name, currency, route_set_id) VALUES ($1, $1, $2, $3)",
            plan_id,
            currency,
            route_set,
        )


async def carrier_currencies(pool: asyncpg.Pool) -> dict[str, str | None]:
    """Each carrier's currency."""
    return dict(await pool.fetch("SELECT id, currency FROM carriers ORDER BY id"))


async def test_0076_gives_a_carrier_the_currency_its_plans_agree_on(
    fresh_pool: asyncpg.Pool,
) -> None:
    """A carrier every plan routed through it prices in one currency takes it; one shared
    by a HUF plan and EUR plans (whose margins were compared across currencies), or one
    no plan uses in a deployment of two currencies, stays unknown (NULL). A currency
    that is no ISO 4217 code is refused after."""
    await carriers_before_0076(
        fresh_pool,
        {"e1": ("EUR", "rs1"), "e2": ("EUR", "rs2"), "h1": ("HUF", "rs2"), "e3": ("EUR", None)},
    )
    await migrate(fresh_pool)
    assert await carrier_currencies(fresh_pool) == {
        "a": "EUR",  # rs1: e1 only
        "b": None,  # rs2: e2 (EUR) and h1 (HUF)
        "c": None,  # rs1 and rs2
        "d": None,  # no plan routed through rs3; plans in EUR and HUF
        "e": None,
    }
    with pytest.raises(asyncpg.CheckViolationError, match="carriers_currency_code"):
        await fresh_pool.execute("UPDATE carriers SET currency = 'eu1' WHERE id = 'e'")


async def test_0076_gives_a_one_currency_deployments_carriers_its_currency(
    fresh_pool: asyncpg.Pool,
) -> None:
    """Every plan in EUR: every carrier, routed or not, was priced in EUR."""
    await carriers_before_0076(fresh_pool, {"e1": ("EUR", "rs1"), "e2": ("EUR", None)})
    await migrate(fresh_pool)
    assert await carrier_currencies(fresh_pool) == dict.fromkeys("abcde", "EUR")
