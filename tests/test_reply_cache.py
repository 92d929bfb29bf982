"""The RADIUS reply cache (RFC 5080): a retransmission within the window gets the first
reply, one long after is a new request, and the cache stays bounded."""

from ocs.radius.dedupe import ReplyCache, RequestKey

WINDOW = 30.0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(n: int) -> RequestKey:
    """The key of the n-th request: a NAS's address and port, an identifier, a digest."""
    return ("192.0.2.1", 40000 + n // 256, n % 256, n.to_bytes(32, "big"))


def test_a_copy_waits_for_the_first_reply_then_gets_it() -> None:
    cache = ReplyCache(WINDOW, clock=Clock())
    assert cache.begin(key(1)) is None  # new: handle it
    assert cache.begin(key(1)) == b""  # the first copy is still being handled: drop
    cache.finish(key(1), b"accept")
    assert cache.begin(key(1)) == b"accept"
    assert cache.begin(key(2)) is None  # another request is not a copy


def test_a_copy_within_the_window_gets_the_reply_and_one_long_after_is_new() -> None:
    clock = Clock()
    cache = ReplyCache(WINDOW, clock=clock)
    cache.begin(key(1))
    cache.finish(key(1), b"accept")
    clock.now += WINDOW - 1
    assert cache.begin(key(2)) is None
    cache.finish(key(2), b"reject")
    assert cache.begin(key(1)) == b"accept"
    # A window on, the requests are still remembered (for a window at least)...
    clock.now += WINDOW
    assert cache.begin(key(3)) is None
    assert (cache.begin(key(1)), cache.begin(key(2))) == (b"accept", b"reject")
    # ...and two windows after the last of them, no more: a request handled anew.
    clock.now += 2 * WINDOW
    assert cache.begin(key(4)) is None
    clock.now += 1
    assert cache.begin(key(5)) is None
    assert (cache.begin(key(1)), cache.begin(key(2))) == (None, None)


def test_a_request_not_answered_is_handled_anew() -> None:
    cache = ReplyCache(WINDOW, clock=Clock())
    assert cache.begin(key(1)) is None
    cache.forget(key(1))  # the backend was down: no reply sent
    assert cache.begin(key(1)) is None


def test_the_cache_holds_at_most_its_entries_the_newest_kept() -> None:
    cache = ReplyCache(WINDOW, max_entries=100, clock=Clock())
    for n in range(1000):
        assert cache.begin(key(n)) is None
        cache.finish(key(n), n.to_bytes(2, "big"))
    # Newest first, up to the first one forgotten (asking for it makes it new again).
    remembered = 0
    while cache.begin(key(999 - remembered)) == (999 - remembered).to_bytes(2, "big"):
        remembered += 1
    assert 50 <= remembered <= 100
    assert cache.begin(key(0)) is None
