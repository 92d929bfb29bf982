"""Cells a CDR cannot hold are their rows' problems, never a debit the ledger writer then
cannot store: a record id or called number too long for the CDR table's indexes, and a
start (or an end) outside 1970-3000, in every start format, over the API and the command
line; so is a member or caller id longer than a live call takes. A row with such a cell
once moved money with no CDR, stopped the ledger writer for every account, and refused
every later import (decision 0032, addendum 2026-12-07)."""

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import asyncpg

from ocs.balances import keys
from ocs.config import Settings
from ocs.mediation.importer import ImportRequest
from tests.conftest import RunningApp, eventually
from tests.usage_import_helpers import (
    HEADER,
    TEMPLATE,
    UK_NUMBER,
    balance,
    importer,
    ledger_writer_beside,
    new_account,
    row,
    run_import,
    setup_mediation,
    stored_cdrs,
)

EUR = 1_000_000
UK_CALL = 40_000  # 61 s to the UK, billed 120 s at 0.02/min
UTC_TEMPLATE: dict[str, Any] = {
    **TEMPLATE,
    "name": "carrier-utc",
    "supplier": "carrier-utc",
    "start": {"format": "%Y-%m-%d %H:%M:%S", "time_zone": "UTC"},
}


async def dead_letters(app: RunningApp) -> int:
    """Entries the ledger writer set aside, in every bucket."""
    pipe = app.services.redis.pipeline(transaction=False)
    for bucket in range(keys.BUCKETS):
        pipe.xlen(keys.dead_letters(bucket))
    return sum(await pipe.execute())


