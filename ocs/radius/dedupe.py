"""RFC 5080 duplicate detection: a retransmitted request gets the first reply, changes nothing.

A request is the same when client address, port, identifier and request
authenticator match. While the first copy is still being handled, later copies
are dropped (the reply is on its way); once answered, copies within the window
get the cached reply bytes.

The cache is two generations of plain dicts: requests go into the young one, which
becomes the old one a window after it was started (or once it holds half the
entries allowed), and the old one is dropped then. A request is so remembered for
at least the window and at most twice it, at the cost of two dict lookups, with no
per-request expiry work (an ordered dict trimmed at every request cost more).
"""

import time
from collections.abc import Callable

RequestKey = tuple[str, int, int, bytes]

_PENDING = b""


class ReplyCache:
    """Recent requests by key, each with its reply, or pending while it is being handled."""

    def __init__(
        self,
        window: float,
        max_entries: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Remember requests for ``window`` seconds (at most twice that), at most
        ``max_entries`` of them; ``clock`` tells the time (seconds, monotonic)."""
        self._window = window
        self._young_max = max(1, max_entries // 2)
        self._clock = clock
        self._young: dict[RequestKey, bytes] = {}
        self._old: dict[RequestKey, bytes] = {}
        self._young_since = clock()

    def begin(self, key: RequestKey) -> bytes | None:
        """None for a new request (now marked in progress); else the cached reply,
        or ``b""`` while the first copy is still being handled."""
        young = self._young
        found = young.get(key)
        if found is None:
            found = self._old.get(key)
        if found is not None:
            return found
        if len(young) >= self._young_max or self._clock() - self._young_since >= self._window:
            young = self._turn()
        young[key] = _PENDING
        return None

    def _turn(self) -> dict[RequestKey, bytes]:
        """Start a young generation; the young one becomes the old one, the old is dropped."""
        self._old = self._young
        self._young = {}
        self._young_since = self._clock()
        return self._young

    def finish(self, key: RequestKey, reply: bytes) -> None:
        """Keep the reply of an answered request, for its retransmissions."""
        if key in self._young:
            self._young[key] = reply
        elif key in self._old:
            self._old[key] = reply

    def forget(self, key: RequestKey) -> None:
        """The request was not answered (backend down): a retransmission is handled anew."""
        self._young.pop(key, None)
        self._old.pop(key, None)
