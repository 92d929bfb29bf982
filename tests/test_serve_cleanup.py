"""`serve` stops every part it started, on every path, in the order of the staged shutdown.

A part that fails to start (the RADIUS listeners, the RADIUS client watch, the
ledger writer, the janitor, the caller's ``on_ready``) makes `serve` raise, with
the HTTP listener closed (its runner cleaned up, the port refusing connections),
the RADIUS ports free, no background task left and the signal handlers removed.
A stop asked for by ``stopping`` runs the stages in the documented order, and
the RADIUS requests in flight when it comes are answered before the sockets
close. The
parent of `ocs serve --workers N` likewise stops what it started when a worker
cannot be started. Everything runs in this process, against the test Redis and
PostgreSQL.
"""

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pyrad import packet as rp

import ocs.radius.server as radius_server
from ocs import housekeeping, listen_sockets, server, workers
from ocs.balances.accounts import AccountSpec
from ocs.balances.ledger_writer import LedgerWriter
from ocs.charging.janitor import Janitor
from ocs.config import RadiusClientConfig, Settings, with_overrides
from ocs.radius.server import RadiusServer
from ocs.runtime import Backends
from ocs.services import Services
from tests.conftest import RADIUS_SECRET, add_plan, reset_state
from tests.radius_udp import UdpClient, access_request, accounting_request, verified, wire

WITHIN_S = 15.0  # generous: a loaded CI machine; every wait below is a poll that ends early
# A whole start and stop: the first one of a session also migrates the database and may
# compile the matcher (numba) when its cache is cold.
SERVE_S = 120.0


class Boom(Exception):
    """The failure a test injects into one part's start."""


@dataclass
class Spy:
    """What `serve` bound and started, recorded as it happens, and the stops in order."""

    sockets: list[listen_sockets.ListenSockets] = field(default_factory=list)
    ports: dict[str, int | None] = field(default_factory=dict)
    runners: list[web.AppRunner] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


