"""`ocs taxes`, `ocs surcharges` and `ocs bundles`, and the tax engine and billing address
flags of `ocs plans billing` and `ocs subscriptions create`: rules made on the command
line are on the next invoice, amounts by hand; bad values are usage errors naming them."""

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ocs.cli import main
from ocs.config import Settings
from tests.conftest import reset_state

EUR = 1_000_000
BUNDLE: dict[str, Any] = {
    "id": "b1",
    "name": "Business bundle",
    "currency": "EUR",
    "indicators": [{"name": "uk", "function": "sum", "measure": "duration", "zone": "UK Mobile"}],
    "rules": [
        {
            "kind": "free",
            "description": "100 free minutes to UK Mobile",
            "indicator": "uk",
            "allowance": 6000,
        }
    ],
}


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


def done(ocs: Any, *argv: str) -> Any:
    """A command line that must succeed: its JSON output."""
    code, out, err = ocs(*argv)
    assert code == 0, (argv, err)
    return out


def usage_error(ocs: Any, *argv: str) -> str:
    """A command line refused as a usage error (exit 2): its message."""
    code, out, err = ocs(*argv)
    assert (code, out) == (2, None), (argv, err)
    return str(err.strip().splitlines()[-1])


def calls(settings: Settings, account: str, *spec: tuple[int, int, int, str]) -> None:
    """March 2026 CDRs of ``account`` on retail: (day, seconds, charged micro-EUR, zone)."""

    async def insert() -> None:
        conn = await asyncpg.connect(settings.database_url)
        try:
            for n, (day, seconds, charged, zone) in enumerate(spec):
                when = datetime(2026, 3, day, 12, tzinfo=UTC)
                await conn.execute(
                    "INSERT INTO cdrs (entry_id, call_id, account_id, plan_id, zone, destination,"
                    " currency, authorized_at, stopped_at, duration, billed_seconds, connect_fee,"
                    " first_block, increment, price_per_minute, rated_cost, charged)"
                    " VALUES ($1, $1, $2, 'retail', $3, '447700900123', 'EUR', $4, $4, $5, $5,"
                    " 0, 1, 1, 60000, $6, $6)",
                    f"{account}-{n}",
                    account,
                    zone,
                    when,
                    seconds,
                    charged,
                )
        finally:
            await conn.close()

    asyncio.run(insert())


