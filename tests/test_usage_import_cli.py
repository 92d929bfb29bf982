"""`ocs usage import` with a template shipped with ocs: an Asterisk switch's own Master.csv
rated and debited from the command line, an account found by its caller id, and the same
file again moving nothing. A ledger writer runs beside the command line, as `ocs serve`
runs one: an import waits for it, and without it is refused."""

import asyncio
import csv
import io
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ocs.config import Settings
from tests.usage_import_helpers import ledger_writer_beside

DECK = (
    "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"
    "44,UK,0.02,0,60,60\n"
    "1,North America,0.012,0,6,6\n"
)
# Master.csv columns: accountcode, src, dst, dcontext, clid, channel, dstchannel, lastapp,
# lastdata, start, answer, end, duration, billsec, disposition, amaflags, uniqueid, userfield.
MASTER_CSV = (
    '"1001","15145550100","442071234567","from-internal","""Alice"" <15145550100>",'
    '"SIP/1001-01","SIP/trunk-02","Dial","SIP/trunk/442071234567,60","2026-03-01 10:00:00",'
    '"2026-03-01 10:00:05","2026-03-01 10:01:10",70,65,"ANSWERED","DOCUMENTATION",'
    '"1772359200.1",""\n'
    '"1001","15145550100","14165550123","from-internal","""Alice"" <15145550100>",'
    '"SIP/1001-03","SIP/trunk-04","Dial","SIP/trunk/14165550123,60","2026-03-01 10:05:00",,'
    '"2026-03-01 10:05:30",30,0,"NO ANSWER","DOCUMENTATION","1772359500.3",""\n'
    '"","15145550102","14165550123","from-internal","""Carol"" <15145550102>",'
    '"SIP/1003-05","SIP/trunk-06","Dial","SIP/trunk/14165550123,60","2026-03-01 11:00:00",'
    '"2026-03-01 11:00:03","2026-03-01 11:00:10",10,7,"ANSWERED","BILLING","1772362800.5",""\n'
)


def done(ocs: Any, *argv: str) -> Any:
    """A command line that must succeed: its JSON output."""
    code, out, err = ocs(*argv)
    assert code == 0, (argv, err)
    return out


def add_caller(settings: Settings, caller: str, account_id: str) -> None:
    """A caller id (pinless) that identifies the account."""

    async def insert() -> None:
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute("INSERT INTO account_callers VALUES ($1, $2)", caller, account_id)
        finally:
            await conn.close()

    asyncio.run(insert())


def test_an_asterisk_master_csv_is_rated_from_the_command_line(
    ocs: Any, settings: Settings, tmp_path: Path
) -> None:
    with ledger_writer_beside(settings):
        rated_from_the_command_line(ocs, settings, tmp_path)


def rated_from_the_command_line(ocs: Any, settings: Settings, tmp_path: Path) -> None:
    """The Master.csv imported twice: charged, then repeats only."""
    deck = tmp_path / "deck.csv"
    deck.write_text(DECK)
    done(ocs, "plans", "create", "retail", "--currency", "EUR")
    done(ocs, "tariffs", "import", "--plan", "retail", str(deck))
    done(ocs, "accounts", "create", "1001", "--plan", "retail", "--balance", "5.00")
    done(ocs, "accounts", "create", "1002", "--plan", "retail", "--balance", "5.00")
    add_caller(settings, "15145550102", "1002")
    master = tmp_path / "Master.csv"
    master.write_text(MASTER_CSV)

    summary = done(ocs, "usage", "import", "--template", "asterisk-cdr-csv", str(master))
    assert summary["template_version"] == "asterisk-cdr-csv@shipped"
    assert (summary["rows_read"], summary["rows_filtered"]) == (3, 1)
    # 1001: UK 65 s billed 120 s at 0.02 = 0.04; 1002 (by caller id): 7 s billed 12 s at
    # 0.012 = 0.0024.
    assert (summary["rows_charged"], summary["amounts"]) == (2, {"EUR": 40_000 + 2_400})
    assert done(ocs, "accounts", "show", "1001")["balance"] == "4.960000"
    assert done(ocs, "accounts", "show", "1002")["balance"] == "4.997600"

    again = done(ocs, "usage", "import", "--template", "asterisk-cdr-csv", str(master))
    assert (again["rows_charged"], again["rows_repeated"]) == (0, 2)
    assert done(ocs, "accounts", "show", "1001")["balance"] == "4.960000"


