"""When a ``--workers`` parent starts one of its processes again, and when it gives up.

A worker that failed at start-up (a stored row it cannot load, say) used to be
started again every second for ever: each try ran the migrations, the catalog load
and the matcher warm-up again, and logged its traceback, and a supervisor (systemd,
Docker) never saw a failure, since the parent kept running.

Now each slot (one worker, or the background process) waits longer after each exit
in a row: 1 s, 2 s, 4 s ... up to 60 s. A process that ran ``STABLE_AFTER`` (5 min)
starts the count again: its exit was not part of a loop. Becoming ready does not: a
worker that crashed just after its ``READY=1`` would be started again every second.

If no process of a kind (the serving workers; the background process) has ever been
ready, a slot whose process exited ``worker_start_attempts`` times in a row makes the
parent give up: it stops the others and exits 1 (2 when that process's last exit was 2,
a refusal the units do not restart either), for the supervisor to see. Once one
has been ready, the parent never gives up: what worked once may work again.
"""

import signal
from dataclasses import dataclass

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 60.0
# A process that ran this long before exiting was not failing at start-up.
STABLE_AFTER_S = 300.0


@dataclass
class Slot:
    """One process slot's restart history."""

    started_at: float  # time.monotonic() when its current process was started
    failures: int = 0  # exits in a row, each after less than STABLE_AFTER_S
    ready: bool = False  # its current process said READY=1
    restart_at: float | None = None  # set while it waits to be started again


def delay_after(failures: int) -> float:
    """Seconds to wait before the next start after ``failures`` exits in a row."""
    # The exponent is capped: 2**n of a slot failing for days would overflow a float.
    doublings: int = min(max(failures - 1, 0), 16)
    return min(FIRST_DELAY_S * 2.0**doublings, MAX_DELAY_S)


def after_exit(slot: Slot, now: float, attempts: int, ever_ready: bool) -> float | None:
    """Count the exit of ``slot``'s process at ``now``: the seconds to wait before
    starting it again, or None to give up (none of its kind was ever ready, and it
    has exited ``attempts`` times in a row)."""
    if now - slot.started_at >= STABLE_AFTER_S:
        slot.failures = 0
    slot.failures += 1
    if not ever_ready and slot.failures >= attempts:
        return None
    return delay_after(slot.failures)


def exit_status(returncode: int) -> str:
    """How a process ended, in words: ``exit code 1``, ``killed by SIGKILL``."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"
