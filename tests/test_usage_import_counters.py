"""Usage imports that draw on usage counters (issue 15): an imported call to a zone a
bundle covers takes the bundle's seconds as a live call does, once, never seconds live
calls hold, and a bundle that refuses calls once used up refuses the rows past it.

Costs by hand, from tests/test_usage_import.py's deck: UK 0.02 a minute in 60 s
blocks, Canada (1613) 0.01 a minute per second.
"""

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ocs.balances import keys
from ocs.balances.store import AccountCycle
from ocs.mediation.importer import ImportRequest, UsageImporter
from tests.conftest import RunningApp, eventually
from tests.usage_import_helpers import (
    HEADER,
    balance,
    new_account,
    run_import,
    setup_mediation,
    stored_cdrs,
    text_of,
)

UK = "442071234567"


async def add_counter(app: RunningApp, **fields: Any) -> None:
    """A counter on the retail plan, once the serving catalog holds it."""
    status, body = await app.post("/v1/plans/retail/counters", fields)
    assert status == 201, body

    async def loaded() -> bool:
        snapshot = app.services.catalog.snapshot
        return any(c.id == fields["id"] for c in snapshot.counters_for("retail"))

    await eventually(loaded, what=f"counter {fields['id']} in the catalog")


async def counters_of(app: RunningApp, account_id: str) -> list[tuple[str, int, int]]:
    """(counter, used, left) of each counter the account has, as the API shows them."""
    status, shown = await app.get(f"/v1/accounts/{account_id}/counters")
    assert status == 200, shown
    return [(c["counter"], c["used"], c["left"]) for c in shown["counters"]]


