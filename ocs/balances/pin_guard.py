"""PIN guessing limits: failed PINs counted per caller id and per NAS in a window.

A caller id (or a NAS, with a larger limit, for callers that hide their
number) with too many failed PINs in ``pin_guess_window`` seconds is refused
with return code 10 until the window passes. The counters are Redis strings
with an expiry, so every ocs process shares them.
"""

from ocs.balances import keys
from ocs.balances.autopipeline import AutoPipeline
from ocs.config import Settings
from ocs.errors import OcsError, Reason
from ocs.metrics import PIN_GUESSES_BLOCKED


class PinGuard:
    """Counts failed PINs per caller id and per NAS and refuses those over the limit."""

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

    async def check(self, caller: str | None, nas: str | None) -> None:
        """Refuse (return code 10) a caller or NAS that has guessed too often."""
        scopes = self._scopes(caller, nas)
        # Both counters in one round trip: this is on the path of every PIN request.
        pending = [self._pipe.execute("GET", keys.pin_failures(s, who)) for s, who, _ in scopes]
        for (scope, _, limit), future in zip(scopes, pending, strict=True):
            failures = await future
            if failures is not None and int(failures) >= limit:
                PIN_GUESSES_BLOCKED.labels(scope).inc()
                raise OcsError(
                    Reason.PIN_BLOCKED,
                    "too many wrong PINs; try again later",
                )

    async def failed(self, caller: str | None, nas: str | None) -> None:
        """Count one wrong PIN against the caller and the NAS."""
        window = self._settings.pin_guess_window
        for scope, who, _ in self._scopes(caller, nas):
            key = keys.pin_failures(scope, who)
            if int(await self._pipe.execute("INCR", key)) == 1:
                await self._pipe.execute("EXPIRE", key, window)
