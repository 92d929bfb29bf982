"""One log line per reason every few seconds for errors that come with every request.

An error that no backend outage explains (a script that fails, a plan not yet in this
process's catalog) fails each request alike: logged per request, thousands of identical
ERROR lines a second fill the log and the disk. A ``LogLimiter`` lets the first line of
a reason through, then one every ``interval`` seconds carrying how many it held back
meanwhile, and counts every occurrence in ``ocs_request_errors_total`` (by protocol and
reason), so the rate stays visible where the log no longer shows it.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

from ocs import metrics

INTERVAL_S = 10.0  # one line per reason this often, at most


@dataclass(slots=True)
class _Reason:
    """One reason's last line and the occurrences held back since."""

    logged_at: float
    held: int = 0


class LogLimiter:
    """Decides, per occurrence of an error, whether its line is written now."""

    def __init__(
        self,
        protocol: str,
        interval: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """For the errors of ``protocol`` (the metric's label): one line per reason
        every ``interval`` seconds of ``clock``."""
        self._protocol = protocol
        self._interval = interval
        self._clock = clock
        self._reasons: dict[str, _Reason] = {}

    def admit(self, reason: str) -> int | None:
        """Counts one occurrence of ``reason``: None when its line is held back, else how
        many of its lines were held back since its last line (0 the first time).

        ``reason`` is a metric label: a reason code or an error's class, never free text.
        """
        metrics.REQUEST_ERRORS.labels(self._protocol, reason).inc()
        now = self._clock()
        seen = self._reasons.get(reason)
        if seen is None:
            self._reasons[reason] = _Reason(now)
            return 0
        if now - seen.logged_at < self._interval:
            seen.held += 1
            return None
        held, seen.held, seen.logged_at = seen.held, 0, now
        return held
