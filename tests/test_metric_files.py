"""A dead worker's metric files: folded into the dead processes' ones, so that a scrape
reads a bounded directory, keeps every count, and forgets the dead's current-state gauges."""

import fcntl
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from ocs import metric_files


def _write(directory: Path, prefix: str, pid: int, samples: dict[tuple[str, str], float]) -> None:
    """A process's metric file as prometheus_client writes it: ``{prefix}_{pid}.db``."""
    out = MmapedDict(str(directory / f"{prefix}_{pid}.db"))
    try:
        for (metric, sample), value in samples.items():
            out.write_value(mmap_key(metric, sample, [], [], "help"), value, float(pid))
    finally:
        out.close()


def _scrape(directory: Path) -> dict[str, float]:
    """Sample name -> value, as /metrics would show them."""
    with metric_files.reading(directory):
        families = MultiProcessCollector.merge([str(p) for p in directory.glob("*.db")])
    return {sample.name: sample.value for family in families for sample in family.samples}


def test_a_dead_workers_counts_are_kept_and_its_current_gauges_dropped(tmp_path: Path) -> None:
    for pid, (requests, compiled, lag) in {101: (5.0, 0.0, 0.2), 102: (7.0, 3.0, 0.1)}.items():
        _write(tmp_path, "counter", pid, {("ocs_requests", "ocs_requests_total"): requests})
        _write(tmp_path, "gauge_min", pid, {("ocs_compiled", "ocs_compiled"): compiled})
        _write(tmp_path, "gauge_max", pid, {("ocs_lag_max", "ocs_lag_max"): lag})
        _write(tmp_path, "gauge_livemin", pid, {("ocs_up", "ocs_up"): 1.0})
    before = _scrape(tmp_path)
    assert before["ocs_requests_total"] == 12.0 and before["ocs_compiled"] == 0.0

    metric_files.retire(tmp_path, 101)
    after = _scrape(tmp_path)
    # Its requests still counted; the 0 of a worker that died before setting the gauge
    # no longer shows; the largest lag seen stays the largest.
    assert after["ocs_requests_total"] == 12.0
    assert after["ocs_compiled"] == 3.0
    assert after["ocs_lag_max"] == 0.2
    assert not list(tmp_path.glob("*_101.db"))

    # Another dead worker adds to the same files: the directory does not grow.
    _write(tmp_path, "counter", 103, {("ocs_requests", "ocs_requests_total"): 1.0})
    metric_files.retire(tmp_path, 102)
    metric_files.retire(tmp_path, 103)
    assert _scrape(tmp_path)["ocs_requests_total"] == 13.0
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_dead.db", "gauge_max_dead.db"]


def test_a_scrape_waits_while_files_are_swapped(tmp_path: Path) -> None:
    """The swap takes the directory's lock exclusively: a reader holding it shared keeps
    the swap waiting (tried without blocking here, from another open file)."""
    lock = tmp_path / metric_files.LOCK_NAME
    with (
        metric_files.reading(tmp_path),
        open(lock, "a+b") as other,
        pytest.raises(BlockingIOError),
    ):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock, "a+b") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the scrape is done
