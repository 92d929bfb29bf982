"""`ocs serve --workers N`: N server processes serving on sockets their parent bound.

The parent binds the HTTP port and the two RADIUS ports first, once (a taken
port ends the start with "address in use", exit code 2, before anything else
starts). It resolves Redis and PostgreSQL once (starting the embedded servers
if no URL is configured, so every worker uses the same ones), then runs N
copies of `ocs serve` with those URLs and the bound sockets as inherited
descriptors (ocs.listen_sockets), restarts a worker that dies (waiting longer after
each exit in a row, and giving up on workers that never became ready: ocs.restarts), and on
SIGTERM/SIGINT passes the signal on, closes its own copies of the sockets,
waits for every worker's staged shutdown, and stops the embedded servers last.
The workers accept from the same sockets; all state is in Redis, so any worker
can answer any request. A worker whose parent dies, even by SIGKILL, stops:
no orphan keeps a port.

With ``background_process`` (decision 0039; then also for one worker) the parent
also runs the background process (ocs.background): the ledger writer, the janitor
and the live-state pass, which the serving workers are then told not to run. It
listens on nothing, is restarted like a worker, and is stopped after the workers.

Each part the parent starts registers its stop on one ``contextlib.ExitStack``,
so the same stops run in the same order on every path, also when something
fails half-way: the workers are told to stop and waited for, the signal
handlers are restored, the embedded servers stop, the metrics directory is
removed, and the sockets and the pipe are closed.
"""

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

from ocs import listen_sockets, metric_files, restarts, systemd_notify
from ocs.background import BACKGROUND, PART_ENV
from ocs.config import Settings, with_overrides
from ocs.metrics import MULTIPROCESS_DIR_ENV
from ocs.runtime import Backends, check_backends, check_pepper

log = logging.getLogger("ocs.workers")

# Beyond shutdown_timeout, how long a worker's staged shutdown may take before it is killed.
STOP_GRACE = 10.0


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


