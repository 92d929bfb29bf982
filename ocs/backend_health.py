"""Whether this process reaches Redis and PostgreSQL: one log line per outage, not one per error.

Background loops (janitor, ledger writer), the auto-pipeline and the ``/readyz``
probe report each failure and success here instead of logging it. The tracker
logs one ERROR line when a backend becomes unreachable (the error's class and
message, no traceback), a WARNING reminder at most every ``backend_down_reminder``
seconds while it stays down, and one WARNING line when it is back, with how long
it was out. It keeps ``ocs_backend_up`` (1/0) and ``ocs_backend_outages_total``.

A Redis that answers but refuses every write (``OOM`` at maxmemory with noeviction,
``MISCONF`` when it cannot persist, ``READONLY`` on a replica or a former primary, and
``MASTERDOWN``, ``CLUSTERDOWN``, ``NOREPLICAS``) is down as well: no call can be granted
or charged there. Such an outage ("refusing writes") ends only when a write is taken
again (``report_success(..., write=True)``: the ``/readyz`` probe's, or the
auto-pipeline's while traffic flows), never when a read is answered, or every read
between two refused writes would end and start it again. So does a Redis Cluster
outage (one master down or stalled): a batch that only the healthy masters served, or
any success while the write probes know a failing master, does not end it; the next
write probe that every master takes does.

One tracker per process: :func:`default` returns it, and ``Services.health`` is
that same instance, so every component of a process shares one state.
"""

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from redis.exceptions import ClusterDownError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
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
# How long the probe key a write probe sets (keys.write_probe) is kept: a few seconds.
WRITE_PROBE_TTL_MS = 10_000
# How long a write probe waits for each master: under the probes' own bounds (2 s for
# /readyz), so a master that does not answer (mid-failover, its host gone) is one failing
# master among the answers of the others, not a probe failed as a whole.
MASTER_PROBE_TIMEOUT_S = 1.5

# The error codes of a Redis that answers but takes no write. The lean wire keeps the
# code at the head of the message; a script refused inside (a command it called) reads
# "ERR Error running script (call to f_...): @user_script:9: ... -OOM command not
# allowed ..." on Redis 6 and "OOM command not allowed ... script: ..." on Redis 7.
_REFUSAL = re.compile(
    r"(?:(?:ERR )?Error running script .*?: -)?"
    r"(OOM|MISCONF|READONLY|MASTERDOWN|CLUSTERDOWN|NOREPLICAS)\b"
)
# redis-py's own classes for some of them, whose message has lost the code.
_REFUSAL_CLASSES: tuple[tuple[type[ResponseError], str], ...] = (
    (OutOfMemoryError, "OOM"),
    (ReadOnlyError, "READONLY"),
    (ClusterDownError, "CLUSTERDOWN"),  # MasterDownError's code is in its status_code
)


def refusal_of(exc: BaseException) -> str | None:
    """The code (``OOM``, ``READONLY``...) with which Redis refused a write because it
    takes none now, or None when ``exc`` is no such refusal."""
    if not isinstance(exc, ResponseError):
        return None
    code = getattr(exc, "status_code", None)  # redis-py's parser keeps the code here
    if isinstance(code, str) and _REFUSAL.fullmatch(code):
        return code
    found = _REFUSAL.match(str(exc))
    if found is not None:
        return found.group(1)
    for cls, name in _REFUSAL_CLASSES:
        if isinstance(exc, cls):
            return name
    return None


def backend_of(exc: BaseException, default: str | None = None) -> str | None:
    """Which backend ``exc`` says is unreachable ("redis", "postgresql"), or None.

    redis-py and the lean Redis wire wrap socket errors in redis's ``ConnectionError``
    (``BusyLoadingError`` included; on the wire, a ``LOADING`` reply) or ``TimeoutError``.
    asyncpg raises its connection errors, or a bare ``OSError``/``TimeoutError`` when it
    cannot connect at all: those are attributed to ``default``, the backend the caller
    knows it was talking to. A Redis that refuses every write (``refusal_of``) is down
    too. Any other refused command (``ResponseError``, a SQL error) is an answer, not an
    outage: None.
    """
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return REDIS
    if refusal_of(exc) is not None:
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


def master_failure(exc: BaseException) -> str:
    """Why a Redis master failed a probe write, in a word fit for ``/readyz`` and a log
    line: the refusal's code (``OOM``, ``READONLY``...), ``unreachable`` for an outage (a
    lost connection, no answer in time, ``LOADING``), else the error's class."""
    refusal = refusal_of(exc)
    if refusal is not None:
        return refusal
    if backend_of(exc, REDIS) == REDIS:
        return "unreachable"
    return type(exc).__name__


