"""Taxes and surcharges on invoices, on real PostgreSQL and Redis (decision 0022).

Every amount is computed by hand in the comments: lines rounded once to the
minor unit, half away from zero; each tax computed once per tax code on the
sum of the rounded lines it applies to.
"""

from datetime import UTC, date, datetime

import asyncpg
import pytest

from ocs.balances.accounts import AccountSpec
from ocs.billing import posting, queries, taxes, taxing
from ocs.billing.cycles import PlanBilling
from ocs.billing.drafts import preview
from ocs.billing.lines import Line
from ocs.billing.store import Charge, Subscription, add_charge, create_charge, set_plan_billing
from ocs.billing.store import subscribe as subscribe_to
from ocs.billing.surcharges import Surcharge, create_surcharge, surcharge_lines
from ocs.billing.taxes import Tax, TaxInvoice, apply_rate, rate_text
from ocs.billing.void import void
from ocs.services import Services
from tests.billing_helpers import cdr, invoice_id, run
from tests.conftest import add_plan

UNIT = 1_000_000  # one GBP, USD, CAD or EUR in micro-units
MARCH = datetime(2026, 3, 10, 12, tzinfo=UTC)


async def plan_in(services: Services, plan_id: str, currency: str) -> None:
    """A plan in ``currency``, invoiced on the 1st of each month at the end of cycle."""
    await add_plan(services, plan_id, currency=currency)
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling(plan_id, "fixed_date", date(2026, 1, 1), cycle_day=1),
    )


async def charge(
    services: Services, charge_id: str, amount: int, currency: str, tax_code: str = "STD"
) -> None:
    """A monthly charge in arrears with a tax code."""
    await create_charge(
        services.pool,
        Charge(
            charge_id,
            f"Fee {charge_id}",
            "LINE",
            currency,
            amount,
            "recurring",
            cadence="monthly",
            tax_code=tax_code,
        ),
    )


async def account(services: Services, account_id: str, plan_id: str, charges: list[str]) -> None:
    """An account on the plan from Jan 1, with these charges added."""
    await services.accounts.create(AccountSpec(account_id, plan_id=plan_id, opening_balance=0))
    sub = await subscribe_to(services.pool, Subscription(account_id, plan_id, date(2026, 1, 1)))
    for charge_id in charges:
        await add_charge(services.pool, sub, charge_id)


async def define(
    services: Services, code: str, name: str, rate: int, level: str, currency: str, **kw: object
) -> None:
    """A tax valid from 2026-01-01."""
    await taxes.create_tax(
        services.pool,
        Tax(code, name, rate, level, currency, date(2026, 1, 1), **kw),  # type: ignore[arg-type]
    )


async def lines_of(services: Services, account_id: str) -> list[asyncpg.Record]:
    """The account's March invoice lines, in order."""
    async with services.pool.acquire() as conn:
        return list(
            await conn.fetch(
                "SELECT l.* FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id"
                " WHERE i.account_id = $1 AND i.period_label = '2026-03' ORDER BY l.position",
                account_id,
            )
        )


async def invoice_row(services: Services, account_id: str) -> asyncpg.Record:
    """The account's March invoice."""
    found = await services.pool.fetchrow(
        "SELECT * FROM invoices WHERE account_id = $1 AND period_label = '2026-03'", account_id
    )
    assert found is not None
    return found


async def uk_setup(services: Services) -> None:
    """A GBP plan: a 10.00 line rent and a 4.99 add-on, calls in three zones, VAT 20%."""
    await plan_in(services, "uk", "GBP")
    await charge(services, "rent", 10 * UNIT, "GBP")
    await charge(services, "addon", 4_990_000, "GBP", tax_code="")  # its product's code
    await taxes.set_product_tax_code(services.pool, "LINE", "STD")
    for zone in ("UK Mobile", "UK Landline", "International"):
        await taxes.set_zone_tax_code(services.pool, zone, "STD")
    await define(services, "GB-VAT", "VAT", 20_000_000, "federal", "GBP")
    await taxes.assign_tax(services.pool, "uk", "GB-VAT", "tax_code", "STD")


