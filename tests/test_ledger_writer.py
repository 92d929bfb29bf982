"""The ledger writer: every stream entry lands in PostgreSQL exactly once, whatever happens."""

import asyncio
import logging
import secrets
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgpack
import pytest
from redis.asyncio import Redis

from ocs.backend_health import POSTGRESQL, BackendHealth
from ocs.balances import keys
from ocs.balances.accounts import AccountSpec
from ocs.balances.ledger_writer import LedgerWriter
from ocs.balances.wire import RedisWire
from ocs.services import Services
from tests.conftest import add_plan, eventually
from tests.outage_helpers import FlakyPool
from tests.radius_udp import sample


async def _make_entries(services: Services, accounts: int, topups: int) -> None:
    await add_plan(services)
    for n in range(accounts):
        await services.accounts.create(
            AccountSpec(f"w{n}", plan_id="retail", opening_balance=1_000_000)
        )
        await asyncio.gather(
            *[services.accounts.topup(f"w{n}", 10_000, f"w{n}-{t}") for t in range(topups)]
        )


async def _ledger_count(services: Services) -> int:
    async with services.pool.acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM ledger")


async def _stream_backlog(redis: Redis) -> int:
    pipe = redis.pipeline(transaction=False)
    for stream in keys.all_ledgers():
        pipe.xlen(stream)
    return sum(await pipe.execute())


async def test_two_writers_at_once_write_each_entry_once(services: Services) -> None:
    await _make_entries(services, accounts=20, topups=10)  # 20 opening + 200 top-ups
    first = LedgerWriter(services.redis, services.pool, batch_size=7)
    second = LedgerWriter(services.redis, services.pool, batch_size=7)
    await first.ensure_groups()
    for _ in range(100):
        counts = await asyncio.gather(first.read_new(), second.read_new())
        if sum(counts) == 0:
            break
    assert await _ledger_count(services) == 220
    assert first.written > 0 and second.written > 0
    assert await _stream_backlog(services.redis) == 0


async def test_entries_of_a_writer_that_died_before_commit_are_claimed(
    services: Services,
) -> None:
    await _make_entries(services, accounts=5, topups=3)  # 20 entries
    dead = LedgerWriter(services.redis, services.pool)
    await dead.ensure_groups()
    # The dead writer read the entries (they are now pending for it) and crashed
    # before writing: simulate by reading through the group without writing.
    delivered = await services.redis.xreadgroup(
        keys.LEDGER_GROUP, dead.consumer, {s: ">" for s in keys.all_ledgers()}, count=1000
    )
    assert sum(len(messages) for _, messages in delivered) == 20
    assert await _ledger_count(services) == 0

    heir = LedgerWriter(services.redis, services.pool, claim_idle_ms=100)
    assert await heir.read_new() == 0  # nothing new: all 20 are pending on the dead one

    async def claimed() -> int:
        return await heir.claim_stale()

    total = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while total < 20 and loop.time() < deadline:
        total += await claimed()
        await asyncio.sleep(0.05)  # entries become claimable once idle 100 ms
    assert total == 20
    assert await _ledger_count(services) == 20


async def test_a_redelivered_entry_is_not_written_twice(services: Services) -> None:
    await _make_entries(services, accounts=1, topups=2)
    writer = LedgerWriter(services.redis, services.pool)
    await writer.ensure_groups()
    # Copy the entries before the writer deletes them, then write them twice,
    # as a crash between commit and acknowledgement would.
    entries = []
    for stream in keys.all_ledgers():
        for entry_id, fields in await services.redis.xrange(stream):
            entries.append((stream, entry_id, fields))
    assert len(entries) == 3
    await writer.read_new()
    await writer._write(entries)  # replay exactly what a redelivery carries
    assert await _ledger_count(services) == 3


