"""The prefix matcher at carrier scale: a 1,000,000-prefix deck, side by side with a dict.

Generates a realistic rate deck (E.164 country codes, national area ranges,
mobile operator blocks, premium ranges; zone names with commas quoted, a few
'+' prefixes, as carriers publish them), then measures on one core:

* deck CSV -> live: parse + validate, import into PostgreSQL, and the
  NOTIFY-driven reload until the catalog snapshot rates by the new deck; for
  a first import (into a plan with no deck yet) and for a daily re-import with
  1% of the rows changed; the import's own steps (``DeckImport.stages``) and
  the reload's read of the stored deck and build, timed apart; ``--imports N`` runs N rounds,
  each into a new plan, and prints the best;
* build time and memory of the compiled table (numpy bytes and RSS growth);
* batch lookups/s (numbers as a numpy bytes array, and pre-encoded keys);
* single-lookup latency from Python (``PrefixTable.match`` and
  ``CatalogSnapshot.tariff_for``, as the authorization path calls them);
* the same for a pure-Python dict longest-prefix table, in the same run.

Lookups go to numbers under the deck's prefixes, uniformly (every lookup a
likely cache miss: the worst case) and Zipf-skewed (real traffic). PostgreSQL
is embedded (pgserver, in a temporary directory) unless --database-url names a
server, where a fresh database is created and dropped.

    python benchmarks/matcher.py
    python benchmarks/matcher.py --prefixes 1000000 --database-url postgresql://postgres@127.0.0.1/postgres
    python benchmarks/matcher.py --import-only --imports 5 --database-url postgresql://...
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import describe
from ocs.catalog import store as catalog_store
from ocs.catalog.snapshot import (
    CatalogHolder,
    CatalogSnapshot,
    Plan,
    Tariff,
    build_deck,
    read_deck_lines,
)
from ocs.db.migrate import migrate
from ocs.decks.rate_deck import parse_deck
from ocs.numbers.matcher import PrefixIndex, encode_numbers
from ocs.numbers.prefixes import PrefixTable
from ocs.warm_up import warm_up

HEADER = "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"

# (country code, name, mobile leads, national number length); the first ones get the most.
COUNTRIES: list[tuple[str, str, tuple[str, ...], int]] = [
    ("1", "USA/Canada", (), 10),
    ("44", "United Kingdom", ("7",), 10),
    ("49", "Germany", ("15", "16", "17"), 11),
    ("33", "France", ("6", "7"), 9),
    ("39", "Italy", ("3",), 10),
    ("34", "Spain", ("6", "7"), 9),
    ("86", "China", ("13", "15", "18"), 11),
    ("91", "India", ("7", "8", "9"), 10),
    ("7", "Russia", ("9",), 10),
    ("55", "Brazil", ("9",), 11),
    ("52", "Mexico", ("1",), 10),
    ("81", "Japan", ("70", "80", "90"), 10),
    ("82", "Korea, Republic of", ("10",), 10),
    ("61", "Australia", ("4",), 9),
    ("31", "Netherlands", ("6",), 9),
    ("48", "Poland", ("5", "6", "7"), 9),
    ("90", "Turkey", ("5",), 10),
    ("62", "Indonesia", ("8",), 10),
    ("63", "Philippines", ("9",), 10),
    ("234", "Nigeria", ("70", "80", "81", "90"), 10),
    ("20", "Egypt", ("10", "11", "12"), 10),
    ("27", "South Africa", ("6", "7", "8"), 9),
    ("92", "Pakistan", ("3",), 10),
    ("880", "Bangladesh", ("1",), 10),
    ("84", "Viet Nam", ("3", "9"), 9),
    ("66", "Thailand", ("6", "8", "9"), 9),
    ("54", "Argentina", ("9",), 10),
    ("57", "Colombia", ("3",), 10),
    ("58", "Venezuela, Bolivarian Republic of", ("4",), 10),
    ("98", "Iran, Islamic Republic of", ("9",), 10),
]
SMALL_CODES = (
    [str(c) for c in range(211, 259)]
    + [str(c) for c in range(260, 270)]
    + [str(c) for c in range(350, 360)]
    + [str(c) for c in range(370, 390)]
    + ["30", "32", "36", "40", "41", "43", "45", "46", "47", "51", "53", "56", "60", "64", "65"]
    + ["93", "94", "95", "420", "421", "423", "852", "853", "855", "856", "886"]
    + [str(c) for c in range(501, 510)]
    + [str(c) for c in range(591, 600)]
    + [str(c) for c in range(672, 692)]
    + [str(c) for c in range(960, 969)]
    + [str(c) for c in range(970, 978)]
    + [str(c) for c in range(992, 999)]
)
RATE_SHAPES = ((0, 60, 60), (0, 30, 6), (0, 1, 1), (50_000, 60, 1), (0, 60, 6))


def generate_deck(size: int, seed: int = 42) -> tuple[list[str], list[str], dict[str, str]]:
    """(prefixes, their zones, rate columns of each zone), ``size`` distinct prefixes."""
    rng = np.random.default_rng(seed)
    countries = list(COUNTRIES)
    known = {c[0] for c in countries}
    for i, code in enumerate(c for c in SMALL_CODES if c not in known):
        countries.append((code, f"Country +{code}", (str(7 + i % 3),), 9))
    weights = 1 / np.arange(1, len(countries) + 1) ** 1.1
    budgets = rng.multinomial(size - len(countries), weights / weights.sum())
    budgets[0] += size - len(countries) - int(budgets.sum())
    prefixes: dict[str, str] = {}
    rates: dict[str, str] = {}

    def zone(name: str, kind: int) -> str:
        if name not in rates:
            fee, block, increment = RATE_SHAPES[len(rates) % len(RATE_SHAPES)]
            price = int(rng.integers(2_000, 400_000)) if kind else int(rng.integers(1_000, 60_000))
            rates[name] = f"{price / 1e6:.6f},{fee / 1e6:.6f},{block},{increment}"
        return name

    for (code, name, leads, national), budget in zip(countries, budgets.tolist(), strict=True):
        prefixes[code] = zone(f"{name} Fixed", 0)
        want = len(prefixes) + budget
        leads = leads or tuple(str(d) for d in range(2, 10))
        operators = [
            zone(f"{name} Mobile {op}", 1) for op in ("A", "B", "C", "D", "E")[: 2 + budget % 4]
        ]
        areas = [zone(f"{name} Fixed {region}", 0) for region in ("North", "South", "Capital")]
        premium = zone(f"{name} Premium", 1)
        while len(prefixes) < want:
            batch = min(want - len(prefixes), 4096) * 2
            kind = rng.random(batch)
            lengths = rng.integers(2, max(3, national - 2), batch)
            values = rng.integers(0, 10**9, batch)
            picks = rng.integers(0, 1 << 30, batch)
            for k, length, value, pick in zip(
                kind.tolist(), lengths.tolist(), values.tolist(), picks.tolist(), strict=True
            ):
                if len(prefixes) >= want:
                    break
                if k < 0.62:  # mobile operator blocks: lead + block digits
                    lead = leads[pick % len(leads)]
                    digits = str(value).zfill(9)[
                        : max(2, min(length + 1, national - len(lead) - 1))
                    ]
                    prefix, z = code + lead + digits, operators[(pick >> 8) % len(operators)]
                elif k < 0.97:  # national (area) ranges and exchange blocks
                    prefix = code + str(value).zfill(9)[: max(1, length - 1)]
                    z = areas[(pick >> 4) % len(areas)]
                else:
                    prefix, z = code + "9" + str(value).zfill(9)[:3], premium
                if prefix[0] == "0":
                    continue
                prefixes.setdefault(prefix, z)
    ordered = list(prefixes)
    rng.shuffle(ordered)  # decks come in any order
    return ordered, [prefixes[p] for p in ordered], rates


def deck_csv(prefixes: list[str], zones: list[str], rates: dict[str, str]) -> str:
    lines = [HEADER]
    for i, (prefix, zone) in enumerate(zip(prefixes, zones, strict=True)):
        plus = "+" if i % 50 == 0 else ""
        name = f'"{zone}"' if "," in zone else zone
        lines.append(f"{plus}{prefix},{name},{rates[zone]}\n")
    return "".join(lines)


def numbers_for(prefixes: list[str], count: int, seed: int, zipf: float | None) -> list[str]:
    """Numbers under the deck's prefixes: E.164 lengths, uniform or Zipf over prefixes."""
    rng = np.random.default_rng(seed)
    if zipf is None:
        picks = rng.integers(0, len(prefixes), count)
    else:
        ranks = rng.zipf(zipf, count) - 1
        picks = rng.permutation(len(prefixes))[ranks % len(prefixes)]
    tails = rng.integers(0, 10**12, count)
    out = []
    for pick, tail in zip(picks.tolist(), tails.tolist(), strict=True):
        prefix = prefixes[pick]
        out.append(prefix + str(tail).zfill(12)[: max(2, 12 - len(prefix))])
    return out


