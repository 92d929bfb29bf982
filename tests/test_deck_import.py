"""Rate decks imported through the admin API and the `ocs` CLI, as a provisioning system would.

A deck is all-or-nothing: a good one replaces the plan's whole deck and the
running server rates calls by it once its catalog snapshot reloads (on
PostgreSQL NOTIFY); a bad one is reported line by line and changes nothing.
"""

import asyncio
import json
import os
import sys
from pathlib import Path

from ocs.config import Settings
from tests.conftest import RunningApp, eventually

HEADER = "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"

DECK_A = (
    HEADER
    + "44,UK Fixed,0.010,0,60,60\n"
    + "447,UK Mobile,0.060,0.150,30,6\n"
    + "49,Germany,0.012,0,1,1\n"
)
# Replaces DECK_A wholly: 447 and 49 are gone, 44 changes zone and rate, 33 is new.
DECK_B = HEADER + "44,UK All,0.020,0,1,1\n" + "33,France,0.030,0.010,60,1\n"
# What an import answers it did, for DECK_A into a plan with no deck, then DECK_B.
NEW_DECK_A = {"added": 3, "changed": 0, "removed": 0}
A_TO_B = {"added": 1, "changed": 1, "removed": 2}

UK_FIXED = "442071234567"
UK_MOBILE = "447700900123"
GERMANY = "4930123456"
FRANCE = "33123456789"

# Each bad deck also carries good rows (one, 33, not in DECK_A) so that applying any
# part of it would show. Values: (deck, line numbers reported, a word the message has).
BAD_DECKS: dict[str, tuple[str, list[int], str]] = {
    "bad price": (
        HEADER + "33,France,0.030,0.010,60,1\n" + "447,UK Mobile,abc,0.150,30,6\n",
        [3],
        "price_per_minute",
    ),
    "price with 7 decimals": (
        HEADER
        + "33,France,0.030,0.010,60,1\n"
        + "44,UK Fixed,0.010,0,60,60\n"
        + "49,Germany,0.0120001,0,1,1\n",
        [4],
        "decimal places",
    ),
    "negative connect fee": (
        HEADER + "33,France,0.030,-0.010,60,1\n",
        [2],
        "connect_fee",
    ),
    "missing field": (
        HEADER + "33,France,0.030,0.010,60,1\n" + "447,UK Mobile,0.060,0.150,30\n",
        [3],
        "fields",
    ),
    "non-digit prefix": (
        HEADER + "44A,UK Fixed,0.010,0,60,60\n" + "33,France,0.030,0.010,60,1\n",
        [2],
        "prefix",
    ),
    "duplicate prefix": (
        HEADER
        + "33,France,0.030,0.010,60,1\n"
        + "44,UK Fixed,0.010,0,60,60\n"
        + "49,Germany,0.012,0,1,1\n"
        + "44,UK Fixed,0.010,0,60,60\n",
        [5],
        "line 3",
    ),
    "one zone with two rates": (
        HEADER + "33,France,0.030,0.010,60,1\n" + "330,France,0.040,0.010,60,1\n",
        [3],
        "France",
    ),
    "increment of zero": (
        HEADER + "33,France,0.030,0.010,60,0\n",
        [2],
        "increment",
    ),
    "a bad prefix and a bad price on one line": (
        HEADER + "33,France,0.030,0.010,60,1\n" + "44A,UK Fixed,abc,0,60,60\n",
        [3, 3],
        "price_per_minute",
    ),
    "a carriage return in a quoted zone": (
        HEADER + "33,France,0.030,0.010,60,1\n" + '44,"UK\rFixed",0.010,0,60,60\n',
        [3],
        "U+000D",
    ),
    "a carriage return in an unquoted field": (
        HEADER + "33,France,0.030,0.010,60,1\n" + '44,"UK"\rFixed,0.010,0,60,60\n',
        [3],
        "carriage return",
    ),
    "a NUL in a zone": (
        HEADER + "33,France,0.030,0.010,60,1\n" + "44,UK\x00Fixed,0.010,0,60,60\n",
        [3],
        "U+0000",
    ),
    "bad header": (
        "prefix,zone,price,connect_fee,first_block,increment\n" + "33,France,0.030,0.010,60,1\n",
        [1],
        "price_per_minute",
    ),
    "empty file": ("", [1], "header"),
    "header only": (HEADER, [2], "no rows"),
    "line numbers count blank lines": (
        HEADER + "33,France,0.030,0.010,60,1\n\n\n" + "44,UK Fixed,0.01O,0,60,60\n",
        [5],
        "price_per_minute",
    ),
    "every bad line is reported": (
        HEADER
        + "33,France,0.030,0.010,60,1\n"
        + "x44,UK Fixed,0.010,0,60,60\n"
        + "49,Germany,0.012,0,1,1\n"
        + "447,UK Mobile,0.060,0.150,thirty,6\n",
        [3, 5],
        "first_block",
    ),
}
CLI_BAD_DECKS = (
    "price with 7 decimals",
    "missing field",
    "duplicate prefix",
    "bad header",
    "empty file",
    "every bad line is reported",
)


