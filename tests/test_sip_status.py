"""Every JSON error carries ``sip_status``: the SIP final response a switch gives its
caller, so that the switch needs no mapping table of its own."""

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from ocs.errors import OcsError, Reason, sip_status_of_http, sip_status_table
from tests.conftest import RunningApp, add_plan

UK_MOBILE = "447700900123"

# The switch's view, as the issue states it: 402 no funds, 403 not allowed,
# 404 unknown, 486 no free line, 503 unavailable.
EXPECTED = {
    "zero_balance": 402,
    "insufficient_funds": 402,
    "credit_limit_reached": 402,
    "below_minimum_balance": 402,
    "counter_exhausted": 402,
    "funds_held_by_live_calls": 402,
    "account_suspended": 403,
    "account_locked": 403,
    "account_expired": 403,
    "invalid_password": 403,
    "destination_not_allowed": 403,
    "no_profitable_route": 403,
    "pin_blocked": 403,
    "password_blocked": 403,
    "account_not_found": 404,
    "call_not_found": 404,
    "plan_not_found": 404,
    "not_found": 404,
    "no_free_line": 486,
    "call_already_stopped": 481,
    "call_id_in_use": 400,
    "unavailable": 503,
    "outcome_unknown": 503,
    "unauthorized": 503,
    "forbidden": 503,
    "invalid_field": 400,
    "invalid_deck": 400,
    "body_too_large": 400,
}


def test_every_reason_has_a_sip_final_response() -> None:
    table = sip_status_table()
    assert set(table) == {reason.value for reason in Reason}
    assert all(400 <= status <= 699 for status in table.values())
    assert {reason: table[reason] for reason in EXPECTED} == EXPECTED


def test_an_error_body_carries_the_sip_status_of_its_reason() -> None:
    body = OcsError(Reason.NO_FREE_LINE, "all lines busy").to_json()
    assert body == {
        "error": {
            "code": 409,
            "reason": "no_free_line",
            "message": "all lines busy",
            "sip_status": 486,
        }
    }


def test_http_errors_without_a_reason_map_to_the_switch_or_server_fault() -> None:
    assert [sip_status_of_http(s) for s in (404, 405, 413, 500, 503)] == [404, 400, 400, 500, 503]


@pytest.fixture
async def funded(app: RunningApp) -> RunningApp:
    """Plan 'retail' (one line); account 1001 with 1.00, account 'empty' with nothing."""
    await add_plan(app.services)
    for account_id, balance in (("1001", "1.00"), ("empty", "0")):
        status, body = await app.post(
            "/v1/accounts", {"id": account_id, "plan": "retail", "balance": balance}
        )
        assert status == 201, body
    return app


async def _refusal(app: RunningApp, path: str, payload: object) -> tuple[int, str, int]:
    status, body = await app.post(path, payload)
    return status, body["error"]["reason"], body["error"]["sip_status"]


async def test_the_call_lifecycle_refusals_carry_what_the_switch_answers(
    funded: RunningApp,
) -> None:
    app = funded
    call = {"account": "1001", "destination": UK_MOBILE}
    assert await _refusal(app, "/v1/calls", {**call, "account": "empty"}) == (
        402,
        "zero_balance",
        402,
    )
    assert await _refusal(app, "/v1/calls", {**call, "account": "nobody"}) == (
        404,
        "account_not_found",
        404,
    )
    status, body = await app.post("/v1/calls", {**call, "call_id": "first"})
    assert status == 201, body
    # The plan has one line, and the first call holds it.
    assert await _refusal(app, "/v1/calls", {**call, "call_id": "second"}) == (
        409,
        "no_free_line",
        486,
    )
    assert await _refusal(app, "/v1/calls/nothing-live/update", {"used": 5}) == (
        404,
        "call_not_found",
        404,
    )
    assert await _refusal(app, "/v1/calls", {**call, "destination": "44abc"}) == (
        400,
        "invalid_field",
        400,
    )
    response = await app.client.patch("/v1/accounts/empty", json={"status": "suspended"})
    assert response.status == 200, await response.text()
    assert await _refusal(app, "/v1/calls", {**call, "account": "empty"}) == (
        403,
        "account_suspended",
        403,
    )


async def test_a_backend_outage_tells_the_switch_503(
    funded: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = funded

    async def redis_down(*args: object, **kwargs: object) -> None:
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(app.services.calls, "authorize", redis_down)
    status, reason, sip = await _refusal(
        app, "/v1/calls", {"account": "1001", "destination": UK_MOBILE}
    )
    assert (status, reason, sip) == (503, "unavailable", 503)


async def test_routing_errors_carry_a_sip_status_too(funded: RunningApp) -> None:
    response = await funded.client.get("/v1/no-such-endpoint")
    body = await response.json()
    assert (response.status, body["error"]["sip_status"]) == (404, 404)
    response = await funded.client.put("/v1/calls")  # a method the route does not take
    body = await response.json()
    assert (response.status, body["error"]["sip_status"]) == (405, 400)


async def test_the_openapi_error_schema_documents_sip_status(app: RunningApp) -> None:
    status, document = await app.get("/openapi.json")
    assert status == 200, document
    error = document["components"]["schemas"]["Error"]["properties"]["error"]
    assert "sip_status" in error["required"]
    described = error["properties"]["sip_status"]["description"]
    assert "no_free_line 486" in described and "zero_balance 402" in described
