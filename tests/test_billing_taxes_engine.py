"""Plans taxed by a real HTTP tax engine (an aiohttp server in the test), at posting.

The US case of issue 13: state 6.25%, county 1%, city 2.25% and a flat federal
fee of 0.50 per transaction, the county and city those of the transaction's
billing location. A plan chooses its engine (``plan_billing.tax_engine``): one
``post`` call taxes an internal plan's invoices by its own rules and an
external plan's by the engine, each with its account's own billing address. The
engine down keeps the invoice a draft with its reason, and once it is back the
invoice posts exactly once. Amounts hand-computed.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ocs.balances.accounts import AccountSpec
from ocs.billing import posting, taxes
from ocs.billing.cycles import PlanBilling
from ocs.billing.lines import Line
from ocs.billing.store import Charge, Subscription, add_charge, create_charge, set_plan_billing
from ocs.billing.store import subscribe as subscribe_to
from ocs.billing.tax_engine import Location, Locations
from ocs.billing.worker import BillingWorker, WorkerSettings
from ocs.config import Settings, with_overrides
from ocs.services import Services
from tests.billing_helpers import cdr, run
from tests.conftest import add_plan, eventually

USD = 1_000_000
GBP = 1_000_000
MARCH = datetime(2026, 3, 10, 12, tzinfo=UTC)
AUSTIN = {
    "country": "US",
    "region": "TX",
    "county": "Travis",
    "city": "Austin",
    "postal_code": "78701",
}
DALLAS = {
    "country": "US",
    "region": "TX",
    "county": "Dallas",
    "city": "Dallas",
    "postal_code": "75201",
}


@dataclass
class Engine:
    """A tax engine answering US taxes by each transaction's billing location, or 503 while
    ``down``; it keeps every request body it gets."""

    url: str = ""
    down: bool = False
    bodies: list[dict[str, Any]] = field(default_factory=list)
    # While set, every request waits for it to be cleared (an engine that never answers).
    hanging: asyncio.Event | None = None
    # A broken engine: its tax amounts in cents written as units (2.25 -> "225").
    cents_as_units: bool = False
    # An engine (or adapter) that ignores the request's exemption and taxes every level.
    ignores_exemptions: bool = False

    @property
    def asked(self) -> list[str]:
        """The invoice ids asked, in order."""
        return [body["invoice_id"] for body in self.bodies]

    async def handle(self, request: web.Request) -> web.Response:
        """POST /v1/taxes."""
        body: dict[str, Any] = await request.json()
        self.bodies.append(body)
        if self.hanging is not None:
            await self.hanging.wait()
        if self.down:
            return web.json_response(
                {"error": {"code": "down", "message": "maintenance"}}, status=503
            )
        answers = []
        # The levels the account's certificate covers are answered untaxed, as an engine
        # told of an exemption answers them (the basis and rate it would have applied).
        exempt = (
            set() if self.ignores_exemptions else set(body.get("exemption", {}).get("levels", []))
        )
        for transaction in body["transactions"]:
            amount = Decimal(transaction["amount"])
            place = transaction["locations"]["billing"]
            county, city = place["county"], place["city"]
            rates = (
                ("state", "Texas", "TX-STATE", "Texas state sales tax", "6.25"),
                (
                    "county",
                    f"{county} County",
                    f"TX-CO-{county.upper()}",
                    f"{county} County sales tax",
                    "1",
                ),
                ("city", city, f"TX-{city.upper()}", f"City of {city} sales tax", "2.25"),
            )
            lines: list[dict[str, Any]] = [
                {
                    "level": level,
                    "jurisdiction": where,
                    "code": code,
                    "name": name,
                    "rate_percent": rate,
                    "basis": transaction["amount"],
                    "amount": "0"
                    if level in exempt
                    else str(
                        (amount * Decimal(rate) / (1 if self.cents_as_units else 100)).quantize(
                            Decimal("0.000001")
                        )
                    ),
                }
                for level, where, code, name, rate in rates
            ]
            lines.append(
                {
                    "level": "federal",
                    "jurisdiction": "United States",
                    "code": "US-REG-FEE",
                    "name": "Federal regulatory fee",
                    "rate_percent": None,
                    "basis": transaction["amount"],
                    "amount": "0.50",
                }
            )
            answers.append({"id": transaction["id"], "taxes": lines})
        return web.json_response(
            {
                "invoice_id": body["invoice_id"],
                "currency": body["currency"],
                "transactions": answers,
            }
        )


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    """The engine on a free port of 127.0.0.1."""
    fake = Engine()
    app = web.Application()
    app.router.add_post("/v1/taxes", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("/v1/taxes"))
    yield fake
    if fake.hanging is not None:
        fake.hanging.set()  # the requests still waiting end, so the server closes at once
    await server.close()


def engine_settings(url: str) -> Settings:
    """Settings using the engine: no retry, so a 503 fails at once."""
    return with_overrides(
        Settings(), tax_engine_url=url, tax_engine_retries=0, tax_engine_timeout=2.0
    )


async def us_plan(services: Services) -> None:
    """A USD plan taxed by the external engine, with a 100.00 monthly service."""
    await add_plan(services, "us", currency="USD")
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("us", "fixed_date", date(2026, 1, 1), cycle_day=1, tax_engine="external"),
    )
    await create_charge(
        services.pool,
        Charge("svc", "Business line", "LINE", "USD", 100 * USD, "recurring", cadence="monthly"),
    )


async def us_account(services: Services, account_id: str, place: dict[str, str]) -> None:
    """An account on the US plan from Jan 1, billed at ``place``, with the service."""
    await services.accounts.create(AccountSpec(account_id, plan_id="us", opening_balance=0))
    sub = await subscribe_to(
        services.pool,
        Subscription(
            account_id,
            "us",
            date(2026, 1, 1),
            billing_address="1 Main St",
            billing_city=place["city"],
            billing_county=place["county"],
            billing_region=place["region"],
            billing_postal_code=place["postal_code"],
            billing_country=place["country"],
        ),
    )
    await add_charge(services.pool, sub, "svc")


async def uk_account(services: Services, plan_id: str = "uk") -> None:
    """A GBP plan taxed by its own rules (VAT 20% on code STD) and an account with a 10.00
    monthly line rent."""
    await add_plan(services, plan_id, currency="GBP")
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling(plan_id, "fixed_date", date(2026, 1, 1), cycle_day=1),
    )
    await create_charge(
        services.pool,
        Charge(
            "rent",
            "Line rent",
            "LINE",
            "GBP",
            10 * GBP,
            "recurring",
            cadence="monthly",
            tax_code="STD",
        ),
    )
    await taxes.create_tax(
        services.pool,
        taxes.Tax("GB-VAT", "VAT", 20_000_000, "federal", "GBP", date(2026, 1, 1)),
    )
    await taxes.assign_tax(services.pool, plan_id, "GB-VAT", "tax_code", "STD")
    await services.accounts.create(AccountSpec("gb1", plan_id=plan_id, opening_balance=0))
    sub = await subscribe_to(services.pool, Subscription("gb1", plan_id, date(2026, 1, 1)))
    await add_charge(services.pool, sub, "rent")


async def invoice_of(services: Services, account_id: str) -> asyncpg.Record:
    """The account's March invoice."""
    found = await services.pool.fetchrow(
        "SELECT * FROM invoices WHERE account_id = $1 AND period_label = '2026-03'", account_id
    )
    assert found is not None
    return found


