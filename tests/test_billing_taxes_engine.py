"""Untaxed drafts posted through a real HTTP tax engine (an aiohttp server in the test).

The US case of issue 13: state 6.25%, county 1%, city 2.25% and a flat federal
fee per transaction; the engine down keeps the invoice a draft with its reason,
and once it is back the invoice posts exactly once. Amounts hand-computed.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ocs.balances.accounts import AccountSpec
from ocs.billing import posting, taxes
from ocs.billing.cycles import PlanBilling
from ocs.billing.store import Charge, Subscription, add_charge, create_charge, set_plan_billing
from ocs.billing.store import subscribe as subscribe_to
from ocs.billing.tax_engine import Location
from ocs.config import Settings, with_overrides
from ocs.services import Services
from tests.billing_helpers import run
from tests.conftest import add_plan

USD = 1_000_000
AUSTIN = Location(country="US", region="TX", county="Travis", city="Austin")
RATES = (
    ("state", "Texas", "TX-STATE", "Texas state sales tax", "6.25"),
    ("county", "Travis County", "TX-TRAVIS", "Travis County sales tax", "1"),
    ("city", "Austin", "TX-AUSTIN", "City of Austin sales tax", "2.25"),
)


@dataclass
class Engine:
    """A tax engine answering the US taxes, or 503 while ``down``."""

    url: str = ""
    down: bool = False
    asked: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        """POST /v1/taxes."""
        body: dict[str, Any] = await request.json()
        self.asked.append(body["invoice_id"])
        if self.down:
            return web.json_response(
                {"error": {"code": "down", "message": "maintenance"}}, status=503
            )
        answers = []
        for transaction in body["transactions"]:
            amount = Decimal(transaction["amount"])
            lines: list[dict[str, Any]] = [
                {
                    "level": level,
                    "jurisdiction": where,
                    "code": code,
                    "name": name,
                    "rate_percent": rate,
                    "basis": transaction["amount"],
                    "amount": str((amount * Decimal(rate) / 100).quantize(Decimal("0.000001"))),
                }
                for level, where, code, name, rate in RATES
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
    await server.close()


def engine_settings(url: str) -> Settings:
    """Settings using the engine: no retry, so a 503 fails at once."""
    return with_overrides(
        Settings(), tax_engine_url=url, tax_engine_retries=0, tax_engine_timeout=2.0
    )


async def us_account(services: Services) -> int:
    """A USD plan, an account with a 100.00 monthly service, and its untaxed March run."""
    await add_plan(services, "us", currency="USD")
    await set_plan_billing(
        services.pool, PlanBilling("us", "fixed_date", date(2026, 1, 1), cycle_day=1)
    )
    await create_charge(
        services.pool,
        Charge("svc", "Business line", "LINE", "USD", 100 * USD, "recurring", cadence="monthly"),
    )
    await services.accounts.create(AccountSpec("us1", plan_id="us", opening_balance=0))
    sub = await subscribe_to(services.pool, Subscription("us1", "us", date(2026, 1, 1)))
    await add_charge(services.pool, sub, "svc")
    return await run(services, "2026-03", plan_id="us", calculate_taxes=False)


async def test_a_us_invoice_is_taxed_by_the_engine_at_posting(
    services: Services, engine: Engine
) -> None:
    run_id = await us_account(services)
    ask = taxes.external_engine(engine_settings(engine.url), AUSTIN)

    posted = await posting.post(services.pool, services.store, run_id=run_id, tax_engine=ask)

    [(invoice_id, _number)] = posted.numbers.items()
    found = await services.pool.fetch(
        "SELECT description, tax_code, basis, rate, amount FROM invoice_lines"
        " WHERE invoice_id = $1 AND kind = 'tax' ORDER BY position",
        invoice_id,
    )
    # 100.00 USD: city 2.25, county 1.00, state 6.25, the federal fee 0.50.
    assert [r["description"] for r in found] == [
        "City of Austin sales tax (Austin) 2.25% of 100.00 USD",
        "Travis County sales tax (Travis County) 1% of 100.00 USD",
        "Texas state sales tax (Texas) 6.25% of 100.00 USD",
        "Federal regulatory fee (United States)",
    ]
    assert [(r["tax_code"], r["basis"], r["rate"], r["amount"]) for r in found] == [
        ("TX-AUSTIN", 100 * USD, 2_250_000, 2_250_000),
        ("TX-TRAVIS", 100 * USD, 1_000_000, 1_000_000),
        ("TX-STATE", 100 * USD, 6_250_000, 6_250_000),
        ("US-REG-FEE", 100 * USD, None, 500_000),
    ]
    invoice = await services.pool.fetchrow("SELECT * FROM invoices WHERE id = $1", invoice_id)
    assert (invoice["state"], invoice["tax_total"], invoice["total"]) == (
        "posted",
        10 * USD,
        110 * USD,
    )


async def test_engine_down_keeps_the_draft_and_it_posts_once_when_back(
    services: Services, engine: Engine
) -> None:
    run_id = await us_account(services)
    ask = taxes.external_engine(engine_settings(engine.url), AUSTIN)
    engine.down = True

    held = await posting.post(services.pool, services.store, run_id=run_id, tax_engine=ask)

    [(invoice_id, reason)] = held.held.items()
    assert held.numbers == {} and "maintenance" in reason
    draft = await services.pool.fetchrow("SELECT * FROM invoices WHERE id = $1", invoice_id)
    assert draft["state"] == "draft" and draft["tax_error"] == reason
    assert (draft["tax_total"], draft["number"]) == (0, None)

    engine.down = False
    posted = await posting.post(services.pool, services.store, run_id=run_id, tax_engine=ask)
    again = await posting.post(services.pool, services.store, run_id=run_id, tax_engine=ask)

    assert list(posted.numbers) == [invoice_id] and again.numbers == {}
    assert engine.asked == [str(invoice_id), str(invoice_id)]  # down once, then taxed once
    final = await services.pool.fetchrow("SELECT * FROM invoices WHERE id = $1", invoice_id)
    assert (final["state"], final["total"], final["tax_error"]) == ("posted", 110 * USD, None)
    moved = await services.pool.fetchval(
        "SELECT count(*) FROM invoice_lines WHERE invoice_id = $1 AND moved_at IS NOT NULL",
        invoice_id,
    )
    assert moved == 5  # the service and its four tax lines, each moved once
