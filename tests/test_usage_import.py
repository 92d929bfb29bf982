"""Usage imports (issue 15): a supplier's file classified, overridden, rated at each call's
own start time and debited once per record through the real-time Lua path; costs by hand.

Each test sets its rate types, rates, overrides and template in PostgreSQL, imports a
file written here, and checks what an operator sees: balances, the import's counts and
amounts, the rejects file and the CDR rows the ledger writer stores.
"""

from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest

from ocs.balances import keys
from ocs.catalog import store as catalog_store
from ocs.decks.rate_deck import parse_deck
from ocs.errors import OcsError
from ocs.mediation import importer as importer_module
from ocs.mediation.importer import ImportRequest
from tests.billing_helpers import invoices, run
from tests.conftest import RunningApp, eventually
from tests.usage_import_helpers import (
    DECK,
    HEADER,
    TEMPLATE,
    balance,
    billed_account,
    importer,
    new_account,
    run_import,
    setup_mediation,
    stored_cdrs,
    text_of,
)


async def test_granular_rate_types_regrouped_by_the_override_and_rated_by_hand(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    await new_account(app, "acc2", "10.00")
    path = tmp_path / "carrier.csv"
    path.write_text(
        HEADER
        # Toll-free Canada -> Inbound Toll-free: 95 s billed 30 + 11 x 6 = 96 s at 0.018.
        + "r1,acc1,18005550199,2026-03-02 10:00:00,95,I,CA,tollfree\n"
        # Toll-free USA -> Inbound Toll-free: 10 s billed 30 s at 0.018.
        + "r2,acc1,18885550199,2026-03-02 10:05:00,10,I,US,tollfree\n"
        # Canada On-Net: 61 s billed 66 s at 0.004.
        + "r3,acc1,16135550111,2026-03-02 11:00:00,61,O,CA,onnet-ca\n"
        # No rate type: the deck by its number, UK 60/60 at 0.02: 61 s billed 120 s.
        + "r4,acc2,442071234567,2026-03-03 09:00:00,61,O,,offnet\n"
    )
    summary = await run_import(app, path)
    assert (summary.state, summary.rows_charged, summary.rows_rejected) == ("done", 4, 0)
    assert summary.amounts == {"EUR": 28_800 + 9_000 + 4_400 + 40_000}
    assert await balance(app, "acc1") == 10_000_000 - 42_200
    assert await balance(app, "acc2") == 10_000_000 - 40_000

    cdrs = await stored_cdrs(app, "carrier-x", 4)
    assert [(c["record_id"], c["rate_type"], c["zone"], c["charged"]) for c in cdrs] == [
        ("r1", "Inbound Toll-free", "Inbound Toll-free", 28_800),
        ("r2", "Inbound Toll-free", "Inbound Toll-free", 9_000),
        ("r3", "Canada On-Net", "Canada On-Net", 4_400),
        ("r4", None, "UK", 40_000),
    ]
    first = cdrs[0]
    assert first["usage_template"] == "carrier-x@1"
    assert (first["duration"], first["billed_seconds"], first["direction"]) == (95, 96, "inbound")
    # 10:00 in Toronto (EST, UTC-5) is 15:00 UTC; the call ended 95 s later.
    assert first["authorized_at"].isoformat() == "2026-03-02T15:00:00+00:00"
    assert first["stopped_at"].isoformat() == "2026-03-02T15:01:35+00:00"


async def test_a_call_at_the_peak_edge_is_rated_by_its_own_start_time(
    app: RunningApp, tmp_path: Path
) -> None:
    template = {
        **TEMPLATE,
        "name": "london",
        "supplier": "london-carrier",
        "start": {"format": "%Y-%m-%d %H:%M:%S", "time_zone": "Europe/London"},
        "classify": [],
    }
    # UK per second: 0.01 off-peak, and 0.05 at peak (below).
    await setup_mediation(
        app, template, deck=DECK.replace("44,UK,0.02,0,60,60", "44,UK,0.01,0,1,1")
    )
    response = await app.client.put(
        "/v1/plans/retail/bands",
        json={
            "time_zone": "Europe/London",
            "rules": [{"band": "peak", "days": [0, 1, 2, 3, 4], "start": "08:00", "end": "18:00"}],
        },
    )
    assert response.status == 200, await response.text()
    response = await app.client.put(
        f"/v1/plans/retail/tariffs/{quote('UK')}/shape", json={"band_prices": {"peak": "0.05"}}
    )
    assert response.status == 200, await response.text()

    async def loaded() -> bool:
        found = app.services.catalog.snapshot.tariff_for("retail", "4420")
        return bool(found and found[1].rate.band_prices)

    await eventually(loaded, what="the band prices in the snapshot")
    await new_account(app, "edge", "10.00")
    path = tmp_path / "london.csv"
    path.write_text(
        HEADER
        # Monday 23 Nov 2026, 07:59:00 for 120 s: 60 s off-peak + 60 s peak.
        + "e1,edge,442071234567,2026-11-23 07:59:00,120,O,,\n"
        # 17:59:59 for 1 s: one second of peak, 0.05/60 rounded up once.
        + "e2,edge,442071234567,2026-11-23 17:59:59,1,O,,\n"
        # 18:00:00 for 60 s: off-peak.
        + "e3,edge,442071234567,2026-11-23 18:00:00,60,O,,\n"
    )
    summary = await run_import(app, path, template="london")
    assert summary.rows_charged == 3, summary.problems
    assert summary.amounts == {"EUR": (10_000 + 50_000) + 834 + 10_000}
    assert await balance(app, "edge") == 10_000_000 - 70_834


async def test_the_same_file_twice_debits_each_record_once(app: RunningApp, tmp_path: Path) -> None:
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    path = tmp_path / "carrier.csv"
    path.write_text(
        HEADER
        + "d1,acc1,442071234567,2026-03-03 09:00:00,61,O,,\n"
        + "d2,acc1,442071234567,2026-03-03 09:10:00,30,O,,\n"
    )
    first = await run_import(app, path)
    assert (first.rows_charged, first.rows_repeated) == (2, 0)
    after_first = await balance(app, "acc1")
    assert after_first == 10_000_000 - 40_000 - 20_000

    # Again at once: Redis still holds each record's result.
    second = await run_import(app, path)
    assert (second.rows_charged, second.rows_repeated, second.amounts) == (0, 2, {})
    # And once the CDRs are stored and Redis has forgotten the results: PostgreSQL knows.
    await stored_cdrs(app, "carrier-x", 2)
    for record in ("d1", "d2"):
        await app.services.redis.delete(keys.stopped_call("acc1", f"usage:carrier-x:{record}"))
    third = await run_import(app, path)
    assert (third.rows_charged, third.rows_repeated) == (0, 2)
    assert await balance(app, "acc1") == after_first
    ledger = await app.services.pool.fetchval(
        "SELECT count(*) FROM ledger WHERE account_id = 'acc1' AND kind = 'usage'"
    )
    assert ledger == 2


async def test_every_problem_of_every_bad_row_is_reported_and_all_or_nothing_applies_none(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    path = tmp_path / "bad.csv"
    rows = [
        "b1,acc1,442071234567,2026-03-03 09:00:00,61,O,,",  # good
        "b2,acc1,442071234567,2026-13-03 09:00:00,-5,O,,",  # bad month and duration
        "b3,nobody,442071234567,2026-03-03 09:00:00,61,O,,",  # no such account
        "b4,acc1,999,2026-03-03 09:00:00,61,O,,",  # no tariff for 999
        "b5,acc1,442071234567,2026-03-03 09:00:00,61,X,,",  # unknown direction
    ]
    path.write_text(HEADER + "\n".join(rows) + "\n")
    summary = await run_import(app, path, mode="all_or_nothing")
    assert (summary.state, summary.rows_charged, summary.rows_rejected) == ("refused", 0, 4)
    assert await balance(app, "acc1") == 10_000_000
    by_line = {p.line: p.problems for p in summary.problems}
    assert sorted(by_line) == [3, 4, 5, 6]
    assert len(by_line[3]) == 2
    assert any(p.startswith("start") for p in by_line[3])
    assert any(p.startswith("duration") for p in by_line[3])
    assert by_line[4] == ("account: no account 'nobody'",)
    assert by_line[5][0].startswith("destination")
    assert by_line[6][0].startswith("direction")
    # The rejects file: the header, then the four bad rows as they were.
    assert summary.rejects_path is not None
    assert text_of(summary.rejects_path) == HEADER + "\n".join(rows[1:]) + "\n"
    report = text_of(summary.report_path).splitlines()
    assert [line.split(":")[1] for line in report] == ["3", "4", "5", "6"]

    # Fixed, the rejects file imports like any other.
    fixed = tmp_path / "fixed.csv"
    fixed.write_text(
        HEADER
        + "b2,acc1,442071234567,2026-03-03 09:00:00,5,O,,\n"
        + "b4,acc1,442071234567,2026-03-03 09:00:00,61,O,,\n"
    )
    again = await run_import(app, fixed, mode="all_or_nothing")
    assert (again.state, again.rows_charged) == ("done", 2)
    assert await balance(app, "acc1") == 10_000_000 - 20_000 - 40_000


async def test_good_rows_mode_applies_the_good_rows_and_rejects_the_rest(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    path = tmp_path / "mixed.csv"
    path.write_text(
        HEADER
        + "g1,acc1,442071234567,2026-03-03 09:00:00,61,O,,\n"
        + "g2,acc1,999,2026-03-03 09:00:00,61,O,,\n"
    )
    summary = await run_import(app, path)
    assert (summary.state, summary.rows_charged, summary.rows_rejected) == ("done", 1, 1)
    assert await balance(app, "acc1") == 10_000_000 - 40_000


async def test_a_cell_with_a_nul_is_rejected_naming_its_column_and_nothing_is_debited(
    app: RunningApp, tmp_path: Path
) -> None:
    # A NUL byte was debited, then PostgreSQL refused the CDR and its ledger row (22021):
    # money moved with no record. A line break in a free-text cell is no problem.
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    path = tmp_path / "nul.csv"
    rows = [
        "n1\x00,acc1,442071234567,2026-03-03 09:00:00,61,O,,",  # in the record id
        "n2,acc1,442071234567,2026-03-03 09:01:00,61,O,C\x00A,",  # in a column no part maps
        'n3,acc1,442071234567,2026-03-03 09:02:00,61,O,,"on\nnet"',  # a quoted line break
        "n4\x1b,acc1,442071234567,2026-03-03 09:03:00,61,O,,",  # an escape in the record id
    ]
    path.write_text(HEADER + "\n".join(rows) + "\n")
    summary = await run_import(app, path)
    assert (summary.rows_read, summary.rows_charged, summary.rows_rejected) == (4, 1, 3)
    assert await balance(app, "acc1") == 10_000_000 - 40_000
    assert {p.line: p.problems for p in summary.problems} == {
        2: (
            "record_id (column \"id\"): holds a NUL character ('\\x00' at character 3),"
            " which a record cannot hold",
        ),
        3: (
            "column \"country\": holds a NUL character ('\\x00' at character 2),"
            " which a record cannot hold",
        ),
        6: (
            "record_id (column \"id\"): holds a control character ('\\x1b' at character 3),"
            " which a record cannot hold",
        ),
    }
    cdrs = await stored_cdrs(app, "carrier-x", 1)
    assert [c["record_id"] for c in cdrs] == ["n3"]
    assert (
        await app.services.pool.fetchval(
            "SELECT count(*) FROM ledger WHERE account_id = 'acc1' AND kind = 'usage'"
        )
        == 1
    )
    # The rows come back as the file had them, to fix and import again.
    assert text_of(summary.rejects_path) == HEADER + "\n".join(rows[:2] + rows[3:]) + "\n"


async def test_a_record_whose_billed_quantity_a_cdr_cannot_hold_is_rejected_not_debited(
    app: RunningApp, tmp_path: Path
) -> None:
    # 2,147,483,647 units (the most a row's quantity may be) billed in 10-unit steps are
    # 2,147,483,650: debited, its CDR was refused by PostgreSQL (an INTEGER) and set aside.
    data = {
        **TEMPLATE,
        "service": "Data",
        "columns": {
            "record_id": "id",
            "account": "account",
            "start": "start",
            "quantity": "duration",
        },
    }
    await setup_mediation(app, data, DECK + "990001,Data,0.010,0,0,10\n")
    response = await app.client.put(
        f"/v1/plans/retail/tariffs/{quote('Data')}/shape", json={"per": 1_000_000}
    )
    assert response.status == 200, await response.text()

    async def loaded() -> bool:
        found = app.services.catalog.snapshot.tariff_named("retail", "Data")
        return bool(found and found.rate.per == 1_000_000)

    await eventually(loaded, what="the per-unit tariff")
    await new_account(app, "acc1", "100.00")
    path = tmp_path / "data.csv"
    path.write_text(
        HEADER
        + "q1,acc1,,2026-03-03 09:00:00,2147483647,,,\n"
        + "q2,acc1,,2026-03-03 09:00:00,2147483640,,,\n"
    )
    summary = await run_import(app, path)
    assert (summary.rows_charged, summary.rows_rejected) == (1, 1), summary
    assert summary.problems[0].problems == (
        "quantity: 2147483647 billed as 2147483650 in the increments of zone 'Data',"
        " more than a record holds (2,147,483,647)",
    )
    assert await balance(app, "acc1") == 100_000_000 - 21_474_837
    cdrs = await stored_cdrs(app, "carrier-x", 1)
    assert [(c["record_id"], c["billed_seconds"]) for c in cdrs] == [("q2", 2_147_483_640)]


async def test_a_quote_never_closed_fails_the_import_after_importing_the_rows_before_it(
    app: RunningApp, tmp_path: Path
) -> None:
    # A stray quote in line 5's free-text cell swallowed the rest of the file into one
    # cell: the rows after it were neither charged nor rejected, without a word.
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    good = [f"r{n},acc1,442071234567,2026-03-03 09:0{n}:00,61,O,," for n in range(1, 4)]
    stray = 'r4,acc1,442071234567,2026-03-03 09:04:00,61,O,,"ACME Ltd'
    after = [f"r{n},acc1,442071234567,2026-03-03 09:0{n}:00,61,O,,Bob" for n in range(5, 10)]
    path = tmp_path / "stray.csv"
    path.write_text(HEADER + "\n".join([*good, stray, *after]) + "\n")
    with pytest.raises(OcsError) as caught:
        # Chunks of two: the rows read before the error are imported whole.
        await importer(app, chunk_rows=2).run(ImportRequest("carrier-x", (str(path),)))
    assert caught.value.field == "file"
    assert caught.value.message == (
        'file: unreadable after line 4: the row on line 5 opens a quote (") that no later'
        " line closes, so lines 5 to 10 would be one cell; close or remove the quote and"
        " import the file again"
    )
    stored = await app.services.pool.fetchrow("SELECT * FROM usage_imports")
    assert (stored["state"], stored["rows_read"], stored["rows_charged"]) == ("failed", 3, 3)
    assert stored["rows_rejected"] == stored["rows_repeated"] == 0
    assert stored["error"] == caught.value.message
    assert await balance(app, "acc1") == 10_000_000 - 3 * 40_000
    await stored_cdrs(app, "carrier-x", 3)

    # The quote closed, the file imports: the rows imported before are repeats.
    path.write_text(HEADER + "\n".join([*good, stray + '"', *after]) + "\n")
    summary = await run_import(app, path)
    assert (summary.rows_read, summary.rows_charged, summary.rows_repeated) == (9, 6, 3)
    assert await balance(app, "acc1") == 10_000_000 - 9 * 40_000


async def test_a_prepaid_account_that_runs_out_mid_file_is_never_overdrawn(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    await new_account(app, "pre", "0.10")
    path = tmp_path / "prepaid.csv"
    # Six UK minutes at 0.02: five fit in 0.10; the sixth and everything after it (even
    # the cheap on-net call that would fit) are refused and go to the rejects file.
    rows = [f"p{n},pre,442071234567,2026-03-03 09:0{n}:00,60,O,," for n in range(1, 7)]
    rows.append("p7,pre,16135550111,2026-03-03 10:00:00,6,O,CA,onnet-ca")
    path.write_text(HEADER + "\n".join(rows) + "\n")
    summary = await run_import(app, path)
    assert (summary.rows_charged, summary.rows_rejected) == (5, 2)
    assert await balance(app, "pre") == 0
    by_line = {p.line: p.problems for p in summary.problems}
    assert sorted(by_line) == [7, 8]
    assert by_line[7][0].startswith("zero_balance")
    assert by_line[8][0].startswith("insufficient_funds")
    assert text_of(summary.rejects_path) == HEADER + "\n".join(rows[5:]) + "\n"


async def test_a_record_of_a_call_made_before_the_account_expired_is_still_charged(
    app: RunningApp, tmp_path: Path
) -> None:
    # The account expired at 09:30 (the template's Toronto time): its 09:00 call took
    # place while it was valid and is charged; one at 10:00 is refused as authorize
    # would have refused it, and goes to the rejects file.
    await setup_mediation(app)
    status, body = await app.post(
        "/v1/accounts",
        {
            "id": "ends",
            "plan": "retail",
            "balance": "10.00",
            "expires_at": "2026-03-03T09:30:00-05:00",
        },
    )
    assert status == 201, body
    path = tmp_path / "expiry.csv"
    rows = [
        "e1,ends,442071234567,2026-03-03 09:00:00,61,O,,\n",
        "e2,ends,442071234567,2026-03-03 10:00:00,61,O,,\n",
    ]
    path.write_text(HEADER + "".join(rows))
    summary = await run_import(app, path)
    assert (summary.rows_charged, summary.rows_rejected) == (1, 1)
    assert await balance(app, "ends") == 10_000_000 - 40_000
    assert [(p.line, p.problems) for p in summary.problems] == [(3, ("account: account_expired",))]
    assert text_of(summary.rejects_path) == HEADER + rows[1]


async def test_rejected_rows_of_files_with_other_column_orders_keep_their_columns(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    first = tmp_path / "a.csv"
    first.write_text(HEADER + "a1,acc1,999,2026-03-03 09:00:00,61,O,,\n")
    # The same columns in another order: its bad row goes to the same rejects file, in
    # the first file's order, so the fixed file imports again through the template.
    swapped = tmp_path / "b.csv"
    swapped.write_text(
        "account,id,start,called,duration,dir,country,type\n"
        "acc1,b1,2026-03-03 09:00:00,998,61,O,,\n"
        "acc1,b2,2026-03-03 09:10:00,442071234567,61,O,,\n"
    )
    # Another column too: its bad row gets a rejects file of its own, with its header.
    wider = tmp_path / "c.csv"
    wider.write_text(HEADER.replace("\n", ",note\n") + "c1,acc1,997,2026-03-03 09:00:00,61,O,,,x\n")
    request = ImportRequest(template="carrier-x", files=(str(first), str(swapped), str(wider)))
    summary = await importer(app).run(request)
    assert (summary.rows_charged, summary.rows_rejected) == (1, 3), summary.problems
    assert text_of(summary.rejects_path) == (
        HEADER
        + "a1,acc1,999,2026-03-03 09:00:00,61,O,,\n"
        + "b1,acc1,998,2026-03-03 09:00:00,61,O,,\n"
    )
    own = tmp_path / f"c.import-{summary.id}.file-3.rejects.csv"
    assert own.read_text() == wider.read_text()
    assert f"c.csv: its columns differ; its rejected rows are in {own}" in text_of(
        summary.report_path
    )


async def test_an_unknown_template_is_refused_naming_it(app: RunningApp, tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text(HEADER)
    with pytest.raises(OcsError) as refused:
        await run_import(app, path, template="nope")
    assert refused.value.field == "template"


class Uncompilable:
    """A template compilation that fails, as the test's cue."""

    def __init__(self, template: object) -> None:
        """Fail."""
        raise ValueError("the template does not compile (the test's cue)")


async def test_a_template_that_does_not_compile_leaves_no_import_running(
    app: RunningApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Compiled after the import's row was made, outside the code that stores a failure,
    # it left the row running, to be marked "interrupted" later: a misleading error.
    monkeypatch.setattr(importer_module, "CompiledTemplate", Uncompilable)
    await setup_mediation(app)
    path = tmp_path / "x.csv"
    path.write_text(HEADER)
    with pytest.raises(ValueError, match="does not compile"):
        await run_import(app, path)
    assert await app.services.pool.fetch("SELECT state FROM usage_imports") == []


async def test_the_api_imports_a_body_and_serves_the_import_and_its_rejects(
    app: RunningApp,
) -> None:
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    body = (
        HEADER
        + "a1,acc1,442071234567,2026-03-03 09:00:00,61,O,,\n"
        + "a2,acc1,999,2026-03-03 09:00:00,61,O,,\n"
    )
    response = await app.client.post(
        "/v1/usage/imports?template=carrier-x&file_name=march.csv",
        data=body.encode(),
        headers={"Content-Type": "text/csv"},
    )
    answer = await response.json()
    assert response.status == 200, answer
    assert (answer["rows_charged"], answer["rows_rejected"]) == (1, 1)
    assert answer["amounts"] == {"EUR": "0.040000"}
    assert answer["problems"][0]["line"] == 3
    status, shown = await app.get(f"/v1/usage/imports/{answer['id']}")
    assert status == 200
    assert (shown["state"], shown["rows_charged"], shown["has_rejects"]) == ("done", 1, True)
    response = await app.client.get(f"/v1/usage/imports/{answer['id']}/rejects")
    assert response.status == 200
    assert await response.text() == HEADER + "a2,acc1,999,2026-03-03 09:00:00,61,O,,\n"

    response = await app.client.post(
        "/v1/usage/imports?template=carrier-x&mode=sometimes", data=body.encode()
    )
    refused = await response.json()
    assert response.status == 400
    assert refused["error"]["field"] == "mode"
    # A name of dots alone names a folder: refused, not taken for a lost backend.
    for name in (".", ".."):
        response = await app.client.post(
            f"/v1/usage/imports?template=carrier-x&file_name={name}", data=body.encode()
        )
        refused = await response.json()
        assert (response.status, refused["error"]["field"]) == (400, "file_name"), refused
    status, _ = await app.get("/v1/usage/imports/999")
    assert status == 404


def bytes_of(path: str) -> bytes:
    """A file the import wrote, as bytes (a rejects file in its template's encoding)."""
    return Path(path).read_bytes()


async def test_a_cp1252_templates_rejects_are_in_cp1252_and_import_again_once_fixed(
    app: RunningApp, tmp_path: Path
) -> None:
    # The rejects file was written in UTF-8 whatever the template's encoding, so a cp1252
    # template could not read its own header ("Durée") back; and the API took only UTF-8.
    french = {
        **TEMPLATE,
        "format": {"kind": "csv", "delimiter": ";", "header": True, "encoding": "cp1252"},
        "columns": {**TEMPLATE["columns"], "duration": "Durée"},
    }
    await setup_mediation(app, french)
    await new_account(app, "acc1", "10.00")
    header = "id;account;called;start;Durée;dir;country;type\n"
    bad = "f1;personne;442071234567;2026-03-03 09:00:00;61;O;Société;\n"
    path = tmp_path / "fr.csv"
    path.write_bytes((header + bad).encode("cp1252"))
    summary = await run_import(app, path)
    assert (summary.rows_charged, summary.rows_rejected) == (0, 1)
    assert summary.rejects_path is not None
    rejected = bytes_of(summary.rejects_path)
    assert rejected == (header + bad).encode("cp1252")
    fixed = tmp_path / "fixed.csv"
    fixed.write_bytes(rejected.replace(b"personne", b"acc1"))
    again = await run_import(app, fixed)
    assert (again.rows_charged, again.rows_rejected) == (1, 0)

    # Through the API: the body in the template's encoding, the rejects served in it.
    body = header + "f2;acc1;442071234567;2026-03-03 09:10:00;61;O;Société;\n" + bad
    response = await app.client.post(
        "/v1/usage/imports?template=carrier-x",
        data=body.encode("cp1252"),
        headers={"Content-Type": "text/csv"},
    )
    answer = await response.json()
    assert response.status == 200, answer
    assert (answer["rows_charged"], answer["rows_rejected"]) == (1, 1)
    response = await app.client.get(f"/v1/usage/imports/{answer['id']}/rejects")
    assert response.status == 200
    assert response.charset == "windows-1252"
    assert await response.read() == (header + bad).encode("cp1252")
    assert await balance(app, "acc1") == 10_000_000 - 2 * 40_000
    # A body that is not text in it is refused whole, naming the byte.
    response = await app.client.post(
        "/v1/usage/imports?template=carrier-x",
        data=header.encode("cp1252") + b"f3;acc1;\x81\n",
        headers={"Content-Type": "text/csv"},
    )
    refused = await response.json()
    assert (response.status, refused["error"]["field"]) == (400, "body"), refused
    assert refused["error"]["message"] == (
        "body: is not text in the template's encoding, cp1252: byte 55 of the body"
    )


async def test_imported_calls_are_invoiced_as_calls_not_as_service_events(
    app: RunningApp, tmp_path: Path
) -> None:
    # Imported calls were stored as "usage" like a service's events: each called number
    # became an invoice line of its own, with no rate type (so no rate type's tax code),
    # and the calls were left off the itemised list.
    await billed_account(app)
    services = app.services
    path = tmp_path / "carrier.csv"
    path.write_text(
        HEADER
        + "i1,acc1,442071234567,2026-03-03 09:00:00,61,O,,\n"
        + "i2,acc1,442079999999,2026-03-03 09:10:00,30,O,,\n"
    )
    assert (await run_import(app, path)).rows_charged == 2
    stored = await stored_cdrs(app, "carrier-x", 2)
    assert {row["termination_cause"] for row in stored} == {"imported"}
    await run(services, "2026-03")
    (invoice,) = await invoices(services)
    calls = [line for line in invoice["lines"] if line["kind"] == "usage"]
    assert [(line["calls"], line["seconds"], line["amount"]) for line in calls] == [(2, 91, 60_000)]
    assert all(line["kind"] != "usage_event" for line in invoice["lines"])


async def test_the_import_counts_the_calls_rated_at_prices_set_after_they_started(
    app: RunningApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Decks and tariffs have no effective dates: March's calls imported after the plan's
    # deck was loaded (today) are rated at today's prices. The import says how many (the
    # call an hour from now is not one of them), and logs it once.
    await setup_mediation(app)
    pool = app.services.pool
    changed = await pool.fetchval("SELECT prices_changed_at FROM plans WHERE id = 'retail'")
    assert changed is not None
    # The same deck again changes no price, and leaves the time.
    await catalog_store.import_deck(pool, "retail", parse_deck(DECK))
    again = await pool.fetchval("SELECT prices_changed_at FROM plans WHERE id = 'retail'")
    assert again == changed
    await new_account(app, "acc1", "10.00")
    later = datetime.now(ZoneInfo("America/Toronto")) + timedelta(hours=1)
    path = tmp_path / "march.csv"
    path.write_text(
        HEADER
        + "m1,acc1,442071234567,2026-03-03 09:00:00,61,O,,\n"
        + "m2,acc1,16135550111,2026-03-03 10:00:00,6,O,CA,onnet-ca\n"
        + f"m3,acc1,442071234567,{later:%Y-%m-%d %H:%M:%S},61,O,,\n"
    )
    summary = await run_import(app, path)
    assert (summary.rows_charged, summary.rows_priced_after_start) == (3, 2)
    status, shown = await app.get(f"/v1/usage/imports/{summary.id}")
    assert (status, shown["rows_priced_after_start"]) == (200, 2), shown
    told = [r for r in caplog.records if "rated records at their plan's current" in r.message]
    assert [(r.__dict__["records"], r.__dict__["plans"]) for r in told] == [(2, ["retail"])]
    # A rate by rate type set now changes the plan's prices too.
    response = await app.client.put(
        "/v1/plans/retail/rate-types",
        json={"rate_type": "Canada On-Net", "name": "On-net CA", "price": "0.005"},
    )
    assert response.status == 200, await response.text()
    moved = await pool.fetchval("SELECT prices_changed_at FROM plans WHERE id = 'retail'")
    assert moved > changed