async def tax_rows(services: Services, invoice_id: int) -> list[tuple[Any, ...]]:
    """(description, tax code, basis, rate, amount) of the invoice's tax lines, in order."""
    return [
        (r["description"], r["tax_code"], r["basis"], r["rate"], r["amount"])
        for r in await services.pool.fetch(
            "SELECT * FROM invoice_lines WHERE invoice_id = $1 AND kind = 'tax' ORDER BY position",
            invoice_id,
        )
    ]


async def two_plans(services: Services) -> None:
    """The UK plan (internal) with gb1; the US plan (external) with us1 in Austin and us2 in
    Dallas, us2 with 12.34 of March calls too."""
    await uk_account(services)
    await us_plan(services)
    await us_account(services, "us1", AUSTIN)
    await us_account(services, "us2", DALLAS)
    await cdr(
        services, "us2-1", "us2", MARCH, zone="US", charged=12_340_000, plan_id="us", currency="USD"
    )


async def test_one_post_taxes_each_invoice_by_its_plans_engine_and_location(
    services: Services, engine: Engine
) -> None:
    await two_plans(services)
    run_id = await run(services, "2026-03", calculate_taxes=False)

    posted = await posting.post(
        services.pool, services.store, run_id=run_id, settings=engine_settings(engine.url)
    )

    gb1, us1, us2 = [await invoice_of(services, a) for a in ("gb1", "us1", "us2")]
    assert posted.held == {} and sorted(posted.numbers) == sorted([gb1["id"], us1["id"], us2["id"]])
    # gb1, by the plan's own rules: VAT 20% of 10.00 = 2.00.
    assert await tax_rows(services, gb1["id"]) == [
        ("VAT 20% of 10.00 GBP", "GB-VAT", 10 * GBP, 20_000_000, 2 * GBP)
    ]
    assert (gb1["state"], gb1["tax_total"], gb1["total"]) == ("posted", 2 * GBP, 12 * GBP)
    # us1 (Austin), one transaction of 100.00: city 2.25, county 1.00, state 6.25, fee 0.50.
    assert await tax_rows(services, us1["id"]) == [
        (
            "City of Austin sales tax (Austin) 2.25% of 100.00 USD",
            "TX-AUSTIN",
            100 * USD,
            2_250_000,
            2_250_000,
        ),
        (
            "Travis County sales tax (Travis County) 1% of 100.00 USD",
            "TX-CO-TRAVIS",
            100 * USD,
            1_000_000,
            1_000_000,
        ),
        (
            "Texas state sales tax (Texas) 6.25% of 100.00 USD",
            "TX-STATE",
            100 * USD,
            6_250_000,
            6_250_000,
        ),
        ("Federal regulatory fee (United States)", "US-REG-FEE", 100 * USD, None, 500_000),
    ]
    assert (us1["state"], us1["tax_total"], us1["total"]) == ("posted", 10 * USD, 110 * USD)
    # us2 (Dallas), 100.00 and 12.34 of calls, each tax summed exactly then rounded once:
    # city 2.25 + 0.27765 = 2.52765 -> 2.53; county 1.00 + 0.1234 = 1.1234 -> 1.12;
    # state 6.25 + 0.77125 = 7.02125 -> 7.02; the fee 0.50 x 2 = 1.00. Taxes 11.67.
    assert await tax_rows(services, us2["id"]) == [
        (
            "City of Dallas sales tax (Dallas) 2.25% of 112.34 USD",
            "TX-DALLAS",
            112_340_000,
            2_250_000,
            2_530_000,
        ),
        (
            "Dallas County sales tax (Dallas County) 1% of 112.34 USD",
            "TX-CO-DALLAS",
            112_340_000,
            1_000_000,
            1_120_000,
        ),
        (
            "Texas state sales tax (Texas) 6.25% of 112.34 USD",
            "TX-STATE",
            112_340_000,
            6_250_000,
            7_020_000,
        ),
        ("Federal regulatory fee (United States)", "US-REG-FEE", 112_340_000, None, 1_000_000),
    ]
    assert (us2["tax_total"], us2["total"]) == (11_670_000, 124_010_000)
    # The engine was asked for the US invoices only, each with its own account's address.
    by_invoice = {body["invoice_id"]: body for body in engine.bodies}
    assert sorted(by_invoice) == sorted([str(us1["id"]), str(us2["id"])])
    first = by_invoice[str(us1["id"])]
    assert first["account_id"] == "us1"
    assert [t["locations"] for t in first["transactions"]] == [
        {"billing": AUSTIN, "service": AUSTIN}
    ]
    second = by_invoice[str(us2["id"])]
    assert [(t["type"], t["amount"], t["locations"]) for t in second["transactions"]] == [
        ("subscription", "100.000000", {"billing": DALLAS, "service": DALLAS}),
        # Outbound calls start at the service address (the account has no member number).
        ("usage", "12.340000", {"billing": DALLAS, "service": DALLAS, "caller": DALLAS}),
    ]


