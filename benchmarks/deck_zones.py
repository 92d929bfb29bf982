"""Decks with many zones: a real numbering deck (316,652 prefixes, ~41,000 zones) going live,
beside the generated 1,000,000-prefix deck of 1,738 zones (issue 19's figure: at most
1 s for the real deck on the 2-core dev machine).

The real deck comes from libphonenumber's geocoding and carrier tables, as the
``phonenumbers`` package ships them (a benchmark-only dependency): every prefix of
either table is a row, in zone ``"<country>: <place>"`` (geocoding, which wins where
both name a prefix) or ``"<country>: <carrier>"``, so zone names hold ':' and often
',' (CSV-quoted) and most zones have a handful of prefixes. Each zone gets a rate of
its own. The generated deck is ``benchmarks/matcher.py``'s (the figures in
RESULTS.md's matcher section), so a change that helps one shape and hurts the other
shows here.

Each round, for each deck, into a new plan: a first import, then a daily re-import
with 1% of the rows changed (0.5% moved to another zone, 0.25% gone, 0.25% new),
timed the way ``ocs tariffs import`` and a running ``ocs serve`` do it: the CSV
parsed (``parse_deck``), stored (``import_deck``, with its own steps), and the
NOTIFY-driven reload of a ``CatalogHolder`` until its snapshot rates a probe number
by the new deck. The reload's steps are then timed apart on the same data: the whole
snapshot load for that plan, the read of the deck's lines and the deck's build. The
plan is dropped after its round, so every round starts from the same catalog, but
for the zones: the first round creates the deck's zones in the catalog ("zones
new"), later rounds find them there, as a second plan's import of a deck would.

PostgreSQL: a fresh database is created on ``--database-url``'s server and dropped
at the end (embedded PostgreSQL when none is given).

    python benchmarks/deck_zones.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    python benchmarks/deck_zones.py --rounds 3 --decks numbering --database-url ...
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import csv
import io
import os
import statistics
import sys
import time
from pathlib import Path

import asyncpg
import numpy as np
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import describe
from benchmarks.matcher import Database, changed_deck, deck_csv, generate_deck, go_live
from ocs.catalog import store as catalog_store
from ocs.catalog.snapshot import CatalogHolder, Plan, build_deck, load_snapshot, read_deck_lines
from ocs.db.migrate import migrate
from ocs.decks.cells import MAX_ZONE_CHARS
from ocs.warm_up import warm_up

HEADER = ["prefix", "zone", "price_per_minute", "connect_fee", "first_block", "increment"]
RATE_SHAPES = ((0, 60, 60), (0, 30, 6), (0, 1, 1), (50_000, 60, 1), (0, 60, 6))


def _localized(table: dict[str, str], language: str = "en") -> str:
    """A libphonenumber name in ``language``; ``*xx`` means "as in language xx"."""
    name = table.get(language) or next(iter(table.values()))
    seen = 0
    while name.startswith("*") and seen < 8:  # a reference to another language's name
        name = table.get(name[1:], name[1:])
        seen += 1
    return name


def numbering_deck() -> tuple[list[str], list[str]]:
    """(prefixes, their zones) of libphonenumber's geocoding and carrier tables."""
    from phonenumbers.carrierdata import CARRIER_DATA
    from phonenumbers.geodata import GEOCODE_DATA
    from phonenumbers.geodata.locale import LOCALE_DATA
    from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

    countries: dict[str, str] = {}

    def country(prefix: str) -> str:
        for digits in (1, 2, 3):
            code = prefix[:digits]
            if code in countries:
                return countries[code]
            regions = COUNTRY_CODE_TO_REGION_CODE.get(int(code))
            if regions:
                region = regions[0]
                name = _localized(LOCALE_DATA[region]) if region in LOCALE_DATA else region
                countries[code] = name
                return name
        return "International"

    zones: dict[str, str] = {}
    for table in (CARRIER_DATA, GEOCODE_DATA):  # geocoding names a prefix in both tables
        for prefix, names in table.items():
            # Zone names are at most MAX_ZONE_CHARS characters; a few Australian
            # exchange lists are longer.
            zones[prefix] = f"{country(prefix)}: {_localized(names)}"[:MAX_ZONE_CHARS].rstrip()
    prefixes = sorted(zones)
    return prefixes, [zones[p] for p in prefixes]


