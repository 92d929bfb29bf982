"""The external tax engine client against a real HTTP tax engine run inside the test.

The engine is an aiohttp server on a free port that answers US-style taxes by
the transaction's service location (else its billing location): Texas state
6.25 %, Travis County 1 %, the city of Austin 2.25 %, and a flat federal fee of
0.50 on each subscription. It can also answer 500, hang, send malformed JSON,
or refuse the request, one behaviour per request, and it records every request
it gets (headers and body), so retries are counted, never timed.
"""

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ocs.billing.tax_engine import (
    Location,
    Locations,
    TaxEngineBadAnswer,
    TaxEngineError,
    TaxEngineRejected,
    TaxEngineUnavailable,
    TaxExemption,
    TaxLine,
    TaxRequest,
    TaxTransaction,
    backoff_delay,
    engine_taxes,
    idempotency_key,
    parse_answer,
    request_body,
)
from ocs.config import ConfigError, Settings, load_settings, with_overrides

TOKEN = "tx-engine-secret-7f3a9c"

# The fake engine's tables: (jurisdiction, code, name, percent).
STATE = {"TX": ("Texas", "TX-STATE", "Texas state sales tax", Decimal("6.25"))}
COUNTY = {"Travis": ("Travis County", "TX-TRAVIS", "Travis County sales tax", Decimal("1"))}
CITY = {"Austin": ("Austin", "TX-AUSTIN", "City of Austin sales tax", Decimal("2.25"))}
FEDERAL_FEE = Decimal("0.50")

AUSTIN = Location(country="US", region="TX", county="Travis", city="Austin", postal_code="78701")
DALLAS = Location(country="US", region="TX", county="Dallas", city="Dallas", postal_code="75201")


def us_request(usage_amount: int = 12_340_000) -> TaxRequest:
    """Invoice 1001: a 49.99 subscription and 12.34 of calls in Austin, 3.00 of calls in Dallas."""
    return TaxRequest(
        invoice_id="1001",
        account_id="acme",
        currency="USD",
        tax_date=date(2026, 12, 31),
        transactions=(
            TaxTransaction(
                id="1",
                type="subscription",
                product="plan-fee.unlimited-us",
                description="Unlimited US plan, December 2026",
                amount=49_990_000,
                locations=Locations(billing=AUSTIN),
            ),
            TaxTransaction(
                id="2",
                type="usage",
                product="voice.us-domestic",
                description="Calls to US numbers",
                amount=usage_amount,
                quantity=31,
                seconds=7_404,
                locations=Locations(
                    billing=AUSTIN,
                    service=AUSTIN,
                    caller=Location(country="US", number="15125550100"),
                    called=Location(country="US", number="12125550199"),
                ),
            ),
            TaxTransaction(
                id="3",
                type="usage",
                product="voice.us-domestic",
                description="Calls from the Dallas office",
                amount=3_000_000,
                quantity=2,
                seconds=600,
                locations=Locations(billing=AUSTIN, service=DALLAS),
            ),
        ),
    )


def tax(amount: Decimal, table_entry: tuple[str, str, str, Decimal], level: str) -> dict[str, Any]:
    """One tax of the fake engine's answer, amounts as decimal strings, plus a field of its own."""
    jurisdiction, code, name, percent = table_entry
    value = (amount * percent / 100).quantize(Decimal("0.000001"), ROUND_HALF_UP)
    return {
        "level": level,
        "jurisdiction": jurisdiction,
        "code": code,
        "name": name,
        "rate_percent": str(percent),
        "basis": str(amount),
        "amount": str(value),
        "filing_ref": f"F-{code}",  # not in the contract: ignored by ocs
    }


