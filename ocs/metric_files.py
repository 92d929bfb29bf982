"""The metric files a dead worker leaves in the ``--workers`` metrics directory.

Under ``ocs serve --workers N`` every process writes its samples to files named by its
pid in the shared directory (prometheus_client's multiprocess mode), and every scrape
reads all of them. prometheus_client's ``mark_process_dead`` removes only a dead
process's ``live*`` gauges: its counters, histograms and other gauges stayed, so each
restart added files every scrape read for as long as the parent ran, and a ``min``
gauge kept the 0 of a worker that died before setting it (``ocs_compiled_modules``).

``retire`` folds a dead process's files into one file per kind:

- counters, histograms and summaries are added into ``<kind>_dead.db``: a total stays
  a total, never going back when a worker dies;
- ``max`` and ``mostrecent`` gauges (the largest or latest value seen) are kept the same
  way in ``gauge_<mode>_dead.db``;
- every other gauge (``min``, ``sum``, ``all``, ``live*``) says something of the running
  processes only: a dead one's is removed.

A scrape reads the directory under a shared lock and ``retire`` swaps the files under
the exclusive one, so no scrape counts a dead worker's samples twice, or not at all, or
finds a file gone between listing and reading it (which fails the scrape).
"""

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict

LOCK_NAME = "scrape.lock"  # not *.db: the scrape's glob never reads it
DEAD = "dead"  # the pid part of the files that hold the dead processes' samples

# (value, timestamp) of one sample.
Sample = tuple[float, float]


def _added(old: Sample, new: Sample) -> Sample:
    """A counter's, a histogram bucket's or a summary's: the two processes' sum."""
    return old[0] + new[0], max(old[1], new[1])


def _largest(old: Sample, new: Sample) -> Sample:
    """A ``max`` gauge's: the larger value."""
    return new if new[0] > old[0] else old


def _latest(old: Sample, new: Sample) -> Sample:
    """A ``mostrecent`` gauge's: the value set last."""
    return new if new[1] > old[1] else old


# File prefix -> how a dead process's sample joins the ones kept before.
KEPT: dict[str, Callable[[Sample, Sample], Sample]] = {
    "counter": _added,
    "histogram": _added,
    "summary": _added,
    "gauge_max": _largest,
    "gauge_mostrecent": _latest,
}


@contextlib.contextmanager
def _locked(directory: Path, operation: int) -> Iterator[None]:
    """Hold the directory's lock (``fcntl.LOCK_SH`` or ``LOCK_EX``) inside the block."""
    with open(directory / LOCK_NAME, "a+b") as lock:
        fcntl.flock(lock, operation)
        yield  # closing the file lets go of the lock


@contextlib.contextmanager
def reading(directory: Path) -> Iterator[None]:
    """A scrape: the directory's files stay as they are inside the block."""
    with _locked(directory, fcntl.LOCK_SH):
        yield


def _read(path: Path) -> Iterator[tuple[str, Sample]]:
    """(key, sample) of each entry of a metric file; nothing when there is no file."""
    if not path.exists():
        return
    # prometheus_client's mmap_dict has no type annotations.
    entries = MmapedDict.read_all_values_from_file(str(path))  # type: ignore[no-untyped-call]
    for key, value, timestamp, _position in entries:
        yield key, (value, timestamp)


def _merged(kept: Path, dead: Path, combine: Callable[[Sample, Sample], Sample]) -> Path:
    """A new file (not yet in use) of ``kept``'s samples joined by ``dead``'s."""
    samples = dict(_read(kept))
    for key, sample in _read(dead):
        samples[key] = combine(samples[key], sample) if key in samples else sample
    new = kept.with_suffix(".new")
    new.unlink(missing_ok=True)
    out = MmapedDict(str(new))  # type: ignore[no-untyped-call]
    try:
        for key, (value, timestamp) in samples.items():
            out.write_value(key, value, timestamp)  # type: ignore[no-untyped-call]
    finally:
        out.close()  # type: ignore[no-untyped-call]
    return new


def retire(directory: Path, pid: int) -> None:
    """Fold the metric files of the dead process ``pid`` into the dead processes' files
    (its counters and totals kept, its current-state gauges dropped)."""
    own = list(directory.glob(f"*_{pid}.db"))
    swaps: list[tuple[Path, Path]] = []
    for path in own:
        prefix = path.name[: -len(f"_{pid}.db")]
        combine = KEPT.get(prefix)
        if combine is not None:
            kept = directory / f"{prefix}_{DEAD}.db"
            swaps.append((_merged(kept, path, combine), kept))
    # Merged before the lock, swapped under it: a scrape waits for renames only.
    with _locked(directory, fcntl.LOCK_EX):
        for new, kept in swaps:
            os.replace(new, kept)
        for path in own:
            path.unlink(missing_ok=True)
