"""A usage import's supplier lock lives on a PostgreSQL connection of the import's own,
outside the process's pool (decision 0051): imports never wait on the pool for ever, and
a cancelled import leaves neither a pool connection nor the lock behind.

Costs from tests/usage_import_helpers.py's deck: UK 0.02 a minute in 60 s blocks, so
61 s cost 0.04.
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from ocs.balances.script_args import UsageEvent
from ocs.errors import OcsError, Reason
from ocs.http.app import create_app
from ocs.mediation.importer import ImportRequest
from tests.conftest import RunningApp, bearer, eventually
from tests.usage_import_helpers import (
    HEADER,
    CuedImporter,
    add_template,
    balance,
    importer,
    new_account,
    one_call_file,
    row,
    setup_mediation,
)

OPENING = 10_000_000
LOCK_KEY = "usage_import:carrier-x"


@pytest.fixture
async def small_pool(
    app: RunningApp, request: pytest.FixtureRequest
) -> AsyncIterator[asyncpg.Pool]:
    """A pool of ``request.param`` connections (2 unless parametrized) to the app's
    PostgreSQL, closed after the test."""
    size = getattr(request, "param", 2)
    pool = await asyncpg.create_pool(app.services.database_url, min_size=1, max_size=size)
    try:
        yield pool
    finally:
        pool.terminate()


async def free_connections(pool: asyncpg.Pool, count: int) -> bool:
    """Whether ``count`` connections of the pool can be had at once (within 2 s)."""
    held: list[asyncpg.Connection] = []
    try:
        async with asyncio.timeout(2):
            for _ in range(count):
                held.append(await pool.acquire())
    except TimeoutError:
        return False
    finally:
        for conn in held:
            await pool.release(conn)
    return True


@pytest.mark.parametrize("small_pool", [1, 2], indirect=True)
async def test_imports_of_as_many_suppliers_as_the_pool_has_connections_all_end(
    app: RunningApp, tmp_path: Path, small_pool: asyncpg.Pool
) -> None:
    # Each import holds its supplier's lock for its whole run and reads through the pool
    # meanwhile: the lock on a pool connection left none for the look-ups.
    await setup_mediation(app)
    await add_template(app, "carrier-y", "carrier-y")
    await new_account(app, "acc1", "10.00")
    one = tmp_path / "x.csv"
    one.write_text(HEADER + row("r1", "acc1"))
    two = tmp_path / "y.csv"
    two.write_text(HEADER + row("r1", "acc1", minute=1))
    imports = importer(app, small_pool)
    running = [
        asyncio.create_task(imports.run(ImportRequest(template=name, files=(str(path),))))
        for name, path in (("carrier-x", one), ("carrier-y", two))
    ]
    # Not gathered under a timeout: imports stuck on the pool would not end when cancelled.
    _, stuck = await asyncio.wait(running, timeout=30)
    for task in stuck:
        task.cancel()
    assert not stuck, "the imports waited on the pool for ever"
    done = [task.result() for task in running]
    assert [(s.supplier, s.state, s.rows_charged) for s in done] == [
        ("carrier-x", "done", 1),
        ("carrier-y", "done", 1),
    ]
    assert await balance(app, "acc1") == OPENING - 2 * 40_000
    assert await free_connections(small_pool, small_pool.get_max_size())


async def test_an_import_cancelled_while_it_waits_for_the_lock_leaves_the_pool_whole(
    app: RunningApp, tmp_path: Path, small_pool: asyncpg.Pool
) -> None:
    path = await one_call_file(app, tmp_path)
    # Another session holds the supplier's lock, and the table the waiting import asks
    # which import runs: the cancel reaches it in the middle of that question.
    holder = await asyncpg.connect(app.services.database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock(hashtext($1))", LOCK_KEY)
        busy = holder.transaction()
        await busy.start()
        await holder.execute("LOCK TABLE usage_imports IN ACCESS EXCLUSIVE MODE")
        waiting = asyncio.create_task(
            importer(app, small_pool).run(ImportRequest(template="carrier-x", files=(str(path),)))
        )

        async def asking() -> bool:
            # Not on the holder: in its transaction the view would not change.
            found = await app.services.pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE 'SELECT max(id) FROM usage_imports%'"
            )
            return bool(found)

        await eventually(asking, what="the waiting import asking which import runs")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await busy.rollback()
    finally:
        await holder.close()
    assert await free_connections(small_pool, small_pool.get_max_size())
    # The lock is free (the holder's session ended): the supplier's next import runs.
    async with asyncio.timeout(30):
        summary = await importer(app, small_pool).run(
            ImportRequest(template="carrier-x", files=(str(path),))
        )
    assert (summary.state, summary.rows_charged) == ("done", 1)


class LosesItsLock(CuedImporter):
    """An importer whose lock's session is ended (as by a PostgreSQL restart or a broken
    network) once its debits are made."""

    async def debit(self, bucket: int, import_id: int, events: list[UsageEvent]) -> list[str]:
        """Debit, then end the session that holds the supplier's lock."""
        words = await super().debit(bucket, import_id, events)
        # Waits (up to 5 s) until the session has ended, so that no later statement of
        # the import can reach it first.
        await self.app.services.pool.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
        )
        return words


