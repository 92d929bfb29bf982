"""`ocs serve`: the HTTP listener and the ledger writer in one process, with staged shutdown.

Shutdown on SIGTERM or SIGINT, in stages: stop accepting connections, let
requests in flight finish within ``shutdown_timeout`` (then cancel them),
let the ledger writer finish its batch, flush pending Redis commands, close
pools, stop embedded servers. Later listeners (RADIUS) join the same stages.
"""

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from ocs import metrics
from ocs.balances.ledger_writer import LedgerWriter
from ocs.charging.janitor import Janitor
from ocs.config import Settings
from ocs.http.app import create_app
from ocs.runtime import open_runtime
from ocs.services import Services

log = logging.getLogger("ocs.server")

Hook = Callable[[Services, int], Awaitable[None]]


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
    """Run until a signal (or ``stopping``) asks to stop."""
    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
    async with open_runtime(settings) as services:
        if before_listen is not None:
            await before_listen(services)
        runner = web.AppRunner(
            create_app(services),
            handle_signals=False,
            shutdown_timeout=settings.shutdown_timeout,
            access_log=None,
        )
        await runner.setup()
        site = web.TCPSite(runner, settings.http_host, settings.http_port, reuse_port=True)
        await site.start()
        port = _bound_port(runner, settings.http_port)
        writer_task: asyncio.Task[None] | None = None
        writer_stopping = asyncio.Event()
        background: list[asyncio.Task[None]] = []
        if settings.run_janitor:
            janitor = Janitor(services.calls, services.store, settings.janitor_interval)
            background.append(asyncio.create_task(janitor.run(writer_stopping)))
        if settings.run_ledger_writer:
            writer = LedgerWriter(
                services.redis,
                services.pool,
                batch_size=settings.ledger_batch_size,
                claim_idle_ms=settings.ledger_claim_idle_ms,
            )
            writer_task = asyncio.create_task(_run_ledger_writer(writer, writer_stopping))
        log.info("ocs serving", extra={"http_host": settings.http_host, "http_port": port})
        if on_ready is not None:
            await on_ready(services, port)
        try:
            await stopping.wait()
        finally:
            log.info(
                "shutting down: closing listeners, draining requests",
                extra={"timeout_s": settings.shutdown_timeout},
            )
            # AppRunner.cleanup closes the listening sockets first, then waits for
            # handlers in flight up to shutdown_timeout, then cancels the rest.
            await runner.cleanup()
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
