"""Usage imports that draw on usage counters (issue 15): an imported call to a zone a
bundle covers takes the bundle's seconds as a live call does, once, never seconds live
calls hold, and a bundle that refuses calls once used up refuses the rows past it.

Costs by hand, from tests/test_usage_import.py's deck: UK 0.02 a minute in 60 s
blocks, Canada (1613) 0.01 a minute per second.
"""

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ocs.balances.store import CounterCycle
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

    async def counter_cycles(self, account_ids: set[str]) -> dict[str, dict[str, CounterCycle]]:
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
