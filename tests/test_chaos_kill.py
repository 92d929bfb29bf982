"""Chaos: SIGKILL a serving `ocs serve` under a bounded load of full calls, restart it, and audit.

The client is a switch that keeps a log: it authorizes each call with its own
call id, starts it and stops it over HTTP, retransmitting a start or a stop
until it is acknowledged (as a switch does), and giving a call up when its
authorization got no answer (it then tries again under a new call id). In the
middle of the load the server is killed with SIGKILL and started again on the
same ports. Afterwards:

- every acknowledged stop is charged exactly once: one CDR per call id, with
  the acknowledged cost, and the balances moved by exactly the CDRs;
- `ocs reconcile` finds no drift between Redis and the ledger;
- once the janitor has run, no line or reservation is left anywhere.

Rates (tests/conftest.py RETAIL_DECK, EUR): Germany 0.012 a minute, 1/1 s.
An HTTP authorization starts the call; one the switch gave up is closed by the
janitor at the end of its grant (charged by the stale-call policy, once).
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from ocs.balances.accounts import AccountSpec
from ocs.config import Settings
from ocs.money import parse_amount
from ocs.services import Services
from tests.conftest import add_plan, eventually
from tests.serve_process import ServeProcess, free_port, serve_env

GERMANY = "4930901820"
LINES = 12  # concurrent calls, one account each
CALLS_PER_LINE = 25  # 300 calls in all
KILL_AFTER = 100  # acknowledged stops before the SIGKILL
OPENING = 100_000_000  # 100.00 EUR per account
REQUEST_TIMEOUT_S = 15.0

# Calls are short (the plan allows 10 s), so that the janitor closes a call the
# switch gave up (an HTTP authorization starts the call) within seconds: its
# grant plus CALL_EXPIRY_GRACE. The ledger entries the killed writer had read but
# not acknowledged are taken over after LEDGER_CLAIM_IDLE_MS.
MAX_CALL_S = 10
SERVER_ENV = {
    "OCS_CALL_EXPIRY_GRACE": "1",
    "OCS_START_TIMEOUT": "2",
    "OCS_JANITOR_INTERVAL": "0.2",
    "OCS_LEDGER_CLAIM_IDLE_MS": "500",
}

Transient = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


@dataclass
class SwitchLog:
    """What the client saw acknowledged, and what it gave up."""

    stops: dict[str, tuple[str, int]] = field(default_factory=dict)  # call -> (account, cost)
    abandoned: set[str] = field(default_factory=set)
    refused: list[tuple[str, str, int, str]] = field(default_factory=list)  # (call, step, ...)


class Switch:
    """One line of the load: full calls, one after another, on one account."""

    def __init__(self, session: aiohttp.ClientSession, base: str, log: SwitchLog) -> None:
        self._session = session
        self._base = base
        self._log = log

    async def _post(self, path: str, payload: dict) -> tuple[int, dict]:
        async with self._session.post(self._base + path, json=payload) as reply:
            return reply.status, await reply.json()

    async def _until_answered(self, path: str, payload: dict) -> tuple[int, dict]:
        """Retransmit until the server answers (it may be dead or restarting)."""
        while True:
            try:
                return await self._post(path, payload)
            except Transient:
                await asyncio.sleep(0.05)

    async def call(self, account: str, call_id: str, duration: int) -> None:
        attempt = 0
        while True:
            this_id = f"{call_id}-{attempt}"
            try:
                status, body = await self._post(
                    "/v1/calls", {"account": account, "destination": GERMANY, "call_id": this_id}
                )
            except Transient:
                # No answer: the switch gives this call up and dials again. The server
                # may have reserved it all the same; the janitor frees it.
                self._log.abandoned.add(this_id)
                attempt += 1
                await asyncio.sleep(0.05)
                continue
            break
        if status not in (200, 201):
            self._log.refused.append((this_id, "authorize", status, json.dumps(body)))
            return
        status, body = await self._until_answered(f"/v1/calls/{this_id}/start", {})
        if status != 200:
            # The janitor closed it meanwhile (the restart outlasted its grant): 404 or
            # 409. A stop retransmitted after that gets the janitor's charge, repeated.
            self._log.refused.append((this_id, "start", status, json.dumps(body)))
            self._log.abandoned.add(this_id)
            return
        status, body = await self._until_answered(
            f"/v1/calls/{this_id}/stop", {"duration": duration}
        )
        assert status == 200, (this_id, status, body)
        assert this_id not in self._log.stops, this_id
        self._log.stops[this_id] = (account, parse_amount(body["cost"]))


@pytest.fixture
def servers() -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for server in started:
        server.stop()


def _reconcile(settings: Settings) -> tuple[int, dict]:
    """`ocs reconcile`, as an operator runs it after an incident."""
    done = subprocess.run(
        [sys.executable, "-m", "ocs", "reconcile", "--log-format", "text"],
        env=serve_env(settings),
        capture_output=True,
        timeout=120,
        check=False,
    )
    return done.returncode, json.loads(done.stdout or b"null")


async def test_sigkill_under_load_charges_every_acknowledged_stop_exactly_once(
    services: Services, settings: Settings, tmp_path: Path, servers: list[ServeProcess]
) -> None:
    await add_plan(services, max_call_duration=MAX_CALL_S)
    accounts = [f"chaos-{i}" for i in range(LINES)]
    for account_id in accounts:
        await services.accounts.create(
            AccountSpec(
                account_id, plan_id="retail", opening_balance=OPENING, max_lines=CALLS_PER_LINE
            )
        )
    http = free_port()
    auth, acct = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    env = serve_env(settings, SERVER_ENV)

    def launch(tag: str) -> ServeProcess:
        server = ServeProcess(
            http_port=http,
            auth_port=auth,
            acct_port=acct,
            env=env,
            data_dir=tmp_path / "var",
            log=tmp_path / f"{tag}.log",
        )
        servers.append(server)
        return server

    first = launch("first")
    await asyncio.to_thread(first.wait_ready)

    log = SwitchLog()
    restarted: list[ServeProcess] = []

    async def chaos() -> None:
        await eventually(
            lambda: _true(len(log.stops) >= KILL_AFTER), within=60, what="load to get going"
        )
        os.kill(first.pid, signal.SIGKILL)
        await asyncio.to_thread(first.proc.wait)
        second = launch("second")
        restarted.append(second)
        await asyncio.to_thread(second.wait_ready)

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=LINES)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        switch = Switch(session, f"http://127.0.0.1:{http}", log)

        async def line(index: int) -> None:
            for n in range(CALLS_PER_LINE):
                await switch.call(accounts[index], f"c{index}-{n}", duration=1 + n % MAX_CALL_S)

        chaos_task = asyncio.create_task(chaos())
        await asyncio.wait_for(asyncio.gather(*(line(i) for i in range(LINES))), timeout=180)
        await asyncio.wait_for(chaos_task, timeout=180)
    assert first.proc.returncode == -signal.SIGKILL
    assert restarted, "the server was never killed"
    assert all(step == "start" and code in (404, 409) for _, step, code, _ in log.refused), (
        log.refused
    )
    # The load was not trivial on either side of the kill.
    assert len(log.stops) >= KILL_AFTER + 50, (len(log.stops), len(log.refused))

    # After the janitor, no line and no reservation is left.
    async def all_released() -> bool:
        for account_id in accounts:
            state = await services.accounts.show(account_id)
            if state.lines_in_use or state.reserved:
                return False
        return True

    try:
        await eventually(all_released, within=30, what="the janitor to free every line")
    except AssertionError:
        left = {a: await services.store.live_calls_of(a) for a in accounts}
        raise AssertionError(f"left behind: {left}\n{restarted[0].log_tail()}") from None
    for account_id in accounts:
        assert not await services.store.live_calls_of(account_id)

    # The ledger writers (the killed one's pending entries taken over) have put every
    # CDR in PostgreSQL: each balance moved by exactly the CDRs of its account.
    moved: dict[str, int] = {}
    summed: dict[str, int] = {}

    async def cdrs_written() -> bool:
        for account_id in accounts:
            moved[account_id] = OPENING - (await services.accounts.show(account_id)).balance
        async with services.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT account_id, sum(charged) AS charged FROM cdrs GROUP BY account_id"
            )
        summed.update({r["account_id"]: int(r["charged"]) for r in rows})
        return all(summed.get(a, 0) == moved[a] for a in accounts)

    try:
        await eventually(cdrs_written, within=30, what="the CDRs to match the balances")
    except AssertionError:
        raise AssertionError(f"balances moved by {moved}, CDRs sum to {summed}") from None

    # Every acknowledged stop is charged exactly once, at the acknowledged cost.
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT call_id, min(account_id) AS account_id, count(*) AS n,"
            " sum(charged) AS charged FROM cdrs GROUP BY call_id"
        )
    cdrs = {r["call_id"]: r for r in rows}
    twice = [c for c, r in cdrs.items() if r["n"] != 1]
    assert twice == [], f"calls with more than one CDR: {twice}"
    missing = set(log.stops) - set(cdrs)
    assert missing == set(), f"acknowledged stops without a CDR: {missing}"
    for call_id, (account_id, cost) in log.stops.items():
        assert cdrs[call_id]["account_id"] == account_id
        assert cdrs[call_id]["charged"] == cost, (call_id, cdrs[call_id]["charged"], cost)
    # The other CDRs are calls the switch gave up, closed by the janitor.
    unknown = set(cdrs) - set(log.stops) - log.abandoned
    assert unknown == set(), f"CDRs of calls the switch never placed: {unknown}"

    # 2. `ocs reconcile` finds no drift.
    code, report = await asyncio.to_thread(_reconcile, settings)
    assert code == 0, report
    assert report["ok"] is True and report["mismatches"] == [], report

    restarted[0].stop()
    assert restarted[0].proc.returncode == 0, restarted[0].log_tail()


async def _true(value: bool) -> bool:
    return value