async def uk_calls(services: Services, account_id: str) -> None:
    """March calls: UK Mobile 0.123456 + 0.5 = 0.623456 -> 0.62; UK Landline 1.005 -> 1.01;
    International 2.344999 -> 2.34."""
    for entry, zone, charged in (
        ("1-0", "UK Mobile", 123_456),
        ("2-0", "UK Mobile", 500_000),
        ("3-0", "UK Landline", 1_005_000),
        ("4-0", "International", 2_344_999),
    ):
        await cdr(
            services,
            f"{account_id}-{entry}",
            account_id,
            MARCH,
            zone=zone,
            charged=charged,
            plan_id="uk",
            currency="GBP",
        )


async def test_uk_vat_on_a_mixed_invoice(services: Services) -> None:
    await uk_setup(services)
    await account(services, "gb1", "uk", ["rent", "addon"])
    await uk_calls(services, "gb1")

    await run(services, "2026-03", plan_id="uk")

    found = await lines_of(services, "gb1")
    assert [(r["kind"], r["amount"]) for r in found] == [
        ("recurring", 4_990_000),
        ("recurring", 10_000_000),
        ("usage", 2_340_000),
        ("usage", 1_010_000),
        ("usage", 620_000),
        ("tax", 3_790_000),
    ]
    # Basis 4.99 + 10.00 + 2.34 + 1.01 + 0.62 = 18.96; VAT 20% = 3.792 -> 3.79.
    tax = found[-1]
    assert tax["description"] == "VAT 20% of 18.96 GBP"
    assert (tax["basis"], tax["rate"], tax["tax_code"]) == (18_960_000, 20_000_000, "GB-VAT")
    assert tax["exact_amount"] == 3_792_000 and tax["moves_money"]
    invoice = await invoice_row(services, "gb1")
    assert (invoice["subtotal"], invoice["tax_total"], invoice["total"]) == (
        18_960_000,
        3_790_000,
        22_750_000,
    )
    assert invoice["taxes_calculated"]
    # The invoice JSON shows the tax line's basis and rate.
    stored, shown_lines = await queries.invoice(services.pool, invoice["id"])
    view = queries.detail_view(stored, shown_lines)
    assert (view.tax_total, view.total) == ("3.790000", "22.750000")
    assert (view.lines[-1].basis, view.lines[-1].rate, view.lines[-1].tax_code) == (
        "18.960000",
        "20",
        "GB-VAT",
    )
    # The dry run shows the same lines, the tax line with the same basis and rate.
    _period, _currency, shown = await preview(services.pool, "gb1", MARCH)
    dry = [queries.draft_line_view(n, line) for n, line in enumerate(shown, start=1)]
    assert [(v.kind, v.amount, v.basis, v.rate) for v in dry] == [
        (v.kind, v.amount, v.basis, v.rate) for v in view.lines
    ]
    assert (dry[-1].amount, dry[-1].basis, dry[-1].rate) == ("3.790000", "18.960000", "20")


async def test_an_exempt_account_shows_a_zero_tax_line_with_its_reference(
    services: Services,
) -> None:
    await uk_setup(services)
    await account(services, "gb2", "uk", ["rent", "addon"])
    await uk_calls(services, "gb2")
    await taxes.exempt(services.pool, "gb2", "CHARITY-1234", ["federal"])

    await run(services, "2026-03", plan_id="uk")

    tax = (await lines_of(services, "gb2"))[-1]
    assert tax["kind"] == "tax" and tax["amount"] == 0
    assert tax["description"] == "VAT 20% of 18.96 GBP: exempt (CHARITY-1234)"
    invoice = await invoice_row(services, "gb2")
    assert (invoice["tax_total"], invoice["total"]) == (0, 18_960_000)


async def test_several_jurisdictions_and_an_exemption_of_one_level(services: Services) -> None:
    await plan_in(services, "us", "USD")
    await charge(services, "svc", 100 * UNIT, "USD", tax_code="TEL")
    await define(services, "TX", "Texas sales tax", 6_250_000, "state", "USD")
    await define(services, "TRAVIS", "Travis County tax", 1_000_000, "county", "USD")
    await define(services, "AUSTIN", "Austin city tax", 2_250_000, "city", "USD")
    for code in ("TX", "TRAVIS", "AUSTIN"):
        await taxes.assign_tax(services.pool, "us", code, "charge", "svc")
    await account(services, "us1", "us", ["svc"])
    await account(services, "us2", "us", ["svc"])
    await taxes.exempt(services.pool, "us2", "TX-RESALE-9", ["state"])

    await run(services, "2026-03", plan_id="us")

    # 100.00 USD: city 2.25, county 1.00, state 6.25 (city to federal order).
    assert [(r["tax_code"], r["amount"]) for r in (await lines_of(services, "us1"))[1:]] == [
        ("AUSTIN", 2_250_000),
        ("TRAVIS", 1_000_000),
        ("TX", 6_250_000),
    ]
    assert (await invoice_row(services, "us1"))["total"] == 109_500_000
    # Exempt from the state level only: city and county still apply.
    assert [(r["tax_code"], r["amount"]) for r in (await lines_of(services, "us2"))[1:]] == [
        ("AUSTIN", 2_250_000),
        ("TRAVIS", 1_000_000),
        ("TX", 0),
    ]
    assert (await invoice_row(services, "us2"))["total"] == 103_250_000


