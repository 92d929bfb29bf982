"""Rate decks imported through the admin API and the `ocs` CLI, as a provisioning system would.

A deck is all-or-nothing: a good one replaces the plan's whole deck and the
running server rates calls by it once its catalog snapshot reloads (on
PostgreSQL NOTIFY); a bad one is reported line by line and changes nothing.
"""

import asyncio
import json
from pathlib import Path

from ocs.config import Settings
from tests.conftest import RunningApp, eventually
from tests.deck_helpers import (
    BAD_DECKS,
    DECK_A,
    DECK_A_ROWS,
    DECK_B,
    FRANCE,
    GERMANY,
    HEADER,
    UK_FIXED,
    UK_MOBILE,
    assert_deck_a_still_serves,
    call,
    deck_rows,
    import_over_http,
    plan_with_deck_a,
    refusal,
    wait_until_served,
)
from tests.helpers import ocs_cli

# What an import answers it did, for DECK_A into a plan with no deck, then DECK_B.
NEW_DECK_A = {"added": 3, "changed": 0, "removed": 0}
A_TO_B = {"added": 1, "changed": 1, "removed": 2}

CLI_BAD_DECKS = (
    "price with 7 decimals",
    "missing field",
    "duplicate prefix",
    "bad header",
    "empty file",
    "every bad line is reported",
)


# --- plans ---------------------------------------------------------------------------


async def test_plans_created_over_http_are_listed_with_amounts_as_decimal_strings(
    app: RunningApp,
) -> None:
    status, created = await app.post(
        "/v1/plans",
        {
            "id": "intl",
            "name": "International",
            "currency": "usd",
            "credit_limit": "5.00",
            "min_balance": "0.25",
            "max_lines": 3,
        },
    )
    assert status == 201, created
    # The fields this test is about (a plan's answer may carry others, such as policies).
    expected = {
        "id": "intl",
        "name": "International",
        "currency": "USD",
        "credit_limit": "5.000000",
        "min_balance": "0.250000",
        "max_lines": 3,
        "max_call_duration": 14_400,
    }
    assert {key: created.get(key) for key in expected} == expected, created
    status, body = await app.post("/v1/plans", {"id": "basic", "currency": "EUR"})
    assert status == 201, body

    status, listed = await app.get("/v1/plans")
    assert status == 200
    assert [p["id"] for p in listed["plans"]] == ["basic", "intl"]
    assert listed["plans"][1] == created
    assert listed["plans"][0]["credit_limit"] == "0.000000"
    async with app.services.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM plans WHERE id = 'intl'")
    assert (row["currency"], row["credit_limit"], row["min_balance"], row["max_lines"]) == (
        "USD",
        5_000_000,
        250_000,
        3,
    )


async def test_plans_created_and_listed_with_the_cli(
    app: RunningApp, settings: Settings, tmp_path: Path
) -> None:
    code, out, err = await ocs_cli(
        settings,
        tmp_path,
        "plans",
        "create",
        "cli-plan",
        "--currency",
        "gbp",
        "--name",
        "From the CLI",
        "--credit-limit",
        "2.50",
        "--max-lines",
        "2",
    )
    assert code == 0, err
    created = json.loads(out)
    assert created["currency"] == "GBP"
    assert created["credit_limit"] == "2.500000"
    assert created["max_lines"] == 2

    status, body = await app.post("/v1/plans", {"id": "api-plan", "currency": "EUR"})
    assert status == 201, body
    code, out, err = await ocs_cli(settings, tmp_path, "plans", "list")
    assert code == 0, err
    listed = {p["id"]: p for p in json.loads(out)["plans"]}
    assert set(listed) == {"api-plan", "cli-plan"}
    assert listed["cli-plan"] == created

    # The running server learns of the CLI's plan from PostgreSQL NOTIFY.
    async def plan_loaded() -> bool:
        return app.services.catalog.snapshot.plan("cli-plan") is not None

    await eventually(plan_loaded, what="the CLI's plan in the server's catalog")

    code, out, err = await ocs_cli(
        settings, tmp_path, "plans", "create", "cli-plan", "--currency", "EUR"
    )
    assert code == 1
    assert "plan_exists" in err
    code, out, err = await ocs_cli(settings, tmp_path, "plans", "list")
    assert json.loads(out)["plans"][1]["currency"] == "GBP"


# --- good decks ----------------------------------------------------------------------


