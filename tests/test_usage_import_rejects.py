"""The rejects of an import of several files whose headers differ: every rejected row in
a rejects file under its own file's header, every problem naming its file so no two
files read the same, and the rejects importing again once fixed.

A file with other columns gets a rejects file of its own. It was named after its file
alone, so when that file was the import's first (after which the rejects file is
named), or had the same name in another folder, both were one path: opened twice, the
second emptied the first, and rejected rows were lost or garbled; the report named two
files ``usage.csv`` alike.
"""

from pathlib import Path

from ocs.mediation.importer import ImportRequest
from ocs.mediation.summary import ImportSummary
from tests.conftest import RunningApp
from tests.usage_import_helpers import (
    HEADER,
    UK_NUMBER,
    balance,
    importer,
    new_account,
    setup_mediation,
    text_of,
)

# A header with one more column than the template's files usually have.
NOTED = HEADER.replace("\n", ",note\n")
# 61 s to the UK: 0.04 EUR.
JAN_ROW = f"r1,poor,{UK_NUMBER},2026-03-03 09:00:00,61,O,,offnet\n"
FEB_ROW = f"r3,nobody2,{UK_NUMBER},2026-03-03 09:05:00,61,O,,offnet,x\n"
OWN = ": its columns differ; its rejected rows are in "


async def import_files(app: RunningApp, *paths: Path) -> ImportSummary:
    """Import the files in one import (good rows mode); the summary."""
    request = ImportRequest(template="carrier-x", files=tuple(str(p) for p in paths))
    return await importer(app).run(request)


def own_files(summary: ImportSummary) -> dict[str, str]:
    """The files with rejects files of their own, as the report names them: file ->
    that rejects file's path."""
    found = {}
    for line in text_of(summary.report_path).splitlines():
        if OWN in line:
            file, path = line.split(OWN)
            found[file] = path
    return found


async def test_rows_rejected_from_the_first_file_and_one_with_other_columns_are_all_kept(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    await new_account(app, "poor", "0.01")
    jan = tmp_path / "jan.csv"
    jan.write_text(HEADER + JAN_ROW)
    feb = tmp_path / "feb.csv"
    feb.write_text(NOTED + FEB_ROW)
    summary = await import_files(app, jan, feb)
    assert (summary.rows_charged, summary.rows_rejected) == (0, 2), summary.problems
    assert sorted((p.file, p.line, p.problems) for p in summary.problems) == [
        ("feb.csv", 2, ("account: no account 'nobody2'",)),
        ("jan.csv", 2, ("insufficient_funds: the balance refused the debit",)),
    ]
    report = text_of(summary.report_path).splitlines()
    assert "jan.csv:2: insufficient_funds: the balance refused the debit" in report
    assert "feb.csv:2: account: no account 'nobody2'" in report
    # One of the two files has a rejects file of its own, not the rejects file's path;
    # each holds its rejected row under its own header, nothing else.
    [(file, own)] = own_files(summary).items()
    assert sorted([text_of(summary.rejects_path), text_of(own)]) == sorted(
        [HEADER + JAN_ROW, NOTED + FEB_ROW]
    )
    assert file in ("jan.csv", "feb.csv")
    assert own != summary.rejects_path
    # Fixed (the money and the account there), the rejects import again.
    status, body = await app.post("/v1/accounts/poor/topups", {"amount": "1.00"})
    assert status == 201, body
    await new_account(app, "nobody2", "1.00")
    again = await import_files(app, Path(summary.rejects_path or ""), Path(own))
    assert (again.rows_charged, again.rows_rejected) == (2, 0), again.problems
    assert await balance(app, "poor") == 1_010_000 - 40_000
    assert await balance(app, "nobody2") == 1_000_000 - 40_000


async def test_files_of_the_same_name_in_two_folders_keep_their_rejects_apart(
    app: RunningApp, tmp_path: Path
) -> None:
    await setup_mediation(app)
    first = tmp_path / "a" / "usage.csv"
    second = tmp_path / "b" / "usage.csv"
    first.parent.mkdir()
    second.parent.mkdir()
    first.write_text(HEADER + JAN_ROW.replace("poor", "nobody"))
    second.write_text(NOTED + FEB_ROW)
    summary = await import_files(app, first, second)
    assert (summary.rows_charged, summary.rows_rejected) == (0, 2), summary.problems
    # Each rejected row under its own file's header; the second file's rows in a rejects
    # file of its own, named with its place in the import.
    own = first.parent / f"usage.import-{summary.id}.file-2.rejects.csv"
    assert summary.rejects_path == str(first.parent / f"usage.import-{summary.id}.rejects.csv")
    assert text_of(summary.rejects_path) == HEADER + JAN_ROW.replace("poor", "nobody")
    assert own.read_text() == NOTED + FEB_ROW
    # Two files named alike are named by their paths as given.
    assert [(p.file, p.line, p.problems) for p in summary.problems] == [
        (str(first), 2, ("account: no account 'nobody'",)),
        (str(second), 2, ("account: no account 'nobody2'",)),
    ]
    assert text_of(summary.report_path).splitlines() == [
        f"{first}:2: account: no account 'nobody'",
        f"{second}{OWN}{own}",
        f"{second}:2: account: no account 'nobody2'",
    ]
    # Fixed, both import again.
    await new_account(app, "nobody", "1.00")
    await new_account(app, "nobody2", "1.00")
    again = await import_files(app, Path(summary.rejects_path), own)
    assert (again.rows_charged, again.rows_rejected) == (2, 0), again.problems
    assert await balance(app, "nobody") == 1_000_000 - 40_000
    assert await balance(app, "nobody2") == 1_000_000 - 40_000