async def test_a_compound_tax_is_a_tax_on_the_tax(services: Services) -> None:
    await plan_in(services, "qc", "CAD")
    await charge(services, "svc", 100 * UNIT, "CAD", tax_code="TEL")
    await define(services, "GST", "GST", 5_000_000, "federal", "CAD")
    await define(services, "QST", "QST", 9_975_000, "state", "CAD", compound=True)
    await taxes.assign_tax(services.pool, "qc", "GST", "tax_code", "TEL")
    await taxes.assign_tax(services.pool, "qc", "QST", "tax_code", "TEL")
    await account(services, "qc1", "qc", ["svc"])

    await run(services, "2026-03", plan_id="qc")

    # GST 5% of 100.00 = 5.00; QST 9.975% of (100.00 + 5.00) = 10.47375 -> 10.47.
    found = await lines_of(services, "qc1")
    assert [(r["description"], r["basis"], r["amount"]) for r in found[1:]] == [
        ("GST 5% of 100.00 CAD", 100_000_000, 5_000_000),
        ("QST 9.975% of 105.00 CAD", 105_000_000, 10_470_000),
    ]
    assert (await invoice_row(services, "qc1"))["total"] == 115_470_000


async def rounding_setup(services: Services) -> None:
    """Three charges of 1.03 EUR, tax code STD, VAT 20%."""
    await plan_in(services, "eu", "EUR")
    for name in ("a", "b", "c"):
        await charge(services, name, 1_030_000, "EUR")
    await define(services, "VAT20", "VAT", 20_000_000, "federal", "EUR")
    await taxes.assign_tax(services.pool, "eu", "VAT20", "tax_code", "STD")
    await account(services, "e1", "eu", ["a", "b", "c"])


async def test_vat_is_rounded_once_per_code_not_per_line(services: Services) -> None:
    await rounding_setup(services)

    await run(services, "2026-03", plan_id="eu")

    # Per code: 3.09 x 20% = 0.618 -> 0.62. Per line it would be 0.206 -> 0.21, x3 = 0.63.
    [tax] = [r for r in await lines_of(services, "e1") if r["kind"] == "tax"]
    assert (tax["basis"], tax["amount"]) == (3_090_000, 620_000)
    assert (await invoice_row(services, "e1"))["total"] == 3_710_000


async def test_untaxed_drafts_are_taxed_at_posting(services: Services) -> None:
    await rounding_setup(services)
    run_id = await run(services, "2026-03", plan_id="eu", calculate_taxes=False)

    draft = await invoice_row(services, "e1")
    assert not draft["taxes_calculated"]
    assert [r["kind"] for r in await lines_of(services, "e1")] == ["recurring"] * 3
    assert (draft["tax_total"], draft["total"]) == (0, 3_090_000)

    posted = await posting.post(services.pool, services.store, run_id=run_id)

    assert len(posted.numbers) == 1 and posted.held == {}
    invoice = await invoice_row(services, "e1")
    assert invoice["state"] == "posted" and invoice["taxes_calculated"]
    assert (invoice["subtotal"], invoice["tax_total"], invoice["total"]) == (
        3_090_000,
        620_000,
        3_710_000,
    )
    found = await lines_of(services, "e1")
    assert [(r["kind"], r["amount"]) for r in found][-1] == ("tax", 620_000)
    assert all(r["moved_at"] is not None for r in found)
    # Posting moved the charges and the tax: 3.09 + 0.62.
    assert invoice["posting_charges"] == 3_710_000
    # Voiding it credits the tax too: a credit note of -3.71, -0.62 of it tax.
    voided = await void(services.pool, services.store, invoice["id"])
    note = await services.pool.fetchrow(
        "SELECT * FROM invoices WHERE id = $1", voided.credit_note_id
    )
    assert (note["tax_total"], note["total"], voided.total) == (-620_000, -3_710_000, -3_710_000)