def test_a_refused_all_or_nothing_import_exits_1_and_names_the_rejects(
    ocs: Any, settings: Settings, tmp_path: Path
) -> None:
    with ledger_writer_beside(settings):
        refused_all_or_nothing(ocs, tmp_path)


def refused_all_or_nothing(ocs: Any, tmp_path: Path) -> None:
    """A bad row refuses the whole file; an unknown template exits non-zero."""
    deck = tmp_path / "deck.csv"
    deck.write_text(DECK)
    done(ocs, "plans", "create", "retail", "--currency", "EUR")
    done(ocs, "tariffs", "import", "--plan", "retail", str(deck))
    done(ocs, "accounts", "create", "1001", "--plan", "retail", "--balance", "5.00")
    master = tmp_path / "Master.csv"
    # The third row's caller belongs to no account: nothing of the file is applied.
    master.write_text(MASTER_CSV)
    code, summary, _ = ocs(
        "usage", "import", "--template", "asterisk-cdr-csv", "--all-or-nothing", str(master)
    )
    assert (code, summary["state"], summary["rows_charged"]) == (1, "refused", 0)
    assert summary["problems"] == [
        {
            "file": "Master.csv",
            "line": 3,
            "problems": ["caller: no account has caller id '15145550102'"],
        }
    ]
    # The rejected row as the file had it (quoted only where CSV needs it): the same cells.
    rejected = Path(summary["rejects_path"]).read_text()
    assert list(csv.reader(io.StringIO(rejected))) == list(
        csv.reader(io.StringIO(MASTER_CSV.splitlines(keepends=True)[2]))
    )
    assert done(ocs, "accounts", "show", "1001")["balance"] == "5.000000"

    code, _, err = ocs("usage", "import", "--template", "nope", str(master))
    assert code != 0 and "template" in err


def test_an_import_is_refused_while_the_ledger_writer_has_not_stored_earlier_entries(
    ocs: Any, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The look-up of record ids in PostgreSQL only sees CDRs the ledger writer stored:
    # with entries older than the import still in Redis, a record an earlier import
    # debited could be debited again, so nothing is imported.
    monkeypatch.setenv("OCS_USAGE_IMPORT_LEDGER_WAIT", "0.5")
    deck = tmp_path / "deck.csv"
    deck.write_text(DECK)
    done(ocs, "plans", "create", "retail", "--currency", "EUR")
    done(ocs, "tariffs", "import", "--plan", "retail", str(deck))
    # Its opening balance is a ledger entry, not yet stored: no writer runs.
    done(ocs, "accounts", "create", "1001", "--plan", "retail", "--balance", "5.00")
    master = tmp_path / "Master.csv"
    master.write_text(MASTER_CSV.splitlines(keepends=True)[0])
    code, _, err = ocs("usage", "import", "--template", "asterisk-cdr-csv", str(master))
    assert code != 0
    assert "the ledger writer has not stored the ledger entries made before this import" in err
    assert done(ocs, "accounts", "show", "1001")["balance"] == "5.000000"

    with ledger_writer_beside(settings):
        summary = done(ocs, "usage", "import", "--template", "asterisk-cdr-csv", str(master))
    assert (summary["state"], summary["rows_charged"]) == ("done", 1)
    assert done(ocs, "accounts", "show", "1001")["balance"] == "4.960000"
