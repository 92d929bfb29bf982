"""RFC 5080 duplicate detection: a retransmitted request gets the first reply, changes nothing.

A request is the same when client address, port, identifier and request
authenticator match. While the first copy is still being handled, later copies
are dropped (the reply is on its way); once answered, copies within the window
get the cached reply bytes.
"""

import time
from collections import OrderedDict

RequestKey = tuple[str, int, int, bytes]

_PENDING = b""


class ReplyCache:
    """Recent requests by key, each with its reply, or pending while it is being handled."""

    def __init__(self, window: float, max_entries: int = 200_000) -> None:
        self._window = window
        self._max = max_entries
        self._entries: OrderedDict[RequestKey, tuple[float, bytes]] = OrderedDict()

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            stamp, _ = next(iter(entries.values()))
            if now - stamp < self._window and len(entries) <= self._max:
                break
            entries.popitem(last=False)

    def begin(self, key: RequestKey) -> bytes | None:
        """None for a new request (now marked in progress); else the cached reply,
        or ``b""`` while the first copy is still being handled."""
        now = time.monotonic()
        self._expire(now)
        found = self._entries.get(key)
        if found is not None:
            return found[1]
        self._entries[key] = (now, _PENDING)
        return None

    def finish(self, key: RequestKey, reply: bytes) -> None:
        """Keep the reply of an answered request, for its retransmissions."""
        if key in self._entries:
            self._entries[key] = (self._entries[key][0], reply)

    def forget(self, key: RequestKey) -> None:
        """The request was not answered (backend down): a retransmission is handled anew."""
        self._entries.pop(key, None)
