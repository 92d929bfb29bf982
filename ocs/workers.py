"""`ocs serve --workers N`: N server processes serving on sockets their parent bound.

The parent binds the HTTP port and the two RADIUS ports first, once (a taken
port ends the start with "address in use", exit code 2, before anything else
starts). It resolves Redis and PostgreSQL once (starting the embedded servers
if no URL is configured, so every worker uses the same ones), then runs N
copies of `ocs serve` with those URLs and the bound sockets as inherited
descriptors (ocs.listen_sockets), restarts a worker that dies, and on
SIGTERM/SIGINT passes the signal on, closes its own copies of the sockets,
waits for every worker's staged shutdown, and stops the embedded servers last.
The workers accept from the same sockets; all state is in Redis, so any worker
can answer any request. A worker whose parent dies, even by SIGKILL, stops:
no orphan keeps a port.
"""

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import multiprocess

from ocs import listen_sockets
from ocs.config import Settings
from ocs.metrics import MULTIPROCESS_DIR_ENV
from ocs.runtime import Backends

log = logging.getLogger("ocs.workers")

RESTART_DELAY = 1.0


def _worker_argv(argv: Sequence[str]) -> list[str]:
    """The parent's own arguments, with the worker count forced to 1."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return [sys.executable, "-m", "ocs", *out, "--workers", "1"]


def run_workers(settings: Settings, argv: Sequence[str]) -> int:
    """Run ``settings.workers`` workers until SIGTERM/SIGINT; 0 once all have stopped.

    Raises ``listen_sockets.AddressInUse`` (a ``ConfigError``) when a port is taken.
    """
    sockets = listen_sockets.bind_all(settings)
    log.info("listening", extra=sockets.ports())
    # Only the parent holds the write end: when it dies, by any means, every worker
    # reads end-of-file and stops.
    parent_read, parent_write = os.pipe()
    try:
        return _supervise(settings, argv, sockets, parent_read)
    finally:
        sockets.close()
        os.close(parent_read)
        os.close(parent_write)


def _supervise(
    settings: Settings,
    argv: Sequence[str],
    sockets: listen_sockets.ListenSockets,
    parent_read: int,
) -> int:
    backends = Backends(settings)
    backends.start()
    env = dict(os.environ)
    env["OCS_REDIS_URL"] = backends.redis_url or ""
    env["OCS_DATABASE_URL"] = backends.database_url or ""
    handoff, pass_fds = listen_sockets.handoff(sockets, parent_read)
    env[listen_sockets.HANDOFF_ENV] = handoff
    # Metrics of all workers, whichever one a scrape reaches (prometheus-client's
    # multiprocess mode); emptied at start so counters begin at zero.
    metrics_dir = Path(tempfile.mkdtemp(prefix="ocs-metrics-"))
    env[MULTIPROCESS_DIR_ENV] = str(metrics_dir)
    command = _worker_argv(argv)
    stopping = False

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=env, pass_fds=pass_fds)

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signum)
        # The listening sockets stay open while any process holds them: the parent lets
        # go of its copies so that the workers' stage 1 (no new requests) takes effect.
        sockets.close()

    workers: list[subprocess.Popen[bytes]] = []
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for _ in range(settings.workers):
            if stopping:
                break  # the sockets are closed already; none to hand out
            workers.append(spawn())
        log.info(
            "workers started", extra={"workers": settings.workers, "pids": [p.pid for p in workers]}
        )
        while not stopping:
            time.sleep(0.2)
            for index, proc in enumerate(workers):
                code = proc.poll()
                if code is not None and not stopping:
                    log.error(
                        "worker exited; restarting it", extra={"pid": proc.pid, "exit_code": code}
                    )
                    multiprocess.mark_process_dead(proc.pid, str(metrics_dir))
                    time.sleep(RESTART_DELAY)
                    if not stopping:
                        workers[index] = spawn()
        deadline = time.monotonic() + settings.shutdown_timeout + 10
        for proc in workers:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("worker did not stop in time; killing it", extra={"pid": proc.pid})
                proc.kill()
                proc.wait()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        backends.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
