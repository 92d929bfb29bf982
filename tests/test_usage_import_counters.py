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
from ocs.mediation.summary import ImportSummary
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


async def uk_bundle_for(
    app: RunningApp,
    account_id: str,
    counter_id: str = "uk-600",
    seconds: int = 600,
    **extra: Any,
) -> None:
    """Mediation set up, a free UK counter ``counter_id`` of ``seconds`` (with ``extra``
    fields) on the retail plan, and the account opened with 10.00."""
    await setup_mediation(app)
    await add_counter(
        app, id=counter_id, seconds=seconds, zones=["UK"], price_per_minute="0.00", **extra
    )
    await new_account(app, account_id, "10.00")


def usage_file(tmp_path: Path, name: str, *rows: str) -> Path:
    """A file ``name`` in ``tmp_path``: the template's header, then ``rows``."""
    path = tmp_path / name
    path.write_text(HEADER + "".join(rows))
    return path


async def imported(app: RunningApp, path: Path, rows: int, eur: int) -> ImportSummary:
    """Import ``path``; asserts it charged ``rows`` rows, ``eur`` micro-EUR in all."""
    summary = await run_import(app, path)
    assert summary.rows_charged == rows, summary.problems
    assert summary.amounts == {"EUR": eur}
    return summary


async def drawn(app: RunningApp, count: int) -> list[tuple[str, str | None, int, int]]:
    """(record, counter, counter seconds, charged) of the ``count`` stored CDRs."""
    rows = await stored_cdrs(app, "carrier-x", count)
    return [(r["record_id"], r["counter_id"], r["counter_seconds"], r["charged"]) for r in rows]


async def first_draw(app: RunningApp) -> tuple[str | None, int]:
    """(counter, counter seconds) of the one stored CDR."""
    rows = await stored_cdrs(app, "carrier-x", 1)
    return rows[0]["counter_id"], rows[0]["counter_seconds"]


async def live_call(app: RunningApp, account_id: str, counter_seconds: int) -> None:
    """A live call ``live-1`` from the account to the UK; asserts it is granted
    ``counter_seconds`` of the bundle."""
    call = {"account": account_id, "destination": UK, "call_id": "live-1"}
    status, grant = await app.post("/v1/calls", call)
    assert (status, grant["counter_seconds"]) == (201, counter_seconds), grant


async def live_call_stops_free(app: RunningApp) -> None:
    """``live-1`` stops after 100 s; asserts it cost nothing (the bundle's seconds)."""
    status, stopped = await app.post("/v1/calls/live-1/stop", {"duration": 100})
    assert (status, stopped["cost"]) == (200, "0.000000"), stopped


async def buy(app: RunningApp, account_id: str, counter_id: str) -> None:
    """The account buys the optional counter."""
    status, body = await app.post(f"/v1/accounts/{account_id}/counters", {"counter": counter_id})
    assert status == 201, body


async def cancel(app: RunningApp, account_id: str, counter_id: str) -> None:
    """The account gives the optional counter up."""
    response = await app.client.delete(f"/v1/accounts/{account_id}/counters/{counter_id}")
    assert response.status == 200, await response.text()


