"""A supplier's record is debited once, whatever the account a row names, and an import's
progress and outcome survive a failure or a killed process (decision 0051).

Costs from tests/usage_import_helpers.py's deck: UK 0.02 a minute in 60 s blocks, so
61 s cost 0.04 and 30 s 0.02.
"""

import asyncio
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ocs.balances import keys
from ocs.balances.script_args import UsageEvent
from ocs.balances.store import now_ms
from ocs.errors import OcsError, Reason
from ocs.mediation import seen_ids
from ocs.mediation.import_run import BATCH
from ocs.mediation.importer import ImportRequest, UsageImporter
from ocs.services import Services
from tests.conftest import RunningApp, eventually
from tests.serve_process import serve_env
from tests.usage_import_helpers import (
    HEADER,
    TEMPLATE,
    CuedImporter,
    add_template,
    balance,
    importer,
    new_account,
    one_call_file,
    row,
    run_import,
    setup_mediation,
    stored_cdrs,
    text_of,
)

OPENING = 10_000_000


async def test_a_record_id_repeated_in_one_import_is_charged_once_and_the_repeat_rejected(
    app: RunningApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A supplier's record id names one call: seen again in the same import (for another
    # account, another duration, or in the next file), the later row is wrong.
    # Few ids kept before they are merged, and small chunks, so that repeats are found
    # in the sorted ids, in the newest ones and within a chunk alike.
    monkeypatch.setattr(seen_ids, "SEEN_MERGE", 3)
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    await new_account(app, "acc2", "10.00")
    first = tmp_path / "march.csv"
    first.write_text(
        HEADER
        + row("r1", "acc1")
        + "".join(row(f"n{n}", "acc1", minute=n) for n in range(1, 8))
        + row("r1", "acc2")  # line 10: the same record for another account
        + row("n3", "acc1", seconds=30)  # line 11: the same record, another duration
    )
    second = tmp_path / "april.csv"
    second.write_text(HEADER + row("n7", "acc2") + row("a1", "acc2"))
    small = importer(app)
    small.chunk_rows = 2
    summary = await small.run(ImportRequest(template="carrier-x", files=(str(first), str(second))))
    assert (summary.rows_charged, summary.rows_rejected) == (9, 3), summary.problems
    assert {(p.file, p.line): p.problems for p in summary.problems} == {
        ("march.csv", 10): (
            "record_id: 'r1' repeats line 2 of march.csv; a supplier's record is debited once",
        ),
        ("march.csv", 11): (
            "record_id: 'n3' repeats line 5 of march.csv; a supplier's record is debited once",
        ),
        ("april.csv", 2): (
            "record_id: 'n7' repeats line 9 of march.csv; a supplier's record is debited once",
        ),
    }
    assert await balance(app, "acc1") == OPENING - 8 * 40_000
    assert await balance(app, "acc2") == OPENING - 40_000
    assert text_of(summary.rejects_path) == (
        HEADER + row("r1", "acc2") + row("n3", "acc1", seconds=30) + row("n7", "acc2")
    )


async def test_a_record_imported_before_for_another_account_or_quantity_is_rejected(
    app: RunningApp, tmp_path: Path
) -> None:
    # Imported again at once, before any wait for the CDRs: the import itself waits until
    # the ledger writer has stored them, then finds the record in PostgreSQL.
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    await new_account(app, "acc2", "10.00")
    path = tmp_path / "carrier.csv"
    path.write_text(HEADER + row("r1", "acc1"))
    assert (await run_import(app, path)).rows_charged == 1

    other = tmp_path / "other.csv"
    other.write_text(HEADER + row("r1", "acc2"))
    moved = await run_import(app, other)
    assert (moved.rows_charged, moved.rows_repeated, moved.rows_rejected) == (0, 0, 1)
    assert moved.problems[0].problems == (
        "record_id: 'r1' was already imported for account 'acc1' (quantity 61);"
        " this row has account 'acc2' (quantity 61)",
    )
    longer = tmp_path / "longer.csv"
    longer.write_text(HEADER + row("r1", "acc1", seconds=30))
    changed = await run_import(app, longer)
    assert (changed.rows_charged, changed.rows_repeated, changed.rows_rejected) == (0, 0, 1)
    assert changed.problems[0].problems == (
        "record_id: 'r1' was already imported for account 'acc1' (quantity 61);"
        " this row has account 'acc1' (quantity 30)",
    )
    # The same record as imported is a repeat, and moves nothing.
    same = await run_import(app, path)
    assert (same.rows_charged, same.rows_repeated, same.rows_rejected) == (0, 1, 0)
    assert await balance(app, "acc1") == OPENING - 40_000
    assert await balance(app, "acc2") == OPENING


async def test_two_imports_of_one_supplier_at_once_debit_a_record_once(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    await new_account(app, "acc2", "10.00")
    one = tmp_path / "one.csv"
    one.write_text(HEADER + row("r1", "acc1") + row("r2", "acc1", minute=1))
    two = tmp_path / "two.csv"
    two.write_text(HEADER + row("r1", "acc2") + row("r2", "acc1", minute=1))
    first, second = await asyncio.gather(run_import(app, one), run_import(app, two))
    # One ran after the other: whichever came second found both records imported.
    assert sorted([first.rows_charged, second.rows_charged]) == [0, 2]
    later = second if second.rows_charged == 0 else first
    assert (later.rows_repeated, later.rows_rejected) == (1, 1)
    debited = OPENING * 2 - await balance(app, "acc1") - await balance(app, "acc2")
    assert debited == 2 * 40_000
    assert len(await stored_cdrs(app, "carrier-x", 2)) == 2


async def test_a_new_version_of_a_template_keeps_its_supplier_so_a_file_is_charged_once(
    app: RunningApp, tmp_path: Path
) -> None:
    # A version naming another supplier was stored, and the same file imported under it
    # was charged again: a record is once per (supplier, record id).
    path = await one_call_file(app, tmp_path)
    first = await run_import(app, path)
    assert first.rows_charged == 1
    status, refused = await app.post("/v1/usage-templates", {**TEMPLATE, "supplier": "carrierx"})
    assert (status, refused["error"]["field"]) == (400, "supplier"), refused
    assert "is for supplier 'carrier-x'" in refused["error"]["message"]
    # A version of the same supplier is stored as ever.
    status, saved = await app.post("/v1/usage-templates", {**TEMPLATE, "description": "v2"})
    assert (status, saved["version"]) == (201, 2), saved
    await stored_cdrs(app, "carrier-x", 1)
    again = await run_import(app, path)
    assert (again.template_version, again.rows_charged, again.rows_repeated) == (
        "carrier-x@2",
        0,
        1,
    )
    assert await balance(app, "acc1") == OPENING - 40_000
    # A shipped template's name stored as the operator's own keeps the shipped supplier.
    asterisk = {**TEMPLATE, "name": "asterisk-cdr-csv", "supplier": "my-pbx"}
    status, refused = await app.post("/v1/usage-templates", asterisk)
    assert (status, refused["error"]["field"]) == (400, "supplier"), refused
    status, saved = await app.post("/v1/usage-templates", {**asterisk, "supplier": "asterisk"})
    assert (status, saved["version"]) == (201, 1), saved


async def test_a_live_usage_event_cannot_take_the_id_of_an_imported_record(
    app: RunningApp, tmp_path: Path
) -> None:
    # POST /v1/usage took the event id "usage:carrier-x:r1", the one the import gives the
    # supplier's record r1 in the same per-account result keys: r1 was then a repeat,
    # never charged.
    path = await one_call_file(app, tmp_path)
    for event_id in ("usage:carrier-x:r1", "usage:"):
        status, refused = await app.post(
            "/v1/usage", {"account": "acc1", "event_id": event_id, "service": "UK", "quantity": 1}
        )
        assert (status, refused["error"]["field"]) == (400, "event_id"), refused
    summary = await run_import(app, path)
    assert (summary.rows_charged, summary.rows_repeated) == (1, 0)
    assert await balance(app, "acc1") == OPENING - 40_000


async def test_a_running_import_shows_its_counts_before_it_ends(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    accounts = ["acc1", "acc2"]
    assert keys.bucket_of(accounts[0]) != keys.bucket_of(accounts[1])
    for account in accounts:
        await new_account(app, account, "10.00")
    path = tmp_path / "carrier.csv"
    path.write_text(HEADER + row("r1", "acc1") + row("r2", "acc1") + row("r3", "acc2"))
    # The first batch (one bucket's) is debited; the second waits, as on a slow Redis.
    cued = CuedImporter(app, free=1, save_every=0.02)
    running = asyncio.create_task(cued.run(ImportRequest(template="carrier-x", files=(str(path),))))
    try:

        async def counted() -> bool:
            found = await app.services.pool.fetchrow(
                "SELECT state, rows_charged FROM usage_imports ORDER BY id DESC LIMIT 1"
            )
            return found is not None and tuple(found) in (("running", 1), ("running", 2))

        await eventually(counted, what="the running import's counts stored")
    finally:
        cued.gate.set()
        summary = await running
    assert (summary.state, summary.rows_charged) == ("done", 3)
    status, shown = await app.get(f"/v1/usage/imports/{summary.id}")
    assert (status, shown["state"], shown["rows_charged"]) == (200, "done", 3)


async def test_a_failed_import_stores_what_its_debits_in_flight_moved(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    accounts = ["acc1", "acc2", "acc3"]
    assert len({keys.bucket_of(a) for a in accounts}) == 3
    for account in accounts:
        await new_account(app, account, "10.00")
    path = tmp_path / "carrier.csv"
    path.write_text(HEADER + "".join(row(f"r{n}", a, minute=n) for n, a in enumerate(accounts)))
    # Three batches go at once: the first fails, the other two are still with Redis.
    cued = CuedImporter(app, free=1, fail_first=1, gate_timeout=0.5)
    with pytest.raises(ConnectionError):
        await cued.run(ImportRequest(template="carrier-x", files=(str(path),)))
    debited = [OPENING - await balance(app, a) for a in accounts]
    assert sorted(debited) == [0, 40_000, 40_000]
    stored = await app.services.pool.fetchrow(
        "SELECT state, rows_charged, amounts::text, error FROM usage_imports"
    )
    # What the import says it charged is what the balances lost.
    assert (stored["state"], stored["rows_charged"]) == ("failed", 2)
    assert stored["amounts"] == '{"EUR": 80000}'
    assert "Redis went away" in stored["error"]
    assert len(await stored_cdrs(app, "carrier-x", 2)) == 2


class SecondDebitFails(CuedImporter):
    """An importer whose first debit is slow (it waits for the gate), whose second one
    fails at once, and whose others go as Redis answers them."""

    async def debit(self, bucket: int, import_id: int, events: list[UsageEvent]) -> list[str]:
        """Wait, fail, or debit, by the call's place."""
        self.calls += 1
        if self.calls == 2:
            raise ConnectionError("Redis refused the script (the test's cue)")
        if self.calls == 1:
            await self.wait_for_gate()
        return await UsageImporter.debit(self, bucket, import_id, events)


async def test_a_failed_debit_stops_the_import_sending_any_more(
    app: RunningApp, tmp_path: Path
) -> None:
    # A debit failed while an earlier one was still with Redis: the import went on
    # reading and sending the next batches until the failed one was the oldest, so
    # money kept moving after the failure. No batch goes once one has failed; the
    # one in flight is waited for and counted.
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    path = tmp_path / "carrier.csv"
    rows = 5 * BATCH  # five batches of the one account's bucket, one a chunk
    path.write_text(HEADER + "".join(row(f"r{n}", "acc1", minute=n % 60) for n in range(rows)))
    cued = SecondDebitFails(app, gate_timeout=1, chunk_rows=BATCH)
    with pytest.raises(ConnectionError):
        await cued.run(ImportRequest(template="carrier-x", files=(str(path),)))
    assert cued.calls == 2
    assert OPENING - await balance(app, "acc1") == BATCH * 40_000
    stored = await app.services.pool.fetchrow(
        "SELECT state, rows_charged, amounts::text, error FROM usage_imports"
    )
    assert (stored["state"], stored["rows_charged"]) == ("failed", BATCH)
    assert stored["amounts"] == f'{{"EUR": {BATCH * 40_000}}}'
    assert "Redis refused the script" in stored["error"]


def awaited_by(task: "asyncio.Task[Any]") -> Iterator[str]:
    """The names of the coroutines a task is in, outermost first (down ``cr_await``:
    ``get_stack`` shows only the outermost of a suspended task)."""
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_code"):
        yield coro.cr_code.co_name
        coro = coro.cr_await


async def draining() -> bool:
    """Whether a task of the loop is in an import's wait for its debits in flight."""
    return any("drain" in awaited_by(task) for task in asyncio.all_tasks())


@pytest.mark.parametrize("cancels", [1, 2])
async def test_an_import_cancelled_while_redis_answers_a_debit_stores_what_it_moved(
    app: RunningApp, tmp_path: Path, cancels: int
) -> None:
    # Ctrl-C or SIGTERM while a debit's answer is on its way: the script ran, so the
    # import waits for its answer and counts it, even when cancelled again meanwhile.
    # Awaiting the debit's task passed the cancel on to it, and the answer was lost.
    path = await one_call_file(app, tmp_path, "carrier.csv")
    # The answer comes 2 s after the debit, or once the import has stored its outcome
    # (CuedImporter opens the gate then): an import that stops waiting for it stores 0.
    cued = CuedImporter(app, free=0, answer_late=True, gate_timeout=2)
    running = asyncio.create_task(cued.run(ImportRequest(template="carrier-x", files=(str(path),))))

    async def debited() -> bool:
        return cued.debited == 1

    await eventually(debited, what="the debit made, its answer held back")
    running.cancel()
    if cancels == 2:
        await eventually(draining, what="the cancelled import waiting for its debit")
        running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    moved = OPENING - await balance(app, "acc1")
    assert moved == 40_000
    stored = await app.services.pool.fetchrow(
        "SELECT state, rows_charged, amounts::text FROM usage_imports"
    )
    assert (stored["state"], stored["rows_charged"]) == ("failed", 1)
    assert stored["amounts"] == f'{{"EUR": {moved}}}'


async def test_an_import_whose_process_ended_is_shown_failed_and_the_next_one_runs(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    # What a killed import leaves: its row running, its progress as last saved.
    insert = (
        "INSERT INTO usage_imports (template, template_version, supplier, files, mode,"
        " rows_read, rows_charged) VALUES ('carrier-x', 'carrier-x@1', 'carrier-x',"
        " '{/data/march.csv}', 'good_rows', 4000, 3950) RETURNING id"
    )
    killed = await app.services.pool.fetchval(insert)
    status, shown = await app.get(f"/v1/usage/imports/{killed}")
    assert status == 200, shown
    assert (shown["state"], shown["rows_charged"]) == ("failed", 3950)
    assert shown["error"] == "interrupted: the importing process ended before the import did"

    # Another, found by the supplier's next import.
    also_killed = await app.services.pool.fetchval(insert)
    path = tmp_path / "carrier.csv"
    path.write_text(HEADER + row("r1", "acc1"))
    summary = await run_import(app, path)
    assert (summary.state, summary.rows_charged) == ("done", 1)
    marked = await app.services.pool.fetchrow(
        "SELECT state, error FROM usage_imports WHERE id = $1", also_killed
    )
    assert tuple(marked) == (
        "failed",
        "interrupted: the importing process ended before the import did",
    )
    rows = await app.services.pool.fetch(
        "SELECT id, state, finished_at IS NOT NULL AS finished FROM usage_imports ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [
        (killed, "failed", True),
        (also_killed, "failed", True),
        (summary.id, "done", True),
    ]


KILLED_ROWS = 30_000
KILLED_ACCOUNTS = 16


async def test_an_import_killed_mid_file_is_shown_interrupted_and_the_file_again_charges_the_rest(
    app: RunningApp, tmp_path: Path
) -> None:
    # `ocs usage import` killed with SIGKILL once some rows are charged: its row shows
    # the counts it had saved, `failed` (interrupted) once its session is gone, and the
    # same file imported again charges each record the killed one did not, once.
    await setup_mediation(app)
    accounts = [f"k{n:02d}" for n in range(KILLED_ACCOUNTS)]
    for account in accounts:
        await new_account(app, account, "10000.00")
    path = tmp_path / "carrier.csv"
    path.write_text(
        HEADER
        + "".join(
            row(f"r{n}", accounts[n % KILLED_ACCOUNTS], minute=n % 60) for n in range(KILLED_ROWS)
        )
    )
    pool = app.services.pool
    env = serve_env(
        app.services.settings,
        {"OCS_USAGE_IMPORT_SAVE_EVERY": "0.05", "OCS_DATA_DIR": str(tmp_path / "var")},
    )
    # Its log goes to a file: a pipe nobody reads while it runs could fill and stop it.
    log_path = tmp_path / "import.log"
    log_file = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocs",
        "usage",
        "import",
        "--template",
        "carrier-x",
        str(path),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log_file,
    )
    try:

        async def charged_and_saved() -> bool:
            # Rows in the ledger (CDRs the writer stored), and a save counting some.
            written = await pool.fetchval("SELECT count(*) FROM cdrs WHERE supplier = 'carrier-x'")
            saved = await pool.fetchval("SELECT max(rows_charged) FROM usage_imports")
            return bool(written and saved)

        await eventually(charged_and_saved, within=60, what="the import charging rows")
    finally:
        process.kill()
        await process.wait()
        log_file.close()
    assert process.returncode == -signal.SIGKILL, log_path.read_text()
    left = await pool.fetchrow("SELECT * FROM usage_imports")
    assert left["state"] == "running"
    assert 0 < left["rows_charged"] < KILLED_ROWS

    status, shown = await app.get(f"/v1/usage/imports/{left['id']}")
    assert status == 200, shown
    assert (shown["state"], shown["error"]) == (
        "failed",
        "interrupted: the importing process ended before the import did",
    )
    assert (shown["rows_read"], shown["rows_charged"]) == (left["rows_read"], left["rows_charged"])

    # Imported again: what the killed import debited is a repeat, the rest is charged.
    summary = await run_import(app, path)
    assert summary.state == "done", summary.problems
    assert summary.rows_rejected == 0, summary.problems
    assert summary.rows_charged + summary.rows_repeated == KILLED_ROWS
    # Its last save counted no more than the killed import had debited.
    assert left["rows_charged"] <= summary.rows_repeated < KILLED_ROWS
    cdrs = await stored_cdrs(app, "carrier-x", KILLED_ROWS)
    assert len({r["record_id"] for r in cdrs}) == KILLED_ROWS
    debited = [OPENING * 1000 - await balance(app, a) for a in accounts]
    assert sum(debited) == KILLED_ROWS * 40_000


async def test_an_import_waits_for_ledger_entries_whose_ids_are_ahead_of_its_clock(
    services: Services, tmp_path: Path
) -> None:
    # An earlier import's ledger entry whose id a node with a clock ahead made (another
    # node of a Redis Cluster, or a clock that stepped back since): no ledger writer runs
    # here, so the entry stays unwritten, and its record's CDR is not in PostgreSQL yet.
    stream = keys.ledger(7)
    await services.redis.xadd(
        stream, {"account": "acc1", "amount": "-40000"}, id=f"{now_ms() + 3_600_000}-0"
    )
    path = tmp_path / "Master.csv"
    path.write_text("")
    imports = UsageImporter(
        services.pool,
        services.store,
        services.catalog,
        database_url=services.database_url,
        result_ttl=3600,
        ledger_wait=0.2,
    )
    request = ImportRequest(template="asterisk-cdr-csv", files=(str(path),))
    with pytest.raises(OcsError) as refused:
        await imports.run(request)
    assert refused.value.reason == Reason.UNAVAILABLE
    assert "is the ledger writer running?" in refused.value.message
    # Written (the writer deletes what it has stored): the import goes on.
    await services.redis.delete(stream)
    assert (await imports.run(request)).state == "done"


async def test_the_same_file_again_is_a_repeat_when_its_member_moved_to_another_account(
    app: RunningApp, tmp_path: Path
) -> None:
    # The rows name no account, only a member (the file's account column read as one):
    # what they name is what is compared, not the account the member comes to now.
    await setup_mediation(app)
    columns = {**TEMPLATE["columns"], "member": "account"}
    del columns["account"]
    await add_template(app, "carrier-m", "carrier-x", columns)
    await new_account(app, "acc1", "10.00")
    await new_account(app, "acc2", "10.00")
    await app.services.pool.execute(
        "INSERT INTO account_members (member, account_id) VALUES ('sip100', 'acc1')"
    )
    path = tmp_path / "members.csv"
    path.write_text(HEADER + row("r1", "sip100"))
    first = await run_import(app, path, template="carrier-m")
    assert first.rows_charged == 1, first.problems
    await stored_cdrs(app, "carrier-x", 1)
    await app.services.pool.execute(
        "UPDATE account_members SET account_id = 'acc2' WHERE member = 'sip100'"
    )
    again = await run_import(app, path, template="carrier-m")
    assert (again.rows_charged, again.rows_repeated, again.rows_rejected) == (0, 1, 0)
    # Another member, or another quantity, for the record is still refused.
    other = tmp_path / "other.csv"
    other.write_text(HEADER + row("r1", "sip200") + row("r2", "sip100"))
    await app.services.pool.execute(
        "INSERT INTO account_members (member, account_id) VALUES ('sip200', 'acc2')"
    )
    moved = await run_import(app, other, template="carrier-m")
    assert (moved.rows_charged, moved.rows_rejected) == (1, 1)
    assert moved.problems[0].problems == (
        "record_id: 'r1' was already imported for member 'sip100' (quantity 61);"
        " this row has member 'sip200' (quantity 61)",
    )
    longer = tmp_path / "longer.csv"
    longer.write_text(HEADER + row("r1", "sip100", seconds=30))
    changed = await run_import(app, longer, template="carrier-m")
    assert (changed.rows_repeated, changed.rows_rejected) == (0, 1)
    assert await balance(app, "acc1") == OPENING - 40_000
    assert await balance(app, "acc2") == OPENING - 40_000