# --- helpers -------------------------------------------------------------------------


def zone_served(app: RunningApp, plan_id: str, number: str) -> str | None:
    """The zone the running server's catalog snapshot rates ``number`` in, if any."""
    match = app.services.catalog.snapshot.tariff_for(plan_id, number)
    return None if match is None else match[1].zone


async def wait_until_served(app: RunningApp, plan_id: str, number: str, zone: str | None) -> None:
    async def visible() -> bool:
        return zone_served(app, plan_id, number) == zone

    await eventually(visible, what=f"{number} to be rated in {zone!r} on plan {plan_id}")


async def import_over_http(app: RunningApp, plan_id: str, deck: str | bytes) -> tuple[int, dict]:
    response = await app.client.post(
        f"/v1/plans/{plan_id}/tariffs", data=deck, headers={"Content-Type": "text/csv"}
    )
    return response.status, await response.json()


async def call(app: RunningApp, account: str, number: str, seconds: int) -> dict:
    """Authorize and stop one call; the stop answer (cost, zone, ...)."""
    status, grant = await app.post("/v1/calls", {"account": account, "destination": number})
    assert status == 201, grant
    status, stopped = await app.post(f"/v1/calls/{grant['call_id']}/stop", {"duration": seconds})
    assert status == 200, stopped
    return stopped


async def refusal(app: RunningApp, account: str, number: str) -> tuple[int, str]:
    status, body = await app.post("/v1/calls", {"account": account, "destination": number})
    assert status >= 400, body
    return status, body["error"]["reason"]


async def deck_rows(app: RunningApp, plan_id: str) -> list[tuple[str, str, int, int, int, int]]:
    """The plan's deck as PostgreSQL holds it: (prefix, zone, price, fee, block, increment)."""
    async with app.services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT p.prefix, z.name, t.price_per_minute, t.connect_fee, t.first_block,"
            " t.increment FROM prefixes p JOIN zones z ON z.id = p.zone_id"
            " JOIN tariffs t ON t.plan_id = p.plan_id AND t.zone_id = p.zone_id"
            " WHERE p.plan_id = $1 ORDER BY p.prefix",
            plan_id,
        )
    return [tuple(r.values()) for r in rows]  # type: ignore[misc]


DECK_A_ROWS = [
    ("44", "UK Fixed", 10_000, 0, 60, 60),
    ("447", "UK Mobile", 60_000, 150_000, 30, 6),
    ("49", "Germany", 12_000, 0, 1, 1),
]


async def plan_with_deck_a(app: RunningApp, plan_id: str = "retail") -> None:
    """A plan created over HTTP, DECK_A imported over HTTP, account 'a-<plan>' with 10.00."""
    status, body = await app.post("/v1/plans", {"id": plan_id, "currency": "EUR"})
    assert status == 201, body
    status, body = await import_over_http(app, plan_id, DECK_A)
    assert status == 200, body
    status, body = await app.post(
        "/v1/accounts", {"id": f"a-{plan_id}", "plan": plan_id, "balance": "10.00"}
    )
    assert status == 201, body
    await wait_until_served(app, plan_id, UK_MOBILE, "UK Mobile")


async def assert_deck_a_still_serves(app: RunningApp, plan_id: str = "retail") -> None:
    # A catalog change made after the refused imports: once the server has loaded it,
    # it has also loaded anything those imports might wrongly have committed.
    barrier = f"barrier-{os.urandom(4).hex()}"
    status, body = await app.post("/v1/plans", {"id": barrier, "currency": "EUR"})
    assert status == 201, body

    async def barrier_loaded() -> bool:
        return app.services.catalog.snapshot.plan(barrier) is not None

    await eventually(barrier_loaded, what="the catalog to reload")
    assert await deck_rows(app, plan_id) == DECK_A_ROWS
    account = f"a-{plan_id}"
    assert (await call(app, account, UK_MOBILE, 45))["cost"] == "0.198000"
    assert await refusal(app, account, FRANCE) == (403, "destination_not_allowed")


def cli_env() -> dict[str, str]:
    # The CLI is configured by flags only here: no OCS_* variable of the caller leaks in.
    return {k: v for k, v in os.environ.items() if not k.startswith("OCS_")}


async def ocs_cli(settings: Settings, cwd: Path, *args: str) -> tuple[int, str, str]:
    """Run ``python -m ocs ARGS`` against the test session's Redis and PostgreSQL."""
    assert settings.redis_url and settings.database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocs",
        *args,
        "--redis-url",
        settings.redis_url,
        "--database-url",
        settings.database_url,
        "--log-format",
        "text",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
        cwd=cwd,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


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
