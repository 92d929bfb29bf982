"""The work of `ocs serve` that is not on any request's path: ledger writer, janitor, gauges.

The ledger writer moves the ledger streams to PostgreSQL, the janitor closes the
calls no switch will end, and the state sampler reads the live state for the
NOC's gauges. Each runs as a task until one event stops them, and each registers
its stop on the exit stack it is given, so that the process's staged shutdown
stops them in one place: the janitor and the sampler first, then the writer,
which may take up to ``shutdown_timeout`` to finish its batch.

They run in the serving process itself, or (``background_process = true``, decision
0039) in a process of their own beside it (``ocs.background``), so that the
writer's PostgreSQL batches and the janitor's sweeps never hold up a request.
"""

import asyncio
import contextlib
import logging

from ocs.balances.ledger_writer import LedgerWriter
from ocs.call_cutting import nas_disconnect
from ocs.charging.janitor import Disconnect, Janitor
from ocs.charging.values import CallRecord
from ocs.config import Settings
from ocs.services import Services
from ocs.state_metrics import StateSampler

log = logging.getLogger("ocs.housekeeping")


def ledger_writer(settings: Settings, services: Services) -> LedgerWriter:
    """The ledger writer as ``ocs serve`` runs it, configured by ``settings``."""
    return LedgerWriter(
        services.redis,
        services.pool,
        batch_size=settings.ledger_batch_size,
        claim_idle_ms=settings.ledger_claim_idle_ms,
        health=services.health,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
        migration_wait=settings.redis_migration_wait_ms / 1000,
    )


def start_housekeeping(
    settings: Settings, services: Services, stack: contextlib.AsyncExitStack
) -> None:
    """Start the ledger writer and the janitor (as ``run_ledger_writer`` and ``run_janitor``
    say) and the state sampler; each one's stop goes onto ``stack``."""
    # One event stops them all: each stop sets it, so all are told at once, whichever of
    # them started and however the stack was reached.
    stopping = asyncio.Event()
    # The writer starts (and registers its stop) before the janitor, so that at shutdown
    # the janitor is awaited first and the writer, which may take up to shutdown_timeout
    # to finish its batch, after it.
    if settings.run_ledger_writer:
        writer = ledger_writer(settings, services)
        writer_task = asyncio.create_task(writer.run(stopping))
        stack.push_async_callback(_stop_writer, writer_task, stopping, settings.shutdown_timeout)
    if settings.run_janitor:
        janitor = Janitor(
            services.calls,
            services.store,
            settings.janitor_interval,
            health=services.health,
            disconnect=janitor_disconnect(services),
            disconnects_in_flight=settings.janitor_disconnects_in_flight,
        )
        janitor_task = asyncio.create_task(janitor.run(stopping))
        stack.push_async_callback(_stop_task, janitor_task, stopping)
    # The NOC's gauges (live calls, reserved funds, ledger lag, catalog, billing), sampled.
    sampler = StateSampler.of(services, take_live_pass=settings.run_live_state_pass)
    sampler_task = asyncio.create_task(sampler.run(stopping))
    stack.push_async_callback(_stop_task, sampler_task, stopping)


def janitor_disconnect(services: Services) -> Disconnect:
    """How the janitor tells a NAS to end an expired sliced call: through this process's
    RADIUS server once it has one (``Services.disconnect``, set after the housekeeping
    starts), else (a background process) by the client table in PostgreSQL."""
    fallback = nas_disconnect(services)

    async def disconnect(record: CallRecord) -> object:
        """Ask the call's NAS to end it; what it said (None: no NAS to tell)."""
        sender = services.disconnect or fallback
        return await sender(record)

    return disconnect


async def _stop_task(task: "asyncio.Task[None]", stopping: asyncio.Event) -> None:
    """Stop the janitor or the sampler; a failure of its own is not the shutdown's."""
    stopping.set()
    await asyncio.gather(task, return_exceptions=True)


async def _stop_writer(task: "asyncio.Task[None]", stopping: asyncio.Event, within: float) -> None:
    """Let the ledger writer finish its batch within ``within``; else its entries stay pending."""
    stopping.set()
    try:
        await asyncio.wait_for(task, timeout=within)
    except TimeoutError:
        log.warning("ledger writer did not finish in time; its entries stay pending")
