"""The janitor: closes live calls whose switch will never report their end.

Every ``janitor_interval`` it looks up calls past their expiry in every
bucket (one round trip: on Redis Cluster the wire sends each bucket's lookup to
the master holding it, one write per master) and closes each by the stated
policy (``CallService.close_live_call``):
an Access-Accept never followed by an Accounting-Start is released free of
charge; a started call is charged its last reported usage (or its whole
grant). Safe to run in every process at once: the stop script closes a call
once, and only if nothing extended its expiry meanwhile.

While Redis is unreachable a sweep fails at once; the failure goes to the
process's backend tracker (one line per outage, a reminder while it lasts),
never one traceback per sweep.
"""

import asyncio
import contextlib
import logging
import time

from ocs import backend_health, metrics
from ocs.backend_health import BackendHealth
from ocs.balances.store import BalanceStore
from ocs.charging.lifecycle import CallService

log = logging.getLogger("ocs.janitor")


class Janitor:
    """Sweeps expired calls every ``interval`` seconds until asked to stop."""

    def __init__(
        self,
        calls: CallService,
        store: BalanceStore,
        interval: float = 1.0,
        health: BackendHealth | None = None,
    ) -> None:
        self._calls = calls
        self._store = store
        self._interval = interval
        self._health = health if health is not None else backend_health.default()

    async def sweep(self, now: int | None = None) -> int:
        """Close every expired call once; returns how many this sweep closed."""
        now = int(time.time()) if now is None else now
        closed = 0
        for account_id, call_id in await self._store.expired_calls(now):
            try:
                charge = await self._calls.close_live_call(
                    account_id, call_id, "expired", expired_by=now
                )
            except Exception as exc:
                if backend_health.backend_of(exc, backend_health.REDIS) is not None:
                    raise  # Redis is gone: the other calls would fail alike; end the sweep
                # One call that cannot be closed must not hold back the others.
                log.exception(
                    "could not close a stale call",
                    extra={"account": account_id, "call_id": call_id},
                )
                continue
            if charge is not None:
                closed += 1
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
        return closed

    async def run(self, stopping: asyncio.Event) -> None:
        """Sweep every ``interval`` until ``stopping`` is set; failures are retried, never fatal."""
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
