"""Whether this process reaches Redis and PostgreSQL: one log line per outage, not one per error.

Background loops (janitor, ledger writer), the auto-pipeline and the ``/readyz``
probe report each failure and success here instead of logging it. The tracker
logs one ERROR line when a backend becomes unreachable (the error's class and
message, no traceback), a WARNING reminder at most every ``backend_down_reminder``
seconds while it stays down, and one WARNING line when it is back, with how long
it was out. It keeps ``ocs_backend_up`` (1/0) and ``ocs_backend_outages_total``.

One tracker per process: :func:`default` returns it, and ``Services.health`` is
that same instance, so every component of a process shares one state.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ocs import metrics

log = logging.getLogger("ocs.backends")

REDIS = "redis"
POSTGRESQL = "postgresql"
BACKENDS = (REDIS, POSTGRESQL)

# asyncpg errors that say the server cannot be reached or has gone away, not that a
# statement was wrong: 08xxx connection errors, shutdown and start-up (57P01-57P03),
# and "too many connections" (53300).
_POSTGRESQL_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)
_ERROR_CHARS = 300  # enough for the reason, short enough for one log line


def backend_of(exc: BaseException, default: str | None = None) -> str | None:
    """Which backend ``exc`` says is unreachable ("redis", "postgresql"), or None.

    redis-py and the lean Redis wire wrap socket errors in redis's ``ConnectionError``
    (``BusyLoadingError`` included; on the wire, a ``LOADING`` reply) or ``TimeoutError``.
    asyncpg raises its connection errors, or a bare ``OSError``/``TimeoutError`` when it
    cannot connect at all: those are attributed to ``default``, the backend the caller
    knows it was talking to. Any other refused command (``ResponseError``, a SQL error)
    is an answer, not an outage: None.
    """
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return REDIS
    if isinstance(exc, ResponseError) and str(exc).startswith("LOADING"):
        # The lean wire's form of redis-py's BusyLoadingError: a restarted Redis still
        # reading its data answers every command so, and serves none.
        return REDIS
    if isinstance(exc, _POSTGRESQL_DOWN):
        return POSTGRESQL
    if isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc):
        return POSTGRESQL
    if isinstance(exc, OSError | TimeoutError):
        return default
    return None


def describe(exc: BaseException) -> str:
    """The error's class and the first line of its message, bounded: fit for one log line."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text[:_ERROR_CHARS]


@dataclass(slots=True)
class BackendState:
    """What the tracker knows of one backend."""

    up: bool = True
    down_since: float = 0.0  # monotonic clock, while down
    last_logged: float = 0.0  # monotonic clock of the last line about this outage
    failures: int = 0  # failures reported during the current outage
    error: str = ""  # the latest failure, described


class RepeatedFailure(Exception):
    """Mixed into an error that repeats a failure already reported, without trying again
    (a server that refused a connection moments ago is not dialled again at once): it
    keeps a backend down, and never takes one down that has answered since."""


class BackendHealth:
    """Tracks each backend's reachability and logs only its changes (and rare reminders)."""

    def __init__(self, reminder: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.reminder = reminder
        self._clock = clock
        self._states: dict[str, BackendState] = {}
        for backend in BACKENDS:
            self._state(backend)

    def _state(self, backend: str) -> BackendState:
        state = self._states.get(backend)
        if state is None:
            state = self._states[backend] = BackendState()
            # A backend is presumed up until something fails: the gauge exists from the start.
            metrics.BACKEND_UP.labels(backend).set(1)
        return state

    def is_up(self, backend: str) -> bool:
        """False from the first reported failure until the next reported success."""
        return self._state(backend).up

    def down_for(self, backend: str) -> float | None:
        """Seconds since ``backend`` became unreachable, or None while it is up."""
        state = self._state(backend)
        return None if state.up else self._clock() - state.down_since

    def last_error(self, backend: str) -> str | None:
        """The latest failure of a backend that is down, described; None while it is up."""
        state = self._state(backend)
        return None if state.up else state.error

    def report_failure(self, backend: str, exc: BaseException) -> None:
        """An operation on ``backend`` failed because it could not be reached."""
        state = self._state(backend)
        if state.up and isinstance(exc, RepeatedFailure):
            # Stale: the failure it repeats was reported when it happened, and another
            # connection has reached the backend since (a second outage logged otherwise).
            return
        now = self._clock()
        state.failures += 1
        state.error = describe(exc)
        if state.up:
            state.up = False
            state.down_since = state.last_logged = now
            state.failures = 1
            metrics.BACKEND_UP.labels(backend).set(0)
            metrics.BACKEND_OUTAGES.labels(backend).inc()
            log.error(
                "%s unreachable",
                backend,
                extra={"backend": backend, "error": state.error},
            )
        elif self.reminder > 0 and now - state.last_logged >= self.reminder:
            state.last_logged = now
            log.warning(
                "%s still unreachable",
                backend,
                extra={
                    "backend": backend,
                    "down_for_s": round(now - state.down_since, 1),
                    "failures": state.failures,
                    "error": state.error,
                },
            )

    def report_success(self, backend: str) -> None:
        """An operation on ``backend`` succeeded: it is reachable."""
        state = self._states.get(backend)
        if state is None or state.up:
            return  # the hot path: one dict lookup and nothing else
        down_for = self._clock() - state.down_since
        state.up = True
        metrics.BACKEND_UP.labels(backend).set(1)
        log.warning(
            "%s reachable again",
            backend,
            extra={
                "backend": backend,
                "down_for_s": round(down_for, 1),
                "failures": state.failures,
            },
        )

    def report(self, exc: BaseException, default: str | None = None) -> bool:
        """Report ``exc`` if it means a backend is unreachable; True when it did."""
        backend = backend_of(exc, default)
        if backend is None:
            return False
        self.report_failure(backend, exc)
        return True

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Each backend's state for a readiness answer: up, and while down, since when and why."""
        answer: dict[str, dict[str, object]] = {}
        for backend, state in self._states.items():
            entry: dict[str, object] = {"up": state.up}
            if not state.up:
                entry["down_for_s"] = round(self._clock() - state.down_since, 1)
                entry["failures"] = state.failures
                entry["error"] = state.error.split(":", 1)[0]  # the class: no addresses
            answer[backend] = entry
        return answer


_DEFAULT: BackendHealth | None = None


def default() -> BackendHealth:
    """This process's tracker, created on first use (``Services`` applies the settings)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = BackendHealth()
    return _DEFAULT