def us_taxes(body: dict[str, Any]) -> dict[str, Any]:
    """The fake engine's computation: taxes by service location, else billing location."""
    answered = []
    for transaction in body["transactions"]:
        amount = Decimal(transaction["amount"])
        place = transaction["locations"].get("service") or transaction["locations"]["billing"]
        taxes = []
        if place.get("region") in STATE:
            taxes.append(tax(amount, STATE[place["region"]], "state"))
        if place.get("county") in COUNTY:
            taxes.append(tax(amount, COUNTY[place["county"]], "county"))
        if place.get("city") in CITY:
            taxes.append(tax(amount, CITY[place["city"]], "city"))
        if transaction["type"] == "subscription":
            taxes.append(
                {
                    "level": "federal",
                    "jurisdiction": "United States",
                    "code": "US-REG-FEE",
                    "name": "Federal regulatory fee",
                    "rate_percent": None,
                    "basis": str(amount),
                    "amount": str(FEDERAL_FEE),
                }
            )
        answered.append({"id": transaction["id"], "taxes": taxes})
    return {
        "invoice_id": body["invoice_id"],
        "currency": body["currency"],
        "engine_request_id": "req-42",  # not in the contract: ignored by ocs
        "transactions": answered,
    }


@dataclass
class Recorded:
    """A request the engine got: its headers and its JSON body."""

    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeEngine:
    """The tax engine's behaviour per request (``taxes`` once the list runs out) and its log."""

    url: str = ""
    behaviours: list[str] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Record the request, then answer as the next behaviour says."""
        body = await request.json()
        self.requests.append(Recorded(dict(request.headers), body))
        behaviour = self.behaviours.pop(0) if self.behaviours else "taxes"
        if behaviour == "500":
            return web.json_response(
                {"error": {"code": "internal", "message": "rate tables reloading"}}, status=500
            )
        if behaviour == "400":
            return web.json_response(
                {"error": {"code": "invalid_location", "message": "postal code 00000 unknown"}},
                status=400,
            )
        if behaviour == "hang":
            await self.release.wait()  # never answers while the test runs
        if behaviour == "malformed":
            return web.Response(body=b'{"invoice_id": "1001", "transactions": [{"id": ')
        if behaviour == "float":
            answer = us_taxes(body)
            for transaction in answer["transactions"]:
                for line in transaction["taxes"]:
                    line["amount"] = float(line["amount"])
            return web.json_response(answer)
        return web.json_response(us_taxes(body))


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    """A real HTTP tax engine on a free port of 127.0.0.1."""
    fake = FakeEngine()
    app = web.Application()
    app.router.add_post("/v1/taxes", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("/v1/taxes"))
    yield fake
    fake.release.set()
    await server.close()


def settings_for(url: str, **changes: Any) -> Settings:
    """Settings that use the engine at ``url``: short timeout, two retries, tiny backoff."""
    values: dict[str, Any] = {
        "tax_engine_url": url,
        "tax_engine_timeout": 0.5,
        "tax_engine_retries": 2,
        "tax_engine_backoff": 0.01,
        "tax_engine_token": TOKEN,
    }
    values.update(changes)
    return with_overrides(Settings(), **values)


def summary(lines: list[TaxLine]) -> list[tuple[str, str, str, int | None, int, int]]:
    """(transaction, level, code, rate, basis, amount) per tax line, in the answered order."""
    return [(t.transaction_id, t.level, t.code, t.rate, t.basis, t.amount) for t in lines]


async def test_a_us_invoice_gets_state_county_city_taxes_and_a_federal_fee(
    engine: FakeEngine,
) -> None:
    lines = await engine_taxes(settings_for(engine.url), us_request())

    assert summary(lines) == [
        # Subscription, 49.99 billed in Austin, TX:
        # state 49.99 x 6.25 % = 3.124375; county 49.99 x 1 % = 0.4999;
        # city 49.99 x 2.25 % = 1.124775; the federal fee 0.50 flat.
        ("1", "state", "TX-STATE", 6_250_000, 49_990_000, 3_124_375),
        ("1", "county", "TX-TRAVIS", 1_000_000, 49_990_000, 499_900),
        ("1", "city", "TX-AUSTIN", 2_250_000, 49_990_000, 1_124_775),
        ("1", "federal", "US-REG-FEE", None, 49_990_000, 500_000),
        # Calls, 12.34 used in Austin: 0.77125, 0.1234, 0.27765; no federal fee on usage.
        ("2", "state", "TX-STATE", 6_250_000, 12_340_000, 771_250),
        ("2", "county", "TX-TRAVIS", 1_000_000, 12_340_000, 123_400),
        ("2", "city", "TX-AUSTIN", 2_250_000, 12_340_000, 277_650),
        # Calls, 3.00 used in Dallas: the state's 3.00 x 6.25 % = 0.1875 only.
        ("3", "state", "TX-STATE", 6_250_000, 3_000_000, 187_500),
    ]
    assert [t.name for t in lines[:4]] == [
        "Texas state sales tax",
        "Travis County sales tax",
        "City of Austin sales tax",
        "Federal regulatory fee",
    ]
    # Taxes of the subscription: 3.124375 + 0.4999 + 1.124775 + 0.50 = 5.24905.
    assert sum(t.amount for t in lines if t.transaction_id == "1") == 5_249_050

    # One request, carrying what the contract says, amounts as decimal strings.
    [sent] = engine.requests
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["Idempotency-Key"] == idempotency_key(us_request())
    assert sent.headers["Idempotency-Key"].startswith("ocs-1001-")
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.body["invoice_id"] == "1001"
    assert sent.body["currency"] == "USD"
    assert sent.body["tax_date"] == "2026-12-31"
    assert [t["amount"] for t in sent.body["transactions"]] == [
        "49.990000",
        "12.340000",
        "3.000000",
    ]
    assert [t["type"] for t in sent.body["transactions"]] == ["subscription", "usage", "usage"]
    calls = sent.body["transactions"][1]
    assert calls["quantity"] == 31 and calls["seconds"] == 7_404
    assert calls["locations"] == {
        "billing": {
            "country": "US",
            "region": "TX",
            "county": "Travis",
            "city": "Austin",
            "postal_code": "78701",
        },
        "service": {
            "country": "US",
            "region": "TX",
            "county": "Travis",
            "city": "Austin",
            "postal_code": "78701",
        },
        "caller": {"country": "US", "number": "15125550100"},
        "called": {"country": "US", "number": "12125550199"},
    }
    # A subscription has no seconds and no caller: absent, not null.
    assert "seconds" not in sent.body["transactions"][0]
    assert set(sent.body["transactions"][0]["locations"]) == {"billing"}


async def test_a_500_is_retried_with_the_same_idempotency_key(engine: FakeEngine) -> None:
    engine.behaviours = ["500"]

    lines = await engine_taxes(settings_for(engine.url), us_request())

    assert len(engine.requests) == 2
    first, second = engine.requests
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert first.body == second.body
    assert sum(t.amount for t in lines) == 5_249_050 + 1_172_300 + 187_500  # 0.77125+0.1234+0.27765


async def test_the_same_invoice_asked_twice_sends_the_same_key(engine: FakeEngine) -> None:
    settings = settings_for(engine.url)
    await engine_taxes(settings, us_request())
    await engine_taxes(settings, us_request())
    # The draft recomputed with other usage (12.35) is another calculation: a new key.
    await engine_taxes(settings, us_request(usage_amount=12_350_000))

    keys = [r.headers["Idempotency-Key"] for r in engine.requests]
    assert keys[0] == keys[1]
    assert keys[2] != keys[0]
    assert keys[2].startswith("ocs-1001-")


async def test_a_hanging_engine_times_out_after_the_bounded_retries(
    engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine.behaviours = ["hang"] * 10
    caplog.set_level(logging.WARNING, logger="ocs.billing.tax_engine")

    with pytest.raises(TaxEngineUnavailable) as failure:
        await engine_taxes(settings_for(engine.url, tax_engine_retries=2), us_request())

    # The first attempt and two retries, no more, all with one key.
    assert len(engine.requests) == 3
    assert len({r.headers["Idempotency-Key"] for r in engine.requests}) == 1
    assert failure.value.reason == "timeout"
    assert failure.value.attempts == 3
    assert str(failure.value) == "tax engine unavailable after 3 attempt(s): no answer within 0.5 s"
    # Each failed attempt is logged, and the token never is.
    records = [r for r in caplog.records if r.name == "ocs.billing.tax_engine"]
    assert [r.__dict__["attempt"] for r in records] == [1, 2, 3]
    assert all(TOKEN not in json.dumps(r.__dict__, default=str) for r in records)
    assert TOKEN not in str(failure.value)


async def test_an_engine_failing_every_time_is_unavailable_with_its_status(
    engine: FakeEngine,
) -> None:
    engine.behaviours = ["500"] * 10

    with pytest.raises(TaxEngineUnavailable) as failure:
        await engine_taxes(settings_for(engine.url, tax_engine_retries=1), us_request())

    assert len(engine.requests) == 2
    assert failure.value.reason == "server_error"
    assert str(failure.value) == (
        "tax engine unavailable after 2 attempt(s): HTTP 500 internal: rate tables reloading"
    )


async def test_malformed_json_is_a_clear_error_and_not_retried(engine: FakeEngine) -> None:
    engine.behaviours = ["malformed"]

    with pytest.raises(TaxEngineBadAnswer) as failure:
        await engine_taxes(settings_for(engine.url), us_request())

    assert len(engine.requests) == 1
    assert failure.value.reason == "bad_answer"
    assert failure.value.attempts == 1
    assert str(failure.value).startswith("tax engine answered malformed JSON: ")


async def test_a_float_amount_is_refused(engine: FakeEngine) -> None:
    engine.behaviours = ["float"]

    with pytest.raises(TaxEngineBadAnswer) as failure:
        await engine_taxes(settings_for(engine.url), us_request())

    assert str(failure.value) == (
        "tax engine answer breaks the contract: Expected `str`, got `float`"
        " - at `$.transactions[0].taxes[0].amount`"
    )


async def test_a_refused_request_is_not_retried(engine: FakeEngine) -> None:
    engine.behaviours = ["400"]

    with pytest.raises(TaxEngineRejected) as failure:
        await engine_taxes(settings_for(engine.url), us_request())

    assert len(engine.requests) == 1
    assert failure.value.reason == "rejected"
    assert str(failure.value) == (
        "tax engine refused the request: HTTP 400 invalid_location: postal code 00000 unknown"
    )


async def test_an_unreachable_engine_is_unavailable_after_the_retries() -> None:
    # A port nothing listens on: bound, then closed.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = settings_for(f"http://127.0.0.1:{port}/v1/taxes", tax_engine_retries=1)

    with pytest.raises(TaxEngineUnavailable) as failure:
        await engine_taxes(settings, us_request())

    assert failure.value.reason == "unreachable"
    assert failure.value.attempts == 2


async def test_no_engine_configured_is_a_typed_error() -> None:
    with pytest.raises(TaxEngineError) as failure:
        await engine_taxes(Settings(), us_request())

    assert failure.value.reason == "not_configured"


def answer(**changes: Any) -> dict[str, Any]:
    """A valid answer to ``us_request()`` (Texas 6.25 % on each transaction: 49.99 ->
    3.124375, 12.34 -> 0.77125, 3.00 -> 0.1875), with changes."""
    body: dict[str, Any] = {
        "invoice_id": "1001",
        "currency": "USD",
        "transactions": [
            {
                "id": i,
                "taxes": [
                    {
                        "level": "state",
                        "jurisdiction": "Texas",
                        "code": "TX-STATE",
                        "name": "Texas state sales tax",
                        "rate_percent": "6.25",
                        "basis": basis,
                        "amount": amount,
                    }
                ],
            }
            for i, basis, amount in (
                ("1", "49.99", "3.124375"),
                ("2", "12.34", "0.77125"),
                ("3", "3.00", "0.1875"),
            )
        ],
    }
    body.update(changes)
    return body


def with_tax(**changes: Any) -> dict[str, Any]:
    """``answer()`` with fields of the first transaction's first tax changed."""
    body = answer()
    body["transactions"][0]["taxes"][0].update(changes)
    return body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            answer(invoice_id="1002"),
            "tax engine answered for invoice '1002', asked about '1001'",
        ),
        (answer(currency="EUR"), "tax engine answered in 'EUR', asked in 'USD'"),
        (
            answer(transactions=answer()["transactions"][:2]),
            "tax engine left out transaction(s): 3",
        ),
        (
            answer(transactions=[*answer()["transactions"], {"id": "9", "taxes": []}]),
            "tax engine answered transaction(s) never asked: 9",
        ),
        (
            answer(transactions=[*answer()["transactions"], {"id": "1", "taxes": []}]),
            "tax engine answered transaction '1' twice",
        ),
        (
            with_tax(amount="0.0000001"),
            "tax engine answer breaks the contract: Expected `str` matching regex"
            " '^-?(0|[1-9][0-9]{0,14})(\\\\.[0-9]{1,6})?$'"
            " - at `$.transactions[0].taxes[0].amount`",
        ),
        (
            with_tax(level="galactic"),
            "tax engine answer breaks the contract: Invalid enum value 'galactic'"
            " - at `$.transactions[0].taxes[0].level`",
        ),
        (
            with_tax(rate_percent=6.25),
            "tax engine answer breaks the contract: Expected `str | null`, got `float`"
            " - at `$.transactions[0].taxes[0].rate_percent`",
        ),
        (
            answer(transactions=[{"id": "1"}]),
            "tax engine answer breaks the contract: Object missing required field `taxes`"
            " - at `$.transactions[0]`",
        ),
    ],
    ids=[
        "other-invoice",
        "other-currency",
        "left-out",
        "never-asked",
        "twice",
        "seven-places",
        "unknown-level",
        "float-rate",
        "no-taxes-field",
    ],
)
def test_an_answer_that_breaks_the_contract_is_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(TaxEngineBadAnswer) as failure:
        parse_answer(us_request(), json.dumps(body).encode())

    assert failure.value.reason == "bad_answer"
    assert str(failure.value) == message