async def test_a_draft_whose_lines_change_while_it_is_taxed_is_taxed_on_its_new_lines(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    await rounding_setup(services)
    run_id = await run(services, "2026-03", plan_id="eu", calculate_taxes=False)
    load_rules = taxing.load_rules

    async def lines_rewritten_meanwhile(conn: asyncpg.Connection, plan_id: str) -> object:
        # A rerun replaces the draft's lines after they were read for the tax: one charge
        # is now 2.06, not 1.03.
        async with services.pool.acquire() as other:
            await other.execute(
                "UPDATE invoice_lines l SET amount = 2060000, exact_amount = 2060000"
                " FROM invoices i WHERE i.id = l.invoice_id AND i.account_id = 'e1'"
                " AND l.position = 1"
            )
            await other.execute(
                "UPDATE invoices SET subtotal = 4120000, total = 4120000 WHERE account_id = 'e1'"
            )
        monkeypatch.setattr(taxing, "load_rules", load_rules)
        return await load_rules(conn, plan_id)

    monkeypatch.setattr(taxing, "load_rules", lines_rewritten_meanwhile)
    posted = await posting.post(services.pool, services.store, run_id=run_id)
    # The tax computed on the old lines is not attached to the new ones: held.
    assert posted.numbers == {} and list(posted.held.values()) == [
        "its lines changed while its taxes were computed"
    ]
    assert not (await invoice_row(services, "e1"))["taxes_calculated"]

    posted = await posting.post(services.pool, services.store, run_id=run_id)
    assert len(posted.numbers) == 1 and posted.held == {}
    invoice = await invoice_row(services, "e1")
    # 20% of 4.12 = 0.824 -> 0.82, on the lines as they are now.
    assert (invoice["subtotal"], invoice["tax_total"], invoice["total"]) == (
        4_120_000,
        820_000,
        4_940_000,
    )


async def test_a_failing_tax_engine_keeps_the_draft_and_posts_once_when_back(
    services: Services,
) -> None:
    await rounding_setup(services)
    await set_plan_billing(  # taxed by an engine: here a stand-in passed to ``post``
        services.pool,
        services.store,
        PlanBilling("eu", "fixed_date", date(2026, 1, 1), cycle_day=1, tax_engine="external"),
    )
    run_id = await run(services, "2026-03", plan_id="eu", calculate_taxes=False)
    calls: list[int] = []

    async def down(invoice: TaxInvoice, lines: list[Line]) -> list[Line]:
        calls.append(invoice.id)
        raise ConnectionError("engine unreachable")

    held = await posting.post(services.pool, services.store, run_id=run_id, tax_engine=down)

    first = await invoice_row(services, "e1")
    assert held.numbers == {} and held.held == {first["id"]: "tax engine: engine unreachable"}
    assert first["state"] == "draft" and first["tax_error"] == "tax engine: engine unreachable"
    assert not first["taxes_calculated"]

    async def back(invoice: TaxInvoice, lines: list[Line]) -> list[Line]:
        calls.append(invoice.id)
        basis = sum(line.amount for line in lines)  # 3.09
        exact, amount = apply_rate(basis, 10_000_000, invoice.currency)  # 0.309 -> 0.31
        return [
            Line(
                "tax",
                "Engine tax 10%",
                None,
                None,
                1,
                exact,
                amount,
                True,
                tax_code="ENG",
                basis=basis,
                rate=10_000_000,
            )
        ]

    posted = await posting.post(services.pool, services.store, run_id=run_id, tax_engine=back)
    again = await posting.post(services.pool, services.store, run_id=run_id, tax_engine=back)

    invoice = await invoice_row(services, "e1")
    assert invoice["state"] == "posted" and invoice["tax_error"] is None
    assert list(posted.numbers) == [invoice["id"]] and again.numbers == {}
    assert (invoice["tax_total"], invoice["total"]) == (310_000, 3_400_000)
    assert calls == [
        invoice["id"],
        invoice["id"],
    ]  # taxed once when back; a posted one is not asked


async def test_the_database_refuses_posting_an_untaxed_draft(services: Services) -> None:
    await rounding_setup(services)
    await run(services, "2026-03", plan_id="eu", calculate_taxes=False)
    draft = await invoice_id(services, "e1", "2026-03")

    with pytest.raises(asyncpg.CheckViolationError, match="taxes are not calculated"):
        await services.pool.execute(
            "UPDATE invoices SET state = 'posted', number = 'X-1' WHERE id = $1", draft
        )


async def test_only_a_tax_in_the_plans_currency_can_be_assigned(services: Services) -> None:
    await plan_in(services, "eu", "EUR")
    await define(services, "TX", "Texas sales tax", 6_250_000, "state", "USD")

    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await taxes.assign_tax(services.pool, "eu", "TX", "tax_code", "STD")


async def test_surcharges_on_a_zone_and_a_charge_are_their_own_taxed_lines(
    services: Services,
) -> None:
    await uk_setup(services)
    await account(services, "gb3", "uk", ["rent"])
    await uk_calls(services, "gb3")
    await create_surcharge(
        services.pool,
        "uk",
        Surcharge(
            "mob", "Mobile termination surcharge", "percent", "zone", "UK Mobile", rate=10_000_000
        ),
    )
    await create_surcharge(
        services.pool,
        "uk",
        Surcharge("reg", "Regulatory fee", "flat", "charge", "rent", amount=1_500_000),
    )

    await run(services, "2026-03", plan_id="uk")

    found = await lines_of(services, "gb3")
    # Mobile 10% of 0.62 = 0.062 -> 0.06; the flat fee 1.50 on the rent.
    assert [
        (r["kind"], r["description"], r["amount"]) for r in found if r["kind"] == "surcharge"
    ] == [
        ("surcharge", "Mobile termination surcharge 10% of 0.62 GBP", 60_000),
        ("surcharge", "Regulatory fee (flat)", 1_500_000),
    ]
    # VAT on 10.00 + 2.34 + 1.01 + 0.62 + 0.06 + 1.50 = 15.53: 3.106 -> 3.11.
    tax = found[-1]
    assert (tax["basis"], tax["amount"]) == (15_530_000, 3_110_000)
    assert (await invoice_row(services, "gb3"))["total"] == 18_640_000


def test_rates_are_exact_decimals() -> None:
    # 8.875% of 123.45 USD = 10.95619 -> 10.96; 20% is "20", 8.875% "8.875".
    assert rate_text(8_875_000) == "8.875" and rate_text(20_000_000) == "20"
    assert apply_rate(123_450_000, 8_875_000, "USD") == (10_956_188, 10_960_000)
    # Half away from zero, credits too: 20% of -0.025 = -0.005 -> -0.01.
    assert apply_rate(-25_000, 20_000_000, "EUR") == (-5_000, -10_000)


def test_counter_usage_is_taxed_by_the_counter_or_the_regular_tariff() -> None:
    # A 5.00 counter fee: the counter "de-100" follows its own charge's tax (reduced
    # 5%), "uk-60" the regular tariff of its zone (standard 20%).
    standard = Tax("STD20", "VAT", 20_000_000, "federal", "EUR", date(2026, 1, 1))
    reduced = Tax("RED5", "VAT reduced", 5_000_000, "federal", "EUR", date(2026, 1, 1))
    rules = taxes.TaxRules(
        assigned={("tax_code", "STD"): [standard], ("tax_code", "BUNDLE"): [reduced]},
        charge_codes={"counter.de-100": "BUNDLE", "counter.uk-60": "BUNDLE"},
        zone_codes={"Germany": "STD", "UK Mobile": "STD"},
        counters={"de-100": (True, "Germany"), "uk-60": (False, "UK Mobile")},
    )

    def fee(counter: str) -> Line:
        return Line(
            "counter", "fee", None, None, 1, 5 * UNIT, 5 * UNIT, False,
            charge_id=f"counter.{counter}", counter_id=counter,
        )  # fmt: skip

    day = date(2026, 3, 31)
    # 5% of 5.00 = 0.25; 20% of 5.00 = 1.00.
    [own] = taxes.tax_lines([fee("de-100")], rules, "EUR", day)
    [regular] = taxes.tax_lines([fee("uk-60")], rules, "EUR", day)
    assert (own.tax_code, own.amount) == ("RED5", 250_000)
    assert (regular.tax_code, regular.amount) == ("STD20", 1_000_000)
    # A tax no longer valid on the invoice date is not charged.
    ended = Tax("OLD", "Old levy", 1_000_000, "city", "EUR", date(2025, 1, 1), date(2026, 1, 1))
    old = taxes.TaxRules({("tax_code", "STD"): [ended]}, {}, {"UK Mobile": "STD"}, {})
    usage = Line("usage", "Calls", None, None, 1, UNIT, UNIT, False, zone="UK Mobile")
    assert taxes.tax_lines([usage], old, "EUR", day) == []


async def test_a_rate_types_tax_code_wins_over_its_zones(services: Services) -> None:
    await uk_setup(services)
    await taxes.set_rate_type_tax_code(services.pool, "roaming", "OUTSIDE")  # no tax on it
    await account(services, "gb4", "uk", [])
    for entry, rate_type, charged in (("r1", None, UNIT), ("r2", "roaming", 2 * UNIT)):
        await cdr(
            services,
            entry,
            "gb4",
            MARCH,
            zone="UK Mobile",
            charged=charged,
            plan_id="uk",
            currency="GBP",
            rate_type=rate_type,
        )

    await run(services, "2026-03", plan_id="uk")

    # Usage 1.00 (zone code STD) and 2.00 roaming (code OUTSIDE): VAT 20% of 1.00 = 0.20.
    found = await lines_of(services, "gb4")
    assert [(r["description"], r["rate_type"], r["amount"]) for r in found] == [
        ("Calls to UK Mobile", None, UNIT),
        ("Calls to UK Mobile, roaming", "roaming", 2 * UNIT),
        ("VAT 20% of 1.00 GBP", None, 200_000),
    ]


async def test_a_preview_is_taxed_by_the_day_where_its_plan_bills(services: Services) -> None:
    """A plan billing in Kiritimati (UTC+14); VAT in force from 10 March. A dry run at
    12:00 UTC on 9 March is 02:00 on 10 March there: taxed. Before, the dry run was dated
    the UTC day (9 March) and showed no tax."""
    await add_plan(services, "kiri", currency="GBP")
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling(
            "kiri", "fixed_date", date(2026, 1, 1), time_zone="Pacific/Kiritimati", cycle_day=1
        ),
    )
    await charge(services, "rent", 10 * UNIT, "GBP")
    await taxes.create_tax(
        services.pool, Tax("GB-VAT", "VAT", 20_000_000, "federal", "GBP", date(2026, 3, 10))
    )
    await taxes.assign_tax(services.pool, "kiri", "GB-VAT", "tax_code", "STD")
    await account(services, "k1", "kiri", ["rent"])

    async def taxed(at: datetime) -> list[int]:
        _period, _currency, shown = await preview(services.pool, "k1", at)
        return [line.amount for line in shown if line.kind == "tax"]

    # 23:59:59 on 9 March where the plan bills: VAT not yet in force.
    assert await taxed(datetime(2026, 3, 9, 9, 59, 59, tzinfo=UTC)) == []
    assert await taxed(datetime(2026, 3, 9, 12, tzinfo=UTC)) == [2 * UNIT]


