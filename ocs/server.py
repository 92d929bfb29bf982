"""`ocs serve`: HTTP and RADIUS listeners, ledger writer and janitor in one process.

Shutdown on SIGTERM or SIGINT, in stages: stop accepting connections, let
requests in flight finish within ``shutdown_timeout`` (then cancel them),
let the ledger writer finish its batch, flush pending Redis commands, close
pools, stop embedded servers. RADIUS listeners close with the HTTP one.

The ports are bound first, before any embedded server starts, and never shared:
a taken port ends the start at once with "address in use" (exit code 2). A worker
of `ocs serve --workers N` binds nothing: it serves on the sockets its parent
bound and handed down (ocs.listen_sockets), and stops when that parent dies.
"""

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from ocs import api_tokens, listen_sockets, metrics
from ocs.balances.ledger_writer import LedgerWriter
from ocs.charging.janitor import Janitor
from ocs.config import Settings
from ocs.http.app import create_app
from ocs.radius.clients import load_client_table
from ocs.radius.server import RadiusServer
from ocs.runtime import open_runtime
from ocs.services import Services

log = logging.getLogger("ocs.server")


@dataclass(frozen=True, slots=True)
class Listening:
    """Where a running server listens (ports are the bound ones, also when 0 was asked)."""

    http_port: int
    radius_auth_port: int | None
    radius_acct_port: int | None


Hook = Callable[[Services, Listening], Awaitable[None]]


async def _run_ledger_writer(writer: LedgerWriter, stopping: asyncio.Event) -> None:
    written = writer.written
    await writer.run(stopping)
    metrics.LEDGER_WRITTEN.inc(writer.written - written)


async def serve(
    settings: Settings,
    *,
    before_listen: Callable[[Services], Awaitable[None]] | None = None,
    on_ready: Hook | None = None,
    stopping: asyncio.Event | None = None,
) -> None:
    """Run until a signal (or ``stopping``) asks to stop.

    Raises ``listen_sockets.AddressInUse`` (a ``ConfigError``) when a port is taken,
    before anything else is started.
    """
    stopping = stopping or asyncio.Event()
    inherited = listen_sockets.take_inherited()
    if inherited is not None:
        listen_sockets.ask_sigterm_on_parent_death()
        sockets = inherited.sockets
    else:
        sockets = listen_sockets.bind_all(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
    if inherited is not None:
        listen_sockets.watch_parent(inherited, stopping)
    try:
        await _serve(settings, sockets, before_listen, on_ready, stopping)
    finally:
        # Whatever a listener did not take over (a start that failed half-way).
        sockets.close()


async def _serve(
    settings: Settings,
    sockets: listen_sockets.ListenSockets,
    before_listen: Callable[[Services], Awaitable[None]] | None,
    on_ready: Hook | None,
    stopping: asyncio.Event,
) -> None:
    async with open_runtime(settings) as services:
        if before_listen is not None:
            await before_listen(services)
        if settings.admin_token_required:
            made = await api_tokens.ensure_bootstrap_admin_token(services.pool, settings)
            if made is not None:
                # Shown once, on the terminal only: never through the logger (logs are shipped).
                print(
                    f"ocs: bootstrap admin token (shown once; only its digest is kept): {made}",
                    file=sys.stderr,
                    flush=True,
                )
        runner = web.AppRunner(
            create_app(services),
            handle_signals=False,
            shutdown_timeout=settings.shutdown_timeout,
            access_log=None,
        )
        await runner.setup()
        site = web.SockSite(runner, sockets.http)
        await site.start()
        port = _bound_port(runner, settings.http_port)
        radius: RadiusServer | None = None
        if settings.radius_enabled:
            radius = RadiusServer(
                services.calls,
                settings,
                await load_client_table(services.pool, settings),
                services.pin_guard,
            )
            await radius.start(sockets.radius_auth, sockets.radius_acct)
            await radius.watch_clients(services.pool)
            services.disconnect = radius.disconnect
        writer_task: asyncio.Task[None] | None = None
        writer_stopping = asyncio.Event()
        background: list[asyncio.Task[None]] = []
        if settings.run_janitor:
            janitor = Janitor(
                services.calls, services.store, settings.janitor_interval, health=services.health
            )
            background.append(asyncio.create_task(janitor.run(writer_stopping)))
        if settings.run_ledger_writer:
            writer = LedgerWriter(
                services.redis,
                services.pool,
                batch_size=settings.ledger_batch_size,
                claim_idle_ms=settings.ledger_claim_idle_ms,
                health=services.health,
            )
            writer_task = asyncio.create_task(_run_ledger_writer(writer, writer_stopping))
        log.info("ocs serving", extra={"http_host": settings.http_host, "http_port": port})
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
        try:
            await stopping.wait()
        finally:
            log.info(
                "shutting down: closing listeners, draining requests",
                extra={"timeout_s": settings.shutdown_timeout},
            )
            # Stage 1: no new requests. Stage 2: those in flight finish (their answers
            # go out) within shutdown_timeout; the rest are cancelled. AppRunner.cleanup
            # does both for HTTP.
            if radius is not None:
                radius.close_listeners()
            await runner.cleanup()
            if radius is not None:
                await radius.drain(settings.shutdown_timeout)
                await radius.stop_watching()
            writer_stopping.set()
            await asyncio.gather(*background, return_exceptions=True)
            if writer_task is not None:
                try:
                    await asyncio.wait_for(writer_task, timeout=settings.shutdown_timeout)
                except TimeoutError:
                    log.warning("ledger writer did not finish in time; its entries stay pending")
            log.info("stopped")


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured
