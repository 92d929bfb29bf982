"""Slots that move while ocs runs: charges and ledger rows stay exactly once (issue 17).

On the session's 3-master cluster (tests/redis_cluster.py):

- ``redis-cli --cluster reshard`` moves a thousand slots, the keys of many accounts
  among them, while switches keep charging those accounts and the ledger writer
  keeps copying their streams to PostgreSQL. Every acknowledged top-up and call is
  in the balance and in PostgreSQL exactly once, and ``ocs reconcile`` agrees.
- One bucket's slot is moved step by step (``CLUSTER SETSLOT`` and ``MIGRATE``),
  its ledger stream first, with entries a dead writer had read still pending. While
  the slot migrates a charge waits (its script is answered ``TRYAGAIN``: some of the
  keys it names are on neither side, or on the other) and goes through, once, when
  the slot has moved; before, it was answered 503 ``unavailable`` after half a
  second, a Redis outage for the health tracker. The pending entries are taken over
  on the new master (ASK) and written once.
- A slot whose migration outlasts a batch's migration deadline
  (``redis_migration_wait_ms``, a second by default): its charges are answered
  "unavailable" (``SlotMigrating``), under the switches' 2 s, and Redis is not
  reported down; each HTTP request it fails is logged (once per reason a while) and
  counted in ``ocs_request_errors_total``.
- The charges sent in the same batch as one of a migrating slot (other accounts, on
  its master and on another) are answered at once, not held until it runs or gives up.

Rates (tests/conftest.py RETAIL_DECK, EUR): UK Mobile 0.060 a minute, 30/6, connect
fee 0.150 (45 s: 0.198).
"""

import asyncio
import functools
import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from ocs import housekeeping
from ocs.balances import keys
from ocs.balances.accounts import AccountSpec
from ocs.balances.ledger_writer import LedgerWriter
from ocs.balances.reconcile import reconcile
from ocs.balances.slots import key_slot
from ocs.balances.store import TopupResult
from ocs.balances.wire import RedisWire, SlotMigrating
from ocs.config import Settings, with_overrides
from ocs.http import middleware
from ocs.log_limit import LogLimiter
from ocs.runtime import open_runtime
from ocs.services import Services
from tests.conftest import RunningApp, add_plan, eventually, reset_state
from tests.helpers import cli_env
from tests.redis_cluster import Node, RedisClusterProcess

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.parametrize("backend", ["cluster"], indirect=True),
]

UK_MOBILE = "447700900123"
MOVED_SLOTS = 1000


@pytest.fixture
async def patient_services(
    backend_settings: Settings, redis_url: str, database_url: str
) -> AsyncIterator[Services]:
    """``backend_services`` whose charges wait up to 10 s for a migrating slot
    (``redis_migration_wait_ms``): time enough to move it by hand meanwhile."""
    await reset_state(redis_url, database_url)
    settings = with_overrides(backend_settings, redis_migration_wait_ms=10_000)
    async with open_runtime(settings) as opened:
        yield opened


def slot_of(account_id: str) -> int:
    return key_slot(keys.account(account_id))


def first_slots(cluster: RedisClusterProcess, node: Node, count: int) -> set[int]:
    """The ``count`` lowest slots ``node`` serves: those a reshard from it moves."""
    with node.client() as client:
        ranges = [
            (int(start), int(end))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS")
            if int(master[1]) == node.port
        ]
    owned = sorted(slot for start, end in ranges for slot in range(start, end + 1))
    return set(owned[:count])


def accounts_where(wanted: int, test: Any, prefix: str) -> list[str]:
    """``wanted`` account ids whose keys' slot passes ``test``."""
    found: list[str] = []
    n = 0
    while len(found) < wanted:
        candidate = f"{prefix}-{n}"
        if test(slot_of(candidate)):
            found.append(candidate)
        n += 1
    return found


async def acknowledged(app: RunningApp, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    """POST until ocs answers other than 503 (as a switch retransmits); that answer."""
    for _ in range(500):
        status, body = await app.post(path, payload)
        if status != 503:
            assert status in (200, 201), (path, status, body)
            return body
        assert body["error"]["reason"] == "unavailable", body
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} unavailable for too long")


async def ledger_rows(services: Services) -> list[Any]:
    async with services.pool.acquire() as conn:
        return list(await conn.fetch("SELECT entry_id, account_id, kind, amount FROM ledger"))