def test_a_valid_answer_is_exact_and_empty_taxes_mean_none() -> None:
    body = answer()
    body["transactions"][2]["taxes"] = []  # nothing taxed: an explicit empty list
    body["transactions"][1]["taxes"][0].update(
        rate_percent="8.875", basis="-2.00", amount="-0.1775"
    )

    lines = parse_answer(us_request(usage_amount=-2_000_000), json.dumps(body).encode())

    assert summary(lines) == [
        ("1", "state", "TX-STATE", 6_250_000, 49_990_000, 3_124_375),  # 49.99 x 6.25 %
        # A credit: -2.00 x 8.875 % = -0.1775, a negative tax.
        ("2", "state", "TX-STATE", 8_875_000, -2_000_000, -177_500),
    ]


def test_an_exempt_level_goes_out_with_the_request_and_may_come_back_untaxed() -> None:
    # The request names the account's exemption (as Avalara's exemptionNo, Vertex's
    # exemption certificate); an engine honouring it answers the state tax of 49.99 at
    # 6.25 % as 0. Without the exemption such an answer does not add up, and is refused.
    exempt = msgspec.structs.replace(
        us_request(), exemption=TaxExemption(certificate="TX-RESALE-7", levels=("state",))
    )
    sent = json.loads(request_body(exempt))
    assert sent["exemption"] == {"certificate": "TX-RESALE-7", "levels": ["state"]}
    assert "exemption" not in json.loads(request_body(us_request()))
    assert idempotency_key(exempt) != idempotency_key(us_request())
    untaxed = json.dumps(with_tax(amount="0")).encode()

    lines = parse_answer(exempt, untaxed)

    assert summary(lines)[0] == ("1", "state", "TX-STATE", 6_250_000, 49_990_000, 0)
    with pytest.raises(TaxEngineBadAnswer):
        parse_answer(us_request(), untaxed)
    # A level the certificate does not cover is checked as ever.
    county = msgspec.structs.replace(
        us_request(), exemption=TaxExemption(certificate="TX-RESALE-7", levels=("county",))
    )
    with pytest.raises(TaxEngineBadAnswer):
        parse_answer(county, untaxed)