async def test_a_deck_imported_over_http_rates_calls_as_written(app: RunningApp) -> None:
    status, body = await app.post("/v1/plans", {"id": "retail", "currency": "EUR"})
    assert status == 201, body
    status, body = await import_over_http(app, "retail", DECK_A)
    assert status == 200, body
    assert body == {"plan": "retail", "prefixes": 3, "zones": 3, **NEW_DECK_A}
    assert await deck_rows(app, "retail") == DECK_A_ROWS
    await app.post("/v1/accounts", {"id": "a1", "plan": "retail", "balance": "10.00"})
    await wait_until_served(app, "retail", UK_MOBILE, "UK Mobile")

    # 447 is longer than 44: a UK mobile number is rated as UK Mobile, 0.15 + 48 s at 0.06.
    mobile = await call(app, "a1", UK_MOBILE, 45)
    assert (mobile["zone"], mobile["billed_seconds"], mobile["cost"]) == (
        "UK Mobile",
        48,
        "0.198000",
    )
    # Other UK numbers fall back to 44: 60/60 at 0.01.
    fixed = await call(app, "a1", "+" + UK_FIXED, 45)
    assert (fixed["zone"], fixed["billed_seconds"], fixed["cost"]) == ("UK Fixed", 60, "0.010000")
    germany = await call(app, "a1", GERMANY, 61)
    assert (germany["zone"], germany["billed_seconds"], germany["cost"]) == (
        "Germany",
        61,
        "0.012200",
    )
    assert germany["balance"] == "9.779800"
    assert await refusal(app, "a1", FRANCE) == (403, "destination_not_allowed")


async def test_a_spreadsheet_export_with_bom_crlf_and_plus_signs_imports(app: RunningApp) -> None:
    status, body = await app.post("/v1/plans", {"id": "retail", "currency": "EUR"})
    assert status == 201, body
    deck = (
        "\ufeffPrefix,Zone,Price_Per_Minute,Connect_Fee,First_Block,Increment\r\n"
        "+44,UK,0.010,0,60,60\r\n"
        "+447,UK,0.010,0,60,60\r\n"
    )
    status, body = await import_over_http(app, "retail", deck.encode())
    assert status == 200, body
    assert body == {"plan": "retail", "prefixes": 2, "zones": 1} | {
        "added": 2,
        "changed": 0,
        "removed": 0,
    }
    assert [row[:2] for row in await deck_rows(app, "retail")] == [("44", "UK"), ("447", "UK")]


async def test_a_second_http_import_replaces_the_first_wholly(app: RunningApp) -> None:
    await plan_with_deck_a(app)
    status, body = await import_over_http(app, "retail", DECK_B)
    assert status == 200, body
    assert body == {"plan": "retail", "prefixes": 2, "zones": 2, **A_TO_B}
    assert await deck_rows(app, "retail") == [
        ("33", "France", 30_000, 10_000, 60, 1),
        ("44", "UK All", 20_000, 0, 1, 1),
    ]
    await wait_until_served(app, "retail", FRANCE, "France")

    france = await call(app, "a-retail", FRANCE, 75)
    assert (france["zone"], france["billed_seconds"], france["cost"]) == (
        "France",
        75,
        "0.047500",
    )
    # 447 is gone: a UK mobile number now falls to 44 at the new rate.
    mobile = await call(app, "a-retail", UK_MOBILE, 45)
    assert (mobile["zone"], mobile["cost"]) == ("UK All", "0.015000")
    assert await refusal(app, "a-retail", GERMANY) == (403, "destination_not_allowed")


async def test_the_cli_import_replaces_the_deck_the_running_server_rates_by(
    app: RunningApp, settings: Settings, tmp_path: Path
) -> None:
    code, _, err = await ocs_cli(
        settings, tmp_path, "plans", "create", "retail", "--currency", "EUR"
    )
    assert code == 0, err
    deck_a = tmp_path / "deck-a.csv"
    deck_a.write_text(DECK_A, encoding="utf-8")
    code, out, err = await ocs_cli(
        settings, tmp_path, "tariffs", "import", "--plan", "retail", str(deck_a)
    )
    assert code == 0, err
    assert json.loads(out) == {"plan": "retail", "prefixes": 3, "zones": 3, **NEW_DECK_A}
    await wait_until_served(app, "retail", UK_MOBILE, "UK Mobile")
    status, body = await app.post(
        "/v1/accounts", {"id": "c1", "plan": "retail", "balance": "10.00"}
    )
    assert status == 201, body
    assert (await call(app, "c1", UK_MOBILE, 45))["cost"] == "0.198000"
    assert (await call(app, "c1", GERMANY, 61))["cost"] == "0.012200"

    deck_b = tmp_path / "deck-b.csv"
    deck_b.write_text(DECK_B, encoding="utf-8")
    code, out, err = await ocs_cli(
        settings, tmp_path, "tariffs", "import", "--plan", "retail", str(deck_b)
    )
    assert code == 0, err
    assert json.loads(out) == {"plan": "retail", "prefixes": 2, "zones": 2, **A_TO_B}
    await wait_until_served(app, "retail", GERMANY, None)

    assert await refusal(app, "c1", GERMANY) == (403, "destination_not_allowed")
    assert (await call(app, "c1", UK_MOBILE, 45))["cost"] == "0.015000"
    assert (await call(app, "c1", FRANCE, 45))["cost"] == "0.040000"