async def test_an_import_that_lost_its_lock_after_its_last_debit_is_failed(
    app: RunningApp, tmp_path: Path
) -> None:
    # The progress saver had not run since: only a look at the session before the import
    # ends finds that another import of the supplier could have run beside it.
    path = await one_call_file(app, tmp_path)
    with pytest.raises(OcsError) as lost:
        await LosesItsLock(app).run(ImportRequest(template="carrier-x", files=(str(path),)))
    assert "lost its PostgreSQL session" in lost.value.message
    stored = await app.services.pool.fetchrow(
        "SELECT state, rows_charged, error FROM usage_imports"
    )
    assert (stored["state"], stored["rows_charged"]) == ("failed", 1)
    assert "lost its PostgreSQL session" in stored["error"]


async def test_a_progress_save_the_statement_refused_does_not_stop_the_import(
    app: RunningApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A statement_timeout (or any refusal of the UPDATE itself) leaves the session and
    # its lock as they were: not a lost lock. Logged once when the saves begin to fail
    # and once when they work again, not at every save. The trigger counts its refusals
    # in a sequence (not rolled back with the refused UPDATE).
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    await new_account(app, "acc2", "10.00")
    pool = app.services.pool
    await pool.execute(
        "CREATE SEQUENCE progress_refusals;"
        " CREATE FUNCTION refuse_progress() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN PERFORM nextval('progress_refusals');"
        " RAISE EXCEPTION 'canceling statement due to statement timeout'"
        " USING ERRCODE = 'query_canceled'; END $$;"
        " CREATE TRIGGER refuse_progress BEFORE UPDATE ON usage_imports FOR EACH ROW"
        " WHEN (OLD.state = 'running' AND NEW.state = 'running')"
        " EXECUTE FUNCTION refuse_progress()"
    )
    dropped = False

    async def drop() -> None:
        # The database outlives the test (its tables are emptied, not its triggers).
        await pool.execute(
            "DROP TRIGGER refuse_progress ON usage_imports; DROP FUNCTION refuse_progress();"
            " DROP SEQUENCE progress_refusals"
        )

    def logged(text: str) -> int:
        return sum(text in r.message for r in caplog.records)

    path = tmp_path / "x.csv"
    path.write_text(HEADER + row("r1", "acc1") + row("r2", "acc2"))
    cued = CuedImporter(app, free=1, save_every=0.02)
    running = asyncio.create_task(cued.run(ImportRequest(template="carrier-x", files=(str(path),))))
    try:

        async def refused_thrice() -> bool:
            found = await pool.fetchval("SELECT last_value FROM progress_refusals WHERE is_called")
            return found is not None and found >= 3

        await eventually(refused_thrice, what="three progress saves refused")
        assert logged("could not save its progress") == 1
        await drop()
        dropped = True

        async def saving_again() -> bool:
            return logged("saves its progress again") == 1

        await eventually(saving_again, what="a progress save that worked again")
    finally:
        cued.gate.set()
        summary = await running
        if not dropped:
            await drop()
    assert (summary.state, summary.rows_charged) == ("done", 2)
    assert logged("could not save its progress") == 1
    assert logged("saves its progress again") == 1


async def test_an_import_cancelled_once_its_debits_are_made_is_stored_done(
    app: RunningApp, tmp_path: Path
) -> None:
    path = await one_call_file(app, tmp_path)
    cued = CuedImporter(app)
    cued.final_gate = asyncio.Event()
    running = asyncio.create_task(cued.run(ImportRequest(template="carrier-x", files=(str(path),))))
    await asyncio.wait_for(cued.finishing.wait(), 10)
    running.cancel()
    cued.final_gate.set()
    with pytest.raises(asyncio.CancelledError):
        await running
    stored = await app.services.pool.fetchrow("SELECT state, rows_charged FROM usage_imports")
    assert tuple(stored) == ("done", 1)


class HungClose(asyncpg.Connection):
    """A connection whose close gets no answer, as on a hung network: asyncpg aborts the
    connection, then raises."""

    async def close(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 (asyncpg's signature)
        """Drop the socket, then fail as asyncpg's close does when it times out."""
        self.terminate()
        raise TimeoutError("the close got no answer (the test's cue)")


class ClosesBadly(CuedImporter):
    """An importer whose own connection's close fails."""

    async def connect(self) -> asyncpg.Connection:
        """The import's own connection, its close failing."""
        return await asyncpg.connect(self.app.services.database_url, connection_class=HungClose)


async def test_a_failed_close_of_the_lock_connection_leaves_the_import_done(
    app: RunningApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The close runs in a finally: raised there, it replaced the import's outcome.
    path = await one_call_file(app, tmp_path)
    summary = await ClosesBadly(app).run(ImportRequest(template="carrier-x", files=(str(path),)))
    assert (summary.state, summary.rows_charged) == ("done", 1)
    stored = await app.services.pool.fetchrow("SELECT state, rows_charged FROM usage_imports")
    assert tuple(stored) == ("done", 1)
    closes = [r for r in caplog.records if "did not close cleanly" in r.message]
    assert len(closes) == 1


async def test_a_failed_close_of_the_lock_connection_leaves_the_refusal_a_503(
    app: RunningApp, tmp_path: Path
) -> None:
    path = await one_call_file(app, tmp_path)
    holder = await asyncpg.connect(app.services.database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock(hashtext($1))", LOCK_KEY)
        with pytest.raises(OcsError) as refused:
            await ClosesBadly(app, supplier_wait=0.05).run(
                ImportRequest(template="carrier-x", files=(str(path),))
            )
    finally:
        await holder.close()
    assert refused.value.reason == Reason.UNAVAILABLE
    assert "a supplier's imports run one at a time" in refused.value.message


async def test_the_api_answers_503_once_the_supplier_wait_is_over(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    services = app.services
    brief = replace(services, settings=replace(services.settings, usage_import_supplier_wait=0.05))
    client = TestClient(TestServer(create_app(brief)), headers=bearer(app.admin_token))
    await client.start_server()
    holder = await asyncpg.connect(services.database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock(hashtext($1))", LOCK_KEY)
        response = await client.post(
            "/v1/usage/imports?template=carrier-x",
            data=(HEADER + row("r1", "acc1")).encode(),
            headers={"Content-Type": "text/csv"},
        )
        answer = await response.json()
        assert response.status == 503, answer
        assert answer["error"]["reason"] == "unavailable"
        assert "a supplier's imports run one at a time" in answer["error"]["message"]
    finally:
        await holder.close()
        await client.close()
    assert await balance(app, "acc1") == OPENING
    assert await services.pool.fetchval("SELECT count(*) FROM usage_imports") == 0