@pytest.mark.parametrize(
    ("amount", "exact"),
    [("3.12", 3_120_000), ("3.13", 3_130_000), ("3.124375", 3_124_375)],
    ids=["rounded-down-to-cents", "rounded-up-to-cents", "exact"],
)
def test_an_engine_may_round_a_tax_to_the_minor_unit(amount: str, exact: int) -> None:
    # 49.99 x 6.25 % = 3.124375: an engine answering it in cents, either way, is within
    # one cent of it, and its figure is kept as it is.
    lines = parse_answer(us_request(), json.dumps(with_tax(amount=amount)).encode())

    assert lines[0].amount == exact


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            with_tax(basis="50.00"),
            "transaction '1' tax 0: basis 50.000000 is not the amount sent, 49.990000",
        ),
        (
            # Cents read as units: 312.4375 for 3.124375.
            with_tax(amount="312.4375"),
            "transaction '1' tax 0: amount 312.437500 is not 49.990000 x 6.25% = 3.124375",
        ),
        (
            # More than a cent off: no rounding of 3.124375 to cents gives 3.14.
            with_tax(amount="3.14"),
            "transaction '1' tax 0: amount 3.140000 is not 49.990000 x 6.25% = 3.124375",
        ),
        (
            with_tax(amount="-3.124375"),
            "transaction '1' tax 0: a tax of -3.124375 on a basis of 49.990000",
        ),
        (
            # A flat fee has no rate to check, but its sign is.
            with_tax(rate_percent=None, amount="-0.50"),
            "transaction '1' tax 0: a tax of -0.500000 on a basis of 49.990000",
        ),
    ],
    ids=["other-basis", "cents-as-units", "off-by-more-than-a-cent", "negative", "negative-fee"],
)
def test_an_answer_whose_figures_do_not_add_up_is_refused(
    body: dict[str, Any], message: str
) -> None:
    with pytest.raises(TaxEngineBadAnswer) as failure:
        parse_answer(us_request(), json.dumps(body).encode())

    assert failure.value.reason == "bad_answer"
    assert str(failure.value) == message