# --- bad decks -----------------------------------------------------------------------


async def test_bad_decks_over_http_are_reported_by_line_and_nothing_is_applied(
    app: RunningApp,
) -> None:
    await plan_with_deck_a(app)
    for name, (deck, lines, word) in BAD_DECKS.items():
        status, body = await import_over_http(app, "retail", deck)
        assert status == 400, (name, body)
        error = body["error"]
        assert (error["code"], error["reason"], error["field"]) == (400, "invalid_deck", "deck")
        assert [p["line"] for p in error["problems"]] == lines, (name, error)
        assert word in " ".join(p["message"] for p in error["problems"]), (name, error)
        for line in lines:
            assert f"line {line}" in error["message"], (name, error)
    await assert_deck_a_still_serves(app)


async def test_a_deck_that_is_not_utf8_is_refused_over_http(app: RunningApp) -> None:
    await plan_with_deck_a(app)
    deck = (HEADER + "225,Côte d'Ivoire,0.200,0,60,60\n").encode("latin-1")
    status, body = await import_over_http(app, "retail", deck)
    assert status == 400, body
    assert (body["error"]["reason"], body["error"]["field"]) == ("invalid_deck", "deck")
    # The line that is not UTF-8 is named (the header is line 1).
    assert [problem["line"] for problem in body["error"]["problems"]] == [2]
    await assert_deck_a_still_serves(app)


async def test_bad_decks_through_the_cli_exit_1_naming_the_line_and_apply_nothing(
    app: RunningApp, settings: Settings, tmp_path: Path
) -> None:
    await plan_with_deck_a(app)
    # The parser is the one the HTTP test covers in full; here, what the CLI makes of it.
    cases = {name: BAD_DECKS[name] for name in CLI_BAD_DECKS}
    runs = []
    for n, (deck, _, _) in enumerate(cases.values()):
        path = tmp_path / f"bad-{n}.csv"
        path.write_text(deck, encoding="utf-8")
        runs.append(ocs_cli(settings, tmp_path, "tariffs", "import", "--plan", "retail", str(path)))
    results = await asyncio.gather(*runs)
    for (name, (_, lines, word)), (code, out, err) in zip(cases.items(), results, strict=True):
        assert code == 1, (name, code, out, err)
        assert out == "", name
        assert "invalid_deck" in err and "nothing applied" in err, (name, err)
        assert word in err, (name, err)
        for line in lines:
            assert f"line {line}" in err, (name, err)
    await assert_deck_a_still_serves(app)


async def test_importing_into_an_unknown_plan_is_refused(
    app: RunningApp, settings: Settings, tmp_path: Path
) -> None:
    await plan_with_deck_a(app)
    status, body = await import_over_http(app, "no-such-plan", DECK_B)
    assert status == 404, body
    assert body["error"]["reason"] == "plan_not_found"

    deck = tmp_path / "deck.csv"
    deck.write_text(DECK_B, encoding="utf-8")
    code, out, err = await ocs_cli(
        settings, tmp_path, "tariffs", "import", "--plan", "no-such-plan", str(deck)
    )
    assert code == 1, (out, err)
    assert "plan_not_found" in err
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM prefixes WHERE plan_id <> 'retail'") == 0
    await assert_deck_a_still_serves(app)


async def test_the_cli_names_a_deck_file_it_cannot_read(settings: Settings, tmp_path: Path) -> None:
    for path, words in ((tmp_path / "absent.csv", "absent.csv"), (tmp_path, "cannot read")):
        code, out, err = await ocs_cli(
            settings, tmp_path, "tariffs", "import", "--plan", "retail", str(path)
        )
        assert code == 2, (out, err)
        assert out == ""
        assert len(err.strip().splitlines()) == 1, err
        assert words in err, err