async def mobile_surcharge(services: Services) -> None:
    """A 10% surcharge on the plan "uk"'s UK Mobile usage."""
    await create_surcharge(
        services.pool,
        "uk",
        Surcharge(
            "mob", "Mobile termination surcharge", "percent", "zone", "UK Mobile", rate=10_000_000
        ),
    )


async def mobile_calls(
    services: Services, account_id: str, calls: list[tuple[str | None, int]]
) -> None:
    """March calls to UK Mobile on the plan "uk": (rate type, charged) each."""
    for n, (rate_type, charged) in enumerate(calls):
        await cdr(
            services,
            f"{account_id}-m{n}",
            account_id,
            MARCH,
            zone="UK Mobile",
            charged=charged,
            plan_id="uk",
            currency="GBP",
            rate_type=rate_type,
        )


async def test_a_surcharge_of_untaxed_roaming_bears_no_vat(services: Services) -> None:
    """Roaming's tax code (no tax) replaces UK Mobile's: the surcharge on roaming calls is
    taxed as they are. Before, it named only the zone and bore 20% VAT: 0.04 on 0.20."""
    await uk_setup(services)
    await taxes.set_rate_type_tax_code(services.pool, "roaming", "OUTSIDE")  # no tax on it
    await mobile_surcharge(services)
    await account(services, "gb5", "uk", [])
    await mobile_calls(services, "gb5", [("roaming", 2 * UNIT)])

    await run(services, "2026-03", plan_id="uk")

    # Roaming 2.00; surcharge 10% of 2.00 = 0.20, roaming too; no VAT on either.
    found = await lines_of(services, "gb5")
    assert [(r["kind"], r["description"], r["rate_type"], r["amount"]) for r in found] == [
        ("usage", "Calls to UK Mobile, roaming", "roaming", 2 * UNIT),
        ("surcharge", "Mobile termination surcharge, roaming 10% of 2.00 GBP", "roaming", 200_000),
    ]
    invoice = await invoice_row(services, "gb5")
    assert (invoice["tax_total"], invoice["total"]) == (0, 2_200_000)


