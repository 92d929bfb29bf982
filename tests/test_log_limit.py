"""An error that fails every request alike is logged once per reason a while, each counted."""

from prometheus_client import REGISTRY

from ocs.log_limit import LogLimiter


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def _counted(reason: str) -> float:
    labels = {"protocol": "test", "reason": reason}
    return REGISTRY.get_sample_value("ocs_request_errors_total", labels) or 0.0


def test_one_line_per_reason_every_interval_with_what_was_held_back() -> None:
    clock = FakeClock()
    limiter = LogLimiter("test", interval=10.0, clock=clock)
    before = _counted("ResponseError"), _counted("unavailable")
    written = []
    for _ in range(25):  # 25 seconds, 100 errors of one reason a second
        for _ in range(100):
            held = limiter.admit("ResponseError")
            if held is not None:
                written.append(held)
        clock.now += 1.0
    # The first at once, then one each 10 s with the 999 held back since the last.
    assert written == [0, 999, 999]
    # Another reason has its own line at once.
    assert limiter.admit("unavailable") == 0
    # Every occurrence is counted, written or not.
    assert _counted("ResponseError") == before[0] + 2500
    assert _counted("unavailable") == before[1] + 1
