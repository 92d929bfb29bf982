"""`ocs serve`: the HTTP and RADIUS listeners, and the housekeeping unless its own process runs it.

Shutdown on SIGTERM or SIGINT, in stages: stop accepting connections, let
requests in flight finish within ``shutdown_timeout`` (then cancel them),
let the ledger writer finish its batch, flush pending Redis commands, close
pools, stop embedded servers. RADIUS listeners close with the HTTP one.

Each part registers its stop in the stage it belongs to as soon as it has
started (``contextlib.AsyncExitStack``, one per stage), so the same stops run in
the same order on every path: after a signal, and when starting a later part
fails (then `serve` raises, with everything it had started stopped).

The ports are bound first, before any embedded server starts, and never shared:
a taken port ends the start at once with "address in use" (exit code 2). A worker
of `ocs serve --workers N` binds nothing: it serves on the sockets its parent
bound and handed down (ocs.listen_sockets), and stops when that parent dies.
The housekeeping (ledger writer, janitor, gauges: ocs.housekeeping) runs in this
process unless the parent runs it in a process of its own (``background_process``,
ocs.background); then its settings turn it off here.
"""

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from aiohttp import web

from ocs import api_tokens, bootstrap_token, listen_sockets, loop_lag, metrics, systemd_notify
from ocs.compiled import HOT_MODULES, running_compiled
from ocs.config import Settings
from ocs.housekeeping import start_housekeeping
from ocs.http.app import create_app
from ocs.radius.clients import load_client_table
from ocs.radius.server import RadiusServer
from ocs.runtime import StoresCheck, open_runtime
from ocs.services import Services

log = logging.getLogger("ocs.server")


@dataclass(frozen=True, slots=True)
class Listening:
    """Where a running server listens (ports are the bound ones, also when 0 was asked)."""

    http_port: int
    radius_auth_port: int | None
    radius_acct_port: int | None


Hook = Callable[[Services, Listening], Awaitable[None]]
# What signal.getsignal returns: a Python handler, SIG_DFL or SIG_IGN, or None.
_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


@dataclass(frozen=True, slots=True)
class _Stages:
    """The shutdown stages, in the order they run; each part pushes its stops onto one.

    Within a stage the stops run last pushed first (an exit stack), and the stages
    are entered so that they exit in this order, whatever the order of the starts.
    """

    # Stage 1: no new requests (RADIUS listeners close, then HTTP stops accepting and
    # lets its requests in flight finish within shutdown_timeout: AppRunner.cleanup).
    listeners: contextlib.AsyncExitStack
    # Stage 2: RADIUS requests in flight finish within shutdown_timeout; the client
    # table stops following changes.
    draining: contextlib.AsyncExitStack
    # Stage 3: the janitor stops and the ledger writer finishes its batch.
    background: contextlib.AsyncExitStack


async def serve(
    settings: Settings,
    *,
    before_listen: Callable[[Services], Awaitable[None]] | None = None,
    on_ready: Hook | None = None,
    stopping: asyncio.Event | None = None,
    inspect_stores: StoresCheck | None = None,
) -> None:
    """Run until a signal (or ``stopping``) asks to stop.

    ``inspect_stores`` looks at Redis and PostgreSQL before anything is written to them
    (``open_runtime``'s ``inspect``): what it raises stops the start.

    Raises ``listen_sockets.AddressInUse`` (a ``ConfigError``, exit 2) when a port is
    taken, a ``ConfigError`` for a listen host that is no address or a name that does
    not exist, and ``listen_sockets.AddressNotReady`` (exit 1, retried by the unit) when
    an address is not on the host or the DNS did not answer yet, before anything else
    is started; ``runtime.BackendRefused`` (a ``ConfigError``) when Redis or PostgreSQL
    refuses its URL. Any other failure to start raises too, once
    every part already started has been stopped (in the order of the staged shutdown).
    """
    stopping = stopping or asyncio.Event()
    inherited = listen_sockets.take_inherited()
    if inherited is not None:
        listen_sockets.ask_sigterm_on_parent_death()
        sockets = inherited.sockets
    else:
        sockets = listen_sockets.bind_all(settings)
    async with contextlib.AsyncExitStack() as stack:
        # Last of all: whatever a listener did not take over (a start that failed half-way).
        stack.callback(sockets.close)
        _stop_on_signals(stack, stopping)
        if inherited is not None:
            stack.callback(listen_sockets.watch_parent(inherited.parent, stopping))
        await _serve(settings, sockets, before_listen, on_ready, stopping, inspect_stores)