async def test_an_entry_postgresql_refuses_is_set_aside_and_the_rest_written(
    services: Services,
) -> None:
    await _make_entries(services, accounts=3, topups=2)  # 9 entries
    bucket = keys.bucket_of("w0")
    # An entry no script would write (a NUL in a text column), as a bug or a
    # corrupted record might: PostgreSQL refuses it.
    await services.redis.xadd(
        keys.ledger(bucket),
        {
            "kind": "topup",
            "account": "w0",
            "amount": "1",
            "balance": "1",
            "reference": "bad\x00ref",
            "ts": "1700000000000",
        },
    )
    writer = LedgerWriter(services.redis, services.pool)
    await writer.ensure_groups()
    while await writer.read_new():
        pass
    assert await _ledger_count(services) == 9
    assert await _stream_backlog(services.redis) == 0
    dead = await services.redis.xrange(keys.dead_letters(bucket))
    assert len(dead) == 1 and dead[0][1][b"reference"] == b"bad\x00ref"
    assert b"error" in dead[0][1]


async def test_an_unreadable_entry_is_set_aside_and_the_written_count_stays_true(
    services: Services,
) -> None:
    # An entry with no amount cannot be read into a row: it was subtracted from the
    # batch's written count as if refused, which went to -1 and raised on the counter
    # after the acknowledgment ("ledger write failed", the batch under-counted).
    await _make_entries(services, accounts=1, topups=2)  # 3 entries
    bucket = keys.bucket_of("w0")
    await services.redis.xadd(keys.ledger(bucket), {"kind": "topup", "account": "w0"})
    writer = LedgerWriter(services.redis, services.pool)
    await writer.ensure_groups()
    written = 0
    while found := await writer.read_new():
        written += found
    assert (written, writer.written, await _ledger_count(services)) == (3, 3, 3)
    assert await _stream_backlog(services.redis) == 0
    dead = await services.redis.xrange(keys.dead_letters(bucket))
    assert len(dead) == 1 and dead[0][1][b"error"].startswith(b"unreadable entry")


async def test_a_postgresql_outage_is_logged_once_and_nothing_is_lost(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    await _make_entries(services, accounts=2, topups=2)  # 6 entries
    pool = FlakyPool(services.pool)
    pool.down = True
    health = BackendHealth()
    writer = LedgerWriter(
        services.redis,
        pool,  # type: ignore[arg-type]
        claim_idle_ms=100,
        block_ms=50,
        health=health,
    )
    caplog.set_level(logging.INFO)
    stopping = asyncio.Event()
    task = asyncio.create_task(writer.run(stopping, claim_every=0.2))
    try:

        async def retried() -> bool:
            # The first write failed, then two probes (a retry each second) were refused.
            return pool.refused >= 3

        await eventually(retried, within=20, what="the writer to retry PostgreSQL")
        assert not health.is_up(POSTGRESQL)
        assert await _ledger_count(services) == 0
        pool.down = False

        async def all_written() -> bool:
            return await _ledger_count(services) == 6

        await eventually(all_written, within=20, what="the pending entries to be written")
        assert health.is_up(POSTGRESQL)
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=10)
    # Only the outage's own lines: the services fixture's catalog may log a reload
    # (a NOTIFY from the entries made above) at any point during the test.
    lines = [
        (r.name, r.levelname, r.getMessage()) for r in caplog.records if r.name != "ocs.catalog"
    ]
    assert lines == [
        ("ocs.backends", "ERROR", "postgresql unreachable"),
        ("ocs.backends", "WARNING", "postgresql reachable again"),
    ]
    assert not [r for r in caplog.records if r.exc_info]
    assert await _stream_backlog(services.redis) == 0