def test_taxes_surcharges_and_bundles_from_the_command_line_are_on_the_invoice(
    ocs: Any, settings: Settings, tmp_path: Path
) -> None:
    done(ocs, "plans", "create", "retail", "--currency", "EUR")
    billing = done(
        ocs, "plans", "billing", "retail", "--cycle", "fixed_date", "--cycle-day", "1",
        "--effective-date", "2026-01-01", "--tax-engine", "external",
    )  # fmt: skip
    assert billing["tax_engine"] == "external"
    billing = done(
        ocs, "plans", "billing", "retail", "--cycle", "fixed_date", "--cycle-day", "1",
        "--effective-date", "2026-01-01",
    )  # fmt: skip
    assert billing["tax_engine"] == "internal"
    done(
        ocs, "charges", "create", "rent", "--name", "Line rent", "--product", "LINE",
        "--currency", "EUR", "--amount", "10.00", "--kind", "recurring", "--cadence", "monthly",
        "--tax-code", "STD",
    )  # fmt: skip
    tax = done(
        ocs, "taxes", "create", "VAT20", "--name", "VAT", "--rate", "20", "--level", "federal",
        "--currency", "EUR", "--valid-from", "2026-01-01",
    )  # fmt: skip
    assert (tax["rate"], tax["valid_until"]) == ("20", None)
    assigned = done(ocs, "taxes", "assign", "retail", "VAT20", "--tax-code", "STD")
    assert (assigned["target_kind"], assigned["target"], assigned["assigned_now"]) == (
        "tax_code",
        "STD",
        True,
    )
    again = done(ocs, "taxes", "assign", "retail", "VAT20", "--tax-code", "STD")
    assert (again["id"], again["assigned_now"]) == (assigned["id"], False)
    surcharge = done(
        ocs, "surcharges", "create", "fuel", "--plan", "retail", "--name", "Fuel",
        "--amount", "1.00", "--charge", "rent",
    )  # fmt: skip
    assert (surcharge["kind"], surcharge["amount"], surcharge["rate"]) == ("flat", "1.000000", None)
    assert done(ocs, "surcharges", "list", "--plan", "retail") == {"surcharges": [surcharge]}

    for account in ("c1", "c2", "c3"):
        done(ocs, "accounts", "create", account, "--plan", "retail", "--balance", "50")
    sub = done(
        ocs, "subscriptions", "create", "c1", "--plan", "retail", "--start", "2026-01-01",
        "--charge", "rent", "--billing-city", "Austin", "--billing-region", "TX",
        "--billing-postal-code", "78701", "--billing-country", "US",
    )  # fmt: skip
    assert (sub["billing_city"], sub["billing_region"], sub["billing_country"]) == (
        "Austin",
        "TX",
        "US",
    )
    bundled = done(
        ocs, "subscriptions", "create", "c2", "--plan", "retail", "--start", "2026-01-01"
    )
    done(ocs, "subscriptions", "create", "c3", "--plan", "retail", "--start", "2026-01-01",
         "--charge", "rent")  # fmt: skip
    exemption = done(
        ocs, "taxes", "exempt", "c3", "--reference", "CERT-9", "--level", "state",
        "--level", "federal",
    )  # fmt: skip
    assert exemption == {"account": "c3", "reference": "CERT-9", "levels": ["state", "federal"]}

    (tmp_path / "bundle.json").write_text(json.dumps(BUNDLE), encoding="utf-8")
    bundle = done(ocs, "bundles", "create", "--file", str(tmp_path / "bundle.json"))
    assert (bundle["id"], bundle["rules"][0]["allowance"]) == ("b1", 6000)
    assert done(ocs, "bundles", "list") == {"bundles": [bundle]}
    held = done(ocs, "bundles", "attach", str(bundled["id"]), "b1")
    assert (held["subscription"], held["bundle"], held["end_date"]) == (bundled["id"], "b1", None)
    # c2's March calls: 3000 s (3.00), 2400 s (2.40), 1200 s (1.20) to UK Mobile.
    calls(
        settings, "c2", (3, 3000, 3 * EUR, "UK Mobile"), (4, 2400, 2_400_000, "UK Mobile"),
        (5, 1200, 1_200_000, "UK Mobile"),
    )  # fmt: skip

    run = done(ocs, "billing", "run", "--period", "2026-03", "--invoice-date", "2026-04-01")
    assert (run["state"], run["accounts_done"]) == ("done", 3)
    listed = done(ocs, "invoices", "list", "--period", "2026-03")["invoices"]
    shown = {i["account"]: done(ocs, "invoices", "show", str(i["id"])) for i in listed}
    # c1: rent 10.00, the flat fuel surcharge 1.00 (taxed as the rent it surcharges):
    # VAT 20% of 11.00 = 2.20; total 13.20.
    assert [(li["kind"], li["amount"]) for li in shown["c1"]["lines"]] == [
        ("recurring", "10.000000"),
        ("surcharge", "1.000000"),
        ("tax", "2.200000"),
    ]
    assert shown["c1"]["total"] == "13.200000"
    # c3 is exempt from federal taxes: VAT at 0, naming the certificate; total 11.00.
    assert shown["c3"]["lines"][2]["description"] == "VAT 20% of 11.00 EUR: exempt (CERT-9)"
    assert (shown["c3"]["lines"][2]["amount"], shown["c3"]["total"]) == ("0.000000", "11.000000")
    # c2: the first 6000 s free: 3.00 + 2.40 + 1.20 x 600/1200 = 6.00 credited; usage 6.60.
    [free] = [li for li in shown["c2"]["lines"] if li["kind"] == "bundle_free"]
    assert (free["amount"], free["quantity"]) == ("-6.000000", 6000)
    assert shown["c2"]["total"] == "0.600000"

    ended = done(ocs, "bundles", "detach", str(bundled["id"]), "b1", "--on", "2026-04-01")
    assert [h["end_date"] for h in ended["bundles"]] == ["2026-04-01"]
    assert done(ocs, "taxes", "unexempt", "c3")["removed"]["reference"] == "CERT-9"
    assert done(ocs, "surcharges", "remove", "fuel", "--plan", "retail")["removed"] == surcharge
    removed = done(ocs, "taxes", "unassign", "retail", "VAT20", "--tax-code", "STD")
    assert removed["removed"]["id"] == assigned["id"]
    assert done(ocs, "taxes", "list", "--valid-on", "2026-03-01")["taxes"] == [tax]
    code = done(ocs, "taxes", "code", "zone", "UK Mobile", "STD")
    assert code == {"kind": "zone", "key": "UK Mobile", "tax_code": "STD"}
    listed_subs = done(ocs, "subscriptions", "list", "--account", "c1")["subscriptions"]
    assert listed_subs[0]["billing_postal_code"] == "78701"


