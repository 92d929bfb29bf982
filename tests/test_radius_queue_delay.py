"""The RADIUS queue-delay rule: bursts pass, a standing queue is cut back to the target."""

from ocs.radius.queue_delay import QueueDelay

BUDGET, TARGET, INTERVAL = 0.25, 0.02, 0.1


def rule() -> QueueDelay:
    return QueueDelay(BUDGET, TARGET, INTERVAL)


def test_a_request_past_the_budget_is_always_dropped() -> None:
    delay = rule()
    assert not delay.admit(0.26, now=0.0)
    assert delay.admit(0.25, now=0.0)


def test_a_burst_above_the_target_shorter_than_the_interval_is_answered_whole() -> None:
    delay = rule()
    # 50 ms of requests that each waited 30-80 ms: a stall being worked off.
    admitted = [delay.admit(0.03 + i / 1000, now=i / 1000) for i in range(50)]
    assert all(admitted)
    assert not delay.standing


def test_a_queue_above_the_target_for_the_interval_sheds_what_waited_longer() -> None:
    delay = rule()
    assert delay.admit(0.03, now=0.0)
    assert delay.admit(0.05, now=0.099)
    # Every request for 100 ms waited longer than the target: a standing queue.
    assert not delay.admit(0.05, now=0.1)
    assert delay.standing
    assert not delay.admit(0.021, now=0.12)
    # Cut back to the target, yet for less than an interval: it still stands.
    assert delay.admit(0.02, now=0.13)
    assert delay.standing
    assert not delay.admit(0.03, now=0.15)
    # Cut back for an interval: it ends.
    assert delay.admit(0.01, now=0.2)
    assert not delay.standing


def test_a_delay_soon_after_a_standing_queue_stands_at_once() -> None:
    delay = rule()
    delay.admit(0.05, now=0.0)
    delay.admit(0.05, now=0.1)
    assert delay.standing
    delay.admit(0.01, now=0.2)
    assert not delay.standing
    # Within a second of the end, the first request above the target is overload again.
    assert not delay.admit(0.03, now=0.5)
    assert delay.standing
    delay.admit(0.01, now=0.61)
    assert not delay.standing
    # Later than that, a delay is a burst again: let through for an interval.
    assert delay.admit(0.03, now=1.72)
    assert delay.admit(0.03, now=1.8)
    assert not delay.admit(0.03, now=1.83)


def test_one_request_under_the_target_restarts_the_interval() -> None:
    delay = rule()
    delay.admit(0.05, now=0.0)
    delay.admit(0.01, now=0.09)
    assert delay.admit(0.05, now=0.1)
    assert delay.admit(0.05, now=0.19)
    assert not delay.admit(0.05, now=0.2)


def test_a_target_of_zero_leaves_only_the_budget() -> None:
    delay = QueueDelay(BUDGET, 0.0, INTERVAL)
    assert all(delay.admit(0.2, now=i / 100) for i in range(100))
    assert not delay.standing
    assert not delay.admit(0.3, now=1.0)


def test_requests_seconds_apart_on_a_quiet_server_are_not_a_queue() -> None:
    delay = rule()
    # Each waited just over the target (a busy moment), but nothing came in between:
    # no queue stood for the seconds between them.
    assert all(delay.admit(0.03, now=float(second)) for second in range(10))
    assert not delay.standing


def test_a_standing_queue_ends_when_requests_stop_coming() -> None:
    delay = rule()
    delay.admit(0.05, now=0.0)
    assert not delay.admit(0.05, now=0.1)
    assert delay.standing
    # Silence for longer than the memory: the next delay is a burst again.
    assert delay.admit(0.03, now=5.0)
    assert not delay.standing
    # Silence shorter than the memory, after standing: overload still, at once.
    assert delay.admit(0.05, now=5.06)
    assert not delay.admit(0.05, now=5.11)
    assert delay.standing
    assert not delay.admit(0.03, now=5.61)
    assert delay.standing
