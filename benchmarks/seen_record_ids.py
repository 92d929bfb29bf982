"""How long a usage import's repeat check takes, by how many record ids it has seen.

A usage import rejects a record id repeated within it (decision 0051); it keeps the ids
it has read in ``ocs.mediation.seen_ids.SeenIds``. This feeds one ``SeenIds`` distinct
ids in chunks, as an import's chunks come, and prints the time (ids made included) and
the microseconds an id at each size.

    python benchmarks/seen_record_ids.py [--ids 1000000 4000000] [--chunk 5000]
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ocs.mediation.seen_ids import SeenIds


def timed(count: int, chunk: int) -> float:
    """Seconds to claim ``count`` distinct ids, ``chunk`` a call."""
    seen = SeenIds()
    started = time.perf_counter()
    for start in range(0, count, chunk):
        ids = [f"rec-{n}" for n in range(start, start + chunk)]
        repeats = seen.claim(ids, list(range(start, start + chunk)))
        assert max(repeats) == -1  # every id is new
    return time.perf_counter() - started


def main() -> None:
    """Time each size given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--chunk", type=int, default=5000)
    args = parser.parse_args()
    for count in args.ids:
        seconds = timed(count, args.chunk)
        print(f"{count:,} ids: {seconds:.2f} s, {seconds / count * 1e6:.2f} us an id")


if __name__ == "__main__":
    main()
