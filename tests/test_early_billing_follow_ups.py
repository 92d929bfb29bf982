"""After an early billing run: a plan with no account is refused a period not ended, an
account that joins after an early run is billed for that period once it ends, and the
calls stopped after the early run's cut-off say so on the next invoice (decision 0021,
addendum 2026-12-07). Only a run made early is followed up (not an operator's run with a
usage cut-off), only for the accounts that joined before the period's window ended; a run
of every plan skips a plan with no account whose cycle has no period of that name."""

from datetime import UTC, date, datetime, timedelta

import pytest

from ocs.billing import runs
from ocs.billing.cycles import PlanBilling
from ocs.billing.document_data import load_facts
from ocs.billing.document_layout import Issuer, layout
from ocs.billing.store import set_plan_billing
from ocs.billing.worker import BillingWorker, WorkerSettings
from ocs.errors import OcsError, Reason
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, cdr, customer, invoice_id, monthly
from tests.conftest import add_plan

CENT = EUR // 100
DELAY = 300


async def _runs(services: Services) -> list[tuple[str, int]]:
    """Every run stored: (period, accounts_total), oldest first."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT period, accounts_total FROM invoice_runs ORDER BY id")
    return [(r["period"], r["accounts_total"]) for r in rows]


async def _refused(
    services: Services, period: str, now: datetime, plan_id: str | None = None
) -> str:
    """The message of the refusal of a run of ``period`` at ``now``; it names period."""
    with pytest.raises(OcsError) as refused:
        await runs.create_run(services.pool, period, plan_id=plan_id, timing=runs.Timing(now=now))
    assert (refused.value.reason, refused.value.field) == (Reason.INVALID_FIELD, "period")
    return refused.value.message


async def test_a_plan_with_no_account_is_refused_a_month_that_has_not_ended(
    services: Services,
) -> None:
    # The retail plan (end of cycle, on the 1st) has no account yet. On March 10 a run
    # of March, not early, was stored done with nothing in it, and March counted as
    # taken: an account joining on March 15 was never billed for March.
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    march_10 = datetime(2026, 3, 10, tzinfo=UTC)
    for plan_id in (None, "retail"):
        message = await _refused(services, "2026-03", march_10, plan_id)
        assert "'2026-03' has not ended" in message, message
        assert "2026-04-01T00:00:00+00:00" in message, message
    assert await _runs(services) == []
    # Once March has ended, it runs (and bills nobody).
    await runs.create_run(
        services.pool, "2026-03", timing=runs.Timing(now=datetime(2026, 4, 1, 0, 1, tzinfo=UTC))
    )
    assert await _runs(services) == [("2026-03", 0)]


async def test_a_subscription_date_plan_with_no_account_waits_for_every_period_of_the_month(
    services: Services,
) -> None:
    # Its accounts' periods start on their own anniversaries: March's last one may start
    # on March 31 and end on April 30. Refused on April 10 and on April 30, run on May 1.
    await billed_plan(services)
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("retail", "subscription_date", date(2026, 1, 1), time_zone="UTC"),
    )
    for now in (datetime(2026, 3, 10, tzinfo=UTC), datetime(2026, 4, 30, 23, tzinfo=UTC)):
        message = await _refused(services, "2026-03", now)
        assert "2026-05-01T00:00:00+00:00" in message, message
    assert await _runs(services) == []
    await runs.create_run(
        services.pool, "2026-03", timing=runs.Timing(now=datetime(2026, 5, 1, 0, 1, tzinfo=UTC))
    )
    assert await _runs(services) == [("2026-03", 0)]


async def _lines(services: Services, account: str, label: str) -> list[tuple[str, int, str]]:
    """The lines of the account's invoices of ``label``: (kind, amount, description)."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT l.kind, l.amount, l.description FROM invoice_lines l"
            " JOIN invoices i ON i.id = l.invoice_id WHERE i.account_id = $1"
            " AND i.period_label = $2 AND i.kind = 'invoice' ORDER BY i.id, l.position",
            account,
            label,
        )
    return [(r["kind"], r["amount"], r["description"]) for r in rows]


async def _invoice_count(services: Services, account: str, label: str) -> int:
    async with services.pool.acquire() as conn:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM invoices WHERE account_id = $1 AND period_label = $2"
                " AND kind = 'invoice'",
                account,
                label,
            )
        )