def _stop_on_signals(stack: contextlib.AsyncExitStack, stopping: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stopping`` until ``stack`` closes (where the loop allows)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
            # Undone once everything has stopped: a caller's loop (a test's, asyncio.run's
            # SIGINT handler) goes on as it was, not with a handler setting a spent event.
            stack.callback(_restore_signal, loop, sig, previous)


def _restore_signal(
    loop: asyncio.AbstractEventLoop, sig: signal.Signals, previous: _SignalHandler
) -> None:
    """Take ``stopping.set`` off ``sig`` and put back the handler it replaced."""
    loop.remove_signal_handler(sig)
    if previous is not None:  # None: a handler not set from Python; the default stays
        signal.signal(sig, previous)


async def _serve(
    settings: Settings,
    sockets: listen_sockets.ListenSockets,
    before_listen: Callable[[Services], Awaitable[None]] | None,
    on_ready: Hook | None,
    stopping: asyncio.Event,
    inspect_stores: StoresCheck | None = None,
) -> None:
    """Open the runtime, start every part, serve until ``stopping``, then stop in stages."""
    # Pools and embedded servers close after every stage (open_runtime exits last).
    # The server makes the pepper's file at its first start; no other command does.
    async with open_runtime(settings, make_pepper=True, inspect=inspect_stores) as services:
        if before_listen is not None:
            await before_listen(services)
        if settings.admin_token_required:
            # Into a 0600 file in the data dir, never into stderr: that is the journal or
            # `docker logs` under the shipped unit and compose file, kept and shipped.
            await bootstrap_token.hand_over(services.pool, settings)
        # Entered in reverse so that they exit in stage order.
        async with (
            contextlib.AsyncExitStack() as background,
            contextlib.AsyncExitStack() as draining,
            contextlib.AsyncExitStack() as listeners,
        ):
            background.callback(log.info, "stopped")  # pushed first: logged last
            stages = _Stages(listeners=listeners, draining=draining, background=background)
            port = await _start_http(settings, services, sockets, stages)
            radius: RadiusServer | None = None
            if settings.radius_enabled:
                radius = await _start_radius(settings, services, sockets, stages)
            start_housekeeping(settings, services, stages.background)
            compiled = len(running_compiled())
            metrics.COMPILED_MODULES.set(compiled)
            log.info(
                "ocs serving",
                extra={
                    "http_host": settings.http_host,
                    "http_port": port,
                    "compiled_modules": f"{compiled} of {len(HOT_MODULES)}",
                },
            )
            if not settings.admin_token_required and not await api_tokens.any_token(services.pool):
                log.warning(
                    "admin API open: no API token exists; `ocs tokens create --name NAME --role"
                    " admin` closes it (or set admin_token_required)"
                )
            if settings.switch_open:
                log.warning("switch_open: the HTTP call lifecycle is accepted from any address")
            if on_ready is not None:
                await on_ready(
                    services,
                    Listening(
                        http_port=port,
                        radius_auth_port=radius.auth_port if radius else None,
                        radius_acct_port=radius.acct_port if radius else None,
                    ),
                )
            # Pushed last onto the first stage: logged before any stop runs.
            listeners.callback(
                log.info,
                "shutting down: closing listeners, draining requests",
                extra={"timeout_s": settings.shutdown_timeout},
            )
            # Start-up objects (catalog, decks, dictionaries) leave the GC's view: its full
            # passes over them stalled the loop for 100-300 ms under RADIUS load.
            if settings.gc_freeze:
                loop_lag.settle_gc()
            lag = loop_lag.LoopLag()
            lag.start()
            background.callback(lag.stop)
            if settings.stall_report_ms:
                watch = loop_lag.StallWatch(settings.stall_report_ms / 1000)
                watch.start()
                background.callback(watch.stop)
            # Type=notify: started (catalog loaded, listening); a worker's parent relays it.
            systemd_notify.ready(f"serving HTTP on port {port}")
            await stopping.wait()
            systemd_notify.stopping("shutting down: draining requests")


async def _start_http(
    settings: Settings,
    services: Services,
    sockets: listen_sockets.ListenSockets,
    stages: _Stages,
) -> int:
    """Serve the HTTP API on the bound socket; the port it listens on."""
    runner = web.AppRunner(
        create_app(services),
        handle_signals=False,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,
    )
    # Registered before setup: cleanup also undoes a setup or a site start that failed
    # half-way (aiohttp allows it), and stops accepting, then lets requests in flight
    # finish within shutdown_timeout and cancels the rest.
    stages.listeners.push_async_callback(runner.cleanup)
    await runner.setup()
    await web.SockSite(runner, sockets.http).start()
    return _bound_port(runner, settings.http_port)


async def _start_radius(
    settings: Settings,
    services: Services,
    sockets: listen_sockets.ListenSockets,
    stages: _Stages,
) -> RadiusServer:
    """Listen for RADIUS on the bound sockets and follow changes of the client table."""
    radius = RadiusServer(
        services.calls,
        settings,
        await load_client_table(services.pool, settings),
        services.pin_guard,
    )
    # Both registered before the start, which may fail half-way: each does nothing for
    # what was not started. Pushed after the HTTP runner's cleanup, so the RADIUS
    # listeners stop reading first; the RADIUS requests then drain after the HTTP ones,
    # their replies sent on the sockets, which close only after the drain.
    stages.draining.push_async_callback(_drain_radius, radius, settings.shutdown_timeout)
    stages.listeners.callback(radius.stop_listening)
    await radius.start(sockets.radius_auth, sockets.radius_acct)
    await radius.watch_clients(services.pool)
    if radius.client_listener is not None:
        services.listeners.append(radius.client_listener)
    services.disconnect = radius.disconnect
    return radius


async def _drain_radius(radius: RadiusServer, within: float) -> None:
    """Let RADIUS requests in flight finish and answer them, close the sockets, then
    stop following the client table."""
    await radius.drain(within)
    await radius.stop_watching()


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    """The port the HTTP runner listens on (``configured`` when it cannot tell)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured
