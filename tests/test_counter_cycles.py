"""Counter cycles follow the plan's billing periods: a reset that names no cycle opens the
plan's period holding now, in the plan's time zone, so a retry within it charges nothing
more; and the billing worker opens each plan's cycle by itself once its period begins
(decision 0032, addendum 2026-12-07).

Real Redis and PostgreSQL; amounts as the API shows them.
"""

import logging
from datetime import UTC, date, datetime

import pytest
from prometheus_client import REGISTRY

from ocs.balances import keys
from ocs.billing import counter_cycles
from ocs.billing.counter_cycles import counter_period
from ocs.billing.cycles import PlanBilling
from ocs.billing.store import set_plan_billing
from ocs.billing.worker import BillingWorker, WorkerSettings
from tests.conftest import RunningApp, add_plan, eventually

BERLIN_MONTHLY = PlanBilling(
    "retail", "fixed_date", date(2027, 1, 1), time_zone="Europe/Berlin", cycle_day=1
)
# 00:30 and 01:30 in Berlin on January 1: December 31 and January 1 in UTC.
JAN_1_0030_BERLIN = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
JAN_1_0130_BERLIN = datetime(2027, 1, 1, 0, 30, tzinfo=UTC)


async def _bundle_customer(app: RunningApp, used: int) -> None:
    """Plan retail, invoiced monthly in Berlin (from January: no invoice run is due in
    these tests), with an optional bundle of 600 German seconds carried over, 5.00 a
    cycle; account "bo" bought it (55.00 - 5.00) and used ``used`` seconds of it."""
    await add_plan(app.services)
    await set_plan_billing(app.services.pool, app.services.store, BERLIN_MONTHLY)
    status, body = await app.post(
        "/v1/plans/retail/counters",
        {
            "id": "de-600",
            "seconds": 600,
            "zones": ["Germany"],
            "carryover": True,
            "mandatory": False,
            "recurring_fee": "5.00",
        },
    )
    assert status == 201, body

    async def loaded() -> bool:
        return bool(app.services.catalog.snapshot.counters_for("retail"))

    await eventually(loaded, what="the counter in the catalog")
    status, body = await app.post("/v1/accounts", {"id": "bo", "plan": "retail", "balance": "55"})
    assert status == 201, body
    status, body = await app.post("/v1/accounts/bo/counters", {"counter": "de-600"})
    assert status == 201, body
    status, grant = await app.post(
        "/v1/calls", {"account": "bo", "destination": "4930123456", "call_id": "bo-1"}
    )
    assert status == 201, grant
    status, stopped = await app.post("/v1/calls/bo-1/stop", {"duration": used})
    assert (status, stopped["cost"]) == (200, "0.000000"), stopped
    assert await _bundle(app) == (600, used)
    assert await _balance(app) == "50.000000"


async def _balance(app: RunningApp) -> str:
    status, account = await app.get("/v1/accounts/bo")
    assert status == 200, account
    return str(account["balance"])


async def _bundle(app: RunningApp) -> tuple[int, int]:
    """Account bo's bundle this cycle: (limit, used) seconds."""
    status, body = await app.get("/v1/accounts/bo/counters")
    assert status == 200, body
    (counter,) = [c for c in body["counters"] if c["counter"] == "de-600"]
    return counter["limit"], counter["used"]


async def _cycle_fees(app: RunningApp) -> list[tuple[int, str]]:
    """Account bo's fees in the ledger, once the ledger writer has written its entries."""
    async with app.services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT amount, reference FROM ledger WHERE account_id = 'bo' AND kind = 'fee'"
            " AND reference LIKE 'counter:de-600:cycle:%' ORDER BY reference"
        )
    return [(r["amount"], r["reference"]) for r in rows]


def _cycles_opened() -> float:
    """``ocs_counter_cycles_opened_total`` in this process."""
    return REGISTRY.get_sample_value("ocs_counter_cycles_opened_total") or 0.0


def _cycles_missed() -> float:
    """``ocs_counter_cycles_missed_total`` in this process."""
    return REGISTRY.get_sample_value("ocs_counter_cycles_missed_total") or 0.0


async def _worker_opened_january(app: RunningApp) -> tuple[BillingWorker, list[datetime]]:
    """Account bo with its bundle (100 s of it unused), and a billing worker (its clock
    the list's one item) that saw December and opened January: 45.00 left, 700 s."""
    await _bundle_customer(app, used=500)
    clock = [datetime(2026, 12, 15, 12, tzinfo=UTC)]
    worker = BillingWorker(
        app.services.pool,
        WorkerSettings(run_delay=0),
        clock=lambda: clock[0],
        store=app.services.store,
    )
    await worker.run_once()
    clock[0] = datetime(2026, 12, 31, 23, 0, 30, tzinfo=UTC)  # 00:00:30 in Berlin
    await worker.run_once()
    assert (await _balance(app), await _bundle(app)) == ("45.000000", (700, 0))
    return worker, clock


async def _ledger_written(app: RunningApp) -> None:
    async def written() -> bool:
        return await app.services.store.oldest_unwritten_ms() is None

    await eventually(written, what="the ledger writer to catch up")


async def test_a_reset_retried_an_hour_later_in_berlin_opens_the_same_cycle(
    app: RunningApp,
) -> None:
    # The default label was today's UTC date: a reset at 00:30 in Berlin on January 1
    # (December 31 in UTC) and its retry at 01:30 (January 1 in UTC) were two cycles,
    # the 5.00 charged twice (50 -> 45 -> 40) and the bundle carried over into itself.
    await _bundle_customer(app, used=600)
    services = app.services
    for now in (JAN_1_0030_BERLIN, JAN_1_0130_BERLIN):
        report = await counter_cycles.reset_counters(
            services.pool, services.counters, None, None, None, now
        )
        assert (report.accounts, report.cycles) == (1, {"retail": "2027-01"}), now
        assert await _balance(app) == "45.000000", now
        assert await _bundle(app) == (600, 0), now
    # An operator's reset of the one account, later in January, is that cycle too.
    report = await counter_cycles.reset_counters(
        services.pool, services.counters, None, "bo", None, datetime(2027, 1, 20, tzinfo=UTC)
    )
    assert report.cycles == {"retail": "2027-01"}
    assert await _balance(app) == "45.000000"
    await _ledger_written(app)
    assert await _cycle_fees(app) == [(-5_000_000, "counter:de-600:cycle:2027-01")]


async def test_a_reset_naming_no_cycle_answers_the_plans_current_period(
    app: RunningApp,
) -> None:
    await _bundle_customer(app, used=60)
    before = counter_period(BERLIN_MONTHLY, datetime.now(UTC)).label
    status, report = await app.post("/v1/counters/reset", {"plan": "retail"})
    after = counter_period(BERLIN_MONTHLY, datetime.now(UTC)).label
    assert status == 200, report
    assert report["cycles"] in ({"retail": before}, {"retail": after})
    assert report["cycles"]["retail"].count("-") == 1  # a month, such as 2026-12
    assert await _balance(app) == "45.000000"
    assert await _bundle(app) == (1140, 0)  # 600 + the 540 s left unused


def test_the_cycle_a_reset_opens_is_the_plans_period_in_its_time_zone() -> None:
    now = JAN_1_0030_BERLIN
    assert counter_period(BERLIN_MONTHLY, now).label == "2027-01"
    assert counter_period(None, now).label == "2026-12"  # no billing settings: UTC months
    on_the_15th = PlanBilling("p", "fixed_date", date(2026, 1, 1), "Asia/Tokyo", cycle_day=15)
    assert counter_period(on_the_15th, now).label == "2026-12-15..2027-01-15"
    weekly = PlanBilling("p", "week", date(2026, 1, 1), "Europe/Berlin", cycle_weekday=4)
    assert counter_period(weekly, now).label == "2027-01-01..2027-01-08"  # a Friday
    every_10 = PlanBilling("p", "fixed_period", date(2026, 12, 22), "UTC", every_days=10)
    assert counter_period(every_10, now).label == "2026-12-22..2027-01-01"
    # Each account's own anniversary: the calendar month in the plan's zone.
    anniversary = PlanBilling("p", "subscription_date", date(2026, 1, 1), "Europe/Berlin")
    assert counter_period(anniversary, now).label == "2027-01"
    manual = PlanBilling("p", "manual", date(2026, 1, 1), "America/New_York")
    assert counter_period(manual, now).label == "2026-12"


async def test_the_billing_worker_opens_the_plans_counter_cycle_once_at_its_period_start(
    app: RunningApp,
) -> None:
    # Nothing reset counters by themselves: a bundle and its fee stopped after the
    # first cycle unless an operator scheduled the reset.
    await _bundle_customer(app, used=500)
    clock = [datetime(2026, 12, 15, 12, tzinfo=UTC)]
    worker = BillingWorker(
        app.services.pool,
        WorkerSettings(run_delay=0),
        clock=lambda: clock[0],
        store=app.services.store,
    )
    opened_before = _cycles_opened()
    # December, the period under way when the worker first sees the plan: not reset.
    await worker.run_once()
    clock[0] = datetime(2026, 12, 31, 22, 59, tzinfo=UTC)  # 23:59 in Berlin
    await worker.run_once()
    assert (await _balance(app), await _bundle(app)) == ("50.000000", (600, 500))

    clock[0] = datetime(2026, 12, 31, 23, 0, 30, tzinfo=UTC)  # 00:00:30 in Berlin
    await worker.run_once()
    # The fee charged, the bundle renewed with the 100 s left over carried.
    assert (await _balance(app), await _bundle(app)) == ("45.000000", (700, 0))
    # Later passes in January do nothing more: no fee, no seconds carried again.
    for now in (JAN_1_0130_BERLIN, datetime(2027, 1, 31, 22, 59, tzinfo=UTC)):
        clock[0] = now
        await worker.run_once()
        assert (await _balance(app), await _bundle(app)) == ("45.000000", (700, 0))
    assert _cycles_opened() == opened_before + 1
    await _ledger_written(app)
    assert await _cycle_fees(app) == [(-5_000_000, "counter:de-600:cycle:2027-01")]

    # February in Berlin: the next cycle, the 700 s unused carried.
    clock[0] = datetime(2027, 1, 31, 23, 0, 30, tzinfo=UTC)
    await worker.run_once()
    assert (await _balance(app), await _bundle(app)) == ("40.000000", (1300, 0))