async def test_a_run_with_taxes_on_leaves_an_external_plans_drafts_to_the_engine(
    services: Services, engine: Engine
) -> None:
    await two_plans(services)
    run_id = await run(services, "2026-03")

    gb1, us1 = await invoice_of(services, "gb1"), await invoice_of(services, "us1")
    # The internal plan is taxed at drafting; the external plan's drafts wait for the engine.
    assert (gb1["taxes_calculated"], gb1["tax_total"]) == (True, 2 * GBP)
    assert (us1["taxes_calculated"], us1["tax_total"]) == (False, 0)
    assert await tax_rows(services, us1["id"]) == []

    posted = await posting.post(
        services.pool, services.store, run_id=run_id, settings=engine_settings(engine.url)
    )

    assert posted.held == {} and len(posted.numbers) == 3
    us1 = await invoice_of(services, "us1")
    assert (us1["state"], us1["tax_total"], us1["total"]) == ("posted", 10 * USD, 110 * USD)
    assert sorted(engine.asked) == sorted(
        [str(us1["id"]), str((await invoice_of(services, "us2"))["id"])]
    )


async def test_an_external_plan_without_an_engine_is_held_never_posted_untaxed(
    services: Services,
) -> None:
    await two_plans(services)
    run_id = await run(services, "2026-03", calculate_taxes=False)

    posted = await posting.post(services.pool, services.store, run_id=run_id, settings=Settings())

    gb1, us1, us2 = [await invoice_of(services, a) for a in ("gb1", "us1", "us2")]
    assert list(posted.numbers) == [gb1["id"]]  # the internal plan posts
    assert posted.held == {
        us1["id"]: "no tax engine configured",
        us2["id"]: "no tax engine configured",
    }
    for held in (us1, us2):
        assert (held["state"], held["number"], held["taxes_calculated"]) == ("draft", None, False)
        assert held["tax_error"] == "no tax engine configured"
    # No settings at all: the same.
    again = await posting.post(services.pool, services.store, run_id=run_id)
    assert again.numbers == {} and set(again.held) == {us1["id"], us2["id"]}


