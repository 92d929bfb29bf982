"""PIN guessing limits: PIN attempts counted per caller id, per NAS and per API token
in a window.

A caller id (or a NAS, with a larger limit, for callers that hide their
number; or the API token an HTTP query came with, with a larger one still)
with too many wrong PINs in ``pin_guess_window`` seconds is refused with
return code 10 until the window passes. The counters are Redis strings with
an expiry, so every ocs process shares them.

Over HTTP the "NAS" is the client's address (``guess_source``), an IPv6 one
counted by its /64: one host or site holds a whole /64, and could otherwise
give every guess an address of its own (decision 0042).

An attempt is counted before its PIN is looked at, and taken back once the
PIN proves right (pin_attempt.lua). Counting only after a wrong answer would
let guesses sent in parallel all pass the check before the first was counted.
"""

import asyncio
import ipaddress

from ocs.balances import keys, scripts
from ocs.balances.autopipeline import AutoPipeline
from ocs.config import Settings
from ocs.errors import OcsError, Reason
from ocs.metrics import PIN_GUESSES_BLOCKED

_COUNT = 1
_TAKE_BACK = -1
# The IPv6 prefix one host or site is given (RFC 6177): its addresses guess as one.
_IPV6_SOURCE_PREFIX = 64


def guess_source(remote: str | None) -> str | None:
    """Whom an HTTP client's wrong PINs count against, from its address
    (``request.remote``): an IPv4 address as it is, an IPv6 one as its /64 (its
    zone dropped; an IPv4 peer of a dual-stack listener as its IPv4 address).
    None for no address; anything else that is not an address, as it is."""
    if not remote:
        return None
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((address, _IPV6_SOURCE_PREFIX), strict=False)
        return str(network)
    return str(address)


class PinAttempt:
    """One PIN attempt, counted against its caller, NAS and token until taken back."""

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
    """Counts PIN attempts per caller id, per NAS and per API token, and refuses those
    over the limit."""

    def __init__(self, pipeline: AutoPipeline, settings: Settings) -> None:
        self._pipe = pipeline
        self._settings = settings

    def _scopes(
        self, caller: str | None, nas: str | None, token: str | None
    ) -> list[tuple[str, str, int]]:
        scopes = []
        if caller:
            scopes.append(("caller", caller, self._settings.pin_guess_limit_caller))
        if nas:
            scopes.append(("nas", nas, self._settings.pin_guess_limit_nas))
        if token:
            scopes.append(("token", token, self._settings.pin_guess_limit_token))
        return scopes

    async def change(self, counters: list[str], step: int) -> list[int]:
        """Count an attempt on each counter (``step`` 1) or take one back (-1), in one
        round trip; the counts after the change."""
        window = self._settings.pin_guess_window
        # Every counter in one round trip: this is on the path of every PIN request.
        pending = [
            self._pipe.run_script(scripts.PIN_ATTEMPT, [key], [window, step]) for key in counters
        ]
        return [int(count) for count in await asyncio.gather(*pending)]

    async def attempt(
        self, caller: str | None, nas: str | None, token: str | None = None
    ) -> PinAttempt:
        """Count one PIN attempt against the caller, the NAS and the API token (the
        name of the one an HTTP query was let in by), each only when given, before
        the PIN is looked at; refuse it (return code 10, and uncounted) when any of
        them has guessed wrong too often. A wrong PIN leaves its attempt counted; any
        other outcome takes it back (``PinAttempt.take_back``)."""
        scopes = self._scopes(caller, nas, token)
        counters = [keys.pin_failures(scope, who) for scope, who, _ in scopes]
        counts = await self.change(counters, _COUNT)
        for (scope, _, limit), count in zip(scopes, counts, strict=True):
            if count > limit:
                PIN_GUESSES_BLOCKED.labels(scope).inc()
                await self.change(counters, _TAKE_BACK)
                raise OcsError(Reason.PIN_BLOCKED, "too many wrong PINs; try again later")
        return PinAttempt(self, counters)