async def test_an_account_joining_after_an_early_run_is_billed_for_that_period_once_it_ends(
    services: Services,
) -> None:
    # March is billed early on March 20 for a1. a2 subscribes on March 25 (10.00 rent)
    # and calls on March 26: March counted as taken, and a2 was never billed for it.
    await billed_plan(services, effective=date(2026, 3, 1))
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "a1", "rent", date(2026, 1, 1))
    await cdr(services, "a1-1", "a1", datetime(2026, 3, 10, tzinfo=UTC), charged=10 * CENT)
    early = datetime(2026, 3, 20, tzinfo=UTC)
    march = await runs.create_run(
        services.pool,
        "2026-03",
        invoice_date=date(2026, 3, 20),
        timing=runs.Timing(early=True, now=early),
    )
    assert (await runs.execute_run(services.pool, march)).state == "done"
    a1_march = await _lines(services, "a1", "2026-03")
    await cdr(services, "a1-2", "a1", datetime(2026, 3, 22, tzinfo=UTC), charged=20 * CENT)
    # A supplier's call of March 15, imported after the early run: recorded late.
    await cdr(services, "a1-3", "a1", datetime(2026, 3, 15, tzinfo=UTC), charged=50 * CENT)
    async with services.pool.acquire() as conn:
        await conn.execute(
            "UPDATE cdrs SET supplier = 'carrier-x', recorded_xid = pg_current_xact_id()"
            " WHERE entry_id = 'a1-3'"
        )
    await customer(services, "a2", "rent", date(2026, 3, 25))
    await cdr(services, "a2-1", "a2", datetime(2026, 3, 26, tzinfo=UTC), charged=30 * CENT)
    await cdr(services, "a2-2", "a2", datetime(2026, 4, 5, tzinfo=UTC), charged=40 * CENT)

    async def worker_pass(now: datetime) -> None:
        worker = BillingWorker(
            services.pool, WorkerSettings(run_delay=DELAY), clock=lambda: now, store=services.store
        )
        await worker.run_once()

    # Before March's end plus the delay the worker makes no run; after it, a follow-up
    # of March for a2 alone; a later pass none more.
    await worker_pass(datetime(2026, 4, 1, tzinfo=UTC) + timedelta(seconds=DELAY - 1))
    assert await _runs(services) == [("2026-03", 1)]
    for now in (datetime(2026, 4, 1, 0, 10, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC)):
        await worker_pass(now)
    assert await _runs(services) == [("2026-03", 1), ("2026-03", 1)]
    # a2's March: 7 days of 31 of rent, and its call; a1's March is the early one, alone.
    assert await _lines(services, "a2", "2026-03") == [
        ("proration", 226 * CENT, "Line rent rent (7/31 days)"),
        ("usage", 30 * CENT, "Calls to UK Mobile"),
    ]
    assert await _lines(services, "a1", "2026-03") == a1_march
    assert [await _invoice_count(services, a, "2026-03") for a in ("a1", "a2")] == [1, 1]

    # April bills each once: a1 its rent, the imported call recorded late, and March 22's
    # call, stopped after the early run's cut-off (not recorded late: no window held it);
    # a2 its rent and its April call, nothing of March again.
    await worker_pass(datetime(2026, 5, 1, 0, 10, tzinfo=UTC))
    assert [p for p, _ in await _runs(services)] == ["2026-03", "2026-03", "2026-04"]
    assert [await _invoice_count(services, a, "2026-04") for a in ("a1", "a2")] == [1, 1]
    assert await _lines(services, "a1", "2026-04") == [
        ("recurring", 10 * EUR, "Line rent rent"),
        ("usage", 50 * CENT, "Calls to UK Mobile, made before 2026-04-01 and recorded late"),
        (
            "usage",
            20 * CENT,
            "Calls to UK Mobile, made after the previous invoice's usage ended on 2026-03-20",
        ),
    ]
    assert await _lines(services, "a2", "2026-04") == [
        ("recurring", 10 * EUR, "Line rent rent"),
        ("usage", 40 * CENT, "Calls to UK Mobile"),
    ]
    # Its document's usage rows say the same apart: the import recorded late, the gap's
    # call made after March's early invoice stopped.
    async with services.pool.acquire() as conn:
        facts = await load_facts(conn, await invoice_id(services, "a1", "2026-04"))
    content = layout(facts, Issuer("Telco"), "en_GB")
    usage = next(s for s in content["sections"] if s["title"] == "Usage")
    assert [row[0] for row in usage["rows"]] == [
        "UK Mobile, recorded late (from 15 Mar 2026)",
        "UK Mobile, made after the previous invoice's usage ended (from 22 Mar 2026)",
    ]


