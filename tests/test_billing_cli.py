"""`ocs billing run|post`, `ocs invoices list|show|void`, `ocs charges`, `ocs subscriptions`
and `ocs plans billing`: one billing cycle through the command line, amounts by hand."""

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from ocs.cli import main
from ocs.config import Settings
from tests.conftest import reset_state


@pytest.fixture
def ocs(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Any:
    """Run one ``ocs`` command line on the test backends: (exit code, JSON out, stderr)."""
    asyncio.run(reset_state(settings.redis_url or "", settings.database_url or ""))
    monkeypatch.setenv("OCS_REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("OCS_DATABASE_URL", settings.database_url or "")
    monkeypatch.setenv("OCS_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("OCS_LOG_LEVEL", "warning")

    def run(*argv: str) -> tuple[int, Any, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, json.loads(out) if out.strip() else None, err

    return run


def test_a_cycle_run_posted_shown_and_voided_from_the_command_line(ocs: Any) -> None:
    assert ocs("plans", "create", "retail", "--currency", "EUR")[0] == 0
    code, billing, err = ocs(
        "plans", "billing", "retail", "--cycle", "fixed_date", "--cycle-day", "1",
        "--effective-date", "2026-01-01", "--message", "Thanks",
    )  # fmt: skip
    assert code == 0, err
    assert (billing["cycle"], billing["invoice_timing"]) == ("fixed_date", "end_of_cycle")
    code, charge, err = ocs(
        "charges", "create", "rent", "--name", "Line rent", "--product", "LINE",
        "--currency", "EUR", "--amount", "10.00", "--kind", "recurring", "--cadence", "monthly",
    )  # fmt: skip
    assert (code, charge["amount"]) == (0, "10.000000"), err
    assert ocs("accounts", "create", "c1", "--plan", "retail", "--balance", "20.00")[0] == 0
    code, sub, err = ocs(
        "subscriptions", "create", "c1", "--plan", "retail", "--start", "2026-03-11",
        "--charge", "rent",
    )  # fmt: skip
    assert code == 0, err
    assert (sub["status"], [c["charge_id"] for c in sub["charges"]]) == ("active", ["rent"])

    code, run, err = ocs("billing", "run", "--period", "2026-03", "--invoice-date", "2026-04-01")
    assert code == 0, err
    assert (run["state"], run["accounts_done"], run["accounts_total"]) == ("done", 1, 1)

    code, listed, _ = ocs("invoices", "list", "--period", "2026-03")
    [draft] = listed["invoices"]
    # Subscribed on March 11: 21 of March's 31 days, 10.00 * 21 / 31 = 6.7741935... -> 6.77.
    assert (draft["state"], draft["number"], draft["total"]) == ("draft", None, "6.770000")

    code, posted, err = ocs("billing", "post", "--run", str(run["id"]))
    assert code == 0, err
    assert posted == {
        "posted": [{"id": draft["id"], "number": "INV-2026-000001"}],
        "lines_moved": 1,
        "held": [],
    }
    code, shown, _ = ocs("invoices", "show", str(draft["id"]))
    assert (shown["state"], shown["number"], shown["message"]) == (
        "posted",
        "INV-2026-000001",
        "Thanks",
    )
    [line] = shown["lines"]
    assert (line["kind"], line["amount"], line["exact_amount"], line["moved"]) == (
        "proration",
        "6.770000",
        "6.774194",  # 6_774_193.5 micro-units, to the micro-unit
        True,
    )
    # 20.00 - 6.77, moved once.
    assert ocs("accounts", "show", "c1")[1]["balance"] == "13.230000"

    code, voided, err = ocs("invoices", "void", str(draft["id"]))
    assert code == 0, err
    assert (voided["number"], voided["total"]) == ("CN-2026-000001", "-6.770000")
    assert ocs("accounts", "show", "c1")[1]["balance"] == "20.000000"

    # A void invoice is not posted again: refused, exit 1, its state named.
    code, _, err = ocs("billing", "post", "--invoice", str(draft["id"]))
    assert code == 1
    assert "invoice_state" in err and "void" in err
    code, _, err = ocs("invoices", "void", str(draft["id"]))
    assert code == 1 and "invoice_state" in err


def test_bad_arguments_are_usage_errors_naming_the_flag(ocs: Any) -> None:
    code, _, err = ocs("billing", "run", "--period", "2026-03", "--invoice-date", "April")
    assert code == 2 and "--invoice-date" in err
    code, _, err = ocs("billing", "run", "--period", "2026-03", "--usage-cutoff", "2026-03-01")
    assert code == 2 and "--usage-cutoff" in err
    code, _, err = ocs("invoices", "show", "999")
    assert code == 1 and "not_found" in err
