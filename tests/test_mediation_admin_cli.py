"""`ocs rate-types`, `ocs overrides` and `ocs usage-templates` end to end: what the command
line stores is what the API shows, amounts converted exactly; bad values are usage
errors (exit 2) naming them, refusals exit 1 saying why."""

import copy
import json
from pathlib import Path
from typing import Any

TOLL_FREE = "Inbound Toll-free"
ON_NET = "Canada On-Net"
TEMPLATE: dict[str, Any] = {
    "name": "acme-cdr",
    "supplier": "acme",
    "format": {"kind": "csv", "header": True},
    "columns": {
        "record_id": "id",
        "start": "start",
        "account": "account",
        "called": "to",
        "duration": "secs",
    },
    "classify": [{"rate_type": "Inbound Toll-free Canada", "when": {"called_prefix": ["1800"]}}],
    "default_rate_type": ON_NET,
}


def done(ocs: Any, *argv: str) -> Any:
    """A command line that must succeed: its JSON output."""
    code, out, err = ocs(*argv)
    assert code == 0, (argv, err)
    return out


def refused(ocs: Any, code: int, *argv: str) -> str:
    """A command line that must fail with exit ``code``: the last line of its message."""
    got, out, err = ocs(*argv)
    assert (got, out) == (code, None), (argv, err)
    return str(err.strip().splitlines()[-1])


def test_rate_types_and_a_plans_rates_from_the_command_line(ocs: Any) -> None:
    done(ocs, "plans", "create", "retail", "--currency", "EUR")
    added = done(ocs, "rate-types", "add", TOLL_FREE, "--description", "800 numbers")
    assert added == {"name": TOLL_FREE, "description": "800 numbers", "created": True}
    again = done(ocs, "rate-types", "add", TOLL_FREE, "--description", "TF")
    assert again == {"name": TOLL_FREE, "description": "TF", "created": False}
    done(ocs, "rate-types", "add", ON_NET)
    assert done(ocs, "rate-types", "list") == {
        "rate_types": [
            {"name": ON_NET, "description": ""},
            {"name": TOLL_FREE, "description": "TF"},
        ]
    }

    rate = done(
        ocs, "rate-types", "set-rate", "--plan", "retail", "--rate-type", TOLL_FREE,
        "--name", "Toll-free minutes", "--price", "0.0525", "--connect-fee", ".1",
        "--first-block", "30", "--increment", "6", "--tax-code", "TF", "--gl-code", "4100",
    )  # fmt: skip
    assert (rate["price"], rate["connect_fee"], rate["currency"]) == ("0.052500", "0.100000", "EUR")
    assert (rate["first_block"], rate["increment"], rate["per"]) == (30, 6, 60)
    assert (rate["tax_code"], rate["gl_code"]) == ("TF", "4100")
    data = done(
        ocs, "rate-types", "set-rate", "--plan", "retail", "--rate-type", ON_NET,
        "--name", "On-net", "--price", "0.000001", "--per", "1", "--currency", "EUR",
    )  # fmt: skip
    assert (data["price"], data["per"]) == ("0.000001", 1)
    listed = done(ocs, "rate-types", "rates", "--plan", "retail")
    assert listed == {"plan": "retail", "rates": [data, rate]}

    # In use: refused (a usage error naming the rate type), and it says by what.
    message = refused(ocs, 2, "rate-types", "delete", TOLL_FREE)
    assert "name:" in message and "plan(s) retail" in message
    removed = done(ocs, "rate-types", "delete-rate", "--plan", "retail", "--rate-type", TOLL_FREE)
    assert removed["removed"] == rate
    assert done(ocs, "rate-types", "delete", TOLL_FREE)["removed"]["name"] == TOLL_FREE
    assert "not_found" in refused(ocs, 1, "rate-types", "delete", TOLL_FREE)
    assert [
        r["rate_type"] for r in done(ocs, "rate-types", "rates", "--plan", "retail")["rates"]
    ] == [ON_NET]


def test_bad_rate_values_are_usage_errors_naming_them(ocs: Any) -> None:
    done(ocs, "plans", "create", "retail", "--currency", "EUR")
    done(ocs, "rate-types", "add", TOLL_FREE)
    base = ("rate-types", "set-rate", "--plan", "retail", "--rate-type", TOLL_FREE, "--name", "TF")
    for extra, named in (
        (("--price", "0.05", "--currency", "USD"), "currency"),
        (("--price", "0.0000001"), "--price"),
        (("--price", "-1"), "--price"),
        (("--price", "0.05", "--connect-fee", "abc"), "--connect-fee"),
        (("--price", "0.05", "--increment", "0"), "increment"),
        (("--price", "0.05", "--per", "0"), "per"),
    ):
        message = refused(ocs, 2, *base, *extra)
        assert named in message, (extra, message)
    assert "does not exist" in refused(
        ocs, 1, "rate-types", "set-rate", "--plan", "nowhere", "--rate-type", TOLL_FREE,
        "--name", "TF", "--price", "0.05",
    )  # fmt: skip
    assert "no rate type" in refused(
        ocs, 1, "rate-types", "set-rate", "--plan", "retail", "--rate-type", "Nothing",
        "--name", "TF", "--price", "0.05",
    )  # fmt: skip
    assert "name:" in refused(ocs, 2, "rate-types", "add", " padded")
    assert done(ocs, "rate-types", "rates", "--plan", "retail") == {"plan": "retail", "rates": []}


