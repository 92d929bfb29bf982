"""Imported calls recorded after the invoice of their period (decision 0050).

A supplier's file imported in April with calls of March: the calls were debited at import,
but March's invoice was drafted before, and April's window starts on April 1, so no
invoice showed them (nor taxed them). The next invoice now bills, marked late, the
imported calls stopped before its window that the account's previous invoice could not
see when it was drafted; each imported call is on exactly one invoice.

Plan ``retail``: EUR, monthly from 2026-01-01, invoiced at the end of each month (UTC).
The deck prices UK 60/60 at 0.02 a minute: 61 s cost 0.04, 30 s cost 0.02.
"""

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from ocs.billing import itemised, posting, runs
from ocs.billing.document_data import load_facts
from ocs.billing.document_layout import Formatter, sections
from ocs.billing.void import void
from tests.billing_helpers import cdr, invoice_id, invoices, run
from tests.conftest import RunningApp
from tests.usage_import_helpers import (
    HEADER,
    billed_account,
    run_import,
    stored_cdrs,
)

LATE_MARCH = "Calls to UK, made before 2026-04-01 and recorded late"
# Calls stopped after March's early run ended its usage (March 10): no window held them.
AFTER_EARLY_MARCH = "Calls to UK, made after the previous invoice's usage ended on 2026-03-10"
# March 3, 61 s to the UK: 0.04 (the window's call in most tests).
R1 = "r1,acc1,442071234567,2026-03-03 09:00:00,61,O,,\n"
# March 20, 30 s to the UK: 0.02 (imported after March's draft in most tests).
R2 = "r2,acc1,442071234567,2026-03-20 10:00:00,30,O,,\n"


async def _march_invoiced(app: RunningApp, tmp_path: Path) -> None:
    """``acc1`` billed monthly, its March call (R1) imported, and March drafted."""
    await billed_account(app)
    await _import(app, tmp_path, "march.csv", R1, 1)
    await run(app.services, "2026-03")


async def _import(app: RunningApp, tmp_path: Path, name: str, rows: str, stored: int) -> None:
    """Import one file of ``acc1``'s calls; wait until the supplier has ``stored`` CDRs."""
    path = tmp_path / name
    path.write_text(HEADER + rows)
    summary = await run_import(app, path)
    assert (summary.rows_rejected, summary.rows_repeated) == (0, 0)
    await stored_cdrs(app, "carrier-x", stored)


async def _usage(app: RunningApp, label: str) -> list[tuple[Any, ...]]:
    """``acc1``'s usage lines on the invoice of that period: description, calls, seconds,
    amount, first day."""
    found = [i for i in await invoices(app.services) if i["label"] == label]
    assert len(found) == 1, label
    return [
        (
            line["description"],
            line["calls"],
            line["seconds"],
            line["amount"],
            line["period_start"].astimezone(UTC).date(),
        )
        for line in found[0]["lines"]
        if line["kind"] == "usage"
    ]


async def _listed(app: RunningApp, label: str) -> list[str]:
    """The CDR ids the invoice's itemised call list shows."""
    found = await invoice_id(app.services, "acc1", label)
    return [row.cdr for row in await itemised.call_rows(app.services.pool, found)]


async def _late_after(app: RunningApp, label: str) -> str | None:
    """The snapshot ``acc1``'s invoice of that period compared its late usage with."""
    found = await app.services.pool.fetchval(
        "SELECT late_after_snapshot::text FROM invoices WHERE account_id = 'acc1'"
        " AND period_label = $1 AND kind = 'invoice'",
        label,
    )
    return None if found is None else str(found)


async def _cdr_of(app: RunningApp, record_id: str) -> str:
    entry = await app.services.pool.fetchval(
        "SELECT entry_id FROM cdrs WHERE record_id = $1", record_id
    )
    assert entry is not None
    return str(entry)


async def test_calls_imported_after_their_invoice_are_billed_late_by_the_next_one_once(
    app: RunningApp, tmp_path: Path
) -> None:
    await _march_invoiced(app, tmp_path)
    services = app.services
    # Imported after March was drafted: two calls of March 20 and one of February 10.
    await _import(
        app,
        tmp_path,
        "late.csv",
        "r2,acc1,442071234567,2026-03-20 10:00:00,30,O,,\n"
        "r3,acc1,442079999999,2026-03-21 10:00:00,61,O,,\n"
        "r4,acc1,442071234567,2026-02-10 10:00:00,30,O,,\n",
        4,
    )
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    compared = await _late_after(app, "2026-04")
    # April again (a re-draft, May not drafted yet): the same lines, not the late calls
    # twice, compared with the same March draft.
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    assert compared is not None
    assert await _late_after(app, "2026-04") == compared
    await run(services, "2026-05", invoice_date=date(2026, 6, 1))

    assert await _usage(app, "2026-03") == [("Calls to UK", 1, 61, 40_000, date(2026, 3, 1))]
    # 30 + 61 + 30 s: 0.02 + 0.04 + 0.02; the line's period starts at the first call's stop.
    assert await _usage(app, "2026-04") == [(LATE_MARCH, 3, 121, 80_000, date(2026, 2, 10))]
    assert await _usage(app, "2026-05") == []
    # The itemised lists agree with the lines: each call on one invoice.
    assert await _listed(app, "2026-03") == [await _cdr_of(app, "r1")]
    assert sorted(await _listed(app, "2026-04")) == sorted(
        [await _cdr_of(app, r) for r in ("r2", "r3", "r4")]
    )
    assert await _listed(app, "2026-05") == []