async def _worker_pass(services: Services, now: datetime) -> None:
    """One pass of a billing worker (posting its runs) whose clock says ``now``."""
    worker = BillingWorker(
        services.pool, WorkerSettings(run_delay=DELAY), clock=lambda: now, store=services.store
    )
    await worker.run_once()


async def _early_flags(services: Services) -> list[tuple[str, bool]]:
    """Every run stored: (period, whether it is recorded early), oldest first."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT period, early FROM invoice_runs ORDER BY id")
    return [(r["period"], r["early"]) for r in rows]


async def test_an_operators_run_with_a_usage_cutoff_is_not_followed_up(
    services: Services,
) -> None:
    # An operator billed March on April 2 with a usage cut-off of March 31 noon (an
    # option since the first billing release; every run stored before the upgrade is
    # such a run at most). It was taken for early, and the worker's pass after the
    # upgrade made a follow-up of March: a2, entered on April 3 with a subscription
    # from March 10, got a March invoice posted (a number used, an email sent).
    await billed_plan(services, effective=date(2026, 3, 1))
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "a1", "rent", date(2026, 1, 1))
    march = await runs.create_run(
        services.pool,
        "2026-03",
        invoice_date=date(2026, 4, 2),
        usage_cutoff=datetime(2026, 3, 31, 12, tzinfo=UTC),
        timing=runs.Timing(now=datetime(2026, 4, 2, tzinfo=UTC)),
    )
    assert (await runs.execute_run(services.pool, march)).state == "done"
    await customer(services, "a2", "rent", date(2026, 3, 10))
    await _worker_pass(services, datetime(2026, 4, 10, tzinfo=UTC))
    assert [await _invoice_count(services, a, "2026-03") for a in ("a1", "a2")] == [1, 0]
    assert await _early_flags(services) == [("2026-03", False)]


async def test_a_follow_up_bills_only_the_accounts_that_joined_before_the_window_ended(
    services: Services,
) -> None:
    # March billed early on March 20 for a1; a2 joins on March 25, a3 on April 15. The
    # worker, down until April 20, makes March's follow-up then: a2 has March to pay,
    # a3 has nothing of March (it got a March invoice of 0, posted and numbered).
    await billed_plan(services, effective=date(2026, 3, 1))
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "a1", "rent", date(2026, 1, 1))
    early = await runs.create_run(
        services.pool,
        "2026-03",
        invoice_date=date(2026, 3, 20),
        timing=runs.Timing(early=True, now=datetime(2026, 3, 20, tzinfo=UTC)),
    )
    assert (await runs.execute_run(services.pool, early)).state == "done"
    await customer(services, "a2", "rent", date(2026, 3, 25))
    await customer(services, "a3", "rent", date(2026, 4, 15))
    await _worker_pass(services, datetime(2026, 4, 20, tzinfo=UTC))
    await _worker_pass(services, datetime(2026, 4, 21, tzinfo=UTC))
    assert await _runs(services) == [("2026-03", 1), ("2026-03", 1)]
    assert await _early_flags(services) == [("2026-03", True), ("2026-03", False)]
    assert [await _invoice_count(services, a, "2026-03") for a in ("a1", "a2", "a3")] == [
        1,
        1,
        0,
    ]
    assert await _lines(services, "a2", "2026-03") == [
        ("proration", 226 * CENT, "Line rent rent (7/31 days)")
    ]


async def test_a_run_of_every_plan_skips_a_plan_with_no_account_and_no_such_period(
    services: Services,
) -> None:
    # A weekly plan with no account yet has no period named "2026-03" (five of its
    # weeks start in March): a run of March of every plan was refused for it, and the
    # retail plan's accounts were not billed.
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "a1", "rent", date(2026, 1, 1))
    await add_plan(services, "weekly")
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("weekly", "week", date(2026, 1, 5), time_zone="UTC", cycle_weekday=1),
    )
    april_2 = datetime(2026, 4, 2, tzinfo=UTC)
    march = await runs.create_run(services.pool, "2026-03", timing=runs.Timing(now=april_2))
    assert (await runs.execute_run(services.pool, march)).state == "done"
    assert await _runs(services) == [("2026-03", 1)]
    assert await _lines(services, "a1", "2026-03") == [("recurring", 10 * EUR, "Line rent rent")]
    # A period not ended is still refused; the weekly plan named is refused a month.
    message = await _refused(services, "2026-04", april_2)
    assert "'2026-04' has not ended" in message, message
    message = await _refused(services, "2026-03", april_2, "weekly")
    assert "2026-03" in message, message
    assert await _runs(services) == [("2026-03", 1)]
