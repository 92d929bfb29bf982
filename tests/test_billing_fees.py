"""Plan and counter fees as charges, counter and usage-event lines, and itemised call lists.

Amounts are hand-computed in micro-units; EUR lines are rounded once to cents.
"""

from datetime import UTC, date, datetime, timedelta

from ocs.balances.ledger_writer import LedgerWriter
from ocs.balances.plan_policy import PlanPolicy, set_plan_policy
from ocs.billing import runs
from ocs.billing.itemised import call_rows, calls_csv
from ocs.rating.counter_rules import CounterDef
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, cdr, customer, invoice_id, invoices, run


async def fee_charges(services: Services) -> list[tuple[str, str, int, str]]:
    """(id, kind, amount, origin) of the charges the fees made."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, kind, amount, origin FROM charges WHERE origin IS NOT NULL ORDER BY id"
        )
    return [(r["id"], r["kind"], r["amount"], r["origin"]) for r in rows]


async def test_a_plan_fee_is_a_monthly_advance_charge_kept_in_step(services: Services) -> None:
    await billed_plan(services)
    await set_plan_policy(services.pool, "retail", PlanPolicy(recurring_fee=5 * EUR))
    await customer(services, "a1", None, date(2026, 1, 1))

    await run(services, "2026-03")

    [invoice] = await invoices(services)
    [line] = invoice["lines"]
    # Billed in advance: the March invoice bills April's fee.
    assert (line["kind"], line["description"], line["amount"]) == (
        "recurring",
        "retail monthly fee",
        5 * EUR,
    )
    assert line["period_start"] == datetime(2026, 4, 1, tzinfo=UTC)

    await set_plan_policy(services.pool, "retail", PlanPolicy(recurring_fee=6 * EUR))
    assert await fee_charges(services) == [("plan-fee.retail", "recurring", 6 * EUR, "plan_fee")]
    await set_plan_policy(services.pool, "retail", PlanPolicy(recurring_fee=0))
    assert await fee_charges(services) == []
    await run(services, "2026-03")
    [invoice] = await invoices(services)
    assert (invoice["lines"], invoice["total"]) == ([], 0)


async def test_counter_fees_and_seconds_and_usage_events_are_lines_that_move_nothing(
    services: Services,
) -> None:
    await billed_plan(services)
    await customer(services, "c1", None, date(2026, 1, 1), balance=5 * EUR)
    await services.counters.create(
        CounterDef("de-100", "retail", 600, frozenset({"Germany"}), mandatory=False,
                   recurring_fee=2 * EUR)
    )  # fmt: skip
    assert await fee_charges(services) == [("counter.de-100", "counter", 2 * EUR, "counter_fee")]
    await services.counters.buy("c1", "de-100")  # the real-time path debits 2.00 now
    writer = LedgerWriter(services.redis, services.pool)
    await writer.ensure_groups()
    await writer.read_new()
    now = datetime.now(UTC)
    # Five minutes ago, but never before this month began: the calls belong to the
    # period billed below, even in a run that starts just after midnight on the 1st.
    day = max(now - timedelta(minutes=5), now.replace(day=1, hour=0, minute=0, second=0))
    # Two German calls drawing on the bundle: 300 s all from it; 200 s, 100 from it and
    # 100 paid at 0.012/min = 0.02.
    for n, (seconds, free, charged) in enumerate(((300, 300, 0), (200, 100, 20_000))):
        await cdr(services, f"9-{n}", "c1", day, zone="Germany", destination="4930123",
                  duration=seconds, billed_seconds=seconds, counter_id="de-100",
                  counter_seconds=free, charged=charged, member="desk")  # fmt: skip
    # Usage events: 350 + 120 MB of data at 0.01/MB, 23,400 Wh at 0.39/kWh = 9.126.
    for n, (service, quantity, charged) in enumerate(
        (("Data", 350, 3_500_000), ("Data", 120, 1_200_000), ("Charging", 23_400, 9_126_000))
    ):
        await cdr(services, f"8-{n}", "c1", day, zone=service, destination=service,
                  duration=quantity, billed_seconds=quantity, charged=charged,
                  termination_cause="usage")  # fmt: skip

    # The month has not ended: an early run, billing the usage until now.
    await run(services, f"{now:%Y-%m}", invoice_date=now.date(), timing=runs.Timing(early=True))

    async with services.pool.acquire() as conn:
        lines = await conn.fetch(
            "SELECT kind, description, quantity, amount, moves_money, charge_id, counter_id,"
            " calls, bundle_seconds, paid_seconds, billed_quantity, source_entry"
            " FROM invoice_lines ORDER BY position"
        )
        fee_entry = await conn.fetchval(
            "SELECT entry_id FROM ledger WHERE kind = 'fee' AND reference LIKE 'counter:de-100:%'"
        )
    found = [(r["kind"], r["description"], r["quantity"], r["amount"]) for r in lines]
    assert found == [
        ("usage", "Calls to Germany", 2, 20_000),
        ("usage_event", "Charging usage (23400 units)", 23_400, 9_130_000),  # 9.126 -> 9.13
        ("usage_event", "Data usage (470 units)", 470, 4_700_000),
        ("counter", "Bundle de-100 fee (bought)", 1, 2 * EUR),
        ("counter_usage", "Bundle de-100: 400 s from the bundle, 100 s paid", 2, 0),
    ]
    assert not any(r["moves_money"] for r in lines)
    data, fee, seconds = lines[2], lines[3], lines[4]
    assert (data["calls"], data["billed_quantity"]) == (2, 470)
    assert (fee["charge_id"], fee["counter_id"], fee["source_entry"]) == (
        "counter.de-100",
        "de-100",
        fee_entry,
    )
    assert (seconds["calls"], seconds["bundle_seconds"], seconds["paid_seconds"]) == (2, 400, 100)
    # The counter fee was debited once, by the real-time path; posting moves nothing more.
    assert (await services.accounts.show("c1")).balance == 3 * EUR


async def test_the_itemised_call_list_per_member_and_as_csv(services: Services) -> None:
    await billed_plan(services)
    await customer(services, "i1", None, date(2026, 1, 1))
    stop = datetime(2026, 3, 10, 9, 1, 30, tzinfo=UTC)
    await cdr(services, "1-1", "i1", stop, caller="0201", member="desk", charged=198_000)
    await cdr(services, "1-2", "i1", stop + timedelta(hours=1), caller="0202", member="lobby",
              zone="UK Fixed", destination="441234567", duration=90, billed_seconds=120,
              charged=20_000)  # fmt: skip
    await cdr(services, "1-3", "i1", stop, zone="Data", destination="Data", duration=5,
              termination_cause="usage")  # fmt: skip
    await cdr(services, "1-4", "i1", datetime(2026, 4, 1, tzinfo=UTC))  # April: not this one
    await run(services, "2026-03")
    invoice = await invoice_id(services, "i1", "2026-03")

    rows = await call_rows(services.pool, invoice)
    assert [(r.cdr, r.member, r.amount) for r in rows] == [
        ("1-1", "desk", 198_000),
        ("1-2", "lobby", 20_000),
    ]
    # Answered 45 s before it stopped.
    assert rows[0].time == datetime(2026, 3, 10, 9, 0, 45, tzinfo=UTC)
    assert [r.cdr for r in await call_rows(services.pool, invoice, member="lobby")] == ["1-2"]
    assert [r.cdr for r in await call_rows(services.pool, invoice, member="0201")] == ["1-1"]

    assert calls_csv(rows) == (
        "time,caller,member,destination,zone,direction,duration,billed_seconds,amount,"
        "currency,cdr\r\n"
        "2026-03-10T09:00:45+00:00,0201,desk,447700900123,UK Mobile,outbound,45,48,0.198000,"
        "EUR,1-1\r\n"
        "2026-03-10T10:00:00+00:00,0202,lobby,441234567,UK Fixed,outbound,90,120,0.020000,"
        "EUR,1-2\r\n"
    )