async def single_us_account(services: Services) -> int:
    """The US plan, us1 in Austin, and its untaxed March run."""
    await us_plan(services)
    await us_account(services, "us1", AUSTIN)
    return await run(services, "2026-03", plan_id="us", calculate_taxes=False)


async def test_a_us_invoice_is_taxed_by_the_engine_at_posting(
    services: Services, engine: Engine
) -> None:
    run_id = await single_us_account(services)

    posted = await posting.post(
        services.pool, services.store, run_id=run_id, settings=engine_settings(engine.url)
    )

    [(invoice_id, _number)] = posted.numbers.items()
    # 100.00 USD: city 2.25, county 1.00, state 6.25, the federal fee 0.50.
    assert [
        (code, basis, rate, amount)
        for _, code, basis, rate, amount in await tax_rows(services, invoice_id)
    ] == [
        ("TX-AUSTIN", 100 * USD, 2_250_000, 2_250_000),
        ("TX-CO-TRAVIS", 100 * USD, 1_000_000, 1_000_000),
        ("TX-STATE", 100 * USD, 6_250_000, 6_250_000),
        ("US-REG-FEE", 100 * USD, None, 500_000),
    ]
    invoice = await services.pool.fetchrow("SELECT * FROM invoices WHERE id = $1", invoice_id)
    assert (invoice["state"], invoice["tax_total"], invoice["total"]) == (
        "posted",
        10 * USD,
        110 * USD,
    )


