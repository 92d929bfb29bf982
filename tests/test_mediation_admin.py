"""Mediation's catalog through the admin API: rate types, plans' rates by rate type,
suppliers' overrides and versioned usage import templates (issue 15).

What an operator notices: names with spaces round-trip; a rate type in use cannot
be deleted, and the refusal says what uses it; a rate in another currency than its
plan's is refused naming ``currency``; the serving processes rate by a changed
rate at once, without a restart; an override table is replaced whole or not at
all; a template saved again unchanged keeps its version and a changed one is the
next; bad input is a 4xx naming the field; viewers read and cannot write.
"""

import asyncio
import copy
from typing import Any
from urllib.parse import quote

from ocs import api_tokens
from ocs.catalog.snapshot import Tariff
from ocs.mediation import store
from ocs.rating.rates import Rate, Tier, cost
from tests.conftest import RunningApp, add_plan, bearer, caught_up

TOLL_FREE = "Inbound Toll-free"
ON_NET = "Canada On-Net"
# A name the path could not carry unescaped: the API takes it in the query or body.
ODD = "Data / MB & more?"
TEMPLATE: dict[str, Any] = {
    "name": "acme-cdr",
    "supplier": "acme",
    "format": {"kind": "csv", "header": True},
    "columns": {
        "record_id": "id",
        "start": "start",
        "account": "account",
        "called": "called",
        "duration": "seconds",
    },
    "classify": [
        {"rate_type": "Inbound Toll-free Canada", "when": {"called_prefix": ["1800"]}},
        {"rate_type": "Inbound Toll-free USA", "when": {"called_prefix": ["1888"]}},
    ],
    "default_rate_type": ON_NET,
}


def q(text: str) -> str:
    """A query parameter's value, escaped."""
    return quote(text, safe="")


async def define(app: RunningApp, *names: str) -> None:
    """Rate types that must be created (201)."""
    for name in names:
        status, body = await app.post("/v1/rate-types", {"name": name})
        assert status == 201, body


async def delete(app: RunningApp, path: str) -> tuple[int, dict[str, Any]]:
    """DELETE: (status, JSON body)."""
    response = await app.client.delete(path)
    return response.status, await response.json()


async def test_rate_types_are_defined_listed_and_deleted_by_name(app: RunningApp) -> None:
    status, created = await app.post(
        "/v1/rate-types", {"name": TOLL_FREE, "description": "800 numbers"}
    )
    assert (status, created) == (201, {"name": TOLL_FREE, "description": "800 numbers"})
    await define(app, ODD)
    # Defined again: 200, and the description given is the one kept.
    status, again = await app.post("/v1/rate-types", {"name": TOLL_FREE, "description": "TF"})
    assert (status, again) == (200, {"name": TOLL_FREE, "description": "TF"})
    status, listed = await app.get("/v1/rate-types")
    assert status == 200
    assert listed["rate_types"] == [
        {"name": ODD, "description": ""},
        {"name": TOLL_FREE, "description": "TF"},
    ]

    status, removed = await delete(app, f"/v1/rate-types?name={q(ODD)}")
    assert (status, removed["name"]) == (200, ODD), removed
    status, listed = await app.get("/v1/rate-types")
    assert [t["name"] for t in listed["rate_types"]] == [TOLL_FREE]
    status, missing = await delete(app, f"/v1/rate-types?name={q(ODD)}")
    assert (status, missing["error"]["reason"], missing["error"]["field"]) == (
        404,
        "not_found",
        "name",
    )


async def test_a_bad_rate_type_name_is_refused_naming_the_field(app: RunningApp) -> None:
    for body, field in (
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "Tab\there"}, "name"),
        ({"name": " padded"}, "name"),
        ({"name": "ok", "description": "d" * 501}, "description"),
        ({"name": "ok", "colour": "red"}, "colour"),
    ):
        status, refused = await app.post("/v1/rate-types", body)
        assert (status, refused["error"]["field"]) == (400, field), (body, refused)
    status, refused = await delete(app, "/v1/rate-types?name=a%00b")
    assert (status, refused["error"]["field"]) == (400, "name"), refused
    status, listed = await app.get("/v1/rate-types")
    assert listed["rate_types"] == []