async def test_a_postgresql_that_takes_no_writes_leaves_one_batch_unwritten_not_more(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    # The pool still reached the old primary, now a standby: every insert failed as a
    # read-only transaction, which did not count as an outage. Each second the writer read
    # a new batch and left it unwritten (all 60 entries after 20 s), logged a traceback,
    # then claimed them all back in one batch of any size.
    await _make_entries(services, accounts=6, topups=9)  # 60 entries
    async with services.pool.acquire() as conn:
        await conn.execute(
            "CREATE FUNCTION read_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " RAISE EXCEPTION 'cannot execute INSERT in a read-only transaction'"
            " USING ERRCODE = '25006'; END $$;"
            " CREATE TRIGGER read_only BEFORE INSERT ON ledger"
            " FOR EACH STATEMENT EXECUTE FUNCTION read_only()"
        )
    health = BackendHealth()
    writer = LedgerWriter(services.redis, services.pool, batch_size=10, block_ms=50, health=health)
    before = sample("ocs_backend_errors_total", backend=POSTGRESQL, source="ledger")
    caplog.set_level(logging.INFO)
    stopping = asyncio.Event()
    task = asyncio.create_task(writer.run(stopping, claim_every=3600))
    try:

        async def unwritten() -> int:
            found = 0
            for stream in keys.all_ledgers():
                found += (await services.redis.xpending(stream, keys.LEDGER_GROUP))["pending"]
            return found

        async def refused(times: int) -> None:
            async def enough() -> bool:
                errors = sample("ocs_backend_errors_total", backend=POSTGRESQL, source="ledger")
                return errors >= before + times

            await eventually(enough, within=20, what=f"{times} refused writes")

        await refused(3)
        held = await unwritten()
        # One read's worth (its streams' shares round up past batch_size), and no more
        # after three more refusals.
        assert 0 < held <= 20, held
        await refused(6)
        assert await unwritten() == held
        async with services.pool.acquire() as conn:
            await conn.execute("DROP TRIGGER read_only ON ledger")

        async def all_written() -> bool:
            return await _ledger_count(services) == 60

        await eventually(all_written, within=30, what="every entry written once")
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=10)
    # Two lines from the writer; PostgreSQL still answers reads, so the rest of ocs
    # (readiness, the API) does not see an outage.
    assert not [r for r in caplog.records if r.exc_info]
    assert [(r.name, r.getMessage()) for r in caplog.records if r.name.startswith("ocs.")] == [
        ("ocs.ledger", "PostgreSQL refuses the ledger's writes; entries wait in Redis"),
        ("ocs.ledger", "PostgreSQL takes the ledger's writes again"),
    ]
    assert health.is_up(POSTGRESQL)
    assert await _stream_backlog(services.redis) == 0


async def test_a_backlog_in_many_buckets_is_read_a_batch_at_a_time(services: Services) -> None:
    # 40 accounts: 40 opening credits and 200 top-ups, spread over up to 40 buckets.
    await _make_entries(services, accounts=40, topups=5)
    busy = len({keys.bucket_of(f"w{n}") for n in range(40)})  # one stream per bucket
    writer = LedgerWriter(services.redis, services.pool, batch_size=10)
    await writer.ensure_groups()
    # Asked for a whole batch each, the busy streams would give all 240 at once; asked
    # for their share of one (at least one entry each), one entry per busy bucket.
    assert await writer.read_new() == busy
    while await writer.read_new():
        pass
    assert await _ledger_count(services) == 240
    assert await _stream_backlog(services.redis) == 0