async def test_a_zone_surcharge_is_split_per_rate_type_and_taxed_as_each(
    services: Services,
) -> None:
    """UK Mobile taxed at a reduced 10%, its SMS at the standard 20%: the SMS part of the
    surcharge bears 20%, not the zone's 10%, and each part is rounded once."""
    await uk_setup(services)
    await define(services, "GB-RED", "VAT reduced", 10_000_000, "federal", "GBP")
    await taxes.assign_tax(services.pool, "uk", "GB-RED", "tax_code", "RED")
    await taxes.set_zone_tax_code(services.pool, "UK Mobile", "RED")
    await taxes.set_rate_type_tax_code(services.pool, "sms", "STD")
    await mobile_surcharge(services)
    await account(services, "gb6", "uk", [])
    await mobile_calls(services, "gb6", [(None, 1_050_000), ("sms", 2_050_000)])

    await run(services, "2026-03", plan_id="uk")

    # Surcharges: 10% of 1.05 = 0.105 -> 0.11 (zone code RED); 10% of 2.05 = 0.205 ->
    # 0.21 (sms, code STD). Reduced 10% of 1.05 + 0.11 = 1.16: 0.116 -> 0.12; VAT 20% of
    # 2.05 + 0.21 = 2.26: 0.452 -> 0.45. (Before: one surcharge of 10% of 3.10 = 0.31 at
    # 10%, reduced 10% of 1.36 = 0.14 and VAT 20% of 2.05 = 0.41.)
    found = await lines_of(services, "gb6")
    assert [(r["kind"], r["description"], r["rate_type"], r["amount"]) for r in found] == [
        ("usage", "Calls to UK Mobile", None, 1_050_000),
        ("usage", "Calls to UK Mobile, sms", "sms", 2_050_000),
        ("surcharge", "Mobile termination surcharge 10% of 1.05 GBP", None, 110_000),
        ("surcharge", "Mobile termination surcharge, sms 10% of 2.05 GBP", "sms", 210_000),
        ("tax", "VAT reduced 10% of 1.16 GBP", None, 120_000),
        ("tax", "VAT 20% of 2.26 GBP", None, 450_000),
    ]
    invoice = await invoice_row(services, "gb6")
    assert (invoice["subtotal"], invoice["tax_total"], invoice["total"]) == (
        3_420_000,
        570_000,
        3_990_000,
    )