def zone_rates(zones: list[str], seed: int = 42) -> dict[str, str]:
    """The rate columns (price, connect fee, first block, increment) of each zone."""
    rng = np.random.default_rng(seed)
    names = list(dict.fromkeys(zones))
    prices = rng.integers(1_000, 400_000, len(names)).tolist()
    rates = {}
    for n, (name, price) in enumerate(zip(names, prices, strict=True)):
        fee, block, increment = RATE_SHAPES[n % len(RATE_SHAPES)]
        rates[name] = f"{price / 1e6:.6f},{fee / 1e6:.6f},{block},{increment}"
    return rates


def quoted_csv(prefixes: list[str], zones: list[str], rates: dict[str, str]) -> str:
    """The deck as CSV: zone names quoted where they hold ',' or '"' (the csv module)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for prefix, zone in zip(prefixes, zones, strict=True):
        writer.writerow([prefix, zone, *rates[zone].split(",")])
    return out.getvalue()


def daily_change(
    prefixes: list[str], zones: list[str], seed: int = 3
) -> tuple[list[str], list[str], str, str]:
    """The deck with 1% of rows changed (0.5% moved to the next zone by name, 0.25% gone,
    0.25% new, each a new digit under a prefix of the deck), and a probe number under
    a new prefix with the zone it must be rated in."""
    rng = np.random.default_rng(seed)
    n = len(prefixes)
    moved = set(rng.choice(n, n // 200, replace=False).tolist())
    gone = set(rng.choice(n, n // 400, replace=False).tolist()) - moved
    names = sorted(set(zones))
    place = {name: i for i, name in enumerate(names)}
    existing = set(prefixes)
    new_prefixes, new_zones = [], []
    for i, (prefix, zone) in enumerate(zip(prefixes, zones, strict=True)):
        if i in gone:
            continue
        new_prefixes.append(prefix)
        new_zones.append(names[(place[zone] + 1) % len(names)] if i in moved else zone)
    added = []
    for i in rng.permutation(n).tolist():
        if len(new_prefixes) >= n:
            break
        for digit in "0123456789":
            candidate = prefixes[i] + digit
            if candidate not in existing and len(candidate) <= 15:
                existing.add(candidate)
                new_prefixes.append(candidate)
                new_zones.append(zones[i])
                added.append(len(new_prefixes) - 1)
                break
    # A new prefix under which no other prefix of the deck lies.
    ordered = sorted(prefixes)

    def leaf(prefix: str) -> bool:
        at = bisect.bisect_left(ordered, prefix)
        return at == len(ordered) or not ordered[at].startswith(prefix)

    probe = next(k for k in added if leaf(new_prefixes[k]))
    return new_prefixes, new_zones, new_prefixes[probe] + "0" * 6, new_zones[probe]


def leaf_probe(prefixes: list[str], zones: list[str]) -> tuple[str, str]:
    """A number only the deck's longest prefix (nothing longer under it) matches, and its zone."""
    longest = max(range(len(prefixes)), key=lambda i: (len(prefixes[i]), prefixes[i]))
    return prefixes[longest] + "1", zones[longest]


async def reload_parts(pool: asyncpg.Pool, holder: CatalogHolder, plan: str) -> dict[str, float]:
    """The NOTIFY-driven reload's steps for ``plan`` timed apart, on the stored data: the
    whole snapshot load (every plan's tariffs read, this plan's deck read and built),
    the read of the deck's lines alone, and the build alone."""
    started = time.perf_counter()
    await load_snapshot(pool, holder.snapshot, {plan})
    snapshot_s = time.perf_counter() - started
    started = time.perf_counter()
    async with pool.acquire() as conn:
        data = await read_deck_lines(conn, plan)
    read = time.perf_counter() - started
    started = time.perf_counter()
    await asyncio.to_thread(build_deck, data, holder.snapshot.tariffs[plan])
    return {"snapshot": snapshot_s, "lines": read, "build": time.perf_counter() - started}


class DeckCase:
    """One deck to take live: its CSV, its daily re-import's, and the probes of each."""

    def __init__(self, name: str, prefixes: list[str], zones: list[str], text: str) -> None:
        self.name = name
        self.prefixes = len(prefixes)
        self.zones = len(set(zones))
        self.text = text
        self.first_probe = leaf_probe(prefixes, zones)
        self.changed_text = ""
        self.daily_probe = ("", "")


def numbering_case() -> DeckCase:
    prefixes, zones = numbering_deck()
    rates = zone_rates(zones)
    case = DeckCase("numbering", prefixes, zones, quoted_csv(prefixes, zones, rates))
    new_prefixes, new_zones, probe, zone = daily_change(prefixes, zones)
    case.changed_text = quoted_csv(new_prefixes, new_zones, rates)
    case.daily_probe = (probe, zone)
    return case