async def test_a_record_id_too_long_for_a_cdr_is_its_rows_problem(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    await new_account(app, "acc2", "10.00")
    # PostgreSQL's b-tree refuses an index row this long (random: a repeated text compresses).
    long_id = secrets.token_hex(1_600)
    path = tmp_path / "a.csv"
    path.write_text(
        HEADER + row("r1", "acc1") + row(long_id, "acc1", minute=1) + row("r3", "acc2", minute=2)
    )
    summary = await run_import(app, path)
    assert (summary.rows_charged, summary.rows_rejected) == (2, 1), summary.problems
    assert [(p.line, p.problems) for p in summary.problems] == [
        (3, ('record_id (column "id"): 3,200 characters, more than the 128 a record id may have',))
    ]
    assert await balance(app, "acc1") == 10 * EUR - UK_CALL
    cdrs = await stored_cdrs(app, "carrier-x", 2)
    assert [(c["record_id"], c["account_id"]) for c in cdrs] == [("r1", "acc1"), ("r3", "acc2")]

    # The ledger writer keeps up: the next import waits for nothing and is charged.
    again = tmp_path / "b.csv"
    again.write_text(HEADER + row("z1", "acc2", minute=3))
    later = await importer(app, ledger_wait=5.0).run(
        ImportRequest(template="carrier-x", files=(str(again),))
    )
    assert (later.state, later.rows_charged) == ("done", 1)
    await stored_cdrs(app, "carrier-x", 3)
    assert await dead_letters(app) == 0


async def test_a_called_number_too_long_for_a_cdr_is_its_rows_problem(
    app: RunningApp, tmp_path: Path
) -> None:
    # An on-net call is rated by its rate type, and its CDR keeps the called number as
    # the file gives it, in a column the CDR table indexes.
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    called = "1613" + "5" * 2_996
    path = tmp_path / "a.csv"
    path.write_text(
        HEADER
        + "n1,acc1,16135550100,2026-03-03 09:00:00,60,O,,onnet\n"
        + f"n2,acc1,{called},2026-03-03 09:01:00,60,O,,onnet\n"
    )
    summary = await run_import(app, path)
    assert (summary.rows_charged, summary.rows_rejected) == (1, 1), summary.problems
    assert [(p.line, p.problems) for p in summary.problems] == [
        (
            3,
            ("called: 3,000 characters, more than the 64 a called number may have",),
        )
    ]
    # 60 s on-net at 0.004/min.
    assert await balance(app, "acc1") == 10 * EUR - 4_000
    [cdr] = await stored_cdrs(app, "carrier-x", 1)
    assert (cdr["record_id"], cdr["destination"]) == ("n1", "16135550100")


async def test_a_member_or_caller_id_longer_than_a_live_call_takes_is_its_rows_problem(
    app: RunningApp,
) -> None:
    # A row naming its account and a 3,200-character member (or caller id) was charged,
    # its CDR (and the itemised invoice) keeping the whole text; one naming no account
    # was refused quoting all of it. POST /v1/calls takes 64 characters of each.
    template = {
        **TEMPLATE,
        "columns": {**TEMPLATE["columns"], "member": "member", "caller": "caller"},
    }
    await setup_mediation(app, template)
    await new_account(app, "acc1", "10.00")
    member = secrets.token_hex(1_600)
    body = (
        "id,account,member,caller,called,start,duration,dir,country,type\n"
        f"r1,acc1,{'m' * 64},{'1' * 64},{UK_NUMBER},2026-03-03 09:00:00,61,O,,\n"
        f"r2,acc1,{member},,{UK_NUMBER},2026-03-03 09:01:00,61,O,,\n"
        f"r3,acc1,,{'1' * 3_000},{UK_NUMBER},2026-03-03 09:02:00,61,O,,\n"
        f"r4,,{member},,{UK_NUMBER},2026-03-03 09:03:00,61,O,,\n"
    )
    response = await app.client.post(
        "/v1/usage/imports?template=carrier-x&file_name=a.csv", data=body.encode()
    )
    answer = await response.json()
    assert response.status == 200, answer
    assert (answer["rows_charged"], answer["rows_rejected"]) == (1, 3)
    assert [(p["line"], p["problems"]) for p in answer["problems"]] == [
        (3, ["member: 3,200 characters, more than the 64 a member may have"]),
        (4, ["caller: 3,000 characters, more than the 64 a caller id may have"]),
        (5, ["member: 3,200 characters, more than the 64 a member may have"]),
    ]
    assert await balance(app, "acc1") == 10 * EUR - UK_CALL
    [cdr] = await stored_cdrs(app, "carrier-x", 1)
    assert (cdr["record_id"], cdr["member"], cdr["caller"]) == ("r1", "m" * 64, "1" * 64)


async def test_a_start_in_the_year_9999_is_a_rows_problem_over_the_api(
    app: RunningApp,
) -> None:
    # Toronto's 9999-12-31 23:00 is in the year 10000 in UTC: reading it overflowed, the
    # import answered 500 and the good row of the chunk was not charged.
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    body = (
        HEADER
        + f"r1,acc1,{UK_NUMBER},2026-03-03 09:00:00,61,O,,\n"
        + f"r2,acc1,{UK_NUMBER},9999-12-31 23:00:00,61,O,,\n"
        + f"r3,acc1,{UK_NUMBER},1969-12-31 09:00:00,61,O,,\n"
    )
    response = await app.client.post(
        "/v1/usage/imports?template=carrier-x&file_name=a.csv", data=body.encode()
    )
    answer = await response.json()
    assert response.status == 200, answer
    assert (answer["rows_charged"], answer["rows_rejected"]) == (1, 2)
    assert [(p["line"], p["problems"]) for p in answer["problems"]] == [
        (3, ["start: '9999-12-31 23:00:00' is after the year 3000"]),
        (4, ["start: '1969-12-31 09:00:00' is before 1970"]),
    ]
    assert await balance(app, "acc1") == 10 * EUR - UK_CALL
    await stored_cdrs(app, "carrier-x", 1)

    # In UTC, 9999-12-31 23:59 is a start in range, but 120 s later is the year 10000: the
    # row was charged, its CDR could not be dated and was set aside (no CDR), and once
    # its record id was forgotten a later import charged it again.
    await app.services.pool.execute(
        "INSERT INTO usage_templates (name, version, supplier, definition) VALUES ($1, 1, $2, $3)",
        "carrier-utc",
        "carrier-utc",
        json.dumps(UTC_TEMPLATE),
    )
    body = HEADER + f"u1,acc1,{UK_NUMBER},9999-12-31 23:59:00,120,O,,\n"
    response = await app.client.post(
        "/v1/usage/imports?template=carrier-utc&file_name=b.csv", data=body.encode()
    )
    answer = await response.json()
    assert response.status == 200, answer
    assert (answer["rows_charged"], answer["rows_rejected"]) == (0, 1)
    assert answer["problems"][0]["problems"] == [
        "start: '9999-12-31 23:59:00' is after the year 3000"
    ]
    assert await balance(app, "acc1") == 10 * EUR - UK_CALL

    async def written() -> bool:
        return await app.services.store.oldest_unwritten_ms() is None

    await eventually(written, what="every ledger entry stored")
    assert await dead_letters(app) == 0


def done(ocs: Any, *argv: str) -> Any:
    """A command line that must succeed: its JSON output."""
    code, out, err = ocs(*argv)
    assert code == 0, (argv, err)
    return out


def cdrs_of(settings: Settings, supplier: str) -> list[str]:
    """The record ids of the supplier's CDRs in PostgreSQL."""

    async def fetch() -> list[str]:
        conn = await asyncpg.connect(settings.database_url)
        try:
            rows = await conn.fetch(
                "SELECT record_id FROM cdrs WHERE supplier = $1 ORDER BY record_id", supplier
            )
        finally:
            await conn.close()
        return [r["record_id"] for r in rows]

    return asyncio.run(fetch())


def test_a_start_or_end_after_the_year_3000_is_a_rows_problem_from_the_command_line(
    ocs: Any, settings: Settings, tmp_path: Path
) -> None:
    # In UTC, 9999-12-31 23:59 plus 120 s ends in the year 10000: the row was charged,
    # its CDR could not be dated and was set aside, and a later import charged it again.
    deck = tmp_path / "deck.csv"
    deck.write_text(
        "prefix,zone,price_per_minute,connect_fee,first_block,increment\n44,UK,0.02,0,60,60\n"
    )
    done(ocs, "plans", "create", "retail", "--currency", "EUR")
    done(ocs, "tariffs", "import", "--plan", "retail", str(deck))
    done(ocs, "accounts", "create", "acc1", "--plan", "retail", "--balance", "10.00")
    for template in (TEMPLATE, UTC_TEMPLATE):
        definition = tmp_path / f"{template['name']}.json"
        definition.write_text(json.dumps(template))
        done(ocs, "usage-templates", "add", str(definition))
    path = tmp_path / "utc.csv"
    path.write_text(
        HEADER
        + f"u1,acc1,{UK_NUMBER},2026-03-03 09:00:00,61,O,,\n"
        + f"u2,acc1,{UK_NUMBER},9999-12-31 23:59:00,120,O,,\n"
        + f"u3,acc1,{UK_NUMBER},2999-12-31 23:59:00,120,O,,\n"
    )
    with ledger_writer_beside(settings):
        for attempt in ("first", "again"):
            summary = done(ocs, "usage", "import", "--template", "carrier-utc", str(path))
            assert summary["rows_rejected"] == 2, attempt
            assert summary["problems"] == [
                {
                    "file": "utc.csv",
                    "line": 3,
                    "problems": ["start: '9999-12-31 23:59:00' is after the year 3000"],
                },
                {
                    "file": "utc.csv",
                    "line": 4,
                    "problems": ["duration: 120 seconds from its start end after the year 3000"],
                },
            ], attempt
            assert done(ocs, "accounts", "show", "acc1")["balance"] == "9.960000", attempt

        # Toronto's 9999-12-31 23:00 is in the year 10000 in UTC: reading it overflowed,
        # and the command failed with the good row of its chunk not charged.
        local = tmp_path / "toronto.csv"
        local.write_text(
            HEADER
            + f"t1,acc1,{UK_NUMBER},2026-03-03 09:00:00,61,O,,\n"
            + f"t2,acc1,{UK_NUMBER},9999-12-31 23:00:00,61,O,,\n"
        )
        summary = done(ocs, "usage", "import", "--template", "carrier-x", str(local))
        assert (summary["rows_charged"], summary["rows_rejected"]) == (1, 1)
        assert summary["problems"][0]["problems"] == [
            "start: '9999-12-31 23:00:00' is after the year 3000"
        ]
        assert done(ocs, "accounts", "show", "acc1")["balance"] == "9.920000"

    assert cdrs_of(settings, "carrier-utc") == ["u1"]
    assert cdrs_of(settings, "carrier-x") == ["t1"]
