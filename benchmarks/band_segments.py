"""How long placing a long call in its time bands takes: the loop's time for each one.

An import run in the serving process prices up to 200 rows between awaits, and a stop
prices its call, with ``BandSchedule.segments``: while it runs, nothing else is answered.
This places calls of ``--hours`` (24: the longest call by default) in a London schedule
(peak weekdays 08:00-18:00, weekends, a night band, a holiday), each from another minute
so the placing cache never answers, and prints the microseconds a call and the
milliseconds 200 of them hold the loop.

    python benchmarks/band_segments.py [--hours 24] [--calls 2000] [--tree /path/to/ocs/tree]

``--tree`` imports ``ocs`` from another checkout (an older commit, to compare).
"""

import argparse
import sys
import time
from datetime import date
from pathlib import Path


def main() -> None:
    """Time the placing of ``--calls`` calls, three rounds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent))
    args = parser.parse_args()
    sys.path.insert(0, args.tree)
    from ocs.rating.bands import BandRule, BandSchedule

    weekdays = frozenset(range(5))
    schedule = BandSchedule(
        "Europe/London",
        (
            BandRule("peak", weekdays, 8 * 60, 18 * 60),
            BandRule("weekend", frozenset({5, 6}), 0, 24 * 60),
            BandRule("night", frozenset(range(7)), 0, 6 * 60),
        ),
        frozenset({date(2026, 12, 25)}),
    )
    length = args.hours * 3600
    start = 1_792_000_000  # October 2026, the autumn night ahead
    for _ in range(3):
        started = time.perf_counter()
        for n in range(args.calls):
            schedule.segments(start + n * 61, length + 60)
        each = (time.perf_counter() - started) / args.calls
        start += args.calls * 61
        print(f"{args.hours} h call: {each * 1e6:,.0f} us each, 200 of them {each * 200e3:,.1f} ms")


if __name__ == "__main__":
    main()
