"""The janitor: closes live calls whose switch will never report their end.

Every ``janitor_interval`` it looks up calls past their expiry in every
bucket (a slice of buckets a round trip: on Redis Cluster the wire sends each
bucket's lookup to the master holding it, one write per master) and closes each
by the stated policy (``CallService.close_live_call``):
an Access-Accept never followed by an Accounting-Start is released free of
charge; a started call is charged its last reported usage (or its whole
grant). Safe to run in every process at once: the stop script closes a call
once, and only if nothing extended its expiry meanwhile.

A sliced RADIUS call (decision 0015) whose interims stopped expires after its last
slice, while its NAS was told the funds' ceiling as Session-Timeout: when its NAS
takes Disconnect-Requests, the janitor that closed it sends one too, as the cut at
an interim does, so the NAS ends the call instead of running on to the ceiling.
Those Disconnect-Requests run as tasks beside the sweeps, at most
``disconnects_in_flight`` at a time and one per call: a NAS that does not answer
waits out its retries there, never in a sweep, so the calls that expire meanwhile
are closed (and their funds freed) on time.

While Redis is unreachable a sweep fails at once; the failure goes to the
process's backend tracker (one line per outage, a reminder while it lasts),
never one traceback per sweep. On Redis Cluster one master may fail while the
others answer (down, a replica that does not confirm its writes, a failover under
way): a sweep closes the expired calls of the buckets that answered, skips the
failed master's, and only then fails with that master's error, reported once as
any outage is (decision 0033).
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from ocs import backend_health, metrics
from ocs.backend_health import BackendHealth
from ocs.balances.store import BalanceStore
from ocs.charging.lifecycle import CallService
from ocs.charging.values import CallRecord

# Disconnect-Requests a janitor has on the wire at once, by default (each holds a UDP
# socket while it waits out its NAS's retries).
DISCONNECTS_IN_FLIGHT = 64

log = logging.getLogger("ocs.janitor")

# Asks a call's NAS to end it (RFC 5176); what the NAS said, None when there is no NAS to
# tell: the serving process's RADIUS server, or the client table read from PostgreSQL
# (``ocs.call_cutting``). Dunning's cuts take the same kind.
Disconnect = Callable[[CallRecord], Awaitable[object]]


def needs_disconnect(record: CallRecord, cause: str) -> bool:
    """Whether a call the janitor closed is still up at its NAS: a sliced RADIUS call
    (only a NAS that takes Disconnect-Requests is granted slices and keeps its address)
    that expired, its interims stopped. Its NAS was told the funds' ceiling, not the
    slice the close charged, and would run the call on to it."""
    return cause == "expired" and record.quota > 0 and record.nas_address is not None


class Janitor:
    """Sweeps expired calls every ``interval`` seconds until asked to stop."""

    def __init__(
        self,
        calls: CallService,
        store: BalanceStore,
        interval: float = 1.0,
        health: BackendHealth | None = None,
        disconnect: Disconnect | None = None,
        disconnects_in_flight: int = DISCONNECTS_IN_FLIGHT,
    ) -> None:
        self._calls = calls
        self._store = store
        self._interval = interval
        self._health = health if health is not None else backend_health.default()
        self._disconnect = disconnect
        # Bounds the requests on the wire; the others wait their turn in their tasks.
        self._sending = asyncio.Semaphore(max(disconnects_in_flight, 1))
        # The disconnects not yet done, by call: a call is told once while one runs.
        self._cuts: dict[tuple[str, str, str | None], asyncio.Task[None]] = {}

    @property
    def disconnects_pending(self) -> int:
        """Disconnect-Requests sent or waiting their turn, not yet answered or given up."""
        return len(self._cuts)

    async def sweep(self, now: int | None = None) -> int:
        """Close every expired call once; returns how many this sweep closed. The NAS of
        each expired sliced call is then told to end it (``needs_disconnect``), in a task
        the sweep does not wait for.

        Where part of Redis failed (a Cluster master: its buckets could not be looked
        at, or a call of the others could not be closed), the calls found elsewhere are
        closed all the same, and then the first such failure is raised: the caller
        reports it once, as it does an outage of the whole of Redis.
        """
        now = int(time.time()) if now is None else now
        closed = 0
        cuts: list[CallRecord] = []
        expired = await self._store.expired_calls(now)
        failure = expired.error
        for account_id, call_id in expired.calls:
            try:
                done = await self._calls.close_live_call(
                    account_id, call_id, "expired", expired_by=now
                )
            except Exception as exc:
                if backend_health.backend_of(exc, backend_health.REDIS) is not None:
                    failure = failure or exc
                    if not self._store.cluster:
                        break  # the one server is gone: the other calls would fail alike
                    # Its master (or its reference's) fails now: the others are closed
                    # all the same; this one is found again by the next sweep.
                    continue
                # One call that cannot be closed must not hold back the others.
                log.exception(
                    "could not close a stale call",
                    extra={"account": account_id, "call_id": call_id},
                )
                continue
            if done is not None:
                charge, record = done
                closed += 1
                if needs_disconnect(record, charge.cause):
                    cuts.append(record)
                metrics.STALE_CALLS_CLOSED.labels(charge.cause).inc()
                log.info(
                    "closed a stale call",
                    extra={
                        "account": account_id,
                        "call_id": call_id,
                        "cause": charge.cause,
                        "charged": charge.charged,
                    },
                )
        disconnect = self._disconnect
        if disconnect is not None:
            for record in cuts:
                self._cut_later(disconnect, record)
        if failure is not None:
            raise failure
        return closed

    def _cut_later(self, disconnect: Disconnect, record: CallRecord) -> None:
        """Tell the call's NAS to end it in a task of its own, unless it is being told."""
        key = (record.account_id, record.call_id, record.nas)
        if key in self._cuts:
            return
        task = asyncio.create_task(self._cut(disconnect, record))
        self._cuts[key] = task
        task.add_done_callback(lambda _: self._cuts.pop(key, None))

    async def _cut(self, disconnect: Disconnect, record: CallRecord) -> None:
        """One Disconnect-Request, once a place on the wire is free."""
        async with self._sending:
            await _cut(disconnect, record)

    async def close(self) -> int:
        """Give up the Disconnect-Requests still pending (shutdown); how many. Their calls
        are closed and charged already: a NAS not told ends the call at its ceiling, and
        its Stop is settled as a late stop."""
        pending = list(self._cuts.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning(
                "disconnects of expired calls given up at shutdown",
                extra={"disconnects": len(pending)},
            )
        return len(pending)

    async def run(self, stopping: asyncio.Event) -> None:
        """Sweep every ``interval`` until ``stopping`` is set; failures are retried, never
        fatal. The Disconnect-Requests still pending then are given up (``close``)."""
        try:
            await self._sweep_until(stopping)
        finally:
            await self.close()

    async def _sweep_until(self, stopping: asyncio.Event) -> None:
        """The sweeps of ``run``."""
        while not stopping.is_set():
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # An unreachable Redis (the only backend a sweep uses) is the tracker's to
                # log, once per outage; anything else is a fault worth its traceback.
                if not self._health.report(exc, default=backend_health.REDIS):
                    log.exception("janitor sweep failed; retrying")
            else:
                self._health.report_success(backend_health.REDIS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self._interval)


async def _cut(disconnect: Disconnect, record: CallRecord) -> None:
    """Ask the NAS of an expired sliced call to end it; a failure is logged, never raised
    (the call is closed and charged either way)."""
    try:
        outcome = await disconnect(record)
    except Exception:
        log.exception(
            "could not tell the NAS to end an expired call",
            extra={"call_id": record.call_id, "nas": record.nas},
        )
        return
    reason = getattr(outcome, "reason", None)
    log.info(
        "told the NAS to end an expired call",
        extra={
            "account": record.account_id,
            "call_id": record.call_id,
            "nas": record.nas,
            "outcome": reason if isinstance(reason, str) else "no NAS to tell",
        },
    )