async def test_a_worker_back_after_missed_period_starts_charges_their_fees_once(
    app: RunningApp, caplog: pytest.LogCaptureFixture
) -> None:
    # A worker stopped from mid-January to April opened April only: February's and
    # March's 5.00 were never charged.
    worker, clock = await _worker_opened_january(app)
    missed_before = _cycles_missed()
    clock[0] = datetime(2027, 3, 31, 22, 0, 30, tzinfo=UTC)  # April 1, 00:00:30 in Berlin
    with caplog.at_level(logging.WARNING, logger="ocs.billing.counter_cycles"):
        await worker.run_once()
    # February's and March's fees, and April's; the seconds are April's 600 and the 700
    # left of January's cycle, not February's nor March's.
    assert (await _balance(app), await _bundle(app)) == ("30.000000", (1300, 0))
    assert _cycles_missed() == missed_before + 2
    (warning,) = [r for r in caplog.records if r.getMessage().startswith("counter cycles missed")]
    assert (warning.__dict__["plan"], warning.__dict__["cycles"]) == (
        "retail",
        ["2027-02", "2027-03"],
    )
    # A pass again, and a worker that remembers January still (a second worker, a label
    # kept stale), charge nothing more: each cycle's fee is charged once, by its label.
    await worker.run_once()
    await app.services.redis.set(keys.counter_cycle_opened("retail"), "2027-01")
    await worker.run_once()
    assert (await _balance(app), await _bundle(app)) == ("30.000000", (1300, 0))
    await _ledger_written(app)
    assert await _cycle_fees(app) == [
        (-5_000_000, f"counter:de-600:cycle:2027-0{month}") for month in (1, 2, 3, 4)
    ]


async def test_a_lost_label_of_the_cycle_opened_neither_skips_a_period_nor_opens_one_twice(
    app: RunningApp, caplog: pytest.LogCaptureFixture
) -> None:
    worker, clock = await _worker_opened_january(app)
    redis = app.services.redis
    opened = keys.counter_cycle_opened("retail")
    # Redis lost the worker's label mid-January: January is not opened again (no fee,
    # no seconds carried into themselves), and the label is back.
    await redis.delete(opened)
    clock[0] = datetime(2027, 1, 20, tzinfo=UTC)
    await worker.run_once()
    assert (await _balance(app), await _bundle(app)) == ("45.000000", (700, 0))
    assert await app.services.store.counter_cycle_opened("retail") == "2027-01"
    # Lost again, with the cycle the account's counters kept, just before February: the
    # ledger in PostgreSQL still shows January's fee, so February opens on time. Before,
    # February was taken as opened: no fee, no renewed bundle until March.
    await _ledger_written(app)
    await redis.delete(opened)
    await redis.hdel(keys.counters("bo"), "cycle")
    clock[0] = datetime(2027, 1, 31, 23, 0, 30, tzinfo=UTC)  # February 1 in Berlin
    await worker.run_once()
    assert (await _balance(app), await _bundle(app)) == ("40.000000", (1300, 0))
    await worker.run_once()
    assert (await _balance(app), await _bundle(app)) == ("40.000000", (1300, 0))
    # Lost with the worker away over March's start too: April opens, but March, missed
    # after a label found again rather than kept, is named in a warning, not charged.
    await _ledger_written(app)
    await redis.delete(opened)
    await redis.hdel(keys.counters("bo"), "cycle")
    clock[0] = datetime(2027, 3, 31, 22, 0, 30, tzinfo=UTC)  # April 1 in Berlin
    with caplog.at_level(logging.WARNING, logger="ocs.billing.counter_cycles"):
        await worker.run_once()
    assert (await _balance(app), await _bundle(app)) == ("35.000000", (1900, 0))
    (warning,) = [r for r in caplog.records if "not charged" in r.getMessage()]
    assert warning.__dict__["cycles"] == ["2027-03"]