async def test_an_invoice_drafted_again_after_the_import_bills_its_own_calls_and_none_late(
    app: RunningApp, tmp_path: Path
) -> None:
    # March still a draft when the file arrives: its next draft sees the calls in its own
    # window, and April finds nothing it could not see.
    await _march_invoiced(app, tmp_path)
    services = app.services
    await _import(app, tmp_path, "more.csv", R2, 2)
    await run(services, "2026-03")
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    assert await _usage(app, "2026-03") == [("Calls to UK", 2, 91, 60_000, date(2026, 3, 1))]
    assert await _usage(app, "2026-04") == []
    assert sorted(await _listed(app, "2026-03")) == sorted(
        [await _cdr_of(app, "r1"), await _cdr_of(app, "r2")]
    )


async def test_a_voided_invoices_calls_are_not_billed_again_and_its_late_ones_are(
    app: RunningApp, tmp_path: Path
) -> None:
    # March posted, then the late file, then March voided by the operator: April bills
    # the late call (March never saw it) and not March's own call behind their back.
    await _march_invoiced(app, tmp_path)
    services = app.services
    march = await invoice_id(services, "acc1", "2026-03")
    await posting.post(services.pool, services.store, invoice_ids=[march])
    await _import(app, tmp_path, "late.csv", R2, 2)
    await void(services.pool, services.store, march)
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    assert await _usage(app, "2026-04") == [(LATE_MARCH, 1, 30, 20_000, date(2026, 3, 20))]


async def test_calls_imported_before_the_first_invoice_stay_out_of_it_when_older(
    app: RunningApp, tmp_path: Path
) -> None:
    # An account's first invoice has no earlier draft to compare with: it bills its own
    # window only, as before (a call of February is not March's).
    await billed_account(app)
    await _import(
        app,
        tmp_path,
        "calls.csv",
        "r1,acc1,442071234567,2026-03-03 09:00:00,61,O,,\n"
        "r2,acc1,442071234567,2026-02-10 10:00:00,30,O,,\n",
        2,
    )
    await run(app.services, "2026-03")

    assert await _usage(app, "2026-03") == [("Calls to UK", 1, 61, 40_000, date(2026, 3, 1))]


async def test_late_service_events_are_billed_as_events_not_calls(
    app: RunningApp, tmp_path: Path
) -> None:
    # A supplier's data usage (a service's events: termination cause "usage") recorded
    # after March's draft: April bills it as data usage, not as "Calls to data" minutes,
    # and lists it on no itemised call list.
    await billed_account(app)
    services = app.services
    event = {"supplier": "carrier-x", "termination_cause": "usage", "destination": "data"}
    await cdr(services, "ev1", "acc1", datetime(2026, 3, 5, tzinfo=UTC), **event,
              record_id="e1", zone="Data", duration=350, charged=40_000)  # fmt: skip
    await run(services, "2026-03")
    await cdr(services, "ev2", "acc1", datetime(2026, 3, 20, tzinfo=UTC), **event,
              record_id="e2", zone="Data", duration=100, charged=10_000)  # fmt: skip
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    (april,) = [i for i in await invoices(services) if i["label"] == "2026-04"]
    assert [(line["kind"], line["description"], line["amount"]) for line in april["lines"]] == [
        ("usage_event", "data usage (100 units), made before 2026-04-01 and recorded late", 10_000)
    ]
    assert await _listed(app, "2026-04") == []


async def test_an_earlier_draft_is_left_as_it_is_once_a_later_invoice_exists(
    app: RunningApp, tmp_path: Path
) -> None:
    # April billed the late call; March run again afterwards would have taken it into
    # its own window too (billed twice), and April's list would have lost it.
    await _march_invoiced(app, tmp_path)
    services = app.services
    await _import(app, tmp_path, "late.csv", R2, 2)
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    await run(services, "2026-03")

    assert await _usage(app, "2026-03") == [("Calls to UK", 1, 61, 40_000, date(2026, 3, 1))]
    assert await _usage(app, "2026-04") == [(LATE_MARCH, 1, 30, 20_000, date(2026, 3, 20))]
    assert await _listed(app, "2026-04") == [await _cdr_of(app, "r2")]


