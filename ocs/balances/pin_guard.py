"""PIN guessing limits: PIN attempts counted per caller id and per NAS in a window.

A caller id (or a NAS, with a larger limit, for callers that hide their
number) with too many wrong PINs in ``pin_guess_window`` seconds is refused
with return code 10 until the window passes. The counters are Redis strings
with an expiry, so every ocs process shares them.

An attempt is counted before its PIN is looked at, and taken back once the
PIN proves right (pin_attempt.lua). Counting only after a wrong answer would
let guesses sent in parallel all pass the check before the first was counted.
"""

import asyncio

from ocs.balances import keys, scripts
from ocs.balances.autopipeline import AutoPipeline
from ocs.config import Settings
from ocs.errors import OcsError, Reason
from ocs.metrics import PIN_GUESSES_BLOCKED

_COUNT = 1
_TAKE_BACK = -1


class PinAttempt:
    """One PIN attempt, counted against its caller and NAS until taken back."""

    def __init__(self, guard: "PinGuard", counters: list[str]) -> None:
        self._guard = guard
        self._counters = counters

    async def take_back(self) -> None:
        """The PIN was not a wrong guess (right, or never judged): uncount the attempt.

        Never raises: when Redis cannot be reached the attempt stays counted until its
        window passes, the cautious side, and the request's own error is the one told.
        """
        counters, self._counters = self._counters, []
        try:
            await self._guard.change(counters, _TAKE_BACK)
        except Exception:  # the cautious side: see the docstring
            return


class PinGuard:
    """Counts PIN attempts per caller id and per NAS and refuses those over the limit."""

    def __init__(self, pipeline: AutoPipeline, settings: Settings) -> None:
        self._pipe = pipeline
        self._settings = settings

    def _scopes(self, caller: str | None, nas: str | None) -> list[tuple[str, str, int]]:
        scopes = []
        if caller:
            scopes.append(("caller", caller, self._settings.pin_guess_limit_caller))
        if nas:
            scopes.append(("nas", nas, self._settings.pin_guess_limit_nas))
        return scopes

    async def change(self, counters: list[str], step: int) -> list[int]:
        """Count an attempt on each counter (``step`` 1) or take one back (-1), in one
        round trip; the counts after the change."""
        window = self._settings.pin_guess_window
        # Both counters in one round trip: this is on the path of every PIN request.
        pending = [
            self._pipe.run_script(scripts.PIN_ATTEMPT, [key], [window, step]) for key in counters
        ]
        return [int(count) for count in await asyncio.gather(*pending)]

    async def attempt(self, caller: str | None, nas: str | None) -> PinAttempt:
        """Count one PIN attempt against the caller and the NAS, before the PIN is
        looked at; refuse it (return code 10, and uncounted) when either has guessed
        wrong too often. A wrong PIN leaves its attempt counted; any other outcome
        takes it back (``PinAttempt.take_back``)."""
        scopes = self._scopes(caller, nas)
        counters = [keys.pin_failures(scope, who) for scope, who, _ in scopes]
        counts = await self.change(counters, _COUNT)
        for (scope, _, limit), count in zip(scopes, counts, strict=True):
            if count > limit:
                PIN_GUESSES_BLOCKED.labels(scope).inc()
                await self.change(counters, _TAKE_BACK)
                raise OcsError(Reason.PIN_BLOCKED, "too many wrong PINs; try again later")
        return PinAttempt(self, counters)