async def test_the_tax_engine_is_sent_a_zone_surcharge_as_the_usage_it_surcharges(
    services: Services,
) -> None:
    """An external plan: the engine gets each part of a zone's surcharge as a usage
    transaction of that zone, naming its rate type. Before, one "subscription" of the
    zone's whole usage."""
    await uk_setup(services)
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("uk", "fixed_date", date(2026, 1, 1), cycle_day=1, tax_engine="external"),
    )
    await mobile_surcharge(services)
    await account(services, "gb7", "uk", [])
    await mobile_calls(services, "gb7", [(None, UNIT), ("roaming", 2 * UNIT)])
    run_id = await run(services, "2026-03", plan_id="uk")
    sent: list[tuple[str, str, str, int]] = []

    async def engine(invoice: TaxInvoice, lines: list[Line]) -> list[Line]:
        request = taxes.tax_request(invoice, lines)
        assert request is not None
        sent.extend((t.type, t.product, t.description, t.amount) for t in request.transactions)
        return []

    posted = await posting.post(services.pool, services.store, run_id=run_id, tax_engine=engine)

    assert len(posted.numbers) == 1
    assert sent == [
        ("usage", "UK Mobile", "Calls to UK Mobile", UNIT),
        ("usage", "UK Mobile", "Calls to UK Mobile, roaming", 2 * UNIT),
        ("usage", "UK Mobile", "Mobile termination surcharge 10% of 1.00 GBP", 100_000),
        ("usage", "UK Mobile", "Mobile termination surcharge, roaming 10% of 2.00 GBP", 200_000),
    ]