def test_bad_rule_values_are_usage_errors_naming_them(ocs: Any, tmp_path: Path) -> None:
    says = usage_error(
        ocs, "taxes", "create", "VAT", "--name", "VAT", "--rate", "abc", "--level", "federal",
        "--currency", "EUR", "--valid-from", "2026-01-01",
    )  # fmt: skip
    assert says.startswith("ocs: usage error: --rate: expected a percentage"), says
    says = usage_error(
        ocs, "taxes", "create", "VAT", "--name", "VAT", "--rate", "20", "--level", "federal",
        "--currency", "EUR", "--valid-from", "2026-01-01", "--valid-until", "2025-01-01",
    )  # fmt: skip
    assert says.startswith("ocs: usage error: valid_until: must be after valid_from"), says
    bad = {**BUNDLE, "rules": [{**BUNDLE["rules"][0], "allowance": 0}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad), encoding="utf-8")
    says = usage_error(ocs, "bundles", "create", "--file", str(tmp_path / "bad.json"))
    assert says.startswith("ocs: usage error: rules[0].allowance:"), says
    (tmp_path / "typo.json").write_text(json.dumps({**BUNDLE, "rulez": []}), encoding="utf-8")
    says = usage_error(ocs, "bundles", "create", "--file", str(tmp_path / "typo.json"))
    assert says.startswith("ocs: usage error: rulez: unknown field"), says
    says = usage_error(ocs, "bundles", "create", "--file", str(tmp_path / "missing.json"))
    assert says.startswith("ocs: usage error: --file: cannot read"), says
    says = usage_error(
        ocs, "surcharges", "create", "s", "--plan", "retail", "--name", "S", "--rate", "2,5",
        "--zone", "UK Mobile",
    )  # fmt: skip
    assert says.startswith("ocs: usage error: --rate:"), says

    # Refused by the stores: unknown ids exit 1, another currency is a usage error.
    done(ocs, "plans", "create", "retail", "--currency", "EUR")
    done(ocs, "accounts", "create", "c1", "--plan", "retail")
    says = usage_error(
        ocs, "subscriptions", "create", "c1", "--plan", "retail", "--start", "2026-01-01",
        "--billing-country", "usa",
    )  # fmt: skip
    assert says.startswith("ocs: usage error: billing_country:"), says
    done(
        ocs, "taxes", "create", "US-TX", "--name", "Sales tax", "--rate", "6.25", "--level",
        "state", "--currency", "USD", "--valid-from", "2026-01-01",
    )  # fmt: skip
    says = usage_error(ocs, "taxes", "assign", "retail", "US-TX", "--zone", "USA")
    assert says.startswith("ocs: usage error: tax: tax US-TX is in USD"), says
    code, _, err = ocs("taxes", "assign", "retail", "NOPE", "--zone", "USA")
    assert (code, err.strip()) == (1, "ocs: not_found: tax: no tax 'NOPE'")
    code, _, err = ocs("surcharges", "remove", "nope", "--plan", "retail")
    assert code == 1 and err.startswith("ocs: not_found:"), err
    code, _, err = ocs("bundles", "attach", "999999", "b1")
    assert code == 1 and err.startswith("ocs: not_found: no subscription 999999"), err
    code, _, err = ocs("taxes", "unexempt", "c1")
    assert code == 1 and err.startswith("ocs: not_found:"), err
