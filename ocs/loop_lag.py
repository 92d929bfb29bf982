"""Event-loop stalls: measured (how late the loop runs a timer) and the GC's share removed.

A request's latency is its own work plus the time the loop spent on anything
else first. ``LoopLag`` asks the loop for a wake-up every ``interval`` seconds
and records how late each one came (``ocs_event_loop_lag_seconds``): a stall
of any cause (a GC pass, a large batch, a synchronous reload) shows as lag.

``settle_gc`` removes the largest stall found under load: the cyclic garbage
collector's full passes over every object loaded at start-up (catalog, tariff
decks, dictionaries). It moves what exists after start-up into the permanent
generation (``gc.freeze``), where no collection looks at it, so a pass only walks
recent objects, and keeps the young generation small, so that each pass is short.

``StallWatch`` names the cause of a stall: a thread beside the loop looks at the
loop thread's stack while the loop is late, and logs one line per stall longer
than its threshold with the ocs function (or the GC generation) it found most,
at most once a minute for the same place, so that a stall shows where to look
instead of only that it happened.
"""

import asyncio
import gc
import logging
import sys
import threading
import time
from collections import Counter, deque
from types import FrameType
from typing import Any

from ocs import metrics

# Allocations between young-generation collections. A pass walks every young object,
# so its length grows with this: under RADIUS load 50,000 made passes of up to 16 ms,
# 5,000 of 3.5 ms, 1,000 of 0.9 ms. Shorter passes cost CPU at full load, where more
# requests are in flight at each pass and their objects get promoted: about 1% at
# 5,000 and 5% at 1,000 (benchmarks/RESULTS.md, decision 0034).
GC_THRESHOLD0 = 5_000

log = logging.getLogger("ocs.loop")
# A stall at the same place is logged at most once in this many seconds.
STALL_QUIET_S = 60.0
# The stalls a watch keeps for its reader (tests, benchmarks); older ones are dropped.
KEPT_STALLS = 1000


def settle_gc(threshold0: int = GC_THRESHOLD0) -> None:
    """Call once start-up is done: freeze what exists, keep young-generation passes short."""
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
        metrics.LOOP_LAG.observe(lag)
        if lag > self.max_lag:
            self.max_lag = lag
            metrics.LOOP_LAG_MAX.set(lag)
        self._schedule(loop)

    def take_max(self) -> float:
        """The longest lag since the previous call, and start a new maximum."""
        found, self.max_lag = self.max_lag, 0.0
        metrics.LOOP_LAG_MAX.set(0.0)
        return found

    def stop(self) -> None:
        """Stop measuring."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class StallWatch:
    """Names what the loop was running while it stalled (module docstring).

    ``start`` on the loop's thread; the watching thread polls every ``poll`` seconds,
    and a loop later than ``threshold`` is sampled until it runs again. ``stalls``
    keeps the last ``KEPT_STALLS`` stalls found as (seconds, where), for tests and
    benchmarks: a server runs for months, so never all of them.
    """

    def __init__(self, threshold: float, poll: float | None = None) -> None:
        """``poll``: how often the thread looks and the loop beats, by default a quarter
        of the threshold (at least 1 ms): each look takes the GIL from the loop a moment."""
        self.threshold = threshold
        self.poll = poll if poll is not None else max(threshold / 4, 0.001)
        self.beat = self.poll
        self.stalls: deque[tuple[float, str]] = deque(maxlen=KEPT_STALLS)
        self._last_beat = time.perf_counter()
        self._loop_thread = 0
        self._handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gc_generation: int | None = None
        self._logged: dict[str, float] = {}

    def start(self) -> None:
        """Start the heartbeat on the running loop and the watching thread."""
        loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._last_beat = time.perf_counter()
        self._handle = loop.call_later(self.beat, self._heartbeat, loop)
        gc.callbacks.append(self._on_gc)
        self._thread = threading.Thread(target=self._watch, name="ocs-stall-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _heartbeat(self, loop: asyncio.AbstractEventLoop) -> None:
        self._last_beat = time.perf_counter()
        self._handle = loop.call_later(self.beat, self._heartbeat, loop)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Only the loop thread's collections stall the loop; a pass shows as its generation.
        if threading.get_ident() == self._loop_thread:
            self._gc_generation = info["generation"] if phase == "start" else None

    def _watch(self) -> None:
        seen: Counter[str] = Counter()
        longest = 0.0
        while not self._stop.wait(self.poll):
            late = time.perf_counter() - self._last_beat - self.beat
            if late > self.threshold:
                longest = max(longest, late)
                seen[self._where()] += 1
            elif seen:
                self._report(longest, seen.most_common(1)[0][0])
                seen.clear()
                longest = 0.0

    def _where(self) -> str:
        """What the loop thread runs now: the GC, else its innermost ocs frame."""
        generation = self._gc_generation
        if generation is not None:
            return f"gc generation {generation}"
        frame = sys._current_frames().get(self._loop_thread)
        innermost = frame
        while frame is not None:
            if "/ocs/" in frame.f_code.co_filename:
                return _describe(frame, innermost)
            frame = frame.f_back
        return "outside ocs" if innermost is None else _describe(innermost, None)

    def _report(self, seconds: float, where: str) -> None:
        self.stalls.append((seconds, where))
        now = time.monotonic()
        if now - self._logged.get(where, -STALL_QUIET_S) >= STALL_QUIET_S:
            self._logged[where] = now
            log.warning(
                "event loop stalled", extra={"stalled_ms": round(seconds * 1000, 1), "at": where}
            )


def _describe(frame: FrameType, innermost: FrameType | None) -> str:
    """``path:line function``, and the innermost frame when it is another one."""
    path = frame.f_code.co_filename
    cut = path.rfind("/ocs/")
    text = f"{path[cut + 1 :] if cut >= 0 else path}:{frame.f_lineno} {frame.f_code.co_name}"
    if innermost is not None and innermost is not frame:
        text += f" (in {innermost.f_code.co_name})"
    return text