async def test_a_read_names_a_slice_of_the_streams_a_round_trip(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis runs one command at a time: a read of all 1,024 streams, each holding
    # entries, held every other client (the call path) for milliseconds.
    await _make_entries(services, accounts=40, topups=5)
    sent: list[list[int]] = []  # per round trip: the streams each read named
    execute_many = RedisWire.execute_many

    async def recorded(self: RedisWire, commands: Sequence[Sequence[Any]]) -> list[Any]:
        reads = [list(c) for c in commands if c and c[0] == "XREADGROUP"]
        if reads:
            sent.append([(len(c) - c.index("STREAMS") - 1) // 2 for c in reads])
        return await execute_many(self, commands)

    monkeypatch.setattr(RedisWire, "execute_many", recorded)
    writer = LedgerWriter(services.redis, services.pool, batch_size=1000)
    await writer.ensure_groups()
    assert await writer.read_new() == 240
    assert sent and max(sum(trip) for trip in sent) <= 128
    # Every stream was asked, once: none left out by the slicing.
    assert sum(sum(trip) for trip in sent[: keys.BUCKETS // 128]) == keys.BUCKETS
    assert await _ledger_count(services) == 240


async def test_a_busy_accounts_bucket_still_gives_a_whole_batch_a_read(services: Services) -> None:
    # The other half of the rule: one stream holding more than its share is not read an
    # entry at a time.
    await _make_entries(services, accounts=1, topups=60)  # 61 entries in one bucket
    writer = LedgerWriter(services.redis, services.pool, batch_size=25)
    await writer.ensure_groups()
    assert [await writer.read_new() for _ in range(4)] == [25, 25, 11, 0]
    assert await _ledger_count(services) == 61


async def test_an_entry_id_stored_for_another_entry_is_set_aside_not_dropped(
    services: Services,
) -> None:
    # A Redis that lost its last writes on a host whose clock is now behind them generates
    # their ids again for new entries. ON CONFLICT DO NOTHING dropped such an entry: its
    # top-up moved the balance and never reached the ledger.
    await _make_entries(services, accounts=1, topups=1)
    writer = LedgerWriter(services.redis, services.pool)
    await writer.ensure_groups()
    while await writer.read_new():
        pass
    bucket = keys.bucket_of("w0")
    stream = keys.ledger(bucket)
    async with services.pool.acquire() as conn:
        stored = await conn.fetchrow(
            "SELECT entry_id, amount FROM ledger WHERE kind = 'topup' ORDER BY entry_id DESC"
        )
    reused = stored["entry_id"].split("-", 1)[1]
    # The stream went back to before that id, and its next entry got it again.
    await services.redis.execute_command("XSETID", stream, "1-0")
    await services.redis.execute_command("XGROUP", "SETID", stream, keys.LEDGER_GROUP, "1-0")
    await services.redis.xadd(
        stream,
        {"kind": "topup", "account": "w0", "amount": "777", "balance": "1", "ts": "1700000000000",
         "reference": "topup:another"},
        id=reused,
    )  # fmt: skip
    while await writer.read_new():
        pass

    async with services.pool.acquire() as conn:
        kept = await conn.fetchval(
            "SELECT amount FROM ledger WHERE entry_id = $1", stored["entry_id"]
        )
    assert kept == stored["amount"]
    dead = await services.redis.xrange(keys.dead_letters(bucket))
    assert [(d[1][b"original_id"], d[1][b"amount"]) for d in dead] == [(reused.encode(), b"777")]
    assert b"already stored for another entry" in dead[0][1][b"error"]
    assert await _stream_backlog(services.redis) == 0


async def test_two_writers_holding_one_refused_entry_set_it_aside_once(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """Writer two claims an entry writer one read and is still inserting (two serving
    processes, each with its writer): PostgreSQL refuses it to both. It was set aside
    twice: two dead letters for one entry, two ERROR lines, the alert's counter at 2,
    and an operator re-inserting it would have charged it twice."""
    await _make_entries(services, accounts=1, topups=1)  # 2 entries
    bucket = keys.bucket_of("w0")
    await services.redis.xadd(
        keys.ledger(bucket),
        {"kind": "topup", "account": "w0", "amount": "1", "balance": "1",
         "reference": "bad\x00ref", "ts": "1700000000000"},
    )  # fmt: skip
    one = LedgerWriter(services.redis, services.pool)
    two = LedgerWriter(services.redis, services.pool, claim_idle_ms=0)
    await one.ensure_groups()
    set_aside_before = sample("ocs_ledger_dead_letters_total")
    caplog.set_level(logging.ERROR, logger="ocs.ledger")
    # Both writers' inserts wait on the table lock this transaction holds: the first has
    # read the entries, the second claims them from it meanwhile.
    async with services.pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE ledger IN EXCLUSIVE MODE")

        async def waiting(writers: int) -> bool:
            found = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE relation = 'ledger'::regclass AND NOT granted"
            )
            return found == writers

        first = asyncio.create_task(one.read_new())
        await eventually(lambda: waiting(1), what="the first writer to insert")
        second = asyncio.create_task(two.claim_stale())
        await eventually(lambda: waiting(2), what="the second writer to insert")
    await asyncio.gather(first, second)
    assert await _ledger_count(services) == 2  # the two good entries, once (ON CONFLICT)
    dead = await services.redis.xrange(keys.dead_letters(bucket))
    assert [d[1][b"reference"] for d in dead] == [b"bad\x00ref"]
    assert sample("ocs_ledger_dead_letters_total") == set_aside_before + 1
    assert [r.getMessage() for r in caplog.records] == [
        "ledger entry set aside: PostgreSQL refused it"
    ]
    assert await _stream_backlog(services.redis) == 0
    pending = await services.redis.xpending(keys.ledger(bucket), keys.LEDGER_GROUP)
    assert pending["pending"] == 0


def _usage_entry(account: str, record_id: str) -> dict[str, Any]:
    """An imported call's stream entry (as charge_batch.lua writes it) with this record id."""
    cdr = {
        "plan": "retail",
        "zone": "UK",
        "destination": "442071234567",
        "caller": None,
        "currency": "EUR",
        "authorized_at_ms": 1_772_528_400_000,
        "stopped_at_ms": 1_772_528_461_000,
        "billed": 120,
        "rate": [0, 60, 60, 20_000],
        "direction": "outbound",
        "supplier": "carrier-x",
        "record_id": record_id,
        "cause": "imported",
    }
    return {
        "kind": "usage",
        "account": account,
        "amount": "-40000",
        "balance": "960000",
        "reference": f"usage:carrier-x:{record_id[:40]}",
        "ts": "1772528500000",
        "duration": "61",
        "rated": "40000",
        "charged": "40000",
        "cdr": msgpack.packb(cdr),
    }


async def test_an_entry_too_long_for_an_index_is_set_aside_and_the_rest_written(
    services: Services,
) -> None:
    # A record id of 3,200 characters: PostgreSQL refuses the CDR's index row (54000,
    # program_limit_exceeded), which the writer took for its own failure, not the row's:
    # the batch, other accounts' entries with it, was read again every 30 s for ever.
    await _make_entries(services, accounts=3, topups=2)  # 9 entries
    bucket = keys.bucket_of("w0")
    long_id = secrets.token_hex(1_600)  # random: PostgreSQL would compress a repeated one
    await services.redis.xadd(keys.ledger(bucket), _usage_entry("w0", long_id))
    await services.redis.xadd(keys.ledger(bucket), _usage_entry("w0", "r2"))
    writer = LedgerWriter(services.redis, services.pool)
    await writer.ensure_groups()
    while await writer.read_new():
        pass
    assert await _ledger_count(services) == 10
    async with services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT array_agg(record_id) FROM cdrs") == ["r2"]
    assert await _stream_backlog(services.redis) == 0
    dead = await services.redis.xrange(keys.dead_letters(bucket))
    assert len(dead) == 1 and b"index row" in dead[0][1][b"error"]
    assert msgpack.unpackb(dead[0][1][b"cdr"])["record_id"] == long_id


async def test_a_database_error_not_a_rows_sets_nothing_aside(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deadlock (or a lock timeout, a permission taken away) is no row's fault: the
    # batch is left to be read again, and no entry goes to the dead letters.
    await _make_entries(services, accounts=2, topups=1)  # 4 entries
    writer = LedgerWriter(services.redis, services.pool, claim_idle_ms=0)
    await writer.ensure_groups()

    async def deadlocked(rows: Sequence[Any]) -> None:
        raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")

    with monkeypatch.context() as patched:
        patched.setattr(writer, "_insert", deadlocked)
        with pytest.raises(asyncpg.exceptions.DeadlockDetectedError):
            await writer.read_new()
    dead = sum([await services.redis.xlen(keys.dead_letters(b)) for b in range(keys.BUCKETS)])
    assert dead == 0
    assert await _ledger_count(services) == 0
    assert await writer.claim_stale() == 4
    assert await _ledger_count(services) == 4
