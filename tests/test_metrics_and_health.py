"""NOC view: /metrics counts requests by endpoint and result; /healthz, /readyz check backends."""

import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ResponseError

from ocs.backend_health import BackendHealth
from ocs.services import Services
from tests.conftest import RunningApp, add_plan
from tests.outage_helpers import FlakyPool, client_with_readyz


def _samples(text: str, name: str) -> dict[tuple, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def _metrics(app: RunningApp) -> str:
    response = await app.client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return await response.text()


async def test_requests_are_counted_by_endpoint_and_result(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "m1", "plan": "retail"})
    before = _samples(await _metrics(app), "ocs_http_requests_total")
    key_refused = (("endpoint", "/v1/calls"), ("method", "POST"), ("result", "zero_balance"))
    key_unknown = (("endpoint", "/v1/calls"), ("method", "POST"), ("result", "account_not_found"))
    await app.post("/v1/calls", {"account": "m1", "destination": "447700900123"})
    await app.post("/v1/calls", {"account": "m1", "destination": "447700900123"})
    await app.post("/v1/calls", {"account": "zz", "destination": "447700900123"})
    after = _samples(await _metrics(app), "ocs_http_requests_total")
    assert after[key_refused] - before.get(key_refused, 0) == 2
    assert after[key_unknown] - before.get(key_unknown, 0) == 1
    # Labels hold route patterns, never ids.
    assert all("m1" not in dict(k)["endpoint"] for k in after)
    latency = _samples(await _metrics(app), "ocs_http_request_duration_seconds_count")
    assert latency[(("endpoint", "/v1/calls"), ("method", "POST"))] >= 3
    decisions = _samples(await _metrics(app), "ocs_call_authorizations_total")
    assert decisions[(("result", "zero_balance"),)] >= 2


class ScriptBroke(ResponseError):
    """A script failing on every call alike (a bug), which no outage explains."""


async def test_an_error_failing_every_request_is_logged_once_a_while_and_all_counted(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(account_id: str) -> None:
        raise ScriptBroke("ERR Error running script (call to f_1): @user_script:3: index nil")

    monkeypatch.setattr(app.services.accounts, "show", broken)
    labels = (("protocol", "http"), ("reason", "ScriptBroke"))
    before = _samples(await _metrics(app), "ocs_request_errors_total").get(labels, 0.0)
    caplog.set_level(logging.INFO, logger="ocs.http")
    for _ in range(25):
        status, body = await app.get("/v1/accounts/a1")
        assert status == 503 and body["error"]["reason"] == "unavailable", body
    lines = [r for r in caplog.records if r.getMessage() == "backend unavailable"]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert lines[0].reason == "ScriptBroke"  # type: ignore[attr-defined]
    assert _samples(await _metrics(app), "ocs_request_errors_total")[labels] == before + 25


async def test_healthz_reports_both_backends(app: RunningApp) -> None:
    status, body = await app.get("/healthz")
    assert status == 200
    assert body["checks"] == {"redis": "ok", "postgres": "ok"}


async def test_readyz_answers_ready_when_both_backends_answer(services: Services) -> None:
    client = await client_with_readyz(services)
    try:
        response = await client.get("/readyz")
        body = await response.json()
    finally:
        await client.close()
    assert response.status == 200
    assert body == {"ready": True, "backends": {"redis": {"up": True}, "postgresql": {"up": True}}}


async def test_readyz_answers_503_while_postgresql_is_unreachable(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "health", BackendHealth())  # this test's outage alone
    pool = FlakyPool(services.pool)
    monkeypatch.setattr(services, "pool", pool)
    client = await client_with_readyz(services)
    try:
        pool.down = True
        down = await client.get("/readyz")
        down_body = await down.json()
        pool.down = False
        back = await client.get("/readyz")
    finally:
        await client.close()
    assert down.status == 503
    assert down_body["ready"] is False
    assert down_body["backends"]["redis"] == {"up": True}
    postgresql = down_body["backends"]["postgresql"]
    assert postgresql["up"] is False and postgresql["error"] == "ConnectionRefusedError"
    assert back.status == 200
    assert services.health.is_up("postgresql")


async def test_catalog_changes_reach_the_running_snapshot(app: RunningApp) -> None:
    from ocs.catalog import store as catalog_store
    from ocs.decks.rate_deck import parse_deck
    from tests.conftest import eventually

    await add_plan(app.services)
    # A deck imported elsewhere (another process, the CLI) commits and NOTIFYs.
    await catalog_store.import_deck(
        app.services.pool,
        "retail",
        parse_deck(
            "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"
            "33,France,0.011,0,60,60\n"
        ),
    )

    async def reloaded() -> bool:
        # Earlier NOTIFYs (from add_plan) may reload first: wait for this deck's content.
        return app.services.catalog.snapshot.tariff_for("retail", "33123") is not None

    await eventually(reloaded, what="the catalog snapshot to reload")
    assert app.services.catalog.snapshot.tariff_for("retail", "33123") is not None
    assert app.services.catalog.snapshot.tariff_for("retail", "447700900123") is None