async def test_a_draft_held_because_its_lines_changed_shows_that_reason(
    services: Services,
) -> None:
    """The engine is down, then a rerun rewrites a line while the engine is asked: the
    draft is held and its tax_error says why. Before, the engine's earlier reason stayed."""
    await rounding_setup(services)
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("eu", "fixed_date", date(2026, 1, 1), cycle_day=1, tax_engine="external"),
    )
    run_id = await run(services, "2026-03", plan_id="eu")

    async def down(invoice: TaxInvoice, lines: list[Line]) -> list[Line]:
        raise ConnectionError("engine unreachable")

    await posting.post(services.pool, services.store, run_id=run_id, tax_engine=down)
    assert (await invoice_row(services, "e1"))["tax_error"] == "tax engine: engine unreachable"

    async def rewritten_while_asked(invoice: TaxInvoice, lines: list[Line]) -> list[Line]:
        await services.pool.execute(
            "UPDATE invoice_lines SET amount = 2060000, exact_amount = 2060000"
            " WHERE invoice_id = $1 AND position = 1",
            invoice.id,
        )
        return []

    held = await posting.post(
        services.pool, services.store, run_id=run_id, tax_engine=rewritten_while_asked
    )

    reason = "its lines changed while its taxes were computed"
    invoice = await invoice_row(services, "e1")
    assert held.numbers == {} and held.held == {invoice["id"]: reason}
    assert invoice["state"] == "draft" and invoice["tax_error"] == reason
    stored, shown = await queries.invoice(services.pool, invoice["id"])
    assert queries.detail_view(stored, shown).tax_error == reason


def test_a_flat_zone_surcharge_is_one_amount_taxed_as_the_largest_share() -> None:
    # UK Mobile: 1.00 of calls and 3.00 of roaming calls. A flat 1.50 is charged once,
    # as roaming (the larger share); a 10% one is 0.10 and 0.30, one line each.
    def usage(amount: int, rate_type: str | None) -> Line:
        return Line(
            "usage", "Calls", None, None, 1, amount, amount, False,
            zone="UK Mobile", rate_type=rate_type,
        )  # fmt: skip

    calls = [usage(UNIT, None), usage(3 * UNIT, "roaming")]
    flat = Surcharge("fee", "Fee", "flat", "zone", "UK Mobile", amount=1_500_000)
    percent = Surcharge("pct", "Pct", "percent", "zone", "UK Mobile", rate=10_000_000)
    found = surcharge_lines(calls, [flat, percent], "GBP")
    assert [(s.description, s.rate_type, s.amount) for s in found] == [
        ("Fee, roaming (flat)", "roaming", 1_500_000),
        ("Pct 10% of 1.00 GBP", None, 100_000),
        ("Pct, roaming 10% of 3.00 GBP", "roaming", 300_000),
    ]


def test_a_charge_surcharge_takes_the_period_of_the_lines_it_surcharges() -> None:
    # rent: a proration for Mar 16 - Apr 1 (2.00) and April ahead (4.00). A 10% surcharge
    # is a line per period, 0.20 over March's days and 0.40 over April's; a flat 1.50 is
    # one line, over April's (the larger share).
    march, april, may = (datetime(2026, m, d, tzinfo=UTC) for m, d in ((3, 16), (4, 1), (5, 1)))

    def rent(kind: str, start: datetime, end: datetime, amount: int) -> Line:
        return Line(kind, "Rent", start, end, 1, amount, amount, True, charge_id="rent")

    lines = [rent("proration", march, april, 2 * UNIT), rent("recurring", april, may, 4 * UNIT)]
    flat = Surcharge("fee", "Fee", "flat", "charge", "rent", amount=1_500_000)
    percent = Surcharge("pct", "Pct", "percent", "charge", "rent", rate=10_000_000)
    found = surcharge_lines(lines, [flat, percent], "GBP")
    assert [(s.charge_id, s.period_start, s.period_end, s.amount) for s in found] == [
        ("rent", april, may, 1_500_000),
        ("rent", march, april, 200_000),
        ("rent", april, may, 400_000),
    ]