async def test_imported_calls_use_the_bundle_once_then_pay_the_tariff(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    await add_counter(app, id="uk-600", seconds=600, zones=["UK"], price_per_minute="0.00")
    await new_account(app, "c1", "10.00")
    path = tmp_path / "bundle.csv"
    path.write_text(
        HEADER
        # 400 s, all from the bundle: free.
        + f"u1,c1,{UK},2026-11-03 09:00:00,400,O,,\n"
        # 300 s: the bundle's last 200 s, then 100 s at the tariff:
        # cost(300) - cost(200) = 5 blocks - 4 blocks = 0.02.
        + f"u2,c1,{UK},2026-11-03 10:00:00,300,O,,\n"
        # 120 s with the bundle used up: two blocks, 0.04.
        + f"u3,c1,{UK},2026-11-03 11:00:00,120,O,,\n"
        # Canada is not in the bundle: 60 s at 0.01 a minute.
        + "ca,c1,16135550100,2026-11-03 12:00:00,60,O,,\n"
    )
    summary = await run_import(app, path)
    assert summary.rows_charged == 4, summary.problems
    assert summary.amounts == {"EUR": 20_000 + 40_000 + 10_000}
    assert await balance(app, "c1") == 10_000_000 - 70_000
    assert await counters_of(app, "c1") == [("uk-600", 600, 0)]
    rows = await stored_cdrs(app, "carrier-x", 4)
    drawn = [(r["record_id"], r["counter_id"], r["counter_seconds"], r["charged"]) for r in rows]
    assert drawn == [
        ("ca", None, 0, 10_000),
        ("u1", "uk-600", 400, 0),
        ("u2", "uk-600", 200, 20_000),
        ("u3", "uk-600", 0, 40_000),
    ]

    # The same file again moves neither money nor bundle seconds.
    again = await run_import(app, path)
    assert (again.rows_charged, again.rows_repeated) == (0, 4)
    assert await balance(app, "c1") == 10_000_000 - 70_000
    assert await counters_of(app, "c1") == [("uk-600", 600, 0)]


async def test_a_bundle_that_refuses_once_used_up_refuses_the_rows_past_it(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    await add_counter(
        app,
        id="uk-300",
        seconds=300,
        zones=["UK"],
        price_per_minute="0.00",
        reject_on_threshold=True,
        mandatory=False,
    )
    await new_account(app, "buyer", "10.00")
    await new_account(app, "other", "10.00")
    status, body = await app.post("/v1/accounts/buyer/counters", {"counter": "uk-300"})
    assert status == 201, body
    path = tmp_path / "refusing.csv"
    path.write_text(
        HEADER
        + f"b1,buyer,{UK},2026-11-03 09:00:00,240,O,,\n"
        # The last 60 s of the bundle, and 60 s past it at the tariff: the call took place.
        + f"b2,buyer,{UK},2026-11-03 10:00:00,120,O,,\n"
        # Nothing left: refused, as a live call would be.
        + f"b3,buyer,{UK},2026-11-03 11:00:00,60,O,,\n"
        # An optional bundle the account did not buy does not apply: the tariff.
        + f"o1,other,{UK},2026-11-03 09:00:00,60,O,,\n"
    )
    summary = await run_import(app, path)
    assert (summary.rows_charged, summary.rows_rejected) == (3, 1), summary.problems
    assert summary.amounts == {"EUR": 20_000 + 20_000}
    assert [(p.line, p.problems) for p in summary.problems] == [
        (4, ("counter_exhausted: the bundle 'uk-300' is used up for this cycle",))
    ]
    assert text_of(summary.rejects_path) == HEADER + f"b3,buyer,{UK},2026-11-03 11:00:00,60,O,,\n"
    assert await balance(app, "buyer") == 10_000_000 - 20_000
    assert await balance(app, "other") == 10_000_000 - 20_000
    assert await counters_of(app, "buyer") == [("uk-300", 300, 0)]


class _OvertakenRead(UsageImporter):
    """An importer whose first read of the counters is overtaken by ``meanwhile`` (a
    change to the bundle) before the import's debits reach Redis."""

    def __init__(self, app: RunningApp, meanwhile: Callable[[], Awaitable[None]]) -> None:
        services = app.services
        super().__init__(
            services.pool,
            services.store,
            services.catalog,
            database_url=services.database_url,
            result_ttl=3600,
        )
        self.meanwhile = meanwhile
        self.reads = 0

    async def counter_cycles(self, account_ids: set[str]) -> dict[str, AccountCycle]:
        """The first read's answer, given after ``meanwhile`` changed the bundle."""
        self.reads += 1
        seen = await super().counter_cycles(account_ids)
        if self.reads == 1:
            await self.meanwhile()
        return seen


async def test_a_bundle_live_calls_took_meanwhile_is_never_used_twice(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    await add_counter(app, id="uk-600", seconds=600, zones=["UK"], price_per_minute="0.00")
    await new_account(app, "racer", "10.00")
    path = tmp_path / "race.csv"
    path.write_text(HEADER + f"r1,racer,{UK},2026-11-03 09:00:00,120,O,,\n")

    async def live_call_takes_the_bundle() -> None:
        call = {"account": "racer", "destination": UK, "call_id": "live-1"}
        status, grant = await app.post("/v1/calls", call)
        assert (status, grant["counter_seconds"]) == (201, 600), grant

    racing = _OvertakenRead(app, live_call_takes_the_bundle)
    request = ImportRequest(template="carrier-x", files=(str(path),))
    summary = await racing.run(request)
    # Priced with 600 free seconds, refused by the script (the live call holds them),
    # read again and priced at the tariff: two blocks, 0.04.
    assert racing.reads == 2
    assert (summary.rows_charged, summary.amounts) == (1, {"EUR": 40_000}), summary.problems
    rows = await stored_cdrs(app, "carrier-x", 1)
    assert (rows[0]["counter_id"], rows[0]["counter_seconds"]) == ("uk-600", 0)
    # The live call ends after 100 s: those are the only seconds the bundle gave.
    status, stopped = await app.post("/v1/calls/live-1/stop", {"duration": 100})
    assert (status, stopped["cost"]) == (200, "0.000000"), stopped
    assert await counters_of(app, "racer") == [("uk-600", 100, 500)]
    assert await balance(app, "racer") == 10_000_000 - 40_000


async def test_a_bundle_cancelled_meanwhile_leaves_the_row_at_the_tariff_naming_no_bundle(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    await add_counter(
        app, id="uk-opt", seconds=600, zones=["UK"], price_per_minute="0.00", mandatory=False
    )
    await new_account(app, "quitter", "10.00")
    status, body = await app.post("/v1/accounts/quitter/counters", {"counter": "uk-opt"})
    assert status == 201, body
    path = tmp_path / "cancelled.csv"
    path.write_text(HEADER + f"q1,quitter,{UK},2026-11-03 09:00:00,120,O,,\n")

    async def cancelled() -> None:
        response = await app.client.delete("/v1/accounts/quitter/counters/uk-opt")
        assert response.status == 200, await response.text()

    importer = _OvertakenRead(app, cancelled)
    summary = await importer.run(ImportRequest(template="carrier-x", files=(str(path),)))
    # Priced with the bundle's 600 free seconds, refused by the script (the bundle is
    # gone), read again: no counter applies, so the tariff, two blocks, 0.04.
    assert importer.reads == 2
    assert (summary.rows_charged, summary.amounts) == (1, {"EUR": 40_000}), summary.problems
    rows = await stored_cdrs(app, "carrier-x", 1)
    assert (rows[0]["counter_id"], rows[0]["counter_seconds"]) == (None, 0)
    assert await balance(app, "quitter") == 10_000_000 - 40_000


# When the test's counter cycles began (the reset's first run), as the reset script reads
# it: midnight in Toronto, the template's time zone, so a row's local date says its cycle.
OCT_1 = datetime(2026, 10, 1, 5, tzinfo=UTC)
NOV_1 = datetime(2026, 11, 1, 5, tzinfo=UTC)
DEC_1 = datetime(2026, 12, 1, 5, tzinfo=UTC)
DEC_7 = datetime(2026, 12, 7, 5, tzinfo=UTC)


async def new_cycle(app: RunningApp, label: str, began: datetime) -> None:
    """Reset the retail plan's counters for cycle ``label``, its run taken to have begun
    at ``began`` (the time a reset at that moment would have noted; the reset reads it)."""
    run = keys.counter_cycle_run(label, "retail", None)
    await app.services.redis.set(run, int(began.timestamp()) * 1_000_000)
    status, report = await app.post("/v1/counters/reset", {"plan": "retail", "cycle": label})
    assert status == 200, report


async def test_a_call_made_before_the_cycle_began_draws_on_its_own_cycles_unused_seconds(
    app: RunningApp, tmp_path: Path
) -> None:
    # A file imported in December with a call of November 30: it took 400 s of
    # December's bundle, then paid the tariff, while November's bundle was reset with
    # those seconds unused. It draws on what November left: free, December untouched.
    await setup_mediation(app)
    await add_counter(app, id="uk-600", seconds=600, zones=["UK"], price_per_minute="0.00")
    await new_account(app, "late", "10.00")
    await new_cycle(app, "2026-11", NOV_1)
    await new_cycle(app, "2026-12", DEC_1)
    path = tmp_path / "late.csv"
    path.write_text(
        HEADER
        # November's call: November's 600 s, unused.
        + f"n30,late,{UK},2026-11-30 23:50:00,400,O,,\n"
        # December's call: December's bundle.
        + f"d02,late,{UK},2026-12-02 09:00:00,400,O,,\n"
    )
    summary = await run_import(app, path)
    assert summary.rows_charged == 2, summary.problems
    assert summary.amounts == {"EUR": 0}
    assert await balance(app, "late") == 10_000_000
    assert await counters_of(app, "late") == [("uk-600", 400, 200)]
    rows = await stored_cdrs(app, "carrier-x", 2)
    drawn = [(r["record_id"], r["counter_id"], r["counter_seconds"], r["charged"]) for r in rows]
    assert drawn == [("d02", "uk-600", 400, 0), ("n30", "uk-600", 400, 0)]


async def test_a_call_two_cycles_old_pays_the_tariff_not_the_closed_cycles_seconds(
    app: RunningApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Only the last closed cycle is kept. A file imported in December with a call of
    # October 20 drew on what November left, as if it were November's, and November's
    # own late call then found 200 s where 600 were unused. October's keeps nothing: it
    # pays the tariff, its CDR names no counter, and the import says so once.
    await setup_mediation(app)
    await add_counter(app, id="uk-600", seconds=600, zones=["UK"], price_per_minute="0.00")
    await new_account(app, "old", "10.00")
    await new_cycle(app, "2026-10", OCT_1)
    await new_cycle(app, "2026-11", NOV_1)
    await new_cycle(app, "2026-12", DEC_1)
    path = tmp_path / "old.csv"
    path.write_text(
        HEADER
        # October's call: 400 s, seven 60 s blocks at 0.02 a minute.
        + f"o20,old,{UK},2026-10-20 09:00:00,400,O,,\n"
        # November's call: November's 600 s, unused.
        + f"n30,old,{UK},2026-11-30 23:50:00,400,O,,\n"
        # December's call: December's bundle.
        + f"d02,old,{UK},2026-12-02 09:00:00,400,O,,\n"
    )
    summary = await run_import(app, path)
    assert summary.rows_charged == 3, summary.problems
    assert summary.amounts == {"EUR": 140_000}
    assert await balance(app, "old") == 10_000_000 - 140_000
    assert await counters_of(app, "old") == [("uk-600", 400, 200)]
    rows = await stored_cdrs(app, "carrier-x", 3)
    drawn = [(r["record_id"], r["counter_id"], r["counter_seconds"], r["charged"]) for r in rows]
    assert drawn == [
        ("d02", "uk-600", 400, 0),
        ("n30", "uk-600", 400, 0),
        ("o20", None, 0, 140_000),
    ]
    told = [r for r in caplog.records if "last closed counter cycle" in r.message]
    assert [(r.__dict__["import"], r.__dict__["records"]) for r in told] == [(summary.id, 1)]


async def test_a_call_a_reset_makes_two_cycles_old_before_its_debit_pays_the_tariff(
    app: RunningApp, tmp_path: Path
) -> None:
    # Read in November, October's call was of the closed cycle and priced with its 600 s.
    # December began before its debit: the script sees October is no longer kept, and
    # priced again the call pays the tariff, November's seconds left for November.
    await setup_mediation(app)
    await add_counter(app, id="uk-600", seconds=600, zones=["UK"], price_per_minute="0.00")
    await new_account(app, "racer", "10.00")
    await new_cycle(app, "2026-10", OCT_1)
    await new_cycle(app, "2026-11", NOV_1)
    path = tmp_path / "race.csv"
    path.write_text(HEADER + f"o20,racer,{UK},2026-10-20 09:00:00,120,O,,\n")

    async def december_begins() -> None:
        await new_cycle(app, "2026-12", DEC_1)

    racing = _OvertakenRead(app, december_begins)
    summary = await racing.run(ImportRequest(template="carrier-x", files=(str(path),)))
    assert racing.reads == 2
    assert (summary.rows_charged, summary.amounts) == (1, {"EUR": 40_000}), summary.problems
    rows = await stored_cdrs(app, "carrier-x", 1)
    assert (rows[0]["counter_id"], rows[0]["counter_seconds"]) == (None, 0)
    november = tmp_path / "november.csv"
    november.write_text(HEADER + f"n30,racer,{UK},2026-11-30 22:00:00,600,O,,\n")
    late = await run_import(app, november)
    assert (late.rows_charged, late.amounts) == (1, {"EUR": 0}), late.problems
    assert await balance(app, "racer") == 10_000_000 - 40_000


async def test_late_calls_past_what_their_cycle_left_pay_the_tariff(
    app: RunningApp, tmp_path: Path
) -> None:
    # November used 500 of its 600 s: its late calls draw on the 100 s left, however
    # little December has left, and then pay the tariff.
    await setup_mediation(app)
    await add_counter(app, id="uk-600", seconds=600, zones=["UK"], price_per_minute="0.00")
    await new_account(app, "spent", "10.00")
    await new_cycle(app, "2026-11", NOV_1)
    november = tmp_path / "november.csv"
    november.write_text(HEADER + f"n10,spent,{UK},2026-11-10 09:00:00,500,O,,\n")
    assert (await run_import(app, november)).amounts == {"EUR": 0}
    await new_cycle(app, "2026-12", DEC_1)
    late = tmp_path / "late.csv"
    late.write_text(
        HEADER
        # December's whole bundle.
        + f"d02,spent,{UK},2026-12-02 09:00:00,600,O,,\n"
        # November's: its 100 s left, then 60 s at the tariff: 3 - 2 blocks, 0.02.
        + f"n30,spent,{UK},2026-11-30 22:00:00,160,O,,\n"
        # November's again, nothing left of it: the tariff, 0.02.
        + f"n29,spent,{UK},2026-11-29 10:00:00,60,O,,\n"
    )
    summary = await run_import(app, late)
    assert summary.rows_charged == 3, summary.problems
    assert summary.amounts == {"EUR": 20_000 + 20_000}
    assert await balance(app, "spent") == 10_000_000 - 40_000
    assert await counters_of(app, "spent") == [("uk-600", 600, 0)]
    rows = await stored_cdrs(app, "carrier-x", 4)
    drawn = [(r["record_id"], r["counter_id"], r["counter_seconds"], r["charged"]) for r in rows]
    assert drawn == [
        ("d02", "uk-600", 600, 0),
        ("n10", "uk-600", 500, 0),
        ("n29", None, 0, 20_000),
        ("n30", "uk-600", 100, 20_000),
    ]


async def test_a_reset_run_again_for_one_account_leaves_when_its_cycle_began(
    app: RunningApp, tmp_path: Path
) -> None:
    # December's reset ran for the plan on the 1st, and again for one account on the
    # 7th: the retry leaves the counters, and December still began on the 1st, so a
    # call of the 2nd imported after it draws on December's bundle.
    await setup_mediation(app)
    await add_counter(app, id="uk-600", seconds=600, zones=["UK"], price_per_minute="0.00")
    await new_account(app, "again", "10.00")
    await new_cycle(app, "2026-11", NOV_1)
    await new_cycle(app, "2026-12", DEC_1)
    retry = keys.counter_cycle_run("2026-12", None, "again")
    await app.services.redis.set(retry, int(DEC_7.timestamp()) * 1_000_000)
    status, report = await app.post("/v1/counters/reset", {"account": "again", "cycle": "2026-12"})
    assert status == 200, report
    path = tmp_path / "december.csv"
    path.write_text(HEADER + f"d02,again,{UK},2026-12-02 09:00:00,300,O,,\n")
    summary = await run_import(app, path)
    assert (summary.rows_charged, summary.amounts) == (1, {"EUR": 0}), summary.problems
    assert await counters_of(app, "again") == [("uk-600", 300, 300)]
    rows = await stored_cdrs(app, "carrier-x", 1)
    assert (rows[0]["counter_id"], rows[0]["counter_seconds"]) == ("uk-600", 300)


async def test_a_late_call_draws_only_on_the_seconds_its_cycle_carried_over(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    await add_counter(
        app, id="uk-600", seconds=600, zones=["UK"], price_per_minute="0.00", carryover=True
    )
    await new_account(app, "carry", "10.00")
    await new_cycle(app, "2026-11", NOV_1)
    november = tmp_path / "november.csv"
    november.write_text(HEADER + f"a1,carry,{UK},2026-11-10 09:00:00,200,O,,\n")
    assert (await run_import(app, november)).amounts == {"EUR": 0}
    # December: 600 s, and the 400 s November left, carried over.
    await new_cycle(app, "2026-12", DEC_1)
    assert await counters_of(app, "carry") == [("uk-600", 0, 1000)]
    late = tmp_path / "late.csv"
    late.write_text(
        HEADER
        # November's: the 400 s carried over, then 100 s at the tariff: 9 - 7 blocks, 0.04.
        + f"a2,carry,{UK},2026-11-30 22:00:00,500,O,,\n"
        # December's: December's seconds.
        + f"a3,carry,{UK},2026-12-02 09:00:00,300,O,,\n"
        # November's again, the carried seconds spent: the tariff, 0.02.
        + f"a4,carry,{UK},2026-11-29 10:00:00,60,O,,\n"
    )
    summary = await run_import(app, late)
    assert summary.rows_charged == 3, summary.problems
    assert summary.amounts == {"EUR": 40_000 + 20_000}
    assert await balance(app, "carry") == 10_000_000 - 60_000
    assert await counters_of(app, "carry") == [("uk-600", 700, 300)]
    rows = await stored_cdrs(app, "carrier-x", 4)
    drawn = [(r["record_id"], r["counter_id"], r["counter_seconds"], r["charged"]) for r in rows]
    assert drawn == [
        ("a1", "uk-600", 200, 0),
        ("a2", "uk-600", 400, 40_000),
        ("a3", "uk-600", 300, 0),
        ("a4", None, 0, 20_000),
    ]


async def test_a_cycle_that_begins_during_the_import_is_not_drawn_by_older_calls(
    app: RunningApp, tmp_path: Path
) -> None:
    # The import read the counters in November and priced November's call with the
    # bundle's 600 s. Before its debit December began, carrying those 600 s over, and a
    # December call took all December had free, the carried seconds with it. The script
    # sees the call is older than the cycle and its cycle's seconds are taken: read
    # again, it pays the tariff, and December's bundle gives it nothing.
    await setup_mediation(app)
    await add_counter(
        app, id="uk-600", seconds=600, zones=["UK"], price_per_minute="0.00", carryover=True
    )
    await new_account(app, "racer", "10.00")
    await new_cycle(app, "2026-11", NOV_1)
    path = tmp_path / "race.csv"
    path.write_text(HEADER + f"r1,racer,{UK},2026-11-30 22:00:00,120,O,,\n")

    async def december_begins() -> None:
        await new_cycle(app, "2026-12", DEC_1)
        call = {"account": "racer", "destination": UK, "call_id": "live-1"}
        status, grant = await app.post("/v1/calls", call)
        assert (status, grant["counter_seconds"]) == (201, 1200), grant

    racing = _OvertakenRead(app, december_begins)
    summary = await racing.run(ImportRequest(template="carrier-x", files=(str(path),)))
    assert racing.reads == 2
    assert (summary.rows_charged, summary.amounts) == (1, {"EUR": 40_000}), summary.problems
    rows = await stored_cdrs(app, "carrier-x", 1)
    assert (rows[0]["counter_id"], rows[0]["counter_seconds"]) == (None, 0)
    status, stopped = await app.post("/v1/calls/live-1/stop", {"duration": 100})
    assert (status, stopped["cost"]) == (200, "0.000000"), stopped
    assert await counters_of(app, "racer") == [("uk-600", 100, 1100)]
    assert await balance(app, "racer") == 10_000_000 - 40_000


async def test_a_mandatory_bundle_first_used_after_the_first_reset_gives_late_calls_its_seconds(
    app: RunningApp, tmp_path: Path
) -> None:
    # The account never called the UK in November, so its mandatory bundle was never
    # started when December's reset (its first) ran. A call of November 30 imported then
    # would have started it with its 600 s: imported after the reset, it draws on them,
    # and December's bundle is December's.
    await setup_mediation(app)
    await add_counter(app, id="uk-600", seconds=600, zones=["UK"], price_per_minute="0.00")
    await new_account(app, "first", "10.00")
    await new_cycle(app, "2026-12", DEC_1)
    path = tmp_path / "late.csv"
    path.write_text(
        HEADER
        # November's: 400 of November's 600 s, free.
        + f"n30,first,{UK},2026-11-30 23:00:00,400,O,,\n"
        # December's: December's bundle, free.
        + f"d02,first,{UK},2026-12-02 09:00:00,300,O,,\n"
        # November's: its last 200 s, then 60 s at the tariff: 5 - 4 blocks, 0.02.
        + f"n29,first,{UK},2026-11-29 10:00:00,260,O,,\n"
    )
    summary = await run_import(app, path)
    assert summary.rows_charged == 3, summary.problems
    assert summary.amounts == {"EUR": 20_000}
    assert await balance(app, "first") == 10_000_000 - 20_000
    assert await counters_of(app, "first") == [("uk-600", 300, 300)]
    rows = await stored_cdrs(app, "carrier-x", 3)
    drawn = [(r["record_id"], r["counter_id"], r["counter_seconds"], r["charged"]) for r in rows]
    assert drawn == [
        ("d02", "uk-600", 300, 0),
        ("n29", "uk-600", 200, 20_000),
        ("n30", "uk-600", 400, 0),
    ]


OCT_20 = datetime(2026, 10, 20, 12, tzinfo=UTC)
JAN_1 = datetime(2027, 1, 1, 5, tzinfo=UTC)


async def bought_in_october(app: RunningApp, account_id: str, counter_id: str) -> None:
    """The account buys the optional counter, its purchase dated October 20 (as buying it
    then would have stamped it), so that November's reset starts its cycle."""
    status, body = await app.post(f"/v1/accounts/{account_id}/counters", {"counter": counter_id})
    assert status == 201, body
    at = int(OCT_20.timestamp()) * 1_000_000
    await app.services.redis.hset(keys.counters(account_id), f"{counter_id}:bought_at", at)


async def test_a_bundle_cancelled_after_its_cycle_closed_still_serves_that_cycles_late_calls(
    app: RunningApp, tmp_path: Path
) -> None:
    # The customer used 500 of November's 600 s and gave the bundle up on December 7.
    # November's calls imported later draw on the 100 s November left: the bundle was
    # theirs when they were made. December's pay the tariff (cancelled), and so do
    # November's once January's reset has closed December.
    await setup_mediation(app)
    await add_counter(
        app, id="uk-opt", seconds=600, zones=["UK"], price_per_minute="0.00", mandatory=False
    )
    await new_account(app, "quits", "10.00")
    await bought_in_october(app, "quits", "uk-opt")
    await new_cycle(app, "2026-11", NOV_1)
    november = tmp_path / "november.csv"
    november.write_text(HEADER + f"n10,quits,{UK},2026-11-10 09:00:00,500,O,,\n")
    assert (await run_import(app, november)).amounts == {"EUR": 0}
    await new_cycle(app, "2026-12", DEC_1)
    response = await app.client.delete("/v1/accounts/quits/counters/uk-opt")
    assert response.status == 200, await response.text()
    assert await counters_of(app, "quits") == []
    # December's reset run again for the account keeps what November left.
    retry = keys.counter_cycle_run("2026-12", None, "quits")
    await app.services.redis.set(retry, int(DEC_7.timestamp()) * 1_000_000)
    status, report = await app.post("/v1/counters/reset", {"account": "quits", "cycle": "2026-12"})
    assert status == 200, report
    late = tmp_path / "late.csv"
    late.write_text(
        HEADER
        # December's, the bundle cancelled: the tariff, 0.02.
        + f"d02,quits,{UK},2026-12-02 09:00:00,60,O,,\n"
        # November's: its 100 s left, then 60 s at the tariff: 3 - 2 blocks, 0.02.
        + f"n30,quits,{UK},2026-11-30 22:00:00,160,O,,\n"
        # November's again, nothing left of it: the tariff, 0.02.
        + f"n29,quits,{UK},2026-11-29 10:00:00,60,O,,\n"
    )
    summary = await run_import(app, late)
    assert summary.rows_charged == 3, summary.problems
    assert summary.amounts == {"EUR": 60_000}
    rows = await stored_cdrs(app, "carrier-x", 4)
    drawn = [(r["record_id"], r["counter_id"], r["counter_seconds"], r["charged"]) for r in rows]
    assert drawn == [
        ("d02", None, 0, 20_000),
        ("n10", "uk-opt", 500, 0),
        ("n29", None, 0, 20_000),
        ("n30", "uk-opt", 100, 20_000),
    ]
    # January closes December, in which the bundle was cancelled: nothing is kept.
    await new_cycle(app, "2027-01", JAN_1)
    older = tmp_path / "older.csv"
    older.write_text(HEADER + f"n28,quits,{UK},2026-11-28 10:00:00,60,O,,\n")
    assert (await run_import(app, older)).amounts == {"EUR": 20_000}
    assert await balance(app, "quits") == 10_000_000 - 80_000
    assert await counters_of(app, "quits") == []


async def test_a_bundle_cancelled_while_a_call_holds_it_still_serves_its_closed_cycle(
    app: RunningApp, tmp_path: Path
) -> None:
    # November's 600 s went unused. In December a live call holds the bundle when the
    # customer gives it up: it is gone for new calls, but November's calls imported
    # later draw on November's seconds, before and after the live call's stop.
    await setup_mediation(app)
    await add_counter(
        app, id="uk-opt", seconds=600, zones=["UK"], price_per_minute="0.00", mandatory=False
    )
    await new_account(app, "holder", "10.00")
    await bought_in_october(app, "holder", "uk-opt")
    await new_cycle(app, "2026-11", NOV_1)
    await new_cycle(app, "2026-12", DEC_1)
    call = {"account": "holder", "destination": UK, "call_id": "live-1"}
    status, grant = await app.post("/v1/calls", call)
    assert (status, grant["counter_seconds"]) == (201, 600), grant
    response = await app.client.delete("/v1/accounts/holder/counters/uk-opt")
    assert response.status == 200, await response.text()
    first = tmp_path / "first.csv"
    first.write_text(HEADER + f"n30,holder,{UK},2026-11-30 22:00:00,400,O,,\n")
    assert (await run_import(app, first)).amounts == {"EUR": 0}
    status, stopped = await app.post("/v1/calls/live-1/stop", {"duration": 100})
    assert (status, stopped["cost"]) == (200, "0.000000"), stopped
    assert await counters_of(app, "holder") == []
    # November's last 200 s, then 60 s at the tariff: 5 - 4 blocks, 0.02.
    second = tmp_path / "second.csv"
    second.write_text(HEADER + f"n29,holder,{UK},2026-11-29 10:00:00,260,O,,\n")
    assert (await run_import(app, second)).amounts == {"EUR": 20_000}
    rows = await stored_cdrs(app, "carrier-x", 2)
    drawn = [(r["record_id"], r["counter_id"], r["counter_seconds"], r["charged"]) for r in rows]
    assert drawn == [("n29", "uk-opt", 200, 20_000), ("n30", "uk-opt", 400, 0)]
    assert await balance(app, "holder") == 10_000_000 - 20_000
