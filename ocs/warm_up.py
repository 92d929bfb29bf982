"""Start-up warm-up: compile, or load from numba's on-disk cache, every kernel a server runs.

It sits above the packages whose kernels it warms (numbers, decks, catalog), so
none of them imports another to warm it: a process calls ``warm_up()`` once
before taking traffic, and ``ocs warm-up`` does it ahead of time.
"""

import logging
import time
from types import ModuleType
from typing import Any

from ocs.catalog import routes, snapshot, store
from ocs.decks import cost_deck, rate_deck, scan
from ocs.numbers import matcher

log = logging.getLogger("ocs.matcher")

# The modules that define numba kernels a serving process runs.
KERNEL_MODULES: tuple[ModuleType, ...] = (matcher, scan, cost_deck, snapshot, store, routes)


def cached_kernels() -> list[Any]:
    """Every kernel ``warm_up`` compiles that numba keeps on disk on its own.

    Kernels inlined into their callers never get an entry of their own, so they are left out.
    """
    from numba.core.registry import CPUDispatcher

    kernels = []
    for module in KERNEL_MODULES:
        for value in vars(module).values():
            if isinstance(value, CPUDispatcher) and value.targetoptions.get("inline") != "always":
                kernels.append(value)
    return kernels


def cache_is_cold() -> bool:
    """True when some kernel has no machine code on disk for this source: warm_up compiles.

    Reads numba's cache index (the same check numba makes before compiling: the index
    names the source file's stamp, so an edited module counts as cold). When numba's
    internals cannot be read, answers True: a wrong "compiling" line costs nothing.
    """
    try:
        return any(not kernel._cache._cache_file._load_index() for kernel in cached_kernels())
    except Exception:
        return True


def warm_up() -> float:
    """Compile, or load from numba's on-disk cache, every kernel a serving process runs.

    Call it once at process start, before taking traffic: then neither the
    first lookup, nor the first catalog reload, nor the first deck import waits
    for a compiler. Returns the seconds it took (tens of seconds on a cold
    cache, well under one second once the cache holds the machine code). On a
    cold cache it says so first, since the process is silent meanwhile.
    """
    started = time.perf_counter()
    cold = cache_is_cold()
    if cold:
        log.info(
            "compiling the prefix matcher, first start only (tens of seconds; "
            "`ocs warm-up` does it ahead of time)",
            extra={"kernels": len(cached_kernels())},
        )
    matcher.warm_up_lookups()
    rate_deck.warm_up()
    cost_deck.warm_up()
    snapshot.warm_up()
    store.warm_up()
    took = time.perf_counter() - started
    log.info(
        "prefix matcher compiled and cached" if cold else "matcher kernels ready",
        extra={"seconds": round(took, 3), "compiled": cold},
    )
    return took