def generated_case(size: int) -> DeckCase:
    prefixes, zones, rates = generate_deck(size)
    case = DeckCase("generated", prefixes, zones, deck_csv(prefixes, zones, rates))
    # The first probe as benchmarks/matcher.py picks it.
    first = next(p for p in prefixes if len(p) > 8) + "1"
    case.first_probe = (first, zones[prefixes.index(first[:-1])])
    case.changed_text, probe, zone = changed_deck(prefixes, zones, rates, seed=3)
    case.daily_probe = (probe, zone)
    return case


async def run_rounds(
    url: str | None, cases: list[DeckCase], rounds: int
) -> list[tuple[str, str, dict[str, float]]]:
    """Each round, each deck: a first import and a daily re-import into a new plan."""
    timings = []
    async with Database(url) as database:
        pool = await asyncpg.create_pool(database.url, min_size=2, max_size=4)
        try:
            await migrate(pool)
            holder = CatalogHolder(pool)
            await holder.start()
            try:
                for n in range(1, rounds + 1):
                    for case in cases:
                        plan = f"{case.name}{n}"
                        await catalog_store.create_plan(
                            pool, Plan(plan, plan, "EUR", 0, 0, 1_000, 14_400)
                        )
                        await holder.caught_up()
                        first = await go_live(pool, holder, plan, case.text, *case.first_probe)
                        first.update(
                            {
                                f"reload.{k}": v
                                for k, v in (await reload_parts(pool, holder, plan)).items()
                            }
                        )
                        # The first round creates the deck's zones in the catalog; later
                        # rounds (other plans) find them there.
                        kind = "first import, zones new" if n == 1 else "first import"
                        timings.append((case.name, kind, first))
                        daily = await go_live(
                            pool, holder, plan, case.changed_text, *case.daily_probe
                        )
                        daily.update(
                            {
                                f"reload.{k}": v
                                for k, v in (await reload_parts(pool, holder, plan)).items()
                            }
                        )
                        timings.append((case.name, "daily re-import, 1% changed", daily))
                        await pool.execute("DELETE FROM plans WHERE id = $1", plan)
                        await holder.caught_up()
            finally:
                await holder.stop()
        finally:
            await pool.close()
    return timings


def describe_run(name: str, kind: str, t: dict[str, float]) -> str:
    stages = ", ".join(
        f"{k.split('.', 1)[1]} {v:.2f}" for k, v in t.items() if k.startswith("import.")
    )
    parts = ", ".join(
        f"{k.split('.', 1)[1]} {v:.2f}" for k, v in t.items() if k.startswith("reload.")
    )
    return (
        f"{name}, {kind}: {t['total']:.2f} s = parse {t['parse']:.2f}"
        f" + store {t['import']:.2f} ({int(t['written']):,} written; {stages})"
        f" + reload {t['reload']:.2f} (apart: {parts})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL server (a database is created)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--decks",
        default="numbering,generated",
        help="comma-separated: numbering (libphonenumber), generated (benchmarks/matcher.py)",
    )
    parser.add_argument("--prefixes", type=int, default=1_000_000, help="the generated deck's")
    args = parser.parse_args()

    print(f"machine: {describe()}")
    print(f"load average: {os.getloadavg()[0]:.2f}")
    warm = warm_up()
    print(f"warm_up (numba kernels compiled or loaded from cache): {warm:.2f} s")
    cases = []
    for name in args.decks.split(","):
        started = time.perf_counter()
        case = numbering_case() if name == "numbering" else generated_case(args.prefixes)
        print(
            f"deck {case.name}: {case.prefixes:,} prefixes, {case.zones:,} zones,"
            f" {len(case.text) / 1e6:.1f} MB CSV (made in {time.perf_counter() - started:.1f} s)"
        )
        cases.append(case)
    timings = uvloop.run(run_rounds(args.database_url, cases, args.rounds))
    for name, kind, t in timings:
        print(describe_run(name, kind, t))
    for case in cases:
        for kind in ("first import, zones new", "first import", "daily re-import, 1% changed"):
            totals = [t["total"] for n, k, t in timings if n == case.name and k == kind]
            if not totals:
                continue
            print(
                f"summary {case.name}, {kind}: best {min(totals):.2f} s,"
                f" median {statistics.median(totals):.2f} s, worst {max(totals):.2f} s"
                f" over {len(totals)} rounds"
            )


if __name__ == "__main__":
    main()