async def test_the_invoice_document_shows_late_calls_on_their_own_row(
    app: RunningApp, tmp_path: Path
) -> None:
    await _march_invoiced(app, tmp_path)
    services = app.services
    await _import(
        app,
        tmp_path,
        "late.csv",
        "r2,acc1,442071234567,2026-03-20 10:00:00,30,O,,\n"
        "r3,acc1,442071234567,2026-04-02 10:00:00,61,O,,\n",
        3,
    )
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    async with services.pool.acquire() as conn:
        facts = await load_facts(conn, await invoice_id(services, "acc1", "2026-04"))
    (usage,) = [s for s in sections(facts, Formatter("en_GB", "EUR")) if s["title"] == "Usage"]

    assert usage["rows"] == [
        ["UK", "1", "1.0", "€0.04"],
        ["UK, recorded late (from 20 Mar 2026)", "1", "0.5", "€0.02"],
    ]


async def test_a_late_call_after_a_move_to_another_cluster_is_billed_by_time(
    app: RunningApp, tmp_path: Path
) -> None:
    """PostgreSQL moved (a dump restored in a new cluster) after March was drafted: the new
    cluster's transaction ids start below those of March's snapshot, which saw "every
    transaction before 900000000". Compared by ids, a call imported after the move read as
    seen by March: April billed nothing late, and March's itemised list showed the call.
    March's snapshot names another cluster, so it is compared by the time it was read:
    April bills the call late (0.02), March lists only its own call."""
    await _march_invoiced(app, tmp_path)
    services = app.services
    await services.pool.execute(
        "UPDATE invoices SET usage_snapshot = '900000000:900000000:',"
        " usage_snapshot_system = 1 WHERE account_id = 'acc1' AND period_label = '2026-03'"
    )
    await _import(app, tmp_path, "late.csv", R2, 2)
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    assert await _usage(app, "2026-03") == [("Calls to UK", 1, 61, 40_000, date(2026, 3, 1))]
    assert await _usage(app, "2026-04") == [(LATE_MARCH, 1, 30, 20_000, date(2026, 3, 20))]
    assert await _listed(app, "2026-03") == [await _cdr_of(app, "r1")]
    assert await _listed(app, "2026-04") == [await _cdr_of(app, "r2")]
    # Drafted again, April compares with the same March: the call is not billed twice.
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    assert await _usage(app, "2026-04") == [(LATE_MARCH, 1, 30, 20_000, date(2026, 3, 20))]
    assert await _listed(app, "2026-04") == [await _cdr_of(app, "r2")]


@pytest.mark.parametrize(
    "their_snapshot",
    # The old cluster's ids above the new one's (every new CDR reads as seen), and below.
    ["900000000:900000000:", "1:1:"],
)
async def test_after_an_early_run_and_a_move_each_gap_call_is_billed_once(
    app: RunningApp, tmp_path: Path, their_snapshot: str
) -> None:
    """March billed early on March 10 at noon, then PostgreSQL moved: March's snapshot is
    another cluster's. The calls stopped after March's window are April's: one of March 20
    imported before March's draft (the gap's), one of March 21 imported after it (late).
    Compared by the old cluster's ids, the gap's part took the March 21 call beside the
    late part (billed twice) or left the March 20 call to neither (unbilled). By time:
    April bills both once (0.02 + 0.04) and lists each once, over a re-draft too."""
    await billed_account(app)
    services = app.services
    gap_call = "g1,acc1,442071234567,2026-03-20 10:00:00,30,O,,\n"
    await _import(app, tmp_path, "march.csv", R1 + gap_call, 2)
    march = await runs.create_run(
        services.pool,
        "2026-03",
        invoice_date=date(2026, 3, 10),
        timing=runs.Timing(delay=300, early=True, now=datetime(2026, 3, 10, 12, tzinfo=UTC)),
    )
    assert (await runs.execute_run(services.pool, march)).state == "done"
    await services.pool.execute(
        "UPDATE invoices SET usage_snapshot = $1::text::pg_snapshot, usage_snapshot_system = 1"
        " WHERE account_id = 'acc1' AND period_label = '2026-03'",
        their_snapshot,
    )
    await _import(app, tmp_path, "late.csv", "g2,acc1,442071234567,2026-03-21 10:00:00,61,O,,\n", 3)
    april_calls = sorted([await _cdr_of(app, "g1"), await _cdr_of(app, "g2")])
    for _ in range(2):  # drafted, then drafted again: the same
        await run(services, "2026-04", invoice_date=date(2026, 5, 1))
        assert await _usage(app, "2026-04") == [
            (AFTER_EARLY_MARCH, 2, 91, 60_000, date(2026, 3, 20))
        ]
        assert sorted(await _listed(app, "2026-04")) == april_calls
    assert await _usage(app, "2026-03") == [("Calls to UK", 1, 61, 40_000, date(2026, 3, 1))]
    assert await _listed(app, "2026-03") == [await _cdr_of(app, "r1")]
