"""How long a ``--workers`` parent waits before starting a process again, and when it
gives up (ocs.restarts)."""

import signal

from ocs import restarts


def test_waits_double_from_one_second_to_a_minute() -> None:
    waits = [restarts.delay_after(n) for n in range(1, 10)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert restarts.delay_after(100_000) == 60.0  # no overflow after days of failures


def test_a_kind_never_ready_is_given_up_after_its_attempts() -> None:
    slot = restarts.Slot(started_at=0.0)
    assert restarts.after_exit(slot, 2.0, attempts=3, ever_ready=False) == 1.0
    slot.started_at = 4.0
    assert restarts.after_exit(slot, 6.0, attempts=3, ever_ready=False) == 2.0
    slot.started_at = 9.0
    assert restarts.after_exit(slot, 11.0, attempts=3, ever_ready=False) is None


def test_once_ready_a_kind_is_restarted_for_ever_and_a_long_run_starts_afresh() -> None:
    slot = restarts.Slot(started_at=0.0, failures=9)
    assert restarts.after_exit(slot, 1.0, attempts=3, ever_ready=True) == 60.0
    # Five minutes up: this exit is the first of a new series.
    slot.started_at = 100.0
    assert restarts.after_exit(slot, 100.0 + restarts.STABLE_AFTER_S, 3, False) == 1.0
    assert slot.failures == 1


def test_exit_status_in_words() -> None:
    assert restarts.exit_status(1) == "exit code 1"
    assert restarts.exit_status(-signal.SIGKILL) == "killed by SIGKILL"
