"""Which waiting RADIUS requests to answer under overload: a controlled-delay rule.

A request that waited longer than the *budget* (``radius_queue_budget``, 250 ms) is
always dropped: its NAS retransmits or fails over, and the work would delay the
requests behind it. That bound alone lets a server held above its capacity answer
every request it answers at the budget: the queue fills until its oldest request is
about to time out. Measured at 20% above capacity, p50 and p99 were both near 260 ms
(benchmarks/RESULTS.md, session 12).

So the budget is for bursts, and a queue that stays long is overload. As in CoDel
(controlled delay), a request that waited longer than the *target*
(``radius_queue_target``, 20 ms) is let through while the delay is new. Once every
request for ``INTERVAL_S`` has waited longer than the target, the queue is
*standing*: from then on a request that waited longer than the target is dropped.
The delay falls at once, since a dropped request costs almost nothing.

The queue stops standing once requests wait less than the target again, and it has
been cut back for at least an interval. Within ``MEMORY_S`` of that, a queue above
the target stands again at once, without waiting another interval: overload that
has just been cut back is overload still. The requests answered then wait about the
target, not the budget.

What the rule knows is only as good as the requests it has seen. When none came for
longer than ``QUIET_S``, the queue may have emptied meanwhile: the count starts again,
and a standing queue counts as ended when the last request came. Otherwise two requests
that each waited just over the target, seconds apart on a quiet server, would read as a
queue that had stood all along, and the second would be dropped.

The rule only decides. The server counts every drop (``late``), so none is silent.
"""

# How long the queue delay must stay above the target before it counts as standing:
# CoDel's 100 ms, well above the stalls of a busy VM (10-50 ms, benchmarks/RESULTS.md).
INTERVAL_S = 0.1
# After a standing queue ends, for this long a delay above the target stands at once.
MEMORY_S = 1.0
# No request seen for longer than this: what was measured before may be stale. A
# standing queue brings requests far more often (thousands a second), so a gap this long
# means the queue emptied or the process stalled; the standing rule sees to both.
QUIET_S = 0.1


class QueueDelay:
    """Admits or drops one request at a time by how long it waited (module docstring).

    ``budget`` and ``target`` are seconds (a ``target`` of 0 turns the standing-queue
    rule off, leaving the budget alone); ``now`` is any monotonic clock, in seconds.
    Plain attributes, so that a test can narrow them.
    """

    __slots__ = (
        "_ended",
        "_last",
        "_since",
        "budget",
        "interval",
        "memory",
        "quiet",
        "standing",
        "target",
    )

    def __init__(
        self,
        budget: float,
        target: float,
        interval: float = INTERVAL_S,
        memory: float = MEMORY_S,
        quiet: float = QUIET_S,
    ) -> None:
        self.budget = budget
        self.target = target
        self.interval = interval
        self.memory = memory
        self.quiet = quiet
        self.standing = False
        # Not standing: since when every request has waited longer than the target (None:
        # the last one did not). Standing: since when the queue has been cut back.
        self._since: float | None = None
        # When the last standing queue ended (None: none has).
        self._ended: float | None = None
        # When the last request was seen.
        self._last = float("-inf")

    def admit(self, waited: float, now: float) -> bool:
        """Whether a request that waited ``waited`` seconds, seen at ``now``, is answered."""
        if waited > self.budget:
            return False
        last, self._last = self._last, now
        if now - last > self.quiet:
            # Nothing seen for a while: the queue may have emptied (module docstring).
            if self.standing:
                self.standing, self._ended = False, last
            self._since = None
        target, since = self.target, self._since
        if waited <= target or target <= 0:
            if not self.standing:
                self._since = None
            elif since is None or now - since >= self.interval:
                self.standing, self._since, self._ended = False, None, now
            return True
        if self.standing:
            return False
        ended = self._ended
        if ended is not None and now - ended < self.memory:
            self.standing, self._since = True, now  # overload just cut back: at once
        elif since is None:
            self._since = now
        elif now - since >= self.interval:
            self.standing, self._since = True, now
        return not self.standing