class DictTable:
    """The pure-Python baseline: a dict, probed from the longest prefix length down."""

    def __init__(self, entries: dict[str, Any]) -> None:
        self._entries = entries
        self._lengths = sorted({len(p) for p in entries}, reverse=True)

    def match(self, digits: str) -> tuple[str, Any] | None:
        entries = self._entries
        for length in self._lengths:
            if length <= len(digits):
                value = entries.get(digits[:length])
                if value is not None:
                    return digits[:length], value
        return None


def best_of(runs: int, action: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def per_call_ns(call: Callable[[str], object], numbers: list[str], runs: int) -> float:
    def loop() -> None:
        for number in numbers:
            call(number)

    return best_of(runs, loop) / len(numbers) * 1e9


# --- PostgreSQL ----------------------------------------------------------------------


class Database:
    """A fresh database: on --database-url's server, or an embedded one."""

    def __init__(self, url: str | None) -> None:
        self._admin_url = url
        self._name = f"ocs_matcher_bench_{uuid.uuid4().hex[:8]}"
        self._stop: Callable[[], None] | None = None
        self._dir: Path | None = None
        self.url = ""

    async def __aenter__(self) -> Database:
        if self._admin_url is None:
            from ocs import embedded

            self._dir = Path(tempfile.mkdtemp(prefix="ocs-matcher-bench-"))
            server = await asyncio.to_thread(embedded.start_embedded_postgres, self._dir)
            self._stop = server.stop
            self.url = server.url
        else:
            conn = await asyncpg.connect(self._admin_url)
            await conn.execute(f'CREATE DATABASE "{self._name}"')
            await conn.close()
            parts = urlsplit(self._admin_url)
            self.url = urlunsplit(parts._replace(path=f"/{self._name}"))
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._admin_url is not None:
            conn = await asyncpg.connect(self._admin_url)
            await conn.execute(f'DROP DATABASE IF EXISTS "{self._name}" WITH (FORCE)')
            await conn.close()
        if self._stop is not None:
            await asyncio.to_thread(self._stop)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


async def go_live(
    pool: asyncpg.Pool, holder: CatalogHolder, plan: str, text: str, probe: str, zone: str
) -> dict[str, float]:
    """Seconds from CSV text to a snapshot that rates ``probe`` in ``zone``.

    The snapshot is ``holder``'s, rebuilt from PostgreSQL on the import's NOTIFY
    as in every `ocs serve` process: the importing code hands it nothing.
    """
    timings: dict[str, float] = {}
    version = holder.version
    started = time.perf_counter()
    deck = await asyncio.to_thread(parse_deck, text)
    timings["parse"] = time.perf_counter() - started
    mark = time.perf_counter()
    result = await catalog_store.import_deck(pool, plan, deck)
    timings["import"] = time.perf_counter() - mark
    timings["written"] = result.added + result.changed + result.removed
    timings.update({f"import.{k}": s for k, s in result.stages.items()})
    mark = time.perf_counter()
    while True:  # the NOTIFY-driven reload, as every `ocs serve` process runs it
        match = holder.snapshot.tariff_for(plan, probe)
        if holder.version > version and match is not None and match[1].zone == zone:
            break
        await asyncio.sleep(0.002)
    timings["reload"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    return timings


async def reload_parts(pool: asyncpg.Pool, holder: CatalogHolder, plan: str) -> dict[str, float]:
    """The reload's two big steps for ``plan``'s deck, timed apart: read and build."""
    started = time.perf_counter()
    async with pool.acquire() as conn:
        data = await read_deck_lines(conn, plan)
    read = time.perf_counter() - started
    started = time.perf_counter()
    await asyncio.to_thread(build_deck, data, holder.snapshot.tariffs[plan])
    return {"read": read, "build": time.perf_counter() - started}


async def database_part(
    url: str | None,
    text: str,
    changed_text: str,
    probes: tuple[str, str, str, str],
    imports: int,
) -> list[tuple[str, dict[str, float]]]:
    """Each round: a first import into a new plan, then a daily re-import into it."""
    timings = []
    async with Database(url) as database:
        pool = await asyncpg.create_pool(database.url, min_size=2, max_size=4)
        try:
            await migrate(pool)
            holder = CatalogHolder(pool)
            await holder.start()
            try:
                for n in range(1, imports + 1):
                    plan = f"bench{n}"
                    await catalog_store.create_plan(
                        pool, Plan(plan, plan, "EUR", 0, 0, 1_000, 14_400)
                    )
                    await asyncio.sleep(0.2)  # the plan's own reload
                    first = await go_live(pool, holder, plan, text, probes[0], probes[1])
                    first.update(
                        {
                            f"reload.{k}": v
                            for k, v in (await reload_parts(pool, holder, plan)).items()
                        }
                    )
                    timings.append(("first import", first))
                    daily = await go_live(pool, holder, plan, changed_text, probes[2], probes[3])
                    timings.append(("daily re-import, 1% changed", daily))
            finally:
                await holder.stop()
        finally:
            await pool.close()
    return timings


def changed_deck(
    prefixes: list[str], zones: list[str], rates: dict[str, str], seed: int
) -> tuple[str, str, str]:
    """The deck with 1% of rows changed: 0.5% re-zoned, 0.25% gone, 0.25% new."""
    rng = np.random.default_rng(seed)
    n = len(prefixes)
    moved = set(rng.choice(n, n // 200, replace=False).tolist())
    gone = set(rng.choice(n, n // 400, replace=False).tolist()) - moved
    names = sorted(rates)
    new_prefixes, new_zones = [], []
    for i, (prefix, zone) in enumerate(zip(prefixes, zones, strict=True)):
        if i in gone:
            continue
        new_prefixes.append(prefix)
        new_zones.append(names[(names.index(zone) + 1) % len(names)] if i in moved else zone)
    existing = set(prefixes)
    while len(new_prefixes) < n:
        candidate = "9" + str(int(rng.integers(10**8, 10**10)))
        if candidate not in existing:
            existing.add(candidate)
            new_prefixes.append(candidate)
            new_zones.append(names[0])
    probe = next(p for i, p in enumerate(new_prefixes) if i >= len(prefixes) - len(gone))
    return deck_csv(new_prefixes, new_zones, rates), probe + "123", names[0]


# --- the run -------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefixes", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=2_000_000, help="batch size")
    parser.add_argument("--single", type=int, default=200_000, help="single lookups timed")
    parser.add_argument("--runs", type=int, default=5, help="best of this many runs")
    parser.add_argument("--database-url", help="PostgreSQL server (a database is created)")
    parser.add_argument("--no-database", action="store_true", help="skip the PostgreSQL part")
    parser.add_argument(
        "--imports",
        type=int,
        default=1,
        help="PostgreSQL part: rounds of a first import (into a new plan) and a re-import",
    )
    parser.add_argument(
        "--import-only", action="store_true", help="skip lookups and memory: only CSV -> live"
    )
    args = parser.parse_args()

    print(f"machine: {describe()}")
    started = time.perf_counter()
    warm = warm_up()
    print(f"warm_up (numba kernels compiled or loaded from cache): {warm:.2f} s")

    prefixes, zones, rates = generate_deck(args.prefixes)
    text = deck_csv(prefixes, zones, rates)
    lengths = np.bincount([len(p) for p in prefixes])
    print(
        f"deck: {len(prefixes):,} prefixes, {len(rates):,} zones, {len(text) / 1e6:.1f} MB CSV,"
        f" prefix lengths {lengths.nonzero()[0].min()}-{lengths.nonzero()[0].max()}"
        f" (generated in {time.perf_counter() - started:.1f} s)"
    )

    if args.import_only:
        database(args, prefixes, zones, rates, text)
        return

    # Parse and build without PostgreSQL.
    parse_s = best_of(args.runs, lambda: parse_deck(text))
    deck = parse_deck(text)
    tariffs = [
        Tariff(zone=name, rate=rate) for name, rate in zip(deck.zones, deck.rates, strict=True)
    ]

    def build() -> PrefixTable[Tariff]:
        index = PrefixIndex.from_buffer(deck.buf, deck.prefix_at, deck.prefix_len, deck.zone_of)
        return PrefixTable.from_index(index, tariffs)

    # Memory first, on the first build: later builds reuse memory freed by earlier ones.
    before = rss()
    tracemalloc.start()
    table = build()
    traced, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    table_rss = rss() - before
    build_s = best_of(args.runs, build)
    print(f"parse + validate CSV: {parse_s:.3f} s   build table: {build_s:.3f} s")
    print(
        f"table memory: {table.nbytes / 1e6:.1f} MB of arrays; RSS +{table_rss / 1e6:.1f} MB;"
        f" tracemalloc {traced / 1e6:.1f} MB kept, {traced_peak / 1e6:.0f} MB peak while building"
    )

    # The dict baseline, built from the same deck.
    started = time.perf_counter()
    tracemalloc.start()
    baseline = DictTable({deck.prefix(i): tariffs[int(z)] for i, z in enumerate(deck.zone_of)})
    dict_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    dict_build = time.perf_counter() - started
    print(
        f"dict baseline: built in {dict_build:.2f} s (from parsed rows), {dict_bytes / 1e6:.0f} MB"
    )

    results: dict[str, dict[str, float]] = {}
    for traffic, zipf in (("uniform", None), ("zipf 1.1", 1.1)):
        numbers = numbers_for(prefixes, args.lookups, seed=7, zipf=zipf)
        rows = np.array(numbers, dtype="S")
        keys = encode_numbers(rows)
        codes = table.index.lookup_many(rows)
        sample = numbers[: args.single]
        for n, number in enumerate(sample[:20_000]):
            want = baseline.match(number)
            assert table.match(number) == want, number
            assert (codes[n] >= 0) == (want is not None)
        batch_s = best_of(args.runs, lambda: table.index.lookup_many(rows))  # noqa: B023
        keys_s = best_of(args.runs, lambda: table.index.lookup_keys(keys))  # noqa: B023
        encode_s = best_of(args.runs, lambda: encode_numbers(rows))  # noqa: B023
        snapshot = CatalogSnapshot(plans={}, decks={"bench": table})
        tariff_for = functools.partial(snapshot.tariff_for, "bench")
        results[traffic] = {
            "batch": len(rows) / batch_s,
            "keys": len(keys) / keys_s,
            "encode": len(rows) / encode_s,
            "single": per_call_ns(table.match, sample, args.runs),
            "tariff_for": per_call_ns(tariff_for, sample, args.runs),
            "dict_single": per_call_ns(baseline.match, sample, args.runs),
            "empty_loop": per_call_ns(lambda _: None, sample, args.runs),
        }
        r = results[traffic]
        print(
            f"{traffic:>8} traffic: batch {r['batch'] / 1e6:.1f} M lookups/s from bytes,"
            f" {r['keys'] / 1e6:.1f} M/s from keys (encode {r['encode'] / 1e6:.0f} M/s);"
            f" single {r['single']:.0f} ns, tariff_for {r['tariff_for']:.0f} ns;"
            f" dict {r['dict_single']:.0f} ns = {1e3 / r['dict_single']:.2f} M lookups/s"
            f" (empty Python loop {r['empty_loop']:.0f} ns)"
        )

    if not args.no_database:
        database(args, prefixes, zones, rates, text)


def database(
    args: argparse.Namespace,
    prefixes: list[str],
    zones: list[str],
    rates: dict[str, str],
    text: str,
) -> None:
    """CSV -> live through PostgreSQL, each round printed, then the best of each kind."""
    changed_text, probe, zone = changed_deck(prefixes, zones, rates, seed=3)
    first_probe = next(p for p in prefixes if len(p) > 8) + "1"
    first_zone = zones[prefixes.index(first_probe[:-1])]
    # On uvloop, as `ocs serve` and the `ocs` CLI run.
    timings = uvloop.run(
        database_part(
            args.database_url,
            text,
            changed_text,
            (first_probe, first_zone, probe, zone),
            args.imports,
        )
    )
    where = "external" if args.database_url else "embedded"
    best: dict[str, dict[str, float]] = {}
    for name, t in timings:
        stages = ", ".join(
            f"{k.split('.', 1)[1]} {v:.2f}" for k, v in t.items() if k.startswith("import.")
        )
        parts = ", ".join(
            f"{k.split('.', 1)[1]} {v:.2f}" for k, v in t.items() if k.startswith("reload.")
        )
        print(
            f"CSV -> live, {name} ({where} PostgreSQL): {t['total']:.2f} s ="
            f" parse {t['parse']:.2f} + import {t['import']:.2f}"
            f" ({int(t['written']):,} prefixes new, moved or gone; {stages})"
            f" + reload {t['reload']:.2f}" + (f" (apart: {parts})" if parts else "")
        )
        if name not in best or t["total"] < best[name]["total"]:
            best[name] = t
    if len(timings) > len(best):
        for name, t in best.items():
            print(
                f"best of {args.imports}, {name}: {t['total']:.2f} s = parse {t['parse']:.2f}"
                f" + import {t['import']:.2f} + reload {t['reload']:.2f}"
            )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