class WorkersDidNotStart(Exception):
    """Processes of one kind kept exiting and none ever became ready: the parent stopped
    the others and gives up (ocs.restarts); the message is the one line the CLI says.

    ``returncode`` is the last exit's: the CLI exits 2 too when it was 2 (a refusal no
    restart fixes, so that the unit is not restarted either), else 1."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


class _Workers:
    """The worker processes: started, restarted, told to stop and waited for."""

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        pass_fds: Sequence[int],
        *,
        name: str = "worker",
    ) -> None:
        """Workers run ``command`` with ``env``, inheriting the descriptors ``pass_fds``;
        ``name`` is what the log calls one of them."""
        self.name = name
        self._command = command
        self._env = env
        self._pass_fds = pass_fds
        self.procs: list[subprocess.Popen[bytes]] = []
        # Each process's restart history, by the same index as ``procs``.
        self.slots: list[restarts.Slot] = []
        # Whether any process of this kind has said READY=1 since the parent started.
        self.ever_ready = False
        # Set (from a signal handler) once the parent was asked to stop.
        self.stopping = False
        # Workers already sent a signal: stop() sends them no second one, which could
        # reach a worker past its staged shutdown, with the default handlers back.
        self._told: set[int] = set()

    def _spawn(self) -> subprocess.Popen[bytes]:
        """One worker process, inheriting the sockets and the parent's pipe."""
        return subprocess.Popen(self._command, env=self._env, pass_fds=self._pass_fds)

    def start(self) -> None:
        """Start one more worker."""
        self.procs.append(self._spawn())
        self.slots.append(restarts.Slot(started_at=time.monotonic()))

    def restart(self, index: int) -> None:
        """Replace the worker at ``index`` (one that has exited) by a new one."""
        self.procs[index] = self._spawn()
        failures = self.slots[index].failures
        self.slots[index] = restarts.Slot(started_at=time.monotonic(), failures=failures)

    def mark_ready(self, pids: set[int]) -> None:
        """Note which of the current processes said READY=1 (``pids``: who did)."""
        for proc, slot in zip(self.procs, self.slots, strict=True):
            if proc.pid in pids:
                slot.ready = True
                self.ever_ready = True

    def ready_count(self) -> int:
        """How many slots' current processes have said READY=1."""
        return sum(slot.ready for slot in self.slots)

    def signal(self, signum: int) -> None:
        """Pass ``signum`` on to every running worker."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)
                self._told.add(proc.pid)

    def stop(self, within: float) -> None:
        """Wait up to ``within`` seconds for every worker to stop, then kill what is left.

        A running worker not told to stop yet (the parent failed, or the worker was
        started while the signal came) gets SIGTERM first.
        """
        for proc in self.procs:
            if proc.pid not in self._told and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                self._told.add(proc.pid)
        deadline = time.monotonic() + within
        for proc in self.procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning(
                    "process did not stop in time; killing it",
                    extra={"role": self.name, "pid": proc.pid},
                )
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def _signals_handled_by(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """SIGTERM and SIGINT go to ``handler`` inside the block; the previous handlers after."""
    previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def run_workers(settings: Settings, argv: Sequence[str]) -> int:
    """Run ``settings.workers`` workers until SIGTERM/SIGINT; 0 once all have stopped.

    Raises ``listen_sockets.AddressInUse`` (a ``ConfigError``) when a port is taken, a
    ``ConfigError`` for a listen host no restart makes usable or a backend refusing its
    URL, and ``listen_sockets.AddressNotReady`` when an address or a name is not ready yet.
    Any other failure raises too, once every part already started has been stopped.
    """
    # Stops run last registered first: the order of the registrations below is the
    # reverse of the order of the shutdown.
    with contextlib.ExitStack() as stack:
        sockets = listen_sockets.bind_all(settings)
        stack.callback(sockets.close)
        log.info("listening", extra=sockets.ports())
        # Only the parent holds the write end: when it dies, by any means, every worker
        # reads end-of-file and stops.
        parent_read, parent_write = os.pipe()
        stack.callback(os.close, parent_write)
        stack.callback(os.close, parent_read)
        # Metrics of all workers, whichever one a scrape reaches (prometheus-client's
        # multiprocess mode); a new, empty directory so counters begin at zero. Removed
        # once the embedded servers have stopped.
        metrics_dir = Path(tempfile.mkdtemp(prefix="ocs-metrics-"))
        stack.callback(shutil.rmtree, metrics_dir, ignore_errors=True)
        backends = Backends(settings)
        backends.start()  # stops what it started itself if it fails
        stack.callback(backends.stop)
        # A backend down or refusing stops the start here, in one line (BackendUnreachable),
        # rather than in every worker, restarted and failing again, one after another.
        checked = with_overrides(
            settings, redis_url=backends.redis_url, database_url=backends.database_url
        )
        asyncio.run(check_backends(checked))
        # So is a wrong or missing pepper (decision 0054); and the file, made here when
        # there is none yet, is the one every worker then reads.
        asyncio.run(check_pepper(checked))
        env = dict(os.environ)
        env["OCS_REDIS_URL"] = backends.redis_url or ""
        env["OCS_DATABASE_URL"] = backends.database_url or ""
        env[MULTIPROCESS_DIR_ENV] = str(metrics_dir)
        # Each child runs `ocs serve` itself: none is a parent of children of its own.
        env["OCS_BACKGROUND_PROCESS"] = "false"
        # Every child tells this parent when it is ready: the parent gives up on a kind
        # that never is (ocs.restarts), and systemd (Type=notify), which takes READY=1
        # from the main process only, hears it from the parent once every worker is.
        readiness = systemd_notify.WorkerReadiness()
        stack.callback(readiness.close)
        env[systemd_notify.NOTIFY_SOCKET_ENV] = readiness.address
        background = _background_process(settings, argv, env, parent_read)
        if background is not None:
            env.update(SERVING_WITHOUT_HOUSEKEEPING)
        handoff, pass_fds = listen_sockets.handoff(sockets, parent_read)
        env[listen_sockets.HANDOFF_ENV] = handoff
        workers = _Workers(_worker_argv(argv), env, pass_fds)

        def stop(signum: int, _frame: FrameType | None) -> None:
            """SIGTERM/SIGINT: stop restarting, pass the signal on, let go of the sockets.

            The background process is told last, once the serving workers have stopped
            (``_Workers.stop``): its ledger writer moves what their last requests wrote."""
            workers.stopping = True
            if background is not None:
                background.stopping = True
            systemd_notify.stopping("shutting down: stopping the workers")
            workers.signal(signum)
            # The listening sockets stay open while any process holds them: the parent
            # lets go of its copies so that the workers' stage 1 (no new requests) takes
            # effect.
            sockets.close()

        stack.enter_context(_signals_handled_by(stop))
        # The first stops: every worker's staged shutdown ends, then the background
        # process's, before the embedded servers under them stop.
        if background is not None:
            stack.callback(background.stop, settings.shutdown_timeout + STOP_GRACE)
        stack.callback(workers.stop, settings.shutdown_timeout + STOP_GRACE)
        _supervise(
            workers,
            _Watch(settings.workers, settings.worker_start_attempts, metrics_dir, readiness),
            background,
        )
    return 0


# What a serving worker is told when a background process runs the housekeeping.
SERVING_WITHOUT_HOUSEKEEPING = {
    "OCS_RUN_LEDGER_WRITER": "false",
    "OCS_RUN_JANITOR": "false",
    "OCS_RUN_LIVE_STATE_PASS": "false",
}


def _background_process(
    settings: Settings, argv: Sequence[str], env: dict[str, str], parent_read: int
) -> "_Workers | None":
    """The background process (decision 0039) when ``background_process`` asks for one: the
    same command line, handed only the parent's pipe (it listens on nothing)."""
    if not settings.background_process:
        return None
    own_env = dict(env)
    value, pass_fds = listen_sockets.parent_handoff(parent_read)
    own_env[listen_sockets.HANDOFF_ENV] = value
    own_env[PART_ENV] = BACKGROUND
    return _Workers(_worker_argv(argv), own_env, pass_fds, name="background process")


