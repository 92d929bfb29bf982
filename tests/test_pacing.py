"""A paced background pass rests in proportion to its work, so calls never queue behind it."""

import asyncio

import pytest

from ocs import pacing
from ocs.pacing import Pacer


class SteppedClock:
    """A clock that reads the times it is given, one per call, then the last forever."""

    def __init__(self, *times: float) -> None:
        self._times = list(times)

    def __call__(self) -> float:
        return self._times.pop(0) if len(self._times) > 1 else self._times[0]


# The loop's timers fire up to a millisecond early (their resolution).
EARLY = 0.002


async def rested(pacer: Pacer) -> float:
    """How long one ``pause()`` kept the caller away, in loop time (plus a timer's
    resolution, so that a rest of exactly the asked time reads at least that)."""
    loop = asyncio.get_running_loop()
    before = loop.time()
    await pacer.pause()
    return loop.time() - before + EARLY


async def test_a_slice_at_a_quarter_share_rests_three_times_its_length() -> None:
    # The slice starts at 10.00 (construction) and ends at 10.04: 40 ms of work.
    pacer = Pacer(0.25, clock=SteppedClock(10.0, 10.04))
    assert 0.12 <= await rested(pacer) < 0.12 + 0.5


async def test_a_full_share_only_yields() -> None:
    pacer = Pacer(1.0, clock=SteppedClock(0.0, 5.0))
    assert await rested(pacer) < 0.5


async def test_a_stalled_slice_rests_at_most_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pacing, "MAX_PAUSE_S", 0.05)
    # 100 s "of work" (the host took the CPU away) at a tenth share would rest 15 minutes.
    pacer = Pacer(0.1, clock=SteppedClock(0.0, 100.0))
    assert 0.05 <= await rested(pacer) < 0.05 + 0.5


async def test_restart_starts_the_slice_anew() -> None:
    # Work before restart() (time spent between passes) is not the slice's.
    pacer = Pacer(0.5, clock=SteppedClock(0.0, 60.0, 60.02))
    pacer.restart()
    assert 0.02 <= await rested(pacer) < 0.02 + 0.5


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        Pacer(share)