async def test_an_exempt_account_on_an_external_plan_is_charged_no_exempt_tax(
    services: Services, engine: Engine
) -> None:
    run_id = await single_us_account(services)
    # us1 holds a resale certificate for state and city taxes, not county or federal.
    await taxes.exempt(services.pool, "us1", "TX-RESALE-7", ["state", "city"])

    posted = await posting.post(
        services.pool, services.store, run_id=run_id, settings=engine_settings(engine.url)
    )

    [(invoice_id, _number)] = posted.numbers.items()
    # The engine is told of the certificate, so its answer and its audit trail say the
    # sale was exempt (it was asked as a taxable sale: it answered, and recorded, 8.50 of
    # state and city tax that ocs then left uncharged).
    [body] = engine.bodies
    assert body["exemption"] == {"certificate": "TX-RESALE-7", "levels": ["city", "state"]}
    # It answered city and state at 0; the exempt levels show at 0, naming the
    # certificate, as the plan's own taxes do: county 1.00 and the fee 0.50.
    await exempt_lines_only(services, invoice_id)


async def test_an_engine_taxing_an_exempt_level_anyway_charges_nothing_of_it(
    services: Services, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # An engine (or an adapter in front of one) that ignores the exemption it is sent,
    # or does not accept the certificate, answers the exempt levels taxed: ocs still
    # charges nothing of them, and says so in its log (the engine's records disagree).
    engine.ignores_exemptions = True
    run_id = await single_us_account(services)
    await taxes.exempt(services.pool, "us1", "TX-RESALE-7", ["state", "city"])

    with caplog.at_level(logging.WARNING, logger="ocs.billing.taxes"):
        posted = await posting.post(
            services.pool, services.store, run_id=run_id, settings=engine_settings(engine.url)
        )

    [(invoice_id, _number)] = posted.numbers.items()
    await exempt_lines_only(services, invoice_id)
    [warning] = [r for r in caplog.records if r.name == "ocs.billing.taxes"]
    assert warning.getMessage() == "tax engine taxed levels the account is exempt from"
    assert (warning.__dict__["invoice_id"], warning.__dict__["levels"]) == (
        invoice_id,
        ["city", "state"],
    )
    assert warning.__dict__["amount"] == 8_500_000  # 2.25 + 6.25, left uncharged


async def test_a_request_of_an_account_without_exemption_names_none(
    services: Services, engine: Engine
) -> None:
    run_id = await single_us_account(services)
    await posting.post(
        services.pool, services.store, run_id=run_id, settings=engine_settings(engine.url)
    )
    [body] = engine.bodies
    assert "exemption" not in body


async def exempt_lines_only(services: Services, invoice_id: int) -> None:
    """us1's invoice of 100.00 with state and city exempt under TX-RESALE-7: county 1.00
    and the federal fee 0.50 charged, 101.50 moved."""
    assert await tax_rows(services, invoice_id) == [
        (
            "City of Austin sales tax (Austin) 2.25% of 100.00 USD: exempt (TX-RESALE-7)",
            "TX-AUSTIN",
            100 * USD,
            2_250_000,
            0,
        ),
        (
            "Travis County sales tax (Travis County) 1% of 100.00 USD",
            "TX-CO-TRAVIS",
            100 * USD,
            1_000_000,
            1_000_000,
        ),
        (
            "Texas state sales tax (Texas) 6.25% of 100.00 USD: exempt (TX-RESALE-7)",
            "TX-STATE",
            100 * USD,
            6_250_000,
            0,
        ),
        ("Federal regulatory fee (United States)", "US-REG-FEE", 100 * USD, None, 500_000),
    ]
    invoice = await services.pool.fetchrow("SELECT * FROM invoices WHERE id = $1", invoice_id)
    assert (invoice["tax_total"], invoice["total"]) == (1_500_000, 101_500_000)
    # The money moved is what the invoice says: 101.50 taken from a zero balance.
    assert (await services.accounts.show("us1")).balance == -101_500_000


async def test_an_engine_answer_that_does_not_add_up_is_held_and_moves_no_money(
    services: Services, engine: Engine
) -> None:
    run_id = await single_us_account(services)
    settings = engine_settings(engine.url)
    # The engine answers its state tax on 100.00 at 6.25% as 625.00, not 6.25.
    engine.cents_as_units = True

    held = await posting.post(services.pool, services.store, run_id=run_id, settings=settings)

    [(invoice_id, reason)] = held.held.items()
    assert held.numbers == {}
    assert reason == (
        "tax engine: transaction '1' tax 0: amount 625.000000 is not 100.000000 x 6.25% = 6.250000"
    )
    draft = await services.pool.fetchrow("SELECT * FROM invoices WHERE id = $1", invoice_id)
    assert (draft["state"], draft["number"], draft["tax_total"]) == ("draft", None, 0)
    assert draft["tax_error"] == reason
    assert (await services.accounts.show("us1")).balance == 0  # no money moved

    # The engine fixed: posted once, with the right taxes.
    engine.cents_as_units = False
    posted = await posting.post(services.pool, services.store, run_id=run_id, settings=settings)
    assert list(posted.numbers) == [invoice_id]
    assert (await services.accounts.show("us1")).balance == -110 * USD


async def test_engine_down_keeps_the_draft_and_it_posts_once_when_back(
    services: Services, engine: Engine
) -> None:
    run_id = await single_us_account(services)
    settings = engine_settings(engine.url)
    engine.down = True

    held = await posting.post(services.pool, services.store, run_id=run_id, settings=settings)

    [(invoice_id, reason)] = held.held.items()
    assert held.numbers == {} and "maintenance" in reason
    draft = await services.pool.fetchrow("SELECT * FROM invoices WHERE id = $1", invoice_id)
    assert draft["state"] == "draft" and draft["tax_error"] == reason
    assert (draft["tax_total"], draft["number"]) == (0, None)

    engine.down = False
    posted = await posting.post(services.pool, services.store, run_id=run_id, settings=settings)
    again = await posting.post(services.pool, services.store, run_id=run_id, settings=settings)

    assert list(posted.numbers) == [invoice_id] and again.numbers == {}
    assert engine.asked == [str(invoice_id), str(invoice_id)]  # down once, then taxed once
    # The same request both times: the same idempotency key.
    assert engine.bodies[0] == engine.bodies[1]
    final = await services.pool.fetchrow("SELECT * FROM invoices WHERE id = $1", invoice_id)
    assert (final["state"], final["total"], final["tax_error"]) == ("posted", 110 * USD, None)
    moved = await services.pool.fetchval(
        "SELECT count(*) FROM invoice_lines WHERE invoice_id = $1 AND moved_at IS NOT NULL",
        invoice_id,
    )
    assert moved == 5  # the service and its four tax lines, each moved once


async def test_one_posting_asks_an_engine_found_down_no_more(
    services: Services, engine: Engine
) -> None:
    await us_plan(services)
    for n in range(3):
        await us_account(services, f"us{n}", AUSTIN)
    run_id = await run(services, "2026-03", plan_id="us", calculate_taxes=False)
    engine.down = True  # 503 to every request

    held = await posting.post(
        services.pool, services.store, run_id=run_id, settings=engine_settings(engine.url)
    )

    # Asked about the first draft only; the other two are held without a request.
    assert len(engine.asked) == 1 and held.numbers == {}
    reasons = [held.held[i] for i in sorted(held.held)]
    assert len(reasons) == 3 and all("maintenance" in r for r in reasons)
    assert [r.startswith("tax engine: not asked") for r in reasons] == [False, True, True]


async def test_an_engine_that_never_answers_holds_its_drafts_and_the_worker_pass_goes_on(
    services: Services, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # The US plan (external) with four accounts, and a VAT plan taxed by its own rules
    # whose runs come after the US ones (plans are run in id order: "us" < "vat"). The
    # worker finds January to March due for both: 12 US drafts, 3 VAT drafts.
    await us_plan(services)
    for n in range(4):
        await us_account(services, f"us{n}", AUSTIN)
    await uk_account(services, "vat")
    engine.hanging = asyncio.Event()  # it takes each request and never answers
    # Each request: 2 attempts of 0.5 s and a 0.05 s pause, about 1 s an invoice, so
    # asking all 12 would take about 13 s.
    settings = with_overrides(
        Settings(),
        tax_engine_url=engine.url,
        tax_engine_timeout=0.5,
        tax_engine_retries=1,
        tax_engine_backoff=0.05,
    )
    april = datetime(2026, 4, 1, 12, tzinfo=UTC)
    worker = BillingWorker(
        services.pool,
        WorkerSettings(run_delay=0),
        store=services.store,
        tax_settings=settings,
        clock=lambda: april,
    )

    with caplog.at_level("WARNING", logger="ocs.billing.taxing"):
        passing = asyncio.create_task(worker.run_once())

        async def finished() -> bool:
            return passing.done()

        # One invoice waits out the engine; the rest of the pass does not ask it again.
        await eventually(finished, within=6.0, what="the worker's pass to finish")
        await passing

    # The engine was asked about one invoice only (its two attempts).
    assert len(set(engine.asked)) == 1 and len(engine.asked) == 2
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT plan_id, state, tax_error FROM invoices ORDER BY plan_id, id"
        )
    us = [r for r in rows if r["plan_id"] == "us"]
    assert len(us) == 12 and all(r["state"] == "draft" for r in us)
    # Every US draft is held untaxed with why: the one asked, and the eleven not asked.
    assert all("no answer within 0.5 s" in r["tax_error"] for r in us), us
    assert sum("not asked" in r["tax_error"] for r in us) == 11
    # The other plan's runs were posted in the same pass, after the US ones.
    assert [(r["plan_id"], r["state"]) for r in rows if r["plan_id"] == "vat"] == [
        ("vat", "posted")
    ] * 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "ocs.billing.taxing"]
    assert len(warnings) == 1 and "unavailable" in warnings[0]  # logged once

    # The engine answers again: the next pass taxes and posts the held drafts.
    engine.hanging = None
    await worker.run_once()
    async with services.pool.acquire() as conn:
        states = await conn.fetch("SELECT state, total FROM invoices WHERE plan_id = 'us'")
    assert [(r["state"], r["total"]) for r in states] == [("posted", 110 * USD)] * 12


def test_calls_are_placed_at_the_service_address_with_the_accounts_one_number() -> None:
    """Outbound calls start at the service address (caller), inbound ones end there
    (called); a charge line has neither; the member number when the account has one."""
    austin = Location(**AUSTIN)
    own = Location(**AUSTIN, number="15125550100")
    out = Line("usage", "Calls to US", None, None, 3, 1, 1, False, zone="US", direction="outbound")
    inbound = Line("usage", "Calls (inbound)", None, None, 1, 1, 1, False, direction="inbound")
    rent = Line("recurring", "Rent", None, None, 1, 1, 1, True, charge_id="svc")
    assert taxes.transaction_locations(out, austin, "15125550100") == Locations(
        billing=austin, service=austin, caller=own
    )
    assert taxes.transaction_locations(inbound, austin, "15125550100") == Locations(
        billing=austin, service=austin, called=own
    )
    assert taxes.transaction_locations(rent, austin, "15125550100") == Locations(
        billing=austin, service=austin
    )
    nowhere = Location()
    assert taxes.transaction_locations(out, nowhere) == Locations(billing=nowhere)
