"""`ocs serve` with ``background_process``: the housekeeping runs in a process of its own.

The serving worker answers the calls; the background process, which listens on
nothing, moves their ledger entries to PostgreSQL and closes the calls no
switch ends. It is replaced when it dies, and stops with the parent.

Rates (tests/conftest.py RETAIL_DECK, EUR): Germany 0.012 a minute, 1/1 s, so a
call of 30 s costs 0.006000.
"""

import asyncio
import importlib
import os
import signal
import socket
from pathlib import Path

import aiohttp
import pytest

from ocs import listen_sockets
from ocs.balances.accounts import AccountSpec
from ocs.compiled import HOT_MODULES, running_compiled
from ocs.config import ConfigError, Settings
from ocs.services import Services
from tests.conftest import add_plan, eventually
from tests.serve_process import (
    ServeProcess,
    free_port,
    gone,
    kill_if_running,
    listening_inodes,
    serve_env,
    socket_inodes,
)

GERMANY = "4930901820"
MAX_CALL_S = 3  # a call the switch never ends is the janitor's within seconds
SERVER_ENV = {
    "OCS_BACKGROUND_PROCESS": "true",
    "OCS_CALL_EXPIRY_GRACE": "1",
    "OCS_JANITOR_INTERVAL": "0.2",
}


def children_of(pid: int) -> set[int]:
    """The running processes whose parent is ``pid``."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def environ_of(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode().partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def compiled_build() -> int:
    """How many hot modules this checkout's build runs compiled (0: pure Python)."""
    for name in HOT_MODULES:
        importlib.import_module(name)
    return len(running_compiled())


async def cdr_charged(services: Services, call_id: str) -> int | None:
    """What the CDR of ``call_id`` in PostgreSQL charged, or None while there is none."""
    async with services.pool.acquire() as conn:
        return await conn.fetchval("SELECT charged FROM cdrs WHERE call_id = $1", call_id)