async def test_a_reshard_under_traffic_keeps_every_charge_and_row_exactly_once(
    backend_app: RunningApp, redis_cluster: RedisClusterProcess
) -> None:
    app = backend_app
    await add_plan(app.services, max_lines=3)
    source = redis_cluster.masters()[0]
    target = redis_cluster.masters()[1]
    moving = first_slots(redis_cluster, source, MOVED_SLOTS)
    # Accounts whose slot the reshard moves, and some it leaves where they are.
    movers = accounts_where(12, lambda slot: slot in moving, "mv")
    stayers = accounts_where(6, lambda slot: slot not in moving, "st")
    for account_id in movers + stayers:
        await acknowledged(
            app, "/v1/accounts", {"id": account_id, "plan": "retail", "balance": "20.00"}
        )
    done = asyncio.Event()
    counts: dict[str, int] = {a: 0 for a in movers + stayers}

    async def switch(account_id: str) -> None:
        n = 0
        # Keep charging until the reshard is over, and a little after.
        while not done.is_set() or n < 3:
            await acknowledged(
                app,
                f"/v1/accounts/{account_id}/topups",
                {"amount": "0.50", "topup_id": f"{account_id}-t{n}"},
            )
            call = {"account": account_id, "destination": UK_MOBILE, "call_id": f"{account_id}-{n}"}
            await acknowledged(app, "/v1/calls", call)
            stopped = await acknowledged(app, f"/v1/calls/{account_id}-{n}/stop", {"duration": 45})
            assert stopped["cost"] == "0.198000"
            n += 1
            counts[account_id] = n

    switches = asyncio.gather(*(switch(a) for a in movers + stayers))
    try:
        await eventually(
            lambda: asyncio.sleep(0, min(counts.values()) > 0), what="every switch charging"
        )
        before = sum(counts.values())
        await asyncio.to_thread(redis_cluster.reshard, source, target, MOVED_SLOTS)
        during = sum(counts.values()) - before
    finally:
        done.set()
        await switches
    print(f"calls during the reshard: {during}; in all: {sum(counts.values())}")
    assert during > 0  # the switches kept charging while the slots moved
    assert all(redis_cluster.node_of_slot(slot_of(a)).port == target.port for a in movers)
    assert min(counts.values()) >= 3

    expected = {a: 20_000_000 + n * (500_000 - 198_000) for a, n in counts.items()}
    for account_id, micro in expected.items():
        _, shown = await app.get(f"/v1/accounts/{account_id}")
        assert int(shown["balance"].replace(".", "")) == micro, (account_id, shown)

    async def all_written() -> bool:
        return len(await ledger_rows(app.services)) == sum(1 + 2 * n for n in counts.values())

    await eventually(all_written, within=30, what="every ledger entry in PostgreSQL")
    rows = await ledger_rows(app.services)
    assert len({r["entry_id"] for r in rows}) == len(rows)
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["account_id"]] = totals.get(row["account_id"], 0) + row["amount"]
    assert totals == expected
    async with app.services.pool.acquire() as conn:
        cdrs = await conn.fetchval("SELECT count(*) FROM cdrs")
    assert cdrs == sum(counts.values())
    result = await reconcile(app.services.redis, app.services.pool)
    assert result.ok and result.pending_entries == 0, result.mismatches


async def test_one_slot_moved_step_by_step_with_entries_pending(
    patient_services: Services, redis_cluster: RedisClusterProcess
) -> None:
    services = patient_services
    await add_plan(services)
    account_id = "moving"
    slot = slot_of(account_id)
    stream = keys.ledger(keys.bucket_of(account_id))
    await services.accounts.create(
        AccountSpec(account_id, plan_id="retail", opening_balance=1_000_000)
    )
    for n in range(4):
        await services.accounts.topup(account_id, 10_000, f"before-{n}")
    # A writer read the five entries and died before writing them: they are pending.
    dead = LedgerWriter(services.redis, services.pool)
    await dead.ensure_groups()
    delivered: Any = await services.redis.xreadgroup(
        keys.LEDGER_GROUP, dead.consumer, {stream: ">"}, count=100
    )
    assert sum(len(messages) for _, messages in delivered) == 5

    source = redis_cluster.node_of_slot(slot)
    target = next(m for m in redis_cluster.masters() if m.port != source.port)
    redis_cluster.begin_migration(slot, target)
    with source.client() as client:
        client.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", stream)

    # The account's hash is on one master, its ledger on the other: a top-up cannot run
    # yet (TRYAGAIN until the slot settles); it waits, where it was answered 503 after
    # half a second (a dozen TRYAGAIN answers).
    tries_before = tryagain_count(target)
    during = asyncio.create_task(services.accounts.topup(account_id, 10_000, "during"))

    # The entries pending for the dead writer are taken over where the stream is now.
    heir = LedgerWriter(services.redis, services.pool, claim_idle_ms=1)
    assert await heir.claim_stale() == 5
    assert await heir.claim_stale() == 0
    with target.client() as client:
        # The slot is still the source's: the target answers for it only after ASKING.
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.xlen(stream)
        assert pipe.execute()[1] == 0

    async def retried_long() -> bool:
        return during.done() or tryagain_count(target) - tries_before >= 30

    await eventually(retried_long, what="the top-up retried through the migration")
    assert not during.done()
    assert services.health.is_up("redis")  # a migration is no outage
    while redis_cluster.migrate_keys(slot, source, target):
        pass
    redis_cluster.end_migration(slot, target)
    assert redis_cluster.node_of_slot(slot).port == target.port

    # The waiting top-up learns the new owner from MOVED and goes through; a repeat is
    # a repeat.
    first = await during
    again = await services.accounts.topup(account_id, 10_000, "during")
    assert (first.repeated, again.repeated, first.balance) == (False, True, 1_050_000)
    assert await heir.read_new() == 1
    rows = await ledger_rows(services)
    assert sorted(r["amount"] for r in rows) == [10_000] * 5 + [1_000_000]
    assert len({r["entry_id"] for r in rows}) == 6
    result = await reconcile(services.redis, services.pool)
    assert result.ok and result.pending_entries == 0, result.mismatches


