"""Translation sets: numbers as callers dial them rate the same once normalised."""

from tests.conftest import RADIUS_SECRET, RunningApp, RunningRadius, add_plan, eventually
from tests.radclient import radclient

DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
44,UK Fixed,0.010,0,60,60
4420,UK London,0.012,0,60,60
"""

UK_NATIONAL = [
    {"match": r"[\s().-]+", "replace": ""},  # spaces and punctuation
    {"match": r"^\+", "replace": ""},
    {"match": r"^00", "replace": ""},
    {"match": r"^0(?=[1-9])", "replace": "44"},
]


async def _translate(app: RunningApp, rules: list[dict]) -> tuple[int, dict]:
    response = await app.client.put("/v1/plans/retail/translation", json={"rules": rules})
    return response.status, await response.json()


async def _with_uk_rules(app: RunningApp) -> None:
    await add_plan(app.services, deck=DECK, max_lines=10)
    status, body = await _translate(app, UK_NATIONAL)
    assert status == 200, body

    async def loaded() -> bool:
        plan = app.services.catalog.snapshot.plan("retail")
        return plan is not None and len(plan.translation.rules) == len(UK_NATIONAL)

    await eventually(loaded, what="the translation set in the snapshot")


async def test_three_ways_of_dialling_london_rate_the_same(app: RunningApp) -> None:
    await _with_uk_rules(app)
    await app.post(
        "/v1/accounts", {"id": "dial", "plan": "retail", "balance": "5.00", "max_lines": 10}
    )
    costs = []
    for n, dialled in enumerate(["+44 20 7946 0000", "0044 20 7946 0000", "020 7946 0000"]):
        status, grant = await app.post(
            "/v1/calls", {"account": "dial", "destination": dialled, "call_id": f"dial-{n}"}
        )
        assert status == 201, grant
        assert (grant["destination"], grant["zone"]) == ("442079460000", "UK London")
        _, stopped = await app.post(f"/v1/calls/dial-{n}/stop", {"duration": 61})
        costs.append(stopped["cost"])
    assert costs == ["0.024000"] * 3


async def test_an_unmatched_destination_is_refused_in_http_and_radius(
    radius: RunningRadius,
) -> None:
    app = radius.app
    await _with_uk_rules(app)
    await app.post("/v1/accounts", {"id": "far", "plan": "retail", "balance": "5.00"})
    status, body = await app.post("/v1/calls", {"account": "far", "destination": "+1 212 555 0100"})
    assert (status, body["error"]["reason"]) == (403, "destination_not_allowed")
    reply = await radclient(
        "auth",
        radius.auth_port,
        RADIUS_SECRET,
        [("User-Name", "far"), ("Called-Station-Id", "+1 212 555 0100")],
    )
    assert reply.code == "Access-Reject"
    assert reply.attributes["h323-return-code"] == ["h323-return-code=9"]


async def test_bad_rules_name_the_rule(app: RunningApp) -> None:
    await add_plan(app.services, deck=DECK)
    status, body = await _translate(app, [{"match": "(unclosed", "replace": ""}])
    assert (status, body["error"]["field"]) == (400, "rules[0]")
    status, body = await _translate(app, [{"match": "^0", "replace": r"\9"}])
    assert (status, body["error"]["field"]) == (400, "rules[0]")
    response = await app.client.put("/v1/plans/nope/translation", json={"rules": []})
    assert response.status == 404