@dataclass(frozen=True, slots=True)
class WriteProbe:
    """A write probe's outcome on every Redis master (the one server, standalone): each
    master's error by its address, None where it took the write."""

    outcomes: dict[str, BaseException | None]

    def error(self) -> BaseException | None:
        """The first failure among the masters, None when every master took the write."""
        return next((e for e in self.outcomes.values() if e is not None), None)

    def serving(self) -> bool:
        """Whether some master took the write: the process serves the accounts it holds
        (decision 0013: readiness fails only when every master fails)."""
        return any(outcome is None for outcome in self.outcomes.values())

    def failing(self) -> dict[str, str]:
        """The masters that failed, by address, each with why (``master_failure``)."""
        return {m: master_failure(e) for m, e in self.outcomes.items() if e is not None}


@dataclass(slots=True)
class MasterState:
    """What the tracker knows of one Redis master from the write probes."""

    failure: str = ""  # why it fails (master_failure), "" while it takes writes
    down_since: float = 0.0  # monotonic clock, while it fails


@dataclass(slots=True)
class BackendState:
    """What the tracker knows of one backend."""

    up: bool = True
    down_since: float = 0.0  # monotonic clock, while down
    last_logged: float = 0.0  # monotonic clock of the last line about this outage
    failures: int = 0  # failures reported during the current outage
    error: str = ""  # the latest failure, described
    refusal: str = ""  # the code of the latest failure when it is a refused write (OOM...)


class RepeatedFailure(Exception):
    """Mixed into an error that repeats a failure already reported, without trying again
    (a server that refused a connection moments ago is not dialled again at once), or
    that is no news of the backend's reachability (a Redis Cluster slot still migrating
    at a batch's deadline: every node answered): it keeps a backend down, and never takes
    one down that has answered since."""


class NotAnOutage(RepeatedFailure):
    """Mixed into an error that fails a request "unavailable" although every server
    answered (a Redis Cluster slot still migrating at a batch's deadline): no outage is
    started for it, so no outage line accounts for the requests it fails
    (``BackendHealth.report_request``)."""