def test_a_suppliers_overrides_from_a_csv_file(ocs: Any, tmp_path: Path) -> None:
    done(ocs, "rate-types", "add", TOLL_FREE)
    done(ocs, "rate-types", "add", ON_NET)
    table = tmp_path / "acme.csv"
    table.write_text(
        "from,to\n"
        f"Inbound Toll-free USA,{TOLL_FREE}\n"
        "\n"
        f'"Inbound Toll-free, Canada",{TOLL_FREE}\n'
        f"Local,{ON_NET}\n",
        encoding="utf-8",
    )
    imported = done(ocs, "overrides", "import", "--supplier", "acme", str(table))
    assert imported == {
        "supplier": "acme",
        "overrides": [
            {"from_rate_type": "Inbound Toll-free USA", "to_rate_type": TOLL_FREE},
            {"from_rate_type": "Inbound Toll-free, Canada", "to_rate_type": TOLL_FREE},
            {"from_rate_type": "Local", "to_rate_type": ON_NET},
        ],
    }
    assert done(ocs, "overrides", "list", "--supplier", "acme") == imported

    # A bad file changes nothing, and the message names its line.
    bad = tmp_path / "bad.csv"
    bad.write_text(f"A,{ON_NET}\nB,Nothing\n", encoding="utf-8")
    message = refused(ocs, 1, "overrides", "import", "--supplier", "acme", str(bad))
    assert f"{bad} line 2, to" in message and "Nothing" in message
    bad.write_text(f"A,{ON_NET}\nA,{TOLL_FREE}\n", encoding="utf-8")
    assert f"{bad} line 2, from" in refused(
        ocs, 2, "overrides", "import", "--supplier", "acme", str(bad)
    )
    bad.write_text(f"A,{ON_NET},extra\n", encoding="utf-8")
    assert f"{bad} line 1: expected two cells" in refused(
        ocs, 2, "overrides", "import", "--supplier", "acme", str(bad)
    )
    assert "supplier" in refused(ocs, 2, "overrides", "import", "--supplier", "a b", str(table))
    assert done(ocs, "overrides", "list", "--supplier", "acme") == imported

    one = done(ocs, "overrides", "set", "--supplier", "acme", "Local", TOLL_FREE)
    assert one == {"supplier": "acme", "from_rate_type": "Local", "to_rate_type": TOLL_FREE}
    gone = done(ocs, "overrides", "delete", "--supplier", "acme", "Inbound Toll-free USA")
    assert gone["removed"]["to_rate_type"] == TOLL_FREE
    assert "not_found" in refused(
        ocs, 1, "overrides", "delete", "--supplier", "acme", "Inbound Toll-free USA"
    )
    assert [
        (o["from_rate_type"], o["to_rate_type"])
        for o in done(ocs, "overrides", "list", "--supplier", "acme")["overrides"]
    ] == [("Inbound Toll-free, Canada", TOLL_FREE), ("Local", TOLL_FREE)]
    empty = tmp_path / "empty.csv"
    empty.write_text("from,to\n", encoding="utf-8")
    assert done(ocs, "overrides", "import", "--supplier", "acme", str(empty))["overrides"] == []


def test_usage_templates_are_versioned_from_the_command_line(ocs: Any, tmp_path: Path) -> None:
    path = tmp_path / "acme.json"
    path.write_text(json.dumps(TEMPLATE), encoding="utf-8")
    first = done(ocs, "usage-templates", "add", str(path))
    assert first == {"name": "acme-cdr", "supplier": "acme", "version": 1, "new": True}
    assert done(ocs, "usage-templates", "add", str(path))["new"] is False

    changed = copy.deepcopy(TEMPLATE)
    changed["description"] = "ACME's daily CDR file"
    path.write_text(json.dumps(changed), encoding="utf-8")
    second = done(ocs, "usage-templates", "add", str(path))
    assert (second["version"], second["new"]) == (2, True)

    [summary] = done(ocs, "usage-templates", "list")["templates"]
    assert (summary["name"], summary["latest_version"], summary["versions"]) == ("acme-cdr", 2, 2)
    latest = done(ocs, "usage-templates", "show", "acme-cdr")
    assert (latest["version"], latest["definition"]["description"]) == (2, "ACME's daily CDR file")
    assert [v["version"] for v in latest["versions"]] == [1, 2]
    older = done(ocs, "usage-templates", "show", "acme-cdr", "--version", "1")
    assert (older["version"], older["definition"]["description"]) == (1, "")
    assert "not_found" in refused(ocs, 1, "usage-templates", "show", "acme-cdr", "--version", "3")
    assert "not_found" in refused(ocs, 1, "usage-templates", "show", "other")

    broken = copy.deepcopy(TEMPLATE)
    del broken["columns"]["start"]
    path.write_text(json.dumps(broken), encoding="utf-8")
    assert "columns.start" in refused(ocs, 2, "usage-templates", "add", str(path))
    path.write_text("{not json", encoding="utf-8")
    assert "not valid JSON" in refused(ocs, 2, "usage-templates", "add", str(path))
    assert "cannot read" in refused(ocs, 2, "usage-templates", "add", str(tmp_path / "none"))
    assert done(ocs, "usage-templates", "list")["templates"] == [summary]