async def test_a_rate_type_in_use_is_not_deleted_and_the_refusal_names_its_users(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await define(app, TOLL_FREE)
    status, body = await app.put(
        "/v1/plans/retail/rate-types", {"rate_type": TOLL_FREE, "name": "TF", "price": "0.02"}
    )
    assert status == 200, body
    status, body = await app.put(
        "/v1/rate-type-overrides",
        {
            "supplier": "acme",
            "overrides": [{"from_rate_type": "Inbound Toll-free USA", "to_rate_type": TOLL_FREE}],
        },
    )
    assert status == 200, body

    status, refused = await delete(app, f"/v1/rate-types?name={q(TOLL_FREE)}")
    assert (status, refused["error"]["field"]) == (400, "name"), refused
    assert "plan(s) retail" in refused["error"]["message"]
    assert "supplier(s) acme" in refused["error"]["message"]
    status, body = await delete(app, f"/v1/plans/retail/rate-types?rate_type={q(TOLL_FREE)}")
    assert status == 200, body
    status, refused = await delete(app, f"/v1/rate-types?name={q(TOLL_FREE)}")
    assert status == 400 and "plan" not in refused["error"]["message"], refused
    assert "supplier(s) acme" in refused["error"]["message"]
    status, body = await app.put("/v1/rate-type-overrides", {"supplier": "acme", "overrides": []})
    assert (status, body) == (200, {"supplier": "acme", "overrides": []})
    status, removed = await delete(app, f"/v1/rate-types?name={q(TOLL_FREE)}")
    assert (status, removed["name"]) == (200, TOLL_FREE), removed


async def test_a_plan_rate_for_a_rate_type_is_set_listed_replaced_and_removed(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await define(app, TOLL_FREE, ODD)
    rate = {
        "rate_type": TOLL_FREE,
        "name": "Toll-free minutes",
        "currency": "EUR",
        "price": "0.05",
        "connect_fee": "0.10",
        "first_block": 30,
        "increment": 6,
        "tiers": [{"from_second": 600, "price_per_minute": "0.01", "increment": 60}],
        "max_cost": "2.50",
        "surcharge_percent": "2.5",
        "band_prices": {"peak": "0.07"},
        "tax_code": "TF",
        "gl_code": "4100",
    }
    status, shown = await app.put("/v1/plans/retail/rate-types", rate)
    assert status == 200, shown
    assert shown == {
        "plan": "retail",
        "rate_type": TOLL_FREE,
        "name": "Toll-free minutes",
        "currency": "EUR",
        "price": "0.050000",
        "per": 60,
        "connect_fee": "0.100000",
        "first_block": 30,
        "increment": 6,
        "tiers": [
            {
                "from_second": 600,
                "price_per_minute": "0.010000",
                "increment": 60,
                "flat": "0.000000",
            }
        ],
        "max_cost": "2.500000",
        "max_cost_mode": "free",
        "surcharge_percent": "2.5",
        "surcharge_flat": "0.000000",
        "band_prices": {"peak": "0.070000"},
        "tax_code": "TF",
        "gl_code": "4100",
    }
    # Usage by the MB: a price per unit, and the plan's currency taken when none is given.
    status, data = await app.put(
        "/v1/plans/retail/rate-types",
        {"rate_type": ODD, "name": "Data", "price": "0.002", "per": 1},
    )
    assert (status, data["currency"], data["price"], data["per"]) == (200, "EUR", "0.002000", 1)
    status, listed = await app.get("/v1/plans/retail/rate-types")
    assert status == 200
    assert listed["plan"] == "retail"
    assert [r["rate_type"] for r in listed["rates"]] == [ODD, TOLL_FREE]
    assert listed["rates"][1] == shown

    # Replaced whole: what the new body leaves out goes back to its default.
    status, replaced = await app.put(
        "/v1/plans/retail/rate-types", {"rate_type": TOLL_FREE, "name": "TF", "price": "0.04"}
    )
    assert status == 200, replaced
    assert (replaced["price"], replaced["tiers"], replaced["tax_code"]) == ("0.040000", [], None)

    status, removed = await delete(app, f"/v1/plans/retail/rate-types?rate_type={q(ODD)}")
    assert (status, removed["name"]) == (200, "Data"), removed
    status, listed = await app.get("/v1/plans/retail/rate-types")
    assert [r["rate_type"] for r in listed["rates"]] == [TOLL_FREE]
    status, missing = await delete(app, f"/v1/plans/retail/rate-types?rate_type={q(ODD)}")
    assert (status, missing["error"]["field"]) == (404, "rate_type"), missing


async def test_a_bad_rate_is_refused_naming_the_field_and_stores_nothing(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await define(app, TOLL_FREE)
    good = {"rate_type": TOLL_FREE, "name": "TF", "price": "0.05"}
    cases: list[tuple[str, dict[str, Any], int, str, str]] = [
        ("retail", {**good, "currency": "USD"}, 400, "invalid_field", "currency"),
        ("retail", {**good, "currency": "eur"}, 400, "invalid_field", "currency"),
        ("retail", {**good, "rate_type": "Nothing"}, 404, "not_found", "rate_type"),
        ("nowhere", good, 404, "plan_not_found", "plan_id"),
        ("retail", {**good, "price": "-1"}, 400, "invalid_field", "price"),
        ("retail", {**good, "price": 0.05}, 400, "invalid_field", "price"),
        ("retail", {**good, "increment": 0}, 400, "invalid_field", "increment"),
        ("retail", {**good, "per": 0}, 400, "invalid_field", "per"),
        ("retail", {**good, "surcharge_percent": "2.555"}, 400, "invalid_field",
         "surcharge_percent"),
        ("retail", {**good, "tiers": [{"from_second": 0}]}, 400, "invalid_field",
         "tiers[0].from_second"),
        ("retail", {**good, "tiers": [{"from_second": 600}, {"from_second": 60}]}, 400,
         "invalid_field", "tiers"),
        ("retail", {**good, "name": ""}, 400, "invalid_field", "name"),
        ("retail", {**good, "tax_code": "x" * 65}, 400, "invalid_field", "tax_code"),
        ("retail", {k: v for k, v in good.items() if k != "price"}, 400, "invalid_field",
         "price"),
    ]  # fmt: skip
    for plan, body, code, reason, field in cases:
        status, refused = await app.put(f"/v1/plans/{plan}/rate-types", body)
        assert status == code, (body, refused)
        assert (refused["error"]["reason"], refused["error"]["field"]) == (reason, field), body
    status, listed = await app.get("/v1/plans/retail/rate-types")
    assert listed["rates"] == []


async def test_the_serving_snapshot_rates_by_a_changed_rate_without_a_restart(
    app: RunningApp,
) -> None:
    services = app.services
    await add_plan(services)
    await define(app, TOLL_FREE)
    # The plan's own notifications reloaded first: the snapshot compared with is final.
    await caught_up(services)
    before = services.catalog.snapshot
    assert before.rate_type_tariff("retail", TOLL_FREE) is None

    status, body = await app.put(
        "/v1/plans/retail/rate-types",
        {
            "rate_type": TOLL_FREE,
            "name": "TF",
            "price": "0.05",
            "connect_fee": "0.10",
            "first_block": 30,
            "increment": 6,
            "tiers": [{"from_second": 600, "price_per_minute": "0.01"}],
            "max_cost": "2.00",
            "max_cost_mode": "cut",
            "surcharge_percent": "10",
            "surcharge_flat": "0.01",
            "band_prices": {"peak": "0.08"},
        },
    )
    assert status == 200, body
    await caught_up(services)
    snapshot = services.catalog.snapshot
    assert snapshot.rate_type_tariff("retail", TOLL_FREE) == Tariff(
        zone=TOLL_FREE,
        rate=Rate(
            connect_fee=100_000,
            first_block=30,
            increment=6,
            price_per_minute=50_000,
            tiers=(Tier(start=600, price_per_minute=10_000),),
            max_cost=2_000_000,
            cut_at_max_cost=True,
            surcharge_percent_bp=1000,
            surcharge_flat=10_000,
            band_prices=(("peak", 80_000),),
        ),
    )
    # The deck did not change: the reload kept it rather than building it again.
    assert snapshot.decks["retail"] is before.decks["retail"]
    assert snapshot.rate_type_tariff("retail", "Inbound Toll-free USA") is None
    assert snapshot.rate_type_tariff("gold", TOLL_FREE) is None

    status, body = await app.put(
        "/v1/plans/retail/rate-types", {"rate_type": TOLL_FREE, "name": "TF", "price": "0.06"}
    )
    assert status == 200, body
    await caught_up(services)
    tariff = services.catalog.snapshot.rate_type_tariff("retail", TOLL_FREE)
    assert tariff is not None
    # 61 seconds at 0.06 a minute, by the second: 0.061.
    assert cost(tariff.rate, 61) == 61_000

    status, body = await delete(app, f"/v1/plans/retail/rate-types?rate_type={q(TOLL_FREE)}")
    assert status == 200, body
    await caught_up(services)
    assert services.catalog.snapshot.rate_type_tariff("retail", TOLL_FREE) is None


async def test_a_supplier_override_table_is_replaced_whole_or_not_at_all(
    app: RunningApp,
) -> None:
    await define(app, TOLL_FREE, ON_NET)
    table = [
        {"from_rate_type": "Inbound Toll-free USA", "to_rate_type": TOLL_FREE},
        {"from_rate_type": "Inbound Toll-free Canada", "to_rate_type": TOLL_FREE},
    ]
    status, shown = await app.put(
        "/v1/rate-type-overrides", {"supplier": "acme", "overrides": table}
    )
    assert status == 200, shown
    assert shown == {"supplier": "acme", "overrides": sorted(table, key=str)}
    status, listed = await app.get("/v1/rate-type-overrides?supplier=acme")
    assert (status, listed) == (200, shown)
    status, other = await app.get("/v1/rate-type-overrides?supplier=globex")
    assert (status, other) == (200, {"supplier": "globex", "overrides": []})

    # Refused, all of it: a to that is no rate type, a from given twice.
    for overrides, code, field in (
        ([{"from_rate_type": "A", "to_rate_type": ON_NET},
          {"from_rate_type": "B", "to_rate_type": "Nothing"}], 404, "overrides[1].to_rate_type"),
        ([{"from_rate_type": "A", "to_rate_type": ON_NET},
          {"from_rate_type": "A", "to_rate_type": TOLL_FREE}], 400,
         "overrides[1].from_rate_type"),
        ([{"from_rate_type": "A\nB", "to_rate_type": ON_NET}], 400, "overrides[0].from_rate_type"),
        ([{"from_rate_type": "A"}], 400, "overrides[0].to_rate_type"),
    ):  # fmt: skip
        status, refused = await app.put(
            "/v1/rate-type-overrides", {"supplier": "acme", "overrides": overrides}
        )
        assert (status, refused["error"]["field"]) == (code, field), (overrides, refused)
    status, refused = await app.put(
        "/v1/rate-type-overrides", {"supplier": "ac me", "overrides": []}
    )
    assert (status, refused["error"]["field"]) == (400, "supplier"), refused
    status, listed = await app.get("/v1/rate-type-overrides?supplier=acme")
    assert listed == shown

    status, replaced = await app.put(
        "/v1/rate-type-overrides",
        {"supplier": "acme", "overrides": [{"from_rate_type": "Local", "to_rate_type": ON_NET}]},
    )
    assert (status, replaced["overrides"]) == (
        200,
        [{"from_rate_type": "Local", "to_rate_type": ON_NET}],
    )
    status, one = await app.post(
        "/v1/rate-type-overrides",
        {"supplier": "acme", "from_rate_type": "Inbound Toll-free USA", "to_rate_type": TOLL_FREE},
    )
    assert (status, one["to_rate_type"]) == (200, TOLL_FREE), one
    status, gone = await delete(
        app, f"/v1/rate-type-overrides?supplier=acme&from_rate_type={q('Local')}"
    )
    assert (status, gone["to_rate_type"]) == (200, ON_NET), gone
    status, missing = await delete(
        app, f"/v1/rate-type-overrides?supplier=acme&from_rate_type={q('Local')}"
    )
    assert (status, missing["error"]["field"]) == (404, "from_rate_type"), missing
    async with app.services.pool.acquire() as conn:
        assert await store.overrides_of(conn, "acme") == {"Inbound Toll-free USA": TOLL_FREE}
        assert await store.overrides_of(conn, "globex") == {}


async def test_a_template_saved_again_keeps_its_version_and_a_changed_one_is_the_next(
    app: RunningApp,
) -> None:
    status, saved = await app.post("/v1/usage-templates", TEMPLATE)
    assert (status, saved) == (
        201,
        {"name": "acme-cdr", "supplier": "acme", "version": 1, "new": True},
    )
    # The same definition, its defaults written out and its keys in another order.
    status, shown = await app.get("/v1/usage-templates/definition?name=acme-cdr")
    assert status == 200, shown
    same = dict(reversed(list(shown["definition"].items())))
    status, again = await app.post("/v1/usage-templates", same)
    assert (status, again["version"], again["new"]) == (200, 1, False), again

    changed = copy.deepcopy(TEMPLATE)
    changed["classify"][1]["when"]["called_prefix"] = ["1888", "1877"]
    status, saved = await app.post("/v1/usage-templates", changed)
    assert (status, saved["version"], saved["new"]) == (201, 2, True), saved
    status, again = await app.post("/v1/usage-templates", changed)
    assert (status, again["version"]) == (200, 2)

    status, listed = await app.get("/v1/usage-templates")
    assert status == 200
    [summary] = listed["templates"]
    assert (summary["name"], summary["supplier"], summary["latest_version"]) == (
        "acme-cdr",
        "acme",
        2,
    )
    assert summary["versions"] == 2
    status, latest = await app.get("/v1/usage-templates/definition?name=acme-cdr")
    assert (status, latest["version"]) == (200, 2)
    assert [v["version"] for v in latest["versions"]] == [1, 2]
    assert latest["definition"]["classify"][1]["when"]["called_prefix"] == ["1888", "1877"]
    status, first = await app.get("/v1/usage-templates/definition?name=acme-cdr&version=1")
    assert (status, first["version"], first["definition"]) == (200, 1, shown["definition"])
    async with app.services.pool.acquire() as conn:
        found = await store.latest_template(conn, "acme-cdr")
        assert found is not None and found[0] == 2
        assert found[1].classify[1].when.called_prefix == ("1888", "1877")
        versions = await store.template_versions(conn, "acme-cdr")
        assert [v.version for v in versions] == [1, 2]

    for path, field in (
        ("/v1/usage-templates/definition?name=acme-cdr&version=3", "version"),
        ("/v1/usage-templates/definition?name=other", "name"),
    ):
        status, missing = await app.get(path)
        assert (status, missing["error"]["field"]) == (404, field), missing
    status, refused = await app.get("/v1/usage-templates/definition?name=acme-cdr&version=0")
    assert (status, refused["error"]["field"]) == (400, "version"), refused


async def test_a_bad_template_is_refused_naming_the_field_and_stores_nothing(
    app: RunningApp,
) -> None:
    no_start = copy.deepcopy(TEMPLATE)
    del no_start["columns"]["start"]
    bad_regex = copy.deepcopy(TEMPLATE)
    bad_regex["filters"] = [{"column": "called", "regex": "(unclosed"}]
    for body, field in (
        (no_start, "columns.start"),
        ({**TEMPLATE, "colour": "red"}, "colour"),
        ({**TEMPLATE, "name": "acme cdr"}, "name"),
        ({**TEMPLATE, "format": {"kind": "xml"}}, "format.kind"),
        (bad_regex, "filters[0].regex"),
        # RE2 takes no backreferences: a pattern is refused when stored, not when run.
        ({**TEMPLATE, "filters": [{"column": "called", "regex": r"(\d)\1"}]},
         "filters[0].regex"),
    ):  # fmt: skip
        status, refused = await app.post("/v1/usage-templates", body)
        assert status == 400, (body, refused)
        assert refused["error"]["field"] == field, refused
    response = await app.client.post(
        "/v1/usage-templates", data="{", headers={"Content-Type": "application/json"}
    )
    assert (response.status, (await response.json())["error"]["field"]) == (400, "body")
    status, listed = await app.get("/v1/usage-templates")
    assert listed == {"templates": []}


async def test_viewers_read_mediation_and_cannot_change_it(app: RunningApp) -> None:
    await add_plan(app.services)
    viewer = bearer(await api_tokens.create(app.services.pool, "clerk", "viewer"))
    operator = bearer(await api_tokens.create(app.services.pool, "mediator", "operator"))
    admin = bearer(await api_tokens.create(app.services.pool, "boss", "admin"))
    # Prices (a plan's rate for a rate type, and which rate type a supplier's usage is
    # rated as) are the catalog's: admin only (decision 0010). Rate types and templates
    # decide no price: operators write them.
    writes: list[tuple[str, str, Any, str]] = [
        ("POST", "/v1/rate-types", {"name": TOLL_FREE}, operator),
        ("PUT", "/v1/plans/retail/rate-types", {"rate_type": TOLL_FREE, "name": "TF",
                                                "price": "0.05"}, admin),
        ("PUT", "/v1/rate-type-overrides",
         {"supplier": "acme", "overrides": [{"from_rate_type": "X", "to_rate_type": TOLL_FREE}]},
         admin),
        ("POST", "/v1/rate-type-overrides",
         {"supplier": "acme", "from_rate_type": "Y", "to_rate_type": TOLL_FREE}, admin),
        ("POST", "/v1/usage-templates", TEMPLATE, operator),
        ("DELETE", "/v1/rate-type-overrides?supplier=acme&from_rate_type=Y", None, admin),
        ("DELETE", f"/v1/plans/retail/rate-types?rate_type={q(TOLL_FREE)}", None, admin),
    ]  # fmt: skip
    for method, path, body, writer in writes:
        status, answer, _ = await app.anonymous(method, path, json=body, headers=viewer)
        assert (status, answer["error"]["reason"]) == (403, "forbidden"), (method, path)
        if writer is admin:
            status, answer, _ = await app.anonymous(method, path, json=body, headers=operator)
            assert (status, answer["error"]["reason"]) == (403, "forbidden"), (method, path)
        status, answer, _ = await app.anonymous(method, path, json=body, headers=writer)
        assert status in (200, 201), (method, path, answer)
    for path in (
        "/v1/rate-types",
        "/v1/plans/retail/rate-types",
        "/v1/rate-type-overrides?supplier=acme",
        "/v1/usage-templates",
        "/v1/usage-templates/definition?name=acme-cdr",
    ):
        status, answer, _ = await app.anonymous("GET", path, headers=viewer)
        assert status == 200, (path, answer)
    status, answer, _ = await app.anonymous("GET", "/v1/rate-type-overrides?supplier=acme",
                                            headers=viewer)  # fmt: skip
    assert answer["overrides"] == [{"from_rate_type": "X", "to_rate_type": TOLL_FREE}]
    status, answer, _ = await app.anonymous(
        "DELETE", f"/v1/rate-types?name={q(TOLL_FREE)}", headers=viewer
    )
    assert status == 403


async def test_an_operator_cannot_change_a_rate_type_s_price_nor_its_overrides(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await define(app, TOLL_FREE, ON_NET)
    status, _ = await app.put(
        "/v1/plans/retail/rate-types", {"rate_type": TOLL_FREE, "name": "TF", "price": "0.05"}
    )
    assert status == 200
    status, _ = await app.put(
        "/v1/rate-type-overrides",
        {"supplier": "acme", "overrides": [{"from_rate_type": "X", "to_rate_type": TOLL_FREE}]},
    )
    assert status == 200
    status, before = await app.get("/v1/plans/retail/rate-types")
    operator = bearer(await api_tokens.create(app.services.pool, "mediator", "operator"))
    for method, path, body in (
        ("PUT", "/v1/plans/retail/rate-types", {"rate_type": TOLL_FREE, "name": "TF",
                                                "price": "0"}),
        ("DELETE", f"/v1/plans/retail/rate-types?rate_type={q(TOLL_FREE)}", None),
        ("PUT", "/v1/rate-type-overrides",
         {"supplier": "acme", "overrides": [{"from_rate_type": "X", "to_rate_type": ON_NET}]}),
        ("POST", "/v1/rate-type-overrides",
         {"supplier": "acme", "from_rate_type": "X", "to_rate_type": ON_NET}),
        ("DELETE", "/v1/rate-type-overrides?supplier=acme&from_rate_type=X", None),
    ):  # fmt: skip
        status, answer, _ = await app.anonymous(method, path, json=body, headers=operator)
        assert (status, answer["error"]["reason"]) == (403, "forbidden"), (method, path, answer)
    status, after = await app.get("/v1/plans/retail/rate-types")
    assert after == before
    status, overrides = await app.get("/v1/rate-type-overrides?supplier=acme")
    assert overrides["overrides"] == [{"from_rate_type": "X", "to_rate_type": TOLL_FREE}]


async def test_concurrent_replacements_of_one_table_leave_one_of_them_whole(
    app: RunningApp,
) -> None:
    await define(app, TOLL_FREE, ON_NET)
    tables = [
        [{"from_rate_type": f"T{n}-{k}", "to_rate_type": TOLL_FREE} for k in range(20)]
        for n in range(6)
    ]
    answers = await asyncio.gather(
        *(
            app.put("/v1/rate-type-overrides", {"supplier": "acme", "overrides": table})
            for table in tables
        )
    )
    assert [status for status, _ in answers] == [200] * len(tables), answers
    status, listed = await app.get("/v1/rate-type-overrides?supplier=acme")
    assert status == 200
    assert listed["overrides"] in [sorted(t, key=lambda o: o["from_rate_type"]) for t in tables]