def test_the_backoff_doubles_and_is_capped() -> None:
    assert [backoff_delay(n, 0.5) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delay(10, 0.5) == 30.0  # 0.5 x 2**9 = 256, capped at 30


def test_the_tax_engine_settings_are_read_and_the_token_is_never_shown() -> None:
    settings = load_settings(
        environ={
            "OCS_TAX_ENGINE_URL": "https://tax.example.com/v1/taxes",
            "OCS_TAX_ENGINE_TIMEOUT": "2.5",
            "OCS_TAX_ENGINE_RETRIES": "4",
            "OCS_TAX_ENGINE_TOKEN": TOKEN,
        }
    )

    assert settings.tax_engine_url == "https://tax.example.com/v1/taxes"
    assert settings.tax_engine_timeout == 2.5
    assert settings.tax_engine_retries == 4
    assert settings.tax_engine_token == TOKEN
    assert TOKEN not in repr(settings)
    # Defaults: no engine, 10 s, 3 retries, 0.5 s first backoff.
    default = load_settings(environ={})
    assert (default.tax_engine_url, default.tax_engine_timeout) == (None, 10.0)
    assert (default.tax_engine_retries, default.tax_engine_backoff) == (3, 0.5)
    assert default.tax_engine_token is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("OCS_TAX_ENGINE_URL", "ftp://tax", "expected a URL starting with http:// or https://"),
        ("OCS_TAX_ENGINE_RETRIES", "11", "expected an integer from 0 to 10, got 11"),
        ("OCS_TAX_ENGINE_TIMEOUT", "0", "expected seconds from 0.001 to 600, got 0"),
        ("OCS_TAX_ENGINE_TOKEN", "two words", "expected printable ASCII characters without spaces"),
    ],
)
def test_a_bad_tax_engine_setting_names_its_key(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as failure:
        load_settings(environ={name: value})

    assert str(failure.value) == f"{name}: {message}"  # a token's value is never echoed
