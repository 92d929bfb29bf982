"""The background process of `ocs serve` (``background_process = true``, decision 0039).

It runs the housekeeping (``ocs.housekeeping``: ledger writer, janitor, the pass
over every live call for the gauges) and nothing else: no listener, no request.
The parent (``ocs.workers``) starts it beside the serving process(es), with the
same settings and backends, restarts it when it dies, and stops it after them, so
that its ledger writer also moves what their last requests wrote. Like a worker,
it stops when the parent dies (the parent's pipe, ``ocs.listen_sockets``).

Its metrics (the ledger writer's batches, the janitor's closes) reach ``/metrics``
through the workers' shared metrics directory, as a worker's do.
"""

import asyncio
import contextlib
import importlib
import logging
import os
import signal

from ocs import listen_sockets, metrics, systemd_notify
from ocs.compiled import HOT_MODULES, running_compiled
from ocs.config import Settings
from ocs.housekeeping import start_housekeeping
from ocs.runtime import open_runtime

log = logging.getLogger("ocs.background")

# Set by the parent for the process it starts as its background process (a
# serving worker has none): the value says which part of `ocs serve` to run.
PART_ENV = "OCS_SERVE_PART"
BACKGROUND = "background"


def is_background_process() -> bool:
    """Whether this `ocs serve` was started by its parent as the background process."""
    return os.environ.get(PART_ENV) == BACKGROUND


async def run_background(settings: Settings, stopping: asyncio.Event | None = None) -> None:
    """Run the housekeeping until SIGTERM/SIGINT, ``stopping``, or the parent's death."""
    stopping = stopping or asyncio.Event()
    parent = listen_sockets.take_parent()
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        if parent is not None:
            listen_sockets.ask_sigterm_on_parent_death()
            stack.callback(listen_sockets.watch_parent(parent, stopping))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
            stack.callback(loop.remove_signal_handler, sig)
        async with open_runtime(settings) as services, contextlib.AsyncExitStack() as work:
            work.callback(log.info, "background process stopped")
            start_housekeeping(settings, services, work)
            # The gauge takes the least over the processes, this one included: it loads
            # the request path's modules too, so that it reports the build, not 0.
            for name in HOT_MODULES:
                importlib.import_module(name)
            metrics.COMPILED_MODULES.set(len(running_compiled()))
            log.info(
                "background process running",
                extra={
                    "ledger_writer": settings.run_ledger_writer,
                    "janitor": settings.run_janitor,
                    "live_state_pass": settings.run_live_state_pass,
                },
            )
            # To the --workers parent (ocs.workers): it gives up on a background process
            # that never gets this far, and keeps restarting one that did.
            systemd_notify.ready("background process running")
            await stopping.wait()
            log.info("background process stopping")