def tryagain_count(node: Node) -> int:
    """How many commands ``node`` has answered TRYAGAIN (INFO errorstats)."""
    with node.client() as client:
        stats = client.info("errorstats")
    return int(stats.get("errorstat_TRYAGAIN", {}).get("count", 0))


def migration_wait_env(settings: Settings, wait_ms: int) -> dict[str, str]:
    """The environment of an ``ocs`` command on the cluster with ``redis_migration_wait_ms``."""
    return {
        **cli_env(settings),
        "OCS_REDIS_CLUSTER": "true",
        "OCS_REDIS_MIGRATION_WAIT_MS": str(wait_ms),
    }


async def test_the_ledger_writer_waits_for_a_migrating_slot_as_long_as_configured(
    backend_services: Services, redis_cluster: RedisClusterProcess
) -> None:
    # The writer as `ocs serve` makes it, with redis_migration_wait_ms = 30 s. Before, it
    # kept the wire's default (a second) whatever the setting said: setting aside an
    # entry of a slot being migrated was refused SlotMigrating after a second.
    services = backend_services
    settings = with_overrides(services.settings, redis_migration_wait_ms=30_000)
    writer = housekeeping.ledger_writer(settings, services)
    account_id = "aside"
    bucket = keys.bucket_of(account_id)
    stream = keys.ledger(bucket)
    slot = key_slot(stream)
    await writer.ensure_groups()
    # An entry no row can be made of: the writer sets it aside by a script naming the
    # ledger stream and the dead-letter stream, which does not exist yet (TRYAGAIN
    # while the slot migrates).
    await services.redis.xadd(stream, {"kind": "topup", "account": account_id})
    target = next(
        m for m in redis_cluster.masters() if m.port != redis_cluster.node_of_slot(slot).port
    )
    source = redis_cluster.begin_migration(slot, target)
    tries_before = tryagain_count(target)
    reading = asyncio.create_task(writer.read_new())
    try:

        async def retried_long() -> bool:
            # 60 retries 25 ms apart: past the default second, within the 30 configured.
            return reading.done() or tryagain_count(target) - tries_before >= 60

        await eventually(retried_long, what="the set-aside retried through the migration")
        assert not reading.done()
    finally:
        while redis_cluster.migrate_keys(slot, source, target):
            pass
        redis_cluster.end_migration(slot, target)
    assert await reading == 0  # nothing written: set aside
    dead = await services.redis.xrange(keys.dead_letters(bucket))
    assert [d[1][b"error"].startswith(b"unreadable entry") for d in dead] == [True]
    assert await services.redis.xlen(stream) == 0


