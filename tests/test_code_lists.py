"""Area-code tables name the place a number calls, for CDRs and the IVR.

The standard table names destinations for every plan; a plan's custom code
list replaces it for that plan whole. Lists import from CSV over HTTP and the
CLI, all or nothing, go live in every process on NOTIFY, and the name lands
in the CDR in PostgreSQL and in the IVR's time answer. They never change a rate.
"""

import json
from pathlib import Path

import pytest

from ocs.config import Settings
from ocs.decks.code_lists import CodeListError, build_code_table, parse_code_list
from tests.conftest import RunningApp, add_plan, caught_up, eventually
from tests.helpers import ocs_cli

STANDARD = """prefix,name
44,United Kingdom
4420,United Kingdom - London
447,United Kingdom - Mobile
49,Germany
4930,Germany - Berlin
"""
CUSTOM = """name,prefix,note
UK (our name),44,ignored
Berlin (our name),+4930,
"""


async def put_list(app: RunningApp, path: str, text: str) -> tuple[int, dict]:
    response = await app.client.put(path, data=text.encode(), headers={"Content-Type": "text/csv"})
    return response.status, await response.json()


async def named(app: RunningApp, plan: str, number: str, name: str | None) -> None:
    async def check() -> bool:
        return app.services.catalog.snapshot.destination_name(plan, number) == name

    await eventually(check, what=f"{number} named {name!r} for {plan}")


def test_a_list_parses_sorted_and_the_longest_prefix_names_a_number() -> None:
    entries = parse_code_list(STANDARD)
    assert [p for p, _ in entries] == ["44", "4420", "447", "49", "4930"]
    table = build_code_table(b"".join(f"{p}\t{n}\n".encode() for p, n in entries))
    assert table.match("442079460000") == ("4420", "United Kingdom - London")
    assert table.match("441610000000") == ("44", "United Kingdom")
    assert table.match("33100000000") is None
    # Extra columns are ignored, '+' is dropped, inner whitespace becomes one space.
    assert parse_code_list(CUSTOM + "USA \t East,1,\n") == [
        ("1", "USA East"),
        ("44", "UK (our name)"),
        ("4930", "Berlin (our name)"),
    ]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("prefix,zone\n44,UK\n", 1, "no column name"),
        ("prefix,name\n44,UK\n4x4,Bad\n", 3, "expected 1 to 32 digits"),
        ("prefix,name\n44,UK\n" + "4" * 33 + ",Long\n", 3, "expected 1 to 32 digits"),
        ("prefix,name\n44,UK\n49,\n", 3, "name: expected 1 to 120 characters"),
        ("prefix,name\n44,UK\n49,DE\n44,Again\n", 4, "44 already given at line 2"),
        ("prefix,name\n", 2, "no rows"),
    ],
)
def test_a_bad_list_is_refused_naming_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(CodeListError) as refused:
        parse_code_list(text)
    assert refused.value.problems[0][0] == line
    assert words in refused.value.problems[0][1]
    assert f"line {line}" in str(refused.value) and "nothing applied" in str(refused.value)


def test_a_list_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(CodeListError, match="not UTF-8"):
        parse_code_list("prefix,name\n225,Côte d'Ivoire\n".encode("latin-1"))


async def test_the_standard_table_names_for_every_plan_and_a_custom_list_replaces_it(
    app: RunningApp,
) -> None:
    await add_plan(app.services, "retail")
    await add_plan(app.services, "wholesale")
    status, body = await put_list(app, "/v1/area-codes", STANDARD)
    assert (status, body) == (200, {"plan": None, "codes": 5})
    await named(app, "retail", "442079460000", "United Kingdom - London")
    await named(app, "wholesale", "493012345", "Germany - Berlin")

    status, body = await put_list(app, "/v1/plans/wholesale/area-codes", CUSTOM)
    assert (status, body) == (200, {"plan": "wholesale", "codes": 2})
    await named(app, "wholesale", "442079460000", "UK (our name)")
    # The custom list replaces the standard table whole: what it lacks has no name.
    await named(app, "wholesale", "4989000000", None)
    await named(app, "retail", "4989000000", "Germany")

    # A bad list changes nothing anywhere.
    status, body = await put_list(app, "/v1/plans/wholesale/area-codes", "prefix,name\n4x,X\n")
    assert status == 400 and body["error"]["reason"] == "invalid_deck"
    assert body["error"]["problems"][0]["line"] == 2
    status, body = await put_list(app, "/v1/plans/nobody/area-codes", CUSTOM)
    assert (status, body["error"]["reason"]) == (404, "plan_not_found")
    await caught_up(app.services)  # whatever was notified has been applied
    assert app.services.catalog.snapshot.destination_name("wholesale", "4930") == (
        "Berlin (our name)"
    )

    # Without its list the plan goes back to the standard table.
    response = await app.client.delete("/v1/plans/wholesale/area-codes")
    assert response.status == 200
    await named(app, "wholesale", "4989000000", "Germany")
    response = await app.client.delete("/v1/plans/wholesale/area-codes")
    assert response.status == 404