class _Watch:
    """What the supervision loop watches besides the processes: how many workers, how
    many tries before giving up, the metrics directory, and who said READY=1."""

    def __init__(
        self,
        count: int,
        attempts: int,
        metrics_dir: Path,
        readiness: systemd_notify.WorkerReadiness,
    ) -> None:
        """``count`` workers; give up after ``attempts`` exits in a row before any was ready."""
        self.count = count
        self.attempts = attempts
        self.metrics_dir = metrics_dir
        self.readiness = readiness
        # systemd waits for READY=1 (said once, when every worker first is).
        self.tell_systemd = systemd_notify.enabled()


def _supervise(workers: _Workers, watch: _Watch, background: _Workers | None = None) -> None:
    """Start ``watch.count`` workers (and the ``background`` process), restart any that
    exits, until the parent is asked to stop; say READY=1 to systemd once every worker
    has. Raises ``WorkersDidNotStart`` when one kind never became ready (ocs.restarts)."""
    if background is not None and not background.stopping:
        background.start()
    for _ in range(watch.count):
        if workers.stopping:
            break  # the sockets are closed already; none to hand out
        workers.start()
    log.info(
        "workers started",
        extra={
            "workers": watch.count,
            "pids": [p.pid for p in workers.procs],
            "background_pid": background.procs[0].pid if background and background.procs else None,
        },
    )
    groups = [workers] if background is None else [workers, background]
    while not workers.stopping:
        time.sleep(0.2)
        # Read before looking for exits: a process that said READY=1 and then exited
        # was ready.
        ready = watch.readiness.ready_pids()
        for group in groups:
            group.mark_ready(ready)
        if watch.tell_systemd and workers.ready_count() >= watch.count:
            watch.tell_systemd = False  # said once; a restarted worker's changes nothing
            systemd_notify.ready(f"serving with {watch.count} workers")
        for group in groups:
            _restart_exited(group, watch)


def _restart_exited(workers: _Workers, watch: _Watch) -> None:
    """Schedule the restart of each process of ``workers`` that has exited, and start
    those whose wait is over (unless told to stop)."""
    for index, (proc, slot) in enumerate(zip(workers.procs, workers.slots, strict=True)):
        if workers.stopping:
            return
        now = time.monotonic()
        if slot.restart_at is not None:
            if now >= slot.restart_at:
                workers.restart(index)
            continue
        code = proc.poll()
        if code is None:
            continue
        metric_files.retire(watch.metrics_dir, proc.pid)
        delay = restarts.after_exit(slot, now, watch.attempts, workers.ever_ready)
        status = restarts.exit_status(code)
        if delay is None:
            raise WorkersDidNotStart(
                f"{workers.name} never became ready: exited {slot.failures} times in a row"
                f" (last: {status}); stopped (the log above says why)",
                code,
            )
        slot.restart_at = now + delay
        log.error(
            "process exited; restarting it",
            extra={
                "role": workers.name,
                "pid": proc.pid,
                "exit_status": status,
                "ran_s": round(now - slot.started_at, 1),
                "exits_in_a_row": slot.failures,
                "restart_in_s": delay,
            },
        )
