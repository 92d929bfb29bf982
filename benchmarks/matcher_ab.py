"""Batch lookups of two versions of the matcher, A/B in one process on the same arrays.

On a shared machine, runs of the same program minutes apart differ by a third
or more. This loads ``ocs/numbers/matcher.py`` from two checkouts (say, a git
worktree of the commit before a change, and the change), builds the
benchmark's 1,000,000-prefix deck once with the second, and times both
versions' batch kernels in turn on the same packed table and the same
numbers: from bytes (``lookup_many``) and from keys (``lookup_keys``),
uniform and Zipf traffic, median and best of ``--runs`` alternating timings.
Both versions must share the packed table's layout (``_VERSION``).

    git worktree add /tmp/before HEAD~1
    python benchmarks/matcher_ab.py /tmp/before .
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

# Each version compiles into a cache of its own: loaded under another module name,
# a kernel must not write into the cache that the checkout's own imports read.
os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="ocs-matcher-ab-")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import describe
from benchmarks.matcher import generate_deck, numbers_for


def load(checkout: str, name: str) -> ModuleType:
    path = Path(checkout, "ocs", "charging", "matcher.py")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no matcher at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="checkout A (e.g. the commit before)")
    parser.add_argument("b", help="checkout B (e.g. the change)")
    parser.add_argument("--prefixes", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    versions = {"A": load(args.a, "matcher_a"), "B": load(args.b, "matcher_b")}
    if len({m._VERSION for m in versions.values()}) != 1:
        raise SystemExit("the two versions pack tables differently: no common table")
    prefixes, _, _ = generate_deck(args.prefixes)
    index = versions["B"].PrefixIndex.from_strings(prefixes, list(range(len(prefixes))))
    for traffic, zipf in (("uniform", None), ("zipf 1.1", 1.1)):
        rows = np.array(numbers_for(prefixes, args.lookups, seed=7, zipf=zipf), dtype="S")
        timed: dict[str, Callable[[], object]] = {}
        answers = []
        for label, module in versions.items():
            table = module.PrefixIndex(index.packed, {}, len(prefixes))
            keys = module.encode_numbers(rows)
            answers += [table.lookup_many(rows), table.lookup_keys(keys)]
            timed[f"{label} bytes"] = lambda t=table, r=rows: t.lookup_many(r)
            timed[f"{label} keys"] = lambda t=table, k=keys: t.lookup_keys(k)
        if not all((answer == answers[0]).all() for answer in answers):
            raise SystemExit("the versions answer differently")
        seconds: dict[str, list[float]] = {label: [] for label in timed}
        for _ in range(args.runs):
            for label, action in timed.items():
                started = time.perf_counter()
                action()
                seconds[label].append(time.perf_counter() - started)
        print(
            f"{traffic:>8}: "
            + "; ".join(
                f"{label} {len(rows) / np.median(s) / 1e6:.1f} M/s median,"
                f" {len(rows) / min(s) / 1e6:.1f} best"
                for label, s in seconds.items()
            )
        )


if __name__ == "__main__":
    main()