async def test_ocs_reconcile_waits_for_a_migrating_slot_as_long_as_configured(
    backend_services: Services, redis_cluster: RedisClusterProcess, tmp_path: Path
) -> None:
    # `ocs reconcile` with redis_migration_wait_ms = 30 s while a bucket's slot is
    # half moved. Before, its snapshots kept the wire's default (a second): the command
    # failed after a second whatever the setting said.
    services = backend_services
    await add_plan(services)
    account_id = "reconciled"
    await services.accounts.create(
        AccountSpec(account_id, plan_id="retail", opening_balance=1_000_000)
    )
    slot = slot_of(account_id)
    stream = keys.ledger(keys.bucket_of(account_id))
    target = next(
        m for m in redis_cluster.masters() if m.port != redis_cluster.node_of_slot(slot).port
    )
    source = redis_cluster.begin_migration(slot, target)
    # The stream moved, the account not yet: the bucket's snapshot (both keys) is
    # answered TRYAGAIN until the slot has moved.
    with source.client() as client:
        client.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", stream)
    tries_before = tryagain_count(target)
    settings = services.settings
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocs",
        "reconcile",
        "--redis-url",
        redis_cluster.url,
        "--database-url",
        settings.database_url or "",
        "--log-format",
        "text",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=migration_wait_env(settings, 30_000),
        cwd=tmp_path,
    )
    try:

        async def retried_long() -> bool:
            return child.returncode is not None or tryagain_count(target) - tries_before >= 60

        await eventually(retried_long, within=30, what="the snapshot retried through the migration")
        assert child.returncode is None
    finally:
        while redis_cluster.migrate_keys(slot, source, target):
            pass
        redis_cluster.end_migration(slot, target)
        stdout, stderr = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert (report["ok"], report["accounts"], report["mismatches"]) == (True, 1, [])


async def test_a_migration_outlasting_the_deadline_is_unavailable_not_an_outage(
    backend_services: Services, redis_cluster: RedisClusterProcess, caplog: pytest.LogCaptureFixture
) -> None:
    services = backend_services
    await add_plan(services)
    account_id = "stuck"
    slot = slot_of(account_id)
    await services.accounts.create(
        AccountSpec(account_id, plan_id="retail", opening_balance=1_000_000)
    )
    source = redis_cluster.node_of_slot(slot)
    target = next(m for m in redis_cluster.masters() if m.port != source.port)
    redis_cluster.begin_migration(slot, target)
    wire = RedisWire(redis_cluster.url, cluster=True)  # a second's migration wait
    account = keys.account(account_id)
    try:
        # A script naming its account and a key that does not exist: the importing
        # master has neither, the migrating one only one of them.
        script = ("EVAL", "return redis.call('HGET', KEYS[1], 'balance')", 2)
        command = (*script, account, keys.topup_done(account_id, "never"))
        started = asyncio.get_running_loop().time()
        with pytest.raises(SlotMigrating) as refused:
            await wire.execute_many([command])
        waited = asyncio.get_running_loop().time() - started
        assert isinstance(refused.value, RedisConnectionError)  # answered 503 "unavailable"
        assert 0.95 <= waited < 2.0  # the deadline: under the switches' 2 s
        services.health.report(refused.value)
        assert services.health.is_up("redis")
        (line,) = [r for r in caplog.records if r.name == "ocs.redis"]
        assert line.getMessage().startswith("a slot still migrating at the batch's deadline")
        assert getattr(line, "slots", None) == [slot]
        for node in (source, target):  # the migration called off
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        assert await wire.execute_many([command]) == [b"1000000"]
    finally:
        await wire.close()