class BackendHealth:
    """Tracks each backend's reachability and logs only its changes (and rare reminders)."""

    def __init__(self, reminder: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.reminder = reminder
        self._clock = clock
        self._states: dict[str, BackendState] = {}
        self._masters: dict[str, MasterState] = {}  # the Redis masters the probes met
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
        """An operation on ``backend`` failed because it could not be reached, or (Redis)
        because it takes no write now."""
        state = self._state(backend)
        if state.up and isinstance(exc, RepeatedFailure):
            # Stale: the failure it repeats was reported when it happened, and another
            # connection has reached the backend since (a second outage logged otherwise).
            return
        now = self._clock()
        state.failures += 1
        state.error = describe(exc)
        # The latest failure says what ends the outage: a refused write needs a write taken.
        state.refusal = refusal_of(exc) or ""
        if state.up:
            state.up = False
            state.down_since = state.last_logged = now
            state.failures = 1
            metrics.BACKEND_UP.labels(backend).set(0)
            metrics.BACKEND_OUTAGES.labels(backend).inc()
            log.error(
                "%s %s",
                backend,
                _what(state),
                extra=_refusal_field(state, {"backend": backend, "error": state.error}),
            )
        elif self.reminder > 0 and now - state.last_logged >= self.reminder:
            state.last_logged = now
            log.warning(
                "%s still %s",
                backend,
                _what(state),
                extra=_refusal_field(
                    state,
                    {
                        "backend": backend,
                        "down_for_s": round(now - state.down_since, 1),
                        "failures": state.failures,
                        "error": state.error,
                    },
                ),
            )

    def report_success(self, backend: str, write: bool = False, every_master: bool = True) -> bool:
        """An operation on ``backend`` succeeded: it is reachable. True when the backend is
        up after it.

        ``write``: the operation was a write probe Redis would refuse while it refuses
        writes (a ``SET``, on every master of a cluster); only such a success ends an
        outage of refused writes, or a Redis Cluster outage while a probe has found a
        master failing. ``every_master``: False when the operation reached only some
        masters of a cluster (an auto-pipeline batch reaches those its keys live on):
        it ends no outage, or every batch served by the healthy masters would end the
        outage that the next one meeting the failed master starts again."""
        state = self._states.get(backend)
        if state is None or state.up:
            return True  # the hot path: one dict lookup and nothing else
        if not write and (state.refusal or not every_master or self._master_failing(backend)):
            # A read answered says nothing of the writes refused, nor an answer of some
            # masters of the one that fails: a write probe that every master takes does.
            return False
        down_for = self._clock() - state.down_since
        state.up = True
        metrics.BACKEND_UP.labels(backend).set(1)
        log.warning(
            "%s taking writes again" if state.refusal else "%s reachable again",
            backend,
            extra={
                "backend": backend,
                "down_for_s": round(down_for, 1),
                "failures": state.failures,
            },
        )
        state.refusal = ""
        return True

    def report(self, exc: BaseException, default: str | None = None) -> bool:
        """Report ``exc`` if it means a backend is unreachable; True when it did."""
        backend = backend_of(exc, default)
        if backend is None:
            return False
        self.report_failure(backend, exc)
        return True

    def report_request(self, exc: BaseException, default: str | None = None) -> bool:
        """``report`` for an error that failed one request: True when an outage line of
        this tracker accounts for it, so the request needs no line of its own; False for
        any other error (logged, limited, by the request's protocol), a ``NotAnOutage``
        included: reported, but no outage says why its requests fail."""
        return self.report(exc, default) and not isinstance(exc, NotAnOutage)

    def report_masters(self, probe: WriteProbe) -> None:
        """Each Redis master's outcome in a write probe: ``ocs_redis_master_up`` per master,
        and one line when a master starts failing, fails for another reason, or takes
        writes again; none with a single master, whose outage is the backend's own line.
        A master the probe left out (no longer one, after a failover) is forgotten."""
        for master in [m for m in self._masters if m not in probe.outcomes]:
            del self._masters[master]
            metrics.drop_master(master)
        several = len(probe.outcomes) > 1
        for master, outcome in probe.outcomes.items():
            state = self._masters.get(master)
            if state is None:
                state = self._masters[master] = MasterState()
            failure = "" if outcome is None else master_failure(outcome)
            metrics.REDIS_MASTER_UP.labels(master).set(0 if failure else 1)
            if failure == state.failure:
                continue
            if not state.failure:
                state.down_since = self._clock()
            if several and failure:
                assert outcome is not None
                log.error(
                    "redis master %s %s",
                    master,
                    _master_what(failure),
                    extra={
                        "backend": REDIS,
                        "master": master,
                        "failure": failure,
                        "error": describe(outcome),
                    },
                )
            elif several:
                log.warning(
                    "redis master %s taking writes again",
                    master,
                    extra={
                        "backend": REDIS,
                        "master": master,
                        "down_for_s": round(self._clock() - state.down_since, 1),
                    },
                )
            state.failure = failure

    def _master_failing(self, backend: str) -> bool:
        """Whether the last write probes found a master of a Redis Cluster failing (a
        standalone server's failure is the backend's own outage)."""
        return (
            backend == REDIS
            and len(self._masters) > 1
            and any(state.failure for state in self._masters.values())
        )

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Each backend's state for a readiness answer: up, and while down, since when and why."""
        answer: dict[str, dict[str, object]] = {}
        for backend, state in self._states.items():
            entry: dict[str, object] = {"up": state.up}
            if not state.up:
                entry["down_for_s"] = round(self._clock() - state.down_since, 1)
                entry["failures"] = state.failures
                entry["error"] = state.error.split(":", 1)[0]  # the class: no addresses
                if state.refusal:
                    entry["refusal"] = state.refusal  # the code Redis refuses writes with
            answer[backend] = entry
        return answer


def _what(state: BackendState) -> str:
    """What a down backend does, for its log lines."""
    return "refusing writes" if state.refusal else "unreachable"


def _master_what(failure: str) -> str:
    """What a failing master does, for its log line."""
    if failure == "unreachable":
        return failure
    return "refusing writes" if _REFUSAL.fullmatch(failure) else "failing writes"


def _refusal_field(state: BackendState, extra: dict[str, object]) -> dict[str, object]:
    """``extra`` with the refusal's code, when the outage is one of refused writes."""
    if state.refusal:
        extra["refusal"] = state.refusal
    return extra


_DEFAULT: BackendHealth | None = None


def default() -> BackendHealth:
    """This process's tracker, created on first use (``Services`` applies the settings)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = BackendHealth()
    return _DEFAULT