async def test_the_name_lands_in_the_cdr_and_the_ivr_answer_and_the_rate_is_the_decks(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await put_list(app, "/v1/area-codes", STANDARD)
    await named(app, "retail", "447700900123", "United Kingdom - Mobile")
    await app.post("/v1/accounts", {"id": "named", "plan": "retail", "balance": "5.00"})
    for n, destination in enumerate(("447700900123", "15551234567")):
        status, grant = await app.post(
            "/v1/calls", {"account": "named", "destination": destination, "call_id": f"nm-{n}"}
        )
        assert status == 201, grant
        status, charge = await app.post(f"/v1/calls/nm-{n}/stop", {"duration": 45})
        assert status == 200, charge
    assert grant["zone"] == "USA"  # the deck rates a number no table names

    async def written() -> bool:
        async with app.services.pool.acquire() as conn:
            return await conn.fetchval("SELECT count(*) FROM cdrs WHERE account_id = 'named'") == 2

    await eventually(written, what="two CDRs in PostgreSQL")
    async with app.services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT call_id, zone, destination_name, charged FROM cdrs"
            " WHERE account_id = 'named' ORDER BY call_id"
        )
    assert [(r["zone"], r["destination_name"]) for r in rows] == [
        ("UK Mobile", "United Kingdom - Mobile"),
        ("USA", None),
    ]
    # The deck's rate, as without a table: 0.15 connect + 48 s at 0.06 a minute.
    assert rows[0]["charged"] == 198_000

    response = await app.client.post(
        "/v1/pin-batches",
        json={"plan": "retail", "batch": "ivr", "count": 1, "length": 12, "value": "1.00"},
    )
    assert response.status == 201
    pin = (await response.text()).splitlines()[1].split(",")[0]
    status, quote = await app.get(f"/v1/pins/{pin}/time?destination=+4930123456")
    assert status == 200, quote
    assert (quote["zone"], quote["destination_name"]) == ("Germany", "Germany - Berlin")


async def test_the_cli_imports_and_removes_lists(
    app: RunningApp, settings: Settings, tmp_path: Path
) -> None:
    await add_plan(app.services)
    standard, custom = tmp_path / "codes.csv", tmp_path / "retail.csv"
    standard.write_text(STANDARD, encoding="utf-8")
    custom.write_text(CUSTOM, encoding="utf-8")
    code, out, err = await ocs_cli(settings, tmp_path, "codes", "import", str(standard))
    assert code == 0, err
    assert (code, json.loads(out)) == (0, {"plan": None, "codes": 5}), err
    code, out, err = await ocs_cli(
        settings, tmp_path, "codes", "import", "--plan", "retail", str(custom)
    )
    assert (code, json.loads(out)) == (0, {"plan": "retail", "codes": 2}), err
    await named(app, "retail", "4420", "UK (our name)")
    bad = tmp_path / "bad.csv"
    bad.write_text("prefix,name\n44,UK\n44,Twice\n", encoding="utf-8")
    code, out, err = await ocs_cli(settings, tmp_path, "codes", "import", str(bad))
    assert code == 1 and out == "" and "line 3" in err and "nothing applied" in err
    code, out, err = await ocs_cli(settings, tmp_path, "codes", "remove", "--plan", "retail")
    assert (code, json.loads(out)) == (0, {"plan": "retail", "removed": True}), err
    await named(app, "retail", "4420", "United Kingdom - London")


async def test_a_plans_lookup_answers_how_a_number_is_rated_and_named(app: RunningApp) -> None:
    await add_plan(app.services)
    await put_list(app, "/v1/area-codes", STANDARD)
    await named(app, "retail", "447700900123", "United Kingdom - Mobile")
    status, body = await app.get("/v1/plans/retail/lookup?number=%2B447700900123")
    assert (status, body) == (
        200,
        {
            "plan": "retail",
            "number": "447700900123",
            "rating_plan": "retail",
            "prefix": "447",
            "zone": "UK Mobile",
            "connect_fee": "0.150000",
            "first_block": 30,
            "increment": 6,
            "price_per_minute": "0.060000",
            "destination_name": "United Kingdom - Mobile",
        },
    )
    status, body = await app.get("/v1/plans/retail/lookup?number=33123456789")
    assert (status, body["error"]["reason"]) == (403, "destination_not_allowed")
    status, body = await app.get("/v1/plans/retail/lookup")
    assert (status, body["error"]["field"]) == (400, "number")
    status, body = await app.get("/v1/plans/retail/lookup?number=44&direction=sideways")
    assert (status, body["error"]["field"]) == (400, "direction")
    status, body = await app.get("/v1/plans/nobody/lookup?number=44")
    assert (status, body["error"]["reason"]) == (404, "plan_not_found")