async def test_requests_refused_for_a_migrating_slot_are_logged_once_and_counted(
    backend_app: RunningApp,
    redis_cluster: RedisClusterProcess,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The HTTP log's limiter of this test alone: a line another test had written would
    # hold this one back.
    monkeypatch.setattr(middleware, "_UNAVAILABLE_LINES", LogLimiter("http"))
    app = backend_app
    await add_plan(app.services)
    account_id = "stuck-http"
    status, body = await app.post(
        "/v1/accounts", {"id": account_id, "plan": "retail", "balance": "1.00"}
    )
    assert status == 201, body
    slot = slot_of(account_id)
    source = redis_cluster.node_of_slot(slot)
    target = next(m for m in redis_cluster.masters() if m.port != source.port)
    labels = {"protocol": "http", "reason": "SlotMigrating"}
    counted = REGISTRY.get_sample_value("ocs_request_errors_total", labels) or 0.0
    caplog.set_level(logging.INFO)
    redis_cluster.begin_migration(slot, target)
    try:
        # Both wait the wire's deadline together, then are answered 503.
        answers = await asyncio.gather(
            *(
                app.post(f"/v1/accounts/{account_id}/topups", {"amount": "0.10", "topup_id": t})
                for t in ("m-1", "m-2")
            )
        )
    finally:
        for node in (source, target):  # the migration called off
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    assert [(s, b["error"]["reason"]) for s, b in answers] == [(503, "unavailable")] * 2
    # Before: no line at all (the tracker takes no outage for it, and the request's own
    # line was left to the tracker), nor a count.
    lines = [r for r in caplog.records if r.name == "ocs.http"]
    assert [r.getMessage() for r in lines] == ["backend unavailable"]
    assert getattr(lines[0], "reason", None) == "SlotMigrating"
    assert REGISTRY.get_sample_value("ocs_request_errors_total", labels) == counted + 2
    assert app.services.health.is_up("redis")  # still no outage
    status, body = await app.get(f"/v1/accounts/{account_id}")
    assert (status, body["balance"]) == (200, "1.000000"), body


def three_accounts(cluster: RedisClusterProcess) -> tuple[str, str, str, Node, Node]:
    """An account whose slot is to migrate, another on a slot of the same master, one on
    another master; that master (the source) and the migration's target."""
    moving = "migrating-0"
    source = cluster.node_of_slot(slot_of(moving))
    target = next(m for m in cluster.masters() if m.port != source.port)
    (near,) = accounts_where(
        1,
        lambda slot: slot != slot_of(moving) and cluster.node_of_slot(slot).port == source.port,
        "near",
    )
    (far,) = accounts_where(1, lambda slot: cluster.node_of_slot(slot).port != source.port, "far")
    return moving, near, far, source, target


def topups_in_one_batch(
    services: Services, account_ids: list[str], topup_id: str
) -> tuple[list["asyncio.Task[TopupResult]"], list[str]]:
    """A top-up of 0.010000 of each account, all sent in one tick (one batch: each task
    queues its script in its first step, before the batch is flushed); the tasks, and the
    accounts in the order their top-ups were answered."""
    answered: list[str] = []
    tasks = [
        asyncio.ensure_future(services.accounts.topup(account_id, 10_000, topup_id))
        for account_id in account_ids
    ]
    for account_id, task in zip(account_ids, tasks, strict=True):
        task.add_done_callback(functools.partial(note_answered, answered, account_id))
    return tasks, answered


def note_answered(answered: list[str], account_id: str, _: object) -> None:
    """A done callback: ``account_id`` was answered now."""
    answered.append(account_id)


async def test_other_charges_of_a_batch_are_answered_while_a_slot_migrates(
    patient_services: Services, redis_cluster: RedisClusterProcess
) -> None:
    services = patient_services
    await add_plan(services)
    moving, near, far, source, target = three_accounts(redis_cluster)
    for account_id in (moving, near, far):
        await services.accounts.create(
            AccountSpec(account_id, plan_id="retail", opening_balance=1_000_000)
        )
    redis_cluster.begin_migration(slot_of(moving), target)
    (waiting, *others), answered = topups_in_one_batch(services, [moving, near, far], "t-1")
    # The top-ups of the other accounts (the migrating slot's master, another master)
    # are answered while the migrating one is still retried; before, the whole batch
    # waited for it (5 s, its deadline then), long after the switches had given up.
    results = await asyncio.gather(*others)
    assert [r.balance for r in results] == [1_010_000, 1_010_000]
    assert not waiting.done()
    assert sorted(answered) == sorted([near, far])
    # The slot settles within the migration wait: the waiting top-up runs, once.
    while redis_cluster.migrate_keys(slot_of(moving), source, target):
        pass
    redis_cluster.end_migration(slot_of(moving), target)
    first = await waiting
    assert answered[-1] == moving
    again = await services.accounts.topup(moving, 10_000, "t-1")
    assert (first.repeated, first.balance) == (False, 1_010_000)
    assert (again.repeated, again.balance) == (True, 1_010_000)
    assert services.health.is_up("redis")


async def test_a_slot_migrating_past_the_wait_refuses_its_charges_alone(
    backend_services: Services, redis_cluster: RedisClusterProcess
) -> None:
    services = backend_services  # redis_migration_wait_ms: the default, a second
    await add_plan(services)
    moving, near, far, source, target = three_accounts(redis_cluster)
    for account_id in (moving, near, far):
        await services.accounts.create(
            AccountSpec(account_id, plan_id="retail", opening_balance=1_000_000)
        )
    slot = slot_of(moving)
    redis_cluster.begin_migration(slot, target)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        (waiting, *others), answered = topups_in_one_batch(services, [moving, near, far], "t-1")
        results = await asyncio.gather(*others)
        assert [r.balance for r in results] == [1_010_000, 1_010_000]
        assert not waiting.done()
        with pytest.raises(SlotMigrating):
            await waiting
        # Answered 503 before a switch gives up on the request (2 s), not after.
        assert loop.time() - started < 2.0
        assert answered == [near, far, moving] or answered == [far, near, moving]
        assert services.health.is_up("redis")  # a migration is no outage
    finally:
        for node in (source, target):  # the migration called off
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    # Refused, it never ran: sent again, it credits the account once.
    again = await services.accounts.topup(moving, 10_000, "t-1")
    assert (again.repeated, again.balance) == (False, 1_010_000)