async def test_background_process_writes_the_ledger_and_closes_stale_calls(
    services: Services, settings: Settings, tmp_path: Path
) -> None:
    await add_plan(services, max_call_duration=MAX_CALL_S)
    await services.accounts.create(AccountSpec("bg-1", plan_id="retail", opening_balance=10**8))
    http = free_port()
    auth, acct = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    server = ServeProcess(
        http_port=http,
        auth_port=auth,
        acct_port=acct,
        env=serve_env(settings, SERVER_ENV),
        data_dir=tmp_path / "var",
        log=tmp_path / "serve.log",
    )
    seen: set[int] = set()
    try:
        worker = (await asyncio.to_thread(server.wait_ready))["pid"]
        assert worker != server.pid

        async def two_children() -> bool:
            return len(children_of(server.pid)) == 2

        await eventually(two_children, within=30, what="a worker and the background process")
        (background,) = children_of(server.pid) - {worker}
        seen |= {worker, background}

        # The worker holds the listening sockets; the background process none of them.
        listening = (
            listening_inodes(http, "tcp")
            | listening_inodes(auth, "udp")
            | listening_inodes(acct, "udp")
        )
        assert len(listening) == 3
        assert socket_inodes(worker) >= listening
        assert not socket_inodes(background) & listening
        # The worker is told to leave the housekeeping to the background process.
        told = environ_of(worker)
        assert told["OCS_RUN_LEDGER_WRITER"] == "false"
        assert told["OCS_RUN_JANITOR"] == "false"
        assert told["OCS_RUN_LIVE_STATE_PASS"] == "false"
        assert "OCS_RUN_LEDGER_WRITER" not in environ_of(background)

        base = f"http://127.0.0.1:{http}"
        async with aiohttp.ClientSession() as session:

            async def call(call_id: str, stop_after: int | None) -> None:
                body = {"account": "bg-1", "destination": GERMANY, "call_id": call_id}
                async with session.post(f"{base}/v1/calls", json=body) as reply:
                    assert reply.status == 201, await reply.text()
                # Answered (an HTTP call is provisional until its /start, decision 0055).
                async with session.post(f"{base}/v1/calls/{call_id}/start", json={}) as reply:
                    assert reply.status == 200, await reply.text()
                if stop_after is not None:
                    async with session.post(
                        f"{base}/v1/calls/{call_id}/stop", json={"duration": stop_after}
                    ) as reply:
                        assert reply.status == 200, await reply.text()
                        assert (await reply.json())["cost"] == "0.000600"

            # A call the worker charged reaches PostgreSQL: the background's ledger writer.
            await call("bg-call-1", 3)

            async def first_written() -> bool:
                return await cdr_charged(services, "bg-call-1") == 600

            await eventually(first_written, within=30, what="the first call's CDR")

            # An answered call no switch ends is closed by the background's janitor at its
            # expiry, charged its whole grant (3 s: 0.000600).
            await call("bg-call-abandoned", None)

            async def abandoned_closed() -> bool:
                return await cdr_charged(services, "bg-call-abandoned") == 600

            await eventually(abandoned_closed, within=30, what="the janitor to close the call")

            # Killed, the background process is replaced, and the new one carries on.
            os.kill(background, signal.SIGKILL)

            async def replaced() -> bool:
                return len(children_of(server.pid) - {worker, background}) == 1

            await eventually(replaced, within=30, what="a new background process")
            seen |= children_of(server.pid)
            await call("bg-call-2", 3)

            async def second_written() -> bool:
                return await cdr_charged(services, "bg-call-2") == 600

            await eventually(second_written, within=30, what="the CDR after the restart")

            # The build the gauge reports is the serving one's, the background's included
            # (the least over both): every hot module, when this build is compiled.
            async with session.get(f"{base}/metrics") as reply:
                text = await reply.text()
            assert f"ocs_compiled_modules {float(compiled_build())}" in text.splitlines()

        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait_exit) == 0, server.log_tail()
        assert all(gone(pid) for pid in seen), server.log_tail()
    finally:
        server.stop()
        for pid in seen:
            kill_if_running(pid)


def test_a_background_process_is_handed_only_its_parents_pipe() -> None:
    read, write = os.pipe()
    try:
        value, fds = listen_sockets.parent_handoff(read)
        assert fds == [read]
        environ = {listen_sockets.HANDOFF_ENV: value}
        assert listen_sockets.take_parent(environ) == listen_sockets.Parent(read, os.getpid())
        assert listen_sockets.HANDOFF_ENV not in environ  # nothing it starts inherits it
        assert listen_sockets.take_parent({}) is None
        with pytest.raises(ConfigError, match="no parent pipe"):
            listen_sockets.take_parent({listen_sockets.HANDOFF_ENV: "http=3"})
    finally:
        os.close(read)
        os.close(write)


async def test_the_background_process_stops_when_its_parent_is_killed(
    settings: Settings, tmp_path: Path
) -> None:
    server = ServeProcess(
        http_port=free_port(),
        auth_port=free_port(socket.SOCK_DGRAM),
        acct_port=free_port(socket.SOCK_DGRAM),
        env=serve_env(settings, SERVER_ENV),
        data_dir=tmp_path / "var",
        log=tmp_path / "serve.log",
    )
    children: set[int] = set()
    try:
        await asyncio.to_thread(server.wait_ready)

        async def two_children() -> bool:
            return len(children_of(server.pid)) == 2

        await eventually(two_children, within=30, what="a worker and the background process")
        children = children_of(server.pid)
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait()

        async def orphans_gone() -> bool:
            return all(gone(pid) for pid in children)

        # No orphan is left: the worker and the background process both stop.
        await eventually(orphans_gone, within=30, what="the children to stop")
        assert "parent process gone" in server.log_tail(20_000)
    finally:
        server.stop()
        for pid in children:
            kill_if_running(pid)
