"""A/B: the live call record packed by hand with msgpack (A, the code before issue 18)
against ``CallRecord`` as a msgspec Struct (B, the code now).

The record is written at every grant and read at every start, update and stop,
so its encode + decode sits on the hot path. A is the old packer, kept here as
the baseline: the same short keys, the rate as a list. Each reads what the other
writes (asserted), since records live in Redis across an upgrade. Alternates A
and B in one run and prints the best of ``--rounds``.

    python -m benchmarks.call_record --rounds 7 --n 200000
"""

import argparse
import time
from typing import Any

import msgpack

from benchmarks.machine import describe
from ocs.charging.values import CallRecord
from ocs.rating.rates import Rate, Tier


def old_pack(record: CallRecord) -> bytes:
    """The hand-written packer CallRecord had before it became a Struct."""
    rate = record.rate
    packed_rate: list[object] = [
        rate.connect_fee,
        rate.first_block,
        rate.increment,
        rate.price_per_minute,
    ]
    if not rate.simple or rate.per != 60:
        packed_rate += [
            [[t.start, t.price_per_minute, t.increment, t.flat] for t in rate.tiers],
            rate.max_cost,
            rate.cut_at_max_cost,
            rate.per,
            rate.surcharge_percent_bp,
            rate.surcharge_flat,
            [list(pair) for pair in rate.band_prices],
        ]
    extra: dict[str, object] = {}
    if record.member is not None:
        extra["m"] = record.member
    if record.direction != "outbound":
        extra["dir"] = record.direction
    if record.counter_id is not None:
        extra["ci"] = record.counter_id
        extra["cs"] = record.counter_seconds
        extra["cr"] = list(record.counter_rate)
    if record.quota:
        extra["q"] = record.quota
    if record.carriers:
        extra["rt"] = list(record.carriers)
    for key, value in (
        ("na", record.nas_address),
        ("ns", record.nas_session),
        ("rp", record.rating_plan),
    ):
        if value is not None:
            extra[key] = value
    data: bytes = msgpack.packb(
        {
            **extra,
            "a": record.account_id,
            "c": record.call_id,
            "p": record.plan_id,
            "z": record.zone,
            "x": record.prefix,
            "d": record.destination,
            "o": record.caller,
            "cur": record.currency,
            "r": packed_rate,
            "cap": record.cap,
            "t": record.authorized_at_ms,
            "n": record.nas,
        }
    )
    return data


def old_unpack(data: bytes) -> CallRecord:
    """The hand-written reader CallRecord had before it became a Struct."""
    m: dict[str, Any] = msgpack.unpackb(data)
    packed = m["r"]
    fee, block, step, price = packed[:4]
    if len(packed) == 4:
        rate = Rate(fee, block, step, price)
    else:
        tiers, max_cost, cut, per = packed[4:8]
        percent, flat = packed[8:10] if len(packed) >= 10 else (0, 0)
        bands = tuple((band, p) for band, p in packed[10]) if len(packed) > 10 else ()
        rate = Rate(
            fee, block, step, price, tuple(Tier(*t) for t in tiers), max_cost, cut, per,
            percent, flat, bands,
        )  # fmt: skip
    return CallRecord(
        account_id=m["a"],
        call_id=m["c"],
        plan_id=m["p"],
        zone=m["z"],
        prefix=m["x"],
        destination=m["d"],
        caller=m["o"],
        currency=m["cur"],
        rate=rate,
        cap=m["cap"],
        authorized_at_ms=m["t"],
        nas=m.get("n"),
        member=m.get("m"),
        direction=m.get("dir", "outbound"),
        counter_id=m.get("ci"),
        counter_seconds=m.get("cs", 0),
        counter_rate=tuple(m.get("cr", (0, 1))),
        quota=m.get("q", 0),
        carriers=tuple(m.get("rt", ())),
        nas_address=m.get("na"),
        nas_session=m.get("ns"),
        rating_plan=m.get("rp"),
    )


def run_a(record: CallRecord, n: int) -> float:
    """Seconds for ``n`` pack + unpack the old way."""
    started = time.perf_counter()
    for _ in range(n):
        old_unpack(old_pack(record))
    return time.perf_counter() - started


def run_b(record: CallRecord, n: int) -> float:
    """Seconds for ``n`` pack + unpack of the Struct."""
    started = time.perf_counter()
    for _ in range(n):
        CallRecord.unpack(record.pack())
    return time.perf_counter() - started


def main() -> None:
    """Alternate A and B; print the best of each in microseconds per pack + unpack."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    record = CallRecord(
        "1001", "c-1", "retail", "UK Mobile", "447", "447700900123", "4420", "EUR",
        Rate(0, 60, 60, 198_000), 14_400, 1_764_000_000_000, nas="nas-1",
    )  # fmt: skip
    assert CallRecord.unpack(old_pack(record)) == record == old_unpack(record.pack())
    best_a = best_b = float("inf")
    for _ in range(args.rounds):
        best_a = min(best_a, run_a(record, args.n))
        best_b = min(best_b, run_b(record, args.n))
    print(f"machine: {describe()}")
    print(f"A hand-packed msgpack map: {best_a / args.n * 1e6:.2f} us per pack+unpack")
    print(f"B msgspec Struct:          {best_b / args.n * 1e6:.2f} us per pack+unpack")


if __name__ == "__main__":
    main()