@pytest.fixture
async def serve_settings(settings: Settings) -> Settings:
    """Every part on: HTTP and RADIUS on free loopback ports, janitor, ledger writer."""
    await reset_state(settings.redis_url or "", settings.database_url or "")
    return with_overrides(
        settings,
        radius_enabled=True,
        radius_host="127.0.0.1",
        radius_auth_port=0,
        radius_acct_port=0,
        run_janitor=True,
        run_ledger_writer=True,
        shutdown_timeout=5.0,
    )


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    """Record the bound sockets, the HTTP runners and the stops of every part."""
    seen = Spy()
    real_bind_all = listen_sockets.bind_all
    real_runner = web.AppRunner

    def bind_all(settings: Settings) -> listen_sockets.ListenSockets:
        bound = real_bind_all(settings)
        seen.sockets.append(bound)
        seen.ports.update(bound.ports())
        return bound

    def runner(*args: Any, **kwargs: Any) -> web.AppRunner:
        made = real_runner(*args, **kwargs)
        seen.runners.append(made)
        return made

    def recorded(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        if asyncio.iscoroutinefunction(method):

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await method(*args, **kwargs)
                finally:
                    seen.events.append(name)

            return async_wrapper

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            finally:
                seen.events.append(name)

        return wrapper

    monkeypatch.setattr(listen_sockets, "bind_all", bind_all)
    monkeypatch.setattr(web, "AppRunner", runner)
    for cls, name, event in (
        (real_runner, "cleanup", "http cleaned up"),
        (RadiusServer, "stop_listening", "radius stopped reading"),
        (RadiusServer, "drain", "radius drained"),
        (RadiusServer, "stop_watching", "radius unwatched"),
        (Janitor, "run", "janitor ended"),
        (LedgerWriter, "run", "ledger writer ended"),
    ):
        monkeypatch.setattr(cls, name, recorded(event, getattr(cls, name)))
    yield seen


def _fail(*_: Any, **__: Any) -> Any:
    raise Boom("injected")


async def _fail_async(*_: Any, **__: Any) -> Any:
    raise Boom("injected")


async def _poll(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WITHIN_S
    while not await condition():
        assert time.monotonic() < deadline, f"not within {WITHIN_S} s: {what}"
        await asyncio.sleep(0.02)


async def _refuses(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _left_over(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    return {
        task
        for task in asyncio.all_tasks()
        if task not in before and task is not asyncio.current_task() and not task.done()
    }


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    assert {sig: signal.getsignal(sig) for sig in before} == before


async def _assert_all_stopped(spy: Spy, before: set[asyncio.Task[Any]]) -> None:
    """Every part `serve` started is stopped: HTTP, RADIUS, background tasks, sockets."""
    assert len(spy.runners) == 1
    runner = spy.runners[0]
    assert runner.server is None, "the HTTP runner was not cleaned up"
    assert runner.addresses == []
    http_port = spy.ports["http_port"]
    assert http_port
    await _poll(lambda: _refuses(http_port), f"HTTP port {http_port} refuses connections")
    for name in ("radius_auth_port", "radius_acct_port"):
        port = spy.ports[name]
        assert port

        async def free(port: int = port) -> bool:
            return _udp_free(port)

        await _poll(free, f"RADIUS port {port} ({name}) is free")

    async def no_tasks_left() -> bool:
        return not _left_over(before)

    await _poll(no_tasks_left, f"no task left over: {_left_over(before)}")
    assert all(sock.fileno() == -1 for bound in spy.sockets for sock in bound.all())


@dataclass(frozen=True)
class Failure:
    """Where a start fails: the attribute replaced, and what it raises from."""

    target: object
    name: str
    replacement: Callable[..., Any]
    # What must have stopped although the failing part came after it.
    stopped: tuple[str, ...]


FAILURES = {
    "radius start": Failure(RadiusServer, "start", _fail_async, ("http cleaned up",)),
    "radius client watch": Failure(
        RadiusServer,
        "watch_clients",
        _fail_async,
        ("radius stopped reading", "http cleaned up", "radius drained", "radius unwatched"),
    ),
    "ledger writer": Failure(
        housekeeping,
        "LedgerWriter",
        _fail,
        ("radius stopped reading", "http cleaned up", "radius drained", "radius unwatched"),
    ),
    "janitor": Failure(
        housekeeping,
        "Janitor",
        _fail,
        ("radius stopped reading", "http cleaned up", "radius drained", "radius unwatched"),
    ),
}


@pytest.mark.parametrize("where", list(FAILURES))
async def test_a_part_that_fails_to_start_stops_every_part_started_before_it(
    where: str, serve_settings: Settings, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    failure = FAILURES[where]
    monkeypatch.setattr(failure.target, failure.name, failure.replacement)
    before = set(asyncio.all_tasks())
    ready = False

    async def on_ready(_: Services, __: server.Listening) -> None:
        nonlocal ready
        ready = True

    with _signal_handlers_kept(), pytest.raises(Boom):
        await asyncio.wait_for(server.serve(serve_settings, on_ready=on_ready), SERVE_S)
    assert not ready
    await _assert_all_stopped(spy, before)
    # Stopped in the order of the staged shutdown.
    assert [e for e in spy.events if e in failure.stopped] == list(failure.stopped)


async def test_a_janitor_failing_to_start_stops_the_ledger_writer_started_before_it(
    serve_settings: Settings, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[LedgerWriter] = []
    real_writer = LedgerWriter

    def writer(*args: Any, **kwargs: Any) -> LedgerWriter:
        made = real_writer(*args, **kwargs)
        written.append(made)
        return made

    monkeypatch.setattr(housekeeping, "LedgerWriter", writer)
    monkeypatch.setattr(housekeeping, "Janitor", _fail)
    before = set(asyncio.all_tasks())
    with pytest.raises(Boom):
        await asyncio.wait_for(server.serve(serve_settings), SERVE_S)
    await _assert_all_stopped(spy, before)
    if written:  # the writer starts first: it ran, and was stopped, not abandoned
        assert "ledger writer ended" in spy.events


async def test_a_failing_on_ready_stops_everything(serve_settings: Settings, spy: Spy) -> None:
    before = set(asyncio.all_tasks())
    with _signal_handlers_kept(), pytest.raises(Boom):
        await asyncio.wait_for(server.serve(serve_settings, on_ready=_fail_async), SERVE_S)
    await _assert_all_stopped(spy, before)
    assert {"janitor ended", "ledger writer ended"} <= set(spy.events)


async def test_a_stop_runs_the_stages_in_order_and_leaves_nothing_running(
    serve_settings: Settings, spy: Spy
) -> None:
    before = set(asyncio.all_tasks())
    stopping = asyncio.Event()
    listening: asyncio.Future[server.Listening] = asyncio.get_running_loop().create_future()
    followed: list[str] = []

    async def on_ready(services: Services, where: server.Listening) -> None:
        # /readyz follows the RADIUS client table's LISTEN too (the catalog's is its own).
        followed.extend(listener.name for listener in services.listeners)
        listening.set_result(where)

    with _signal_handlers_kept():
        task = asyncio.create_task(
            server.serve(serve_settings, on_ready=on_ready, stopping=stopping)
        )
        try:
            either: set[asyncio.Future[Any]] = {task, listening}
            done, _ = await asyncio.wait(
                either, timeout=SERVE_S, return_when=asyncio.FIRST_COMPLETED
            )
            assert listening in done, task.exception() if task.done() else "serve not ready"
            assert not await _refuses(listening.result().http_port)
            assert spy.events == []
            assert followed == ["nas_clients"]
        finally:
            stopping.set()
            await asyncio.wait_for(task, WITHIN_S)
    await _assert_all_stopped(spy, before)
    listeners_then_drain = [
        "radius stopped reading",
        "http cleaned up",
        "radius drained",
        "radius unwatched",
    ]
    assert [e for e in spy.events if e in listeners_then_drain] == listeners_then_drain
    # The janitor and the ledger writer are told to stop only after the drain.
    last_drain = spy.events.index("radius unwatched")
    for background in ("janitor ended", "ledger writer ended"):
        assert spy.events.index(background) > last_drain, spy.events


@pytest.mark.replaces_hot_path_function
async def test_radius_requests_in_flight_at_a_stop_are_answered(
    serve_settings: Settings, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Stop being charged and an Access-Request being granted when SIGTERM comes: both
    finish in the drain and their replies go out (the NAS is not left holding a call
    that was charged, nor a line and a reservation it was never told about); the ports
    are free afterwards."""
    settings = with_overrides(
        serve_settings,
        radius_clients=(
            RadiusClientConfig(name="test-nas", network="127.0.0.1/32", secret=RADIUS_SECRET),
        ),
    )
    before = set(asyncio.all_tasks())
    stopping = asyncio.Event()
    listening: asyncio.Future[server.Listening] = asyncio.get_running_loop().create_future()
    opened: list[Services] = []

    async def on_ready(services: Services, where: server.Listening) -> None:
        await add_plan(services)
        for account_id in ("9001", "9002"):
            await services.accounts.create(
                AccountSpec(account_id, "retail", opening_balance=10_000_000)
            )
        opened.append(services)
        listening.set_result(where)

    # Each request is decided (charged, reserved), then held until the stop has begun.
    in_flight: dict[str, asyncio.Event] = {"stop": asyncio.Event(), "authorize": asyncio.Event()}
    release = asyncio.Event()
    decided: dict[str, Any] = {}
    real_accounting = radius_server.handle_accounting
    real_access = radius_server.answer_access_request

    async def held_accounting(*args: Any, **kwargs: Any) -> Any:
        outcome = await real_accounting(*args, **kwargs)
        if outcome.kind == "stop":
            decided["stop"] = await opened[0].accounts.show("9001")
            in_flight["stop"].set()
            await release.wait()
        return outcome

    authorizations = 0

    async def held_access(*args: Any, **kwargs: Any) -> Any:
        nonlocal authorizations
        answer = await real_access(*args, **kwargs)
        authorizations += 1
        if authorizations == 2:  # the second call's: the first one sets up the Stop
            decided["authorize"] = await opened[0].accounts.show("9002")
            in_flight["authorize"].set()
            await release.wait()
        return answer

    monkeypatch.setattr(radius_server, "handle_accounting", held_accounting)
    monkeypatch.setattr(radius_server, "answer_access_request", held_access)
    udp = await UdpClient.open()
    with _signal_handlers_kept():
        task = asyncio.create_task(server.serve(settings, on_ready=on_ready, stopping=stopping))
        try:
            either: set[asyncio.Future[Any]] = {task, listening}
            done, _ = await asyncio.wait(
                either, timeout=SERVE_S, return_when=asyncio.FIRST_COMPLETED
            )
            assert listening in done, task.exception() if task.done() else "serve not ready"
            ports = listening.result()
            assert ports.radius_auth_port and ports.radius_acct_port
            first = _call_pairs("9001", "SHUTDOWN-1")
            reply = await udp.exchange(
                wire(access_request(RADIUS_SECRET, first)), ports.radius_auth_port
            )
            assert reply is not None and reply[0] == rp.AccessAccept
            start = accounting_request(RADIUS_SECRET, [("Acct-Status-Type", "Start"), *first])
            assert await udp.exchange(wire(start), ports.radius_acct_port) is not None
            stop = accounting_request(
                RADIUS_SECRET,
                [("Acct-Status-Type", "Stop"), *first, ("Acct-Session-Time", "600")],
            )
            second = access_request(RADIUS_SECRET, _call_pairs("9002", "SHUTDOWN-2"))
            udp.send(wire(stop), ports.radius_acct_port)
            udp.send(wire(second), ports.radius_auth_port)
            await asyncio.wait_for(in_flight["stop"].wait(), WITHIN_S)
            await asyncio.wait_for(in_flight["authorize"].wait(), WITHIN_S)
            stopping.set()
            # The stop has begun (the listeners no longer read) before the two finish.
            await _poll(_true_when(lambda: "radius stopped reading" in spy.events), "stop begun")
            release.set()
            await asyncio.wait_for(task, WITHIN_S)
        finally:
            stopping.set()
            release.set()
            if not task.done():
                await asyncio.wait_for(task, WITHIN_S)
    replies = {data[0]: data for data in udp.unread()}
    udp.close()
    # 600 s to Germany at 0.012 a minute: charged 0.12, the line given back.
    assert decided["stop"].balance == 10_000_000 - 120_000, decided["stop"]
    assert decided["stop"].lines_in_use == 0
    # The second call holds its line and a reservation.
    assert decided["authorize"].lines_in_use == 1 and decided["authorize"].reserved > 0
    assert rp.AccountingResponse in replies, "the Stop was charged but never answered"
    assert verified(stop, replies[rp.AccountingResponse])
    assert rp.AccessAccept in replies, "the line was reserved but the Access-Accept never sent"
    assert verified(second, replies[rp.AccessAccept])
    await _assert_all_stopped(spy, before)


def _call_pairs(user: str, conf_id: str) -> list[tuple[str, str]]:
    """A Cisco-style call from 127.0.0.1 to Germany: what each request of it carries."""
    return [
        ("NAS-IP-Address", "127.0.0.1"),
        ("User-Name", user),
        ("Called-Station-Id", "4930901820"),
        ("Calling-Station-Id", "4930123456"),
        ("h323-conf-id", f"h323-conf-id={conf_id}"),
        ("h323-call-origin", "h323-call-origin=answer"),
        ("h323-setup-time", "h323-setup-time=*10:15:00.000 UTC Mon Mar 2 2026"),
        ("Cisco-AVPair", f"call-id={conf_id}@gw.example"),
    ]


def _true_when(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """``check`` as the awaitable condition ``_poll`` takes."""

    async def condition() -> bool:
        return check()

    return condition


# -- `ocs serve --workers N`: the parent ------------------------------------------------


def test_a_worker_that_fails_to_start_stops_the_parent_and_the_workers_before_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second worker cannot be started: the first one is told to stop (SIGTERM) and
    waited for, the signal handlers are restored, the embedded servers stopped, the
    metrics directory removed and the sockets closed; the failure is raised."""
    settings = with_overrides(
        settings,
        workers=2,
        radius_enabled=True,
        radius_host="127.0.0.1",
        radius_auth_port=0,
        radius_acct_port=0,
        shutdown_timeout=5.0,
    )
    seen = Spy()
    real_bind_all = listen_sockets.bind_all

    def bind_all(settings: Settings) -> listen_sockets.ListenSockets:
        bound = real_bind_all(settings)
        seen.sockets.append(bound)
        seen.ports.update(bound.ports())
        return bound

    made_dirs: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        made: str = real_mkdtemp(*args, **kwargs)
        made_dirs.append(Path(made))
        return made

    class RecordedBackends(Backends):
        """Backends that note their stop."""

        def stop(self) -> None:
            """Stop, and say so."""
            seen.events.append("backends stopped")
            super().stop()

    started: list[subprocess.Popen[bytes]] = []

    class StandIn(subprocess.Popen[bytes]):
        """A stand-in worker: sleeps until a signal ends it (SIGTERM's default: exit -15).
        The second one cannot be started."""

        def __init__(self, _command: list[str], **kwargs: Any) -> None:
            if started:
                raise Boom("cannot start the second worker")
            super().__init__([sys.executable, "-c", "import time; time.sleep(120)"], **kwargs)
            started.append(self)

    monkeypatch.setattr(listen_sockets, "bind_all", bind_all)
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(workers, "Backends", RecordedBackends)
    monkeypatch.setattr(subprocess, "Popen", StandIn)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.raises(Boom):
            workers.run_workers(settings, ["serve"])
        assert len(started) == 1
        assert started[0].poll() == -signal.SIGTERM, "the started worker was not told to stop"
        assert seen.events == ["backends stopped"]
        # The metrics directory and the workers' notification socket's: both removed.
        assert len(made_dirs) == 2 and not any(made.exists() for made in made_dirs)
        assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
        assert all(sock.fileno() == -1 for bound in seen.sockets for sock in bound.all())
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
