"""Event-loop stalls: measured (how late the loop runs a timer) and the GC's share removed.

A request's latency is its own work plus the time the loop spent on anything
else first. ``LoopLag`` asks the loop for a wake-up every ``interval`` seconds
and records how late each one came (``ocs_event_loop_lag_seconds``): a stall
of any cause (a GC pass, a large batch, a synchronous reload) shows as lag.

``settle_gc`` removes the largest stall found under load: the cyclic garbage
collector's full passes over every object loaded at start-up (catalog, tariff
decks, dictionaries). It moves what exists after start-up into the permanent
generation (``gc.freeze``), where no collection looks at it, and collects the
young generation less often, so a pass is rarer and only walks recent objects.
"""

import asyncio
import gc
import time

from prometheus_client import Gauge, Histogram

# Lag buckets: the RADIUS latency budget (5 ms) is one bucket edge; a few wide ones above.
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Allocations between young-generation collections: CPython's default is 700, a pass
# every few requests; 50,000 makes it one per ~100 ms of RADIUS load.
GC_THRESHOLD0 = 50_000

LOOP_LAG = Histogram(
    "ocs_event_loop_lag_seconds",
    "How late the event loop ran a periodic timer: time it spent on other work first.",
    buckets=LAG_BUCKETS,
)
LOOP_LAG_MAX = Gauge(
    "ocs_event_loop_lag_max_seconds",
    "The longest event-loop stall seen since start-up (or since LoopLag.take_max).",
    multiprocess_mode="max",
)


def settle_gc(threshold0: int = GC_THRESHOLD0) -> None:
    """Call once start-up is done: freeze what exists, collect the young generation rarely."""
    gc.collect()
    gc.freeze()
    _, threshold1, threshold2 = gc.get_threshold()
    gc.set_threshold(threshold0, threshold1, threshold2)


class LoopLag:
    """Measures the running loop's lag until ``stop``; ``max_lag`` is the longest seen."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.max_lag = 0.0
        self.samples = 0
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        """Start measuring on the running loop."""
        self._schedule(asyncio.get_running_loop())

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = time.perf_counter() + self.interval
        self._handle = loop.call_later(self.interval, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        lag = max(0.0, time.perf_counter() - self._due)
        self.samples += 1
        LOOP_LAG.observe(lag)
        if lag > self.max_lag:
            self.max_lag = lag
            LOOP_LAG_MAX.set(lag)
        self._schedule(loop)

    def take_max(self) -> float:
        """The longest lag since the previous call, and start a new maximum."""
        found, self.max_lag = self.max_lag, 0.0
        LOOP_LAG_MAX.set(0.0)
        return found

    def stop(self) -> None:
        """Stop measuring."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