async def test_imported_calls_use_the_bundle_once_then_pay_the_tariff(
    app: RunningApp, tmp_path: Path
) -> None:
    await uk_bundle_for(app, "c1")
    path = usage_file(
        tmp_path,
        "bundle.csv",
        # 400 s, all from the bundle: free.
        f"u1,c1,{UK},2026-11-03 09:00:00,400,O,,\n",
        # 300 s: the bundle's last 200 s, then 100 s at the tariff:
        # cost(300) - cost(200) = 5 blocks - 4 blocks = 0.02.
        f"u2,c1,{UK},2026-11-03 10:00:00,300,O,,\n",
        # 120 s with the bundle used up: two blocks, 0.04.
        f"u3,c1,{UK},2026-11-03 11:00:00,120,O,,\n",
        # Canada is not in the bundle: 60 s at 0.01 a minute.
        "ca,c1,16135550100,2026-11-03 12:00:00,60,O,,\n",
    )
    await imported(app, path, 4, 20_000 + 40_000 + 10_000)
    assert await balance(app, "c1") == 10_000_000 - 70_000
    assert await counters_of(app, "c1") == [("uk-600", 600, 0)]
    assert await drawn(app, 4) == [
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
    await uk_bundle_for(app, "buyer", "uk-300", 300, reject_on_threshold=True, mandatory=False)
    await new_account(app, "other", "10.00")
    await buy(app, "buyer", "uk-300")
    path = usage_file(
        tmp_path,
        "refusing.csv",
        f"b1,buyer,{UK},2026-11-03 09:00:00,240,O,,\n",
        # The last 60 s of the bundle, and 60 s past it at the tariff: the call took place.
        f"b2,buyer,{UK},2026-11-03 10:00:00,120,O,,\n",
        # Nothing left: refused, as a live call would be.
        f"b3,buyer,{UK},2026-11-03 11:00:00,60,O,,\n",
        # An optional bundle the account did not buy does not apply: the tariff.
        f"o1,other,{UK},2026-11-03 09:00:00,60,O,,\n",
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


async def test_imported_calls_draw_on_a_bought_add_on_once_the_bundle_is_used_up(
    app: RunningApp, tmp_path: Path
) -> None:
    """Every account's 60 s to the UK and a 600 s add-on the account bought: an imported
    call past the 60 s draws on the add-on, as a live call does. It drew on the used-up
    bundle (0 s): 120 s paid 0.04 and the add-on stayed unused."""
    await uk_bundle_for(app, "c1", "a-uk", 60)
    await add_counter(
        app, id="b-uk", seconds=600, zones=["UK"], price_per_minute="0.00", mandatory=False
    )
    await buy(app, "c1", "b-uk")
    path = usage_file(
        tmp_path,
        "add-on.csv",
        # The bundle's 60 s, then 60 s at the tariff: cost(120) - cost(60) = 0.02.
        f"u1,c1,{UK},2026-11-03 09:00:00,120,O,,\n",
        # The bundle used up: 120 s from the add-on, free.
        f"u2,c1,{UK},2026-11-03 10:00:00,120,O,,\n",
    )
    await imported(app, path, 2, 20_000)
    assert await balance(app, "c1") == 10_000_000 - 20_000
    assert await drawn(app, 2) == [("u1", "a-uk", 60, 20_000), ("u2", "b-uk", 120, 0)]
    assert await counters_of(app, "c1") == [("a-uk", 60, 0), ("b-uk", 120, 480)]


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


async def import_overtaken(
    app: RunningApp, path: Path, meanwhile: Callable[[], Awaitable[None]]
) -> None:
    """Import ``path`` with its first read of the counters overtaken by ``meanwhile``;
    asserts the counters were read again and its one row charged the tariff, 0.04."""
    racing = _OvertakenRead(app, meanwhile)
    summary = await racing.run(ImportRequest(template="carrier-x", files=(str(path),)))
    assert racing.reads == 2
    assert (summary.rows_charged, summary.amounts) == (1, {"EUR": 40_000}), summary.problems


async def test_a_bundle_live_calls_took_meanwhile_is_never_used_twice(
    app: RunningApp, tmp_path: Path
) -> None:
    await uk_bundle_for(app, "racer")
    path = usage_file(tmp_path, "race.csv", f"r1,racer,{UK},2026-11-03 09:00:00,120,O,,\n")

    async def live_call_takes_the_bundle() -> None:
        await live_call(app, "racer", 600)

    # Priced with 600 free seconds, refused by the script (the live call holds them),
    # read again and priced at the tariff: two blocks, 0.04.
    await import_overtaken(app, path, live_call_takes_the_bundle)
    assert await first_draw(app) == ("uk-600", 0)
    # The live call ends after 100 s: those are the only seconds the bundle gave.
    await live_call_stops_free(app)
    assert await counters_of(app, "racer") == [("uk-600", 100, 500)]
    assert await balance(app, "racer") == 10_000_000 - 40_000


async def test_a_bundle_cancelled_meanwhile_leaves_the_row_at_the_tariff_naming_no_bundle(
    app: RunningApp, tmp_path: Path
) -> None:
    await uk_bundle_for(app, "quitter", "uk-opt", mandatory=False)
    await buy(app, "quitter", "uk-opt")
    path = usage_file(tmp_path, "cancelled.csv", f"q1,quitter,{UK},2026-11-03 09:00:00,120,O,,\n")

    async def cancelled() -> None:
        await cancel(app, "quitter", "uk-opt")

    # Priced with the bundle's 600 free seconds, refused by the script (the bundle is
    # gone), read again: no counter applies, so the tariff, two blocks, 0.04.
    await import_overtaken(app, path, cancelled)
    assert await first_draw(app) == (None, 0)
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


async def december_reset_again_on_the_7th(app: RunningApp, account_id: str) -> None:
    """December's reset run again for the account alone, its run taken to have begun on
    December 7."""
    retry = keys.counter_cycle_run("2026-12", None, account_id)
    await app.services.redis.set(retry, int(DEC_7.timestamp()) * 1_000_000)
    status, report = await app.post(
        "/v1/counters/reset", {"account": account_id, "cycle": "2026-12"}
    )
    assert status == 200, report


async def test_a_call_made_before_the_cycle_began_draws_on_its_own_cycles_unused_seconds(
    app: RunningApp, tmp_path: Path
) -> None:
    # A file imported in December with a call of November 30: it took 400 s of
    # December's bundle, then paid the tariff, while November's bundle was reset with
    # those seconds unused. It draws on what November left: free, December untouched.
    await uk_bundle_for(app, "late")
    await new_cycle(app, "2026-11", NOV_1)
    await new_cycle(app, "2026-12", DEC_1)
    path = usage_file(
        tmp_path,
        "late.csv",
        # November's call: November's 600 s, unused.
        f"n30,late,{UK},2026-11-30 23:50:00,400,O,,\n",
        # December's call: December's bundle.
        f"d02,late,{UK},2026-12-02 09:00:00,400,O,,\n",
    )
    await imported(app, path, 2, 0)
    assert await balance(app, "late") == 10_000_000
    assert await counters_of(app, "late") == [("uk-600", 400, 200)]
    assert await drawn(app, 2) == [("d02", "uk-600", 400, 0), ("n30", "uk-600", 400, 0)]


async def test_a_call_two_cycles_old_pays_the_tariff_not_the_closed_cycles_seconds(
    app: RunningApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Only the last closed cycle is kept. A file imported in December with a call of
    # October 20 drew on what November left, as if it were November's, and November's
    # own late call then found 200 s where 600 were unused. October's keeps nothing: it
    # pays the tariff, its CDR names no counter, and the import says so once.
    await uk_bundle_for(app, "old")
    await new_cycle(app, "2026-10", OCT_1)
    await new_cycle(app, "2026-11", NOV_1)
    await new_cycle(app, "2026-12", DEC_1)
    path = usage_file(
        tmp_path,
        "old.csv",
        # October's call: 400 s, seven 60 s blocks at 0.02 a minute.
        f"o20,old,{UK},2026-10-20 09:00:00,400,O,,\n",
        # November's call: November's 600 s, unused.
        f"n30,old,{UK},2026-11-30 23:50:00,400,O,,\n",
        # December's call: December's bundle.
        f"d02,old,{UK},2026-12-02 09:00:00,400,O,,\n",
    )
    summary = await imported(app, path, 3, 140_000)
    assert await balance(app, "old") == 10_000_000 - 140_000
    assert await counters_of(app, "old") == [("uk-600", 400, 200)]
    assert await drawn(app, 3) == [
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
    await uk_bundle_for(app, "racer")
    await new_cycle(app, "2026-10", OCT_1)
    await new_cycle(app, "2026-11", NOV_1)
    path = usage_file(tmp_path, "race.csv", f"o20,racer,{UK},2026-10-20 09:00:00,120,O,,\n")

    async def december_begins() -> None:
        await new_cycle(app, "2026-12", DEC_1)

    await import_overtaken(app, path, december_begins)
    assert await first_draw(app) == (None, 0)
    november = usage_file(tmp_path, "november.csv", f"n30,racer,{UK},2026-11-30 22:00:00,600,O,,\n")
    late = await run_import(app, november)
    assert (late.rows_charged, late.amounts) == (1, {"EUR": 0}), late.problems
    assert await balance(app, "racer") == 10_000_000 - 40_000


async def test_late_calls_past_what_their_cycle_left_pay_the_tariff(
    app: RunningApp, tmp_path: Path
) -> None:
    # November used 500 of its 600 s: its late calls draw on the 100 s left, however
    # little December has left, and then pay the tariff.
    await uk_bundle_for(app, "spent")
    await new_cycle(app, "2026-11", NOV_1)
    november = usage_file(tmp_path, "november.csv", f"n10,spent,{UK},2026-11-10 09:00:00,500,O,,\n")
    assert (await run_import(app, november)).amounts == {"EUR": 0}
    await new_cycle(app, "2026-12", DEC_1)
    late = usage_file(
        tmp_path,
        "late.csv",
        # December's whole bundle.
        f"d02,spent,{UK},2026-12-02 09:00:00,600,O,,\n",
        # November's: its 100 s left, then 60 s at the tariff: 3 - 2 blocks, 0.02.
        f"n30,spent,{UK},2026-11-30 22:00:00,160,O,,\n",
        # November's again, nothing left of it: the tariff, 0.02.
        f"n29,spent,{UK},2026-11-29 10:00:00,60,O,,\n",
    )
    await imported(app, late, 3, 20_000 + 20_000)
    assert await balance(app, "spent") == 10_000_000 - 40_000
    assert await counters_of(app, "spent") == [("uk-600", 600, 0)]
    assert await drawn(app, 4) == [
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
    await uk_bundle_for(app, "again")
    await new_cycle(app, "2026-11", NOV_1)
    await new_cycle(app, "2026-12", DEC_1)
    await december_reset_again_on_the_7th(app, "again")
    path = usage_file(tmp_path, "december.csv", f"d02,again,{UK},2026-12-02 09:00:00,300,O,,\n")
    summary = await run_import(app, path)
    assert (summary.rows_charged, summary.amounts) == (1, {"EUR": 0}), summary.problems
    assert await counters_of(app, "again") == [("uk-600", 300, 300)]
    assert await first_draw(app) == ("uk-600", 300)


async def test_a_late_call_draws_only_on_the_seconds_its_cycle_carried_over(
    app: RunningApp, tmp_path: Path
) -> None:
    await uk_bundle_for(app, "carry", carryover=True)
    await new_cycle(app, "2026-11", NOV_1)
    november = usage_file(tmp_path, "november.csv", f"a1,carry,{UK},2026-11-10 09:00:00,200,O,,\n")
    assert (await run_import(app, november)).amounts == {"EUR": 0}
    # December: 600 s, and the 400 s November left, carried over.
    await new_cycle(app, "2026-12", DEC_1)
    assert await counters_of(app, "carry") == [("uk-600", 0, 1000)]
    late = usage_file(
        tmp_path,
        "late.csv",
        # November's: the 400 s carried over, then 100 s at the tariff: 9 - 7 blocks, 0.04.
        f"a2,carry,{UK},2026-11-30 22:00:00,500,O,,\n",
        # December's: December's seconds.
        f"a3,carry,{UK},2026-12-02 09:00:00,300,O,,\n",
        # November's again, the carried seconds spent: the tariff, 0.02.
        f"a4,carry,{UK},2026-11-29 10:00:00,60,O,,\n",
    )
    await imported(app, late, 3, 40_000 + 20_000)
    assert await balance(app, "carry") == 10_000_000 - 60_000
    assert await counters_of(app, "carry") == [("uk-600", 700, 300)]
    assert await drawn(app, 4) == [
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
    await uk_bundle_for(app, "racer", carryover=True)
    await new_cycle(app, "2026-11", NOV_1)
    path = usage_file(tmp_path, "race.csv", f"r1,racer,{UK},2026-11-30 22:00:00,120,O,,\n")

    async def december_begins() -> None:
        await new_cycle(app, "2026-12", DEC_1)
        await live_call(app, "racer", 1200)

    await import_overtaken(app, path, december_begins)
    assert await first_draw(app) == (None, 0)
    await live_call_stops_free(app)
    assert await counters_of(app, "racer") == [("uk-600", 100, 1100)]
    assert await balance(app, "racer") == 10_000_000 - 40_000


async def test_a_mandatory_bundle_first_used_after_the_first_reset_gives_late_calls_its_seconds(
    app: RunningApp, tmp_path: Path
) -> None:
    # The account never called the UK in November, so its mandatory bundle was never
    # started when December's reset (its first) ran. A call of November 30 imported then
    # would have started it with its 600 s: imported after the reset, it draws on them,
    # and December's bundle is December's.
    await uk_bundle_for(app, "first")
    await new_cycle(app, "2026-12", DEC_1)
    path = usage_file(
        tmp_path,
        "late.csv",
        # November's: 400 of November's 600 s, free.
        f"n30,first,{UK},2026-11-30 23:00:00,400,O,,\n",
        # December's: December's bundle, free.
        f"d02,first,{UK},2026-12-02 09:00:00,300,O,,\n",
        # November's: its last 200 s, then 60 s at the tariff: 5 - 4 blocks, 0.02.
        f"n29,first,{UK},2026-11-29 10:00:00,260,O,,\n",
    )
    await imported(app, path, 3, 20_000)
    assert await balance(app, "first") == 10_000_000 - 20_000
    assert await counters_of(app, "first") == [("uk-600", 300, 300)]
    assert await drawn(app, 3) == [
        ("d02", "uk-600", 300, 0),
        ("n29", "uk-600", 200, 20_000),
        ("n30", "uk-600", 400, 0),
    ]


OCT_20 = datetime(2026, 10, 20, 12, tzinfo=UTC)
JAN_1 = datetime(2027, 1, 1, 5, tzinfo=UTC)


async def bought_in_october(app: RunningApp, account_id: str, counter_id: str) -> None:
    """The account buys the optional counter, its purchase dated October 20 (as buying it
    then would have stamped it), so that November's reset starts its cycle."""
    await buy(app, account_id, counter_id)
    at = int(OCT_20.timestamp()) * 1_000_000
    await app.services.redis.hset(keys.counters(account_id), f"{counter_id}:bought_at", at)


async def test_a_bundle_cancelled_after_its_cycle_closed_still_serves_that_cycles_late_calls(
    app: RunningApp, tmp_path: Path
) -> None:
    # The customer used 500 of November's 600 s and gave the bundle up on December 7.
    # November's calls imported later draw on the 100 s November left: the bundle was
    # theirs when they were made. December's pay the tariff (cancelled), and so do
    # November's once January's reset has closed December.
    await uk_bundle_for(app, "quits", "uk-opt", mandatory=False)
    await bought_in_october(app, "quits", "uk-opt")
    await new_cycle(app, "2026-11", NOV_1)
    november = usage_file(tmp_path, "november.csv", f"n10,quits,{UK},2026-11-10 09:00:00,500,O,,\n")
    assert (await run_import(app, november)).amounts == {"EUR": 0}
    await new_cycle(app, "2026-12", DEC_1)
    await cancel(app, "quits", "uk-opt")
    assert await counters_of(app, "quits") == []
    # December's reset run again for the account keeps what November left.
    await december_reset_again_on_the_7th(app, "quits")
    late = usage_file(
        tmp_path,
        "late.csv",
        # December's, the bundle cancelled: the tariff, 0.02.
        f"d02,quits,{UK},2026-12-02 09:00:00,60,O,,\n",
        # November's: its 100 s left, then 60 s at the tariff: 3 - 2 blocks, 0.02.
        f"n30,quits,{UK},2026-11-30 22:00:00,160,O,,\n",
        # November's again, nothing left of it: the tariff, 0.02.
        f"n29,quits,{UK},2026-11-29 10:00:00,60,O,,\n",
    )
    await imported(app, late, 3, 60_000)
    assert await drawn(app, 4) == [
        ("d02", None, 0, 20_000),
        ("n10", "uk-opt", 500, 0),
        ("n29", None, 0, 20_000),
        ("n30", "uk-opt", 100, 20_000),
    ]
    # January closes December, in which the bundle was cancelled: nothing is kept.
    await new_cycle(app, "2027-01", JAN_1)
    older = usage_file(tmp_path, "older.csv", f"n28,quits,{UK},2026-11-28 10:00:00,60,O,,\n")
    assert (await run_import(app, older)).amounts == {"EUR": 20_000}
    assert await balance(app, "quits") == 10_000_000 - 80_000
    assert await counters_of(app, "quits") == []


async def test_a_bundle_cancelled_while_a_call_holds_it_still_serves_its_closed_cycle(
    app: RunningApp, tmp_path: Path
) -> None:
    # November's 600 s went unused. In December a live call holds the bundle when the
    # customer gives it up: it is gone for new calls, but November's calls imported
    # later draw on November's seconds, before and after the live call's stop.
    await uk_bundle_for(app, "holder", "uk-opt", mandatory=False)
    await bought_in_october(app, "holder", "uk-opt")
    await new_cycle(app, "2026-11", NOV_1)
    await new_cycle(app, "2026-12", DEC_1)
    await live_call(app, "holder", 600)
    await cancel(app, "holder", "uk-opt")
    first = usage_file(tmp_path, "first.csv", f"n30,holder,{UK},2026-11-30 22:00:00,400,O,,\n")
    assert (await run_import(app, first)).amounts == {"EUR": 0}
    await live_call_stops_free(app)
    assert await counters_of(app, "holder") == []
    # November's last 200 s, then 60 s at the tariff: 5 - 4 blocks, 0.02.
    second = usage_file(tmp_path, "second.csv", f"n29,holder,{UK},2026-11-29 10:00:00,260,O,,\n")
    assert (await run_import(app, second)).amounts == {"EUR": 20_000}
    assert await drawn(app, 2) == [("n29", "uk-opt", 200, 20_000), ("n30", "uk-opt", 400, 0)]
    assert await balance(app, "holder") == 10_000_000 - 20_000
