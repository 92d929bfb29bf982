"""Taxes, exemptions, surcharges and bundles managed through the admin API (decision 0024).

What an operator notices: a tax, a surcharge and a bundle created through the API
give their lines on the next invoice, with amounts computed by hand; bad values
are 400 naming the field, unknown ids 404, a tax or bundle in another currency than
the plan refused; viewers read and cannot write.
"""

from datetime import UTC, datetime
from typing import Any

from ocs import api_tokens
from tests.billing_helpers import EUR, cdr
from tests.conftest import RunningApp, add_plan, bearer

BILLING: dict[str, Any] = {"cycle": "fixed_date", "cycle_day": 1, "effective_date": "2026-01-01"}
VAT: dict[str, Any] = {
    "code": "VAT20",
    "name": "VAT",
    "rate": "20",
    "level": "federal",
    "currency": "EUR",
    "valid_from": "2026-01-01",
}
FREE_MINUTES: dict[str, Any] = {
    "id": "b1",
    "name": "Business bundle",
    "currency": "EUR",
    "indicators": [{"name": "uk", "function": "sum", "measure": "duration", "zone": "UK Mobile"}],
    "rules": [
        {
            "kind": "free",
            "description": "100 free minutes to UK Mobile",
            "indicator": "uk",
            "allowance": 6000,
        }
    ],
}


async def ok(app: RunningApp, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    """A request with the app's admin token that must answer ``status``: its JSON."""
    response = await app.client.request(method, path, json=body)
    answer = await response.json()
    assert response.status == status, (method, path, answer)
    return answer


async def refused(app: RunningApp, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """(status, error) of a refused request."""
    response = await app.client.request(method, path, json=body)
    answer = await response.json()
    assert response.status >= 400, answer
    return response.status, answer["error"]


async def billed_retail(app: RunningApp) -> None:
    """The retail plan (EUR), invoiced on the 1st at the end of each month."""
    await add_plan(app.services)
    assert (await ok(app, "PUT", "/v1/plans/retail/billing", BILLING))["tax_engine"] == "internal"


async def subscriber(app: RunningApp, account: str, **fields: Any) -> dict[str, Any]:
    """An account on retail with 30.00, subscribed from January 1st: the subscription."""
    await ok(app, "POST", "/v1/accounts", {"id": account, "plan": "retail", "balance": "30"}, 201)
    body = {"account": account, "plan": "retail", "start_date": "2026-01-01", **fields}
    answer: dict[str, Any] = await ok(app, "POST", "/v1/subscriptions", body, 201)
    return answer


async def march_invoices(app: RunningApp) -> dict[str, dict[str, Any]]:
    """Run March 2026 and answer each account's invoice, with its lines."""
    run = {"period": "2026-03", "invoice_date": "2026-04-01", "execute": True}
    assert (await ok(app, "POST", "/v1/invoice-runs", run, 201))["state"] == "done"
    listed = await ok(app, "GET", "/v1/invoices?period=2026-03")
    return {
        i["account"]: await ok(app, "GET", f"/v1/invoices/{i['id']}") for i in listed["invoices"]
    }


async def test_a_vat_a_surcharge_and_an_exemption_made_through_the_api_are_on_the_invoice(
    app: RunningApp,
) -> None:
    await billed_retail(app)
    charge = {
        "id": "rent", "name": "Line rent", "product_code": "LINE", "currency": "EUR",
        "amount": "12.50", "kind": "recurring", "cadence": "monthly", "tax_code": "STD",
    }  # fmt: skip
    await ok(app, "POST", "/v1/charges", charge, 201)
    tax = await ok(app, "POST", "/v1/taxes", VAT, 201)
    assert tax == {**VAT, "valid_until": None, "compound": False}
    assign = {"tax": "VAT20", "target_kind": "tax_code", "target": "STD"}
    assigned = await ok(app, "POST", "/v1/plans/retail/taxes", assign, 201)
    assert (assigned["plan"], assigned["target"], assigned["tax"]["rate"]) == (
        "retail",
        "STD",
        "20",
    )
    # A repeat changes nothing: 200, the same assignment.
    assert (await ok(app, "POST", "/v1/plans/retail/taxes", assign, 200))["id"] == assigned["id"]
    surcharge = {
        "id": "reg", "name": "Regulatory fee", "kind": "percent", "rate": "2.5",
        "target_kind": "charge", "target": "rent",
    }  # fmt: skip
    made = await ok(app, "POST", "/v1/plans/retail/surcharges", surcharge, 201)
    assert (made["rate"], made["amount"], made["plan"]) == ("2.5", None, "retail")
    sub = await subscriber(
        app, "a1", charges=["rent"], billing_city="London", billing_postal_code="SW1A 1AA",
        billing_country="GB", billing_email="ap@example.co.uk",
    )  # fmt: skip
    assert (
        sub["billing_city"],
        sub["billing_postal_code"],
        sub["billing_country"],
        sub["billing_email"],
    ) == ("London", "SW1A 1AA", "GB", "ap@example.co.uk")
    await subscriber(app, "a2", charges=["rent"])
    exemption = {"reference": "CERT-7", "levels": ["other", "federal"]}
    shown = await ok(app, "PUT", "/v1/accounts/a2/tax-exemption", exemption)
    assert shown == {"account": "a2", "reference": "CERT-7", "levels": ["federal", "other"]}
    assert await ok(app, "GET", "/v1/accounts/a2/tax-exemption") == shown

    invoices = await march_invoices(app)
    # a1: rent 12.50; surcharge 2.5% of 12.50 = 0.3125 -> 0.31; the surcharge is taxed as
    # the rent it surcharges (code STD): VAT 20% of 12.81 = 2.562 -> 2.56. 12.50 + 0.31
    # + 2.56 = 15.37.
    a1 = invoices["a1"]
    assert [(li["kind"], li["amount"]) for li in a1["lines"]] == [
        ("recurring", "12.500000"),
        ("surcharge", "0.310000"),
        ("tax", "2.560000"),
    ]
    vat = a1["lines"][2]
    assert (vat["tax_code"], vat["basis"], vat["rate"]) == ("VAT20", "12.810000", "20")
    assert vat["description"] == "VAT 20% of 12.81 EUR"
    assert (a1["total"], a1["tax_total"]) == ("15.370000", "2.560000")
    # a2 is exempt from federal taxes: its VAT line shows, at 0, naming the certificate.
    a2 = invoices["a2"]
    assert a2["lines"][2]["amount"] == "0.000000"
    assert a2["lines"][2]["description"] == "VAT 20% of 12.81 EUR: exempt (CERT-7)"
    assert a2["total"] == "12.810000"

    # Listings show what was made; removing them leaves nothing.
    listed = await ok(app, "GET", "/v1/taxes?currency=EUR&valid_on=2026-03-01")
    assert [t["code"] for t in listed["taxes"]] == ["VAT20"]
    assert (await ok(app, "GET", "/v1/taxes?valid_on=2025-12-31"))["taxes"] == []
    plan_taxes = await ok(app, "GET", "/v1/plans/retail/taxes")
    assert [t["id"] for t in plan_taxes["taxes"]] == [assigned["id"]]
    query = "tax=VAT20&target_kind=tax_code&target=STD"
    assert (await ok(app, "DELETE", f"/v1/plans/retail/taxes?{query}"))["id"] == assigned["id"]
    assert (await ok(app, "GET", "/v1/plans/retail/taxes"))["taxes"] == []
    assert (await refused(app, "DELETE", f"/v1/plans/retail/taxes?{query}"))[0] == 404
    assert (await ok(app, "GET", "/v1/plans/retail/surcharges"))["surcharges"] == [made]
    assert await ok(app, "DELETE", "/v1/plans/retail/surcharges?id=reg") == made
    assert (await refused(app, "DELETE", "/v1/plans/retail/surcharges?id=reg"))[0] == 404
    assert (await ok(app, "DELETE", "/v1/accounts/a2/tax-exemption"))["reference"] == "CERT-7"
    status, error = await refused(app, "GET", "/v1/accounts/a2/tax-exemption")
    assert (status, error["reason"]) == (404, "not_found")
    listed_subs = await ok(app, "GET", "/v1/subscriptions?account=a1")
    assert listed_subs["subscriptions"][0]["billing_country"] == "GB"


async def test_tax_codes_of_zones_products_and_rate_types(app: RunningApp) -> None:
    for kind, key in (("zone", "UK Mobile"), ("product", "LINE"), ("rate_type", "roaming")):
        body = {"kind": kind, "key": key, "tax_code": "STD"}
        assert await ok(app, "PUT", "/v1/tax-codes", body) == body
    await ok(app, "PUT", "/v1/tax-codes", {"kind": "zone", "key": "UK Mobile", "tax_code": "RED"})
    listed = await ok(app, "GET", "/v1/tax-codes")
    assert [(c["kind"], c["key"], c["tax_code"]) for c in listed["tax_codes"]] == [
        ("zone", "UK Mobile", "RED"),
        ("product", "LINE", "STD"),
        ("rate_type", "roaming", "STD"),
    ]
    zones = await ok(app, "GET", "/v1/tax-codes?kind=zone")
    assert [c["key"] for c in zones["tax_codes"]] == ["UK Mobile"]
    removed = await ok(app, "DELETE", "/v1/tax-codes?kind=product&key=LINE")
    assert removed == {"kind": "product", "key": "LINE", "tax_code": "STD"}
    assert (await refused(app, "DELETE", "/v1/tax-codes?kind=product&key=LINE"))[0] == 404
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT tax_code FROM zone_tax_codes") == "RED"
        assert await conn.fetchval("SELECT count(*) FROM product_tax_codes") == 0


async def test_a_bundle_made_and_attached_through_the_api_credits_its_free_minutes(
    app: RunningApp,
) -> None:
    await billed_retail(app)
    sub = await subscriber(app, "a1")
    bundle = await ok(app, "POST", "/v1/bundles", FREE_MINUTES, 201)
    assert bundle["rules"] == [
        {
            "position": 1, "kind": "free", "description": "100 free minutes to UK Mobile",
            "indicator": "uk", "allowance": 6000, "amount": None, "periodicity": None,
            "timing": None, "tiers": [],
        }
    ]  # fmt: skip
    assert (await ok(app, "GET", "/v1/bundles?currency=EUR"))["bundles"] == [bundle]
    path = f"/v1/subscriptions/{sub['id']}/bundles"
    held = await ok(app, "POST", path, {"bundle": "b1"}, 201)
    assert (held["bundle"], held["start_date"], held["end_date"]) == ("b1", None, None)
    assert (await ok(app, "GET", path))["bundles"] == [held]
    # March: UK Mobile calls of 3000 s (3.00), 2400 s (2.40) and 1200 s (1.20), in that
    # order, and one to Germany (0.70), outside the indicator. The first 6000 s are free:
    # 3.00 + 2.40 + 1.20 x 600/1200 = 6.00 credited.
    for n, (day, seconds, charged, zone) in enumerate(
        ((3, 3000, 3 * EUR, "UK Mobile"), (4, 2400, 2_400_000, "UK Mobile"),
         (5, 1200, 1_200_000, "UK Mobile"), (6, 600, 700_000, "Germany"))
    ):  # fmt: skip
        when = datetime(2026, 3, day, 12, tzinfo=UTC)
        await cdr(app.services, f"c{n}", "a1", when, duration=seconds, charged=charged, zone=zone)
    invoice = (await march_invoices(app))["a1"]
    [free] = [li for li in invoice["lines"] if li["kind"] == "bundle_free"]
    assert (free["amount"], free["quantity"]) == ("-6.000000", 6000)
    assert free["description"] == (
        "Business bundle: 100 free minutes to UK Mobile: 100 min of 100 min included,"
        " 6.00 credited (100%)"
    )
    # Usage 3.00 + 2.40 + 1.20 + 0.70 = 7.30, less 6.00 free: 1.30.
    assert invoice["total"] == "1.300000"


async def test_ending_a_bundle_before_its_term_bills_its_resiliation_fee(app: RunningApp) -> None:
    await billed_retail(app)
    sub = await subscriber(app, "a1")
    bundle = {
        "id": "term", "name": "Committed", "currency": "EUR", "commitment_months": 12,
        "resiliation": "fixed", "resiliation_fee": "50",
        "rules": [{"kind": "flat_fee", "description": "bundle fee", "amount": "5.00",
                   "periodicity": "monthly", "timing": "due_date"}],
    }  # fmt: skip
    made = await ok(app, "POST", "/v1/bundles", bundle, 201)
    assert (made["resiliation_fee"], made["rules"][0]["amount"]) == ("50.000000", "5.000000")
    path = f"/v1/subscriptions/{sub['id']}/bundles"
    await ok(app, "POST", path, {"bundle": "term", "start_date": "2026-01-01"}, 201)
    ended = await ok(app, "POST", f"{path}/detach", {"bundle": "term", "on": "2026-03-15"})
    assert [(h["bundle"], h["end_date"]) for h in ended["bundles"]] == [("term", "2026-03-15")]
    # Nothing of it left to end after March 15.
    assert (await refused(app, "POST", f"{path}/detach", {"bundle": "term", "on": "2026-04-01"}))[
        0
    ] == 404
    invoice = (await march_invoices(app))["a1"]
    # March's fee for its 14 days of 31: 5.00 x 14/31 = 2.258... -> 2.26; ended before
    # its 12-month term (to 2027-01-01): the fixed fee, 50.00.
    assert [(li["kind"], li["amount"]) for li in invoice["lines"]] == [
        ("bundle_fee", "2.260000"),
        ("resiliation", "50.000000"),
    ]
    assert invoice["total"] == "52.260000"


async def test_bad_values_are_named_unknown_ids_are_404_and_other_currencies_refused(
    app: RunningApp,
) -> None:
    await billed_retail(app)
    sub = await subscriber(app, "a1")
    for body, field in (
        ({**VAT, "rate": "abc"}, "rate"),
        ({**VAT, "rate": "100001"}, "rate"),
        ({**VAT, "level": "galactic"}, "level"),
        ({**VAT, "currency": "eur"}, "currency"),
        ({**VAT, "valid_until": "2025-12-31"}, "valid_until"),
    ):
        status, error = await refused(app, "POST", "/v1/taxes", body)
        assert (status, error["field"]) == (400, field), error
    await ok(app, "POST", "/v1/taxes", VAT, 201)
    status, error = await refused(app, "POST", "/v1/taxes", VAT)
    assert (status, error["field"]) == (400, "code")
    usd = {**VAT, "code": "US-TX", "currency": "USD"}
    await ok(app, "POST", "/v1/taxes", usd, 201)
    # Only a tax in the plan's currency: USD on the EUR plan is refused, naming the tax.
    body = {"tax": "US-TX", "target_kind": "tax_code", "target": "STD"}
    status, error = await refused(app, "POST", "/v1/plans/retail/taxes", body)
    assert (status, error["field"]) == (400, "tax")
    assert "USD" in error["message"] and "EUR" in error["message"]
    status, error = await refused(app, "POST", "/v1/plans/retail/taxes", {**body, "tax": "nope"})
    assert (status, error["field"]) == (404, "tax")
    status, error = await refused(app, "POST", "/v1/plans/nope/taxes", {**body, "tax": "VAT20"})
    assert (status, error["reason"]) == (404, "plan_not_found")
    status, error = await refused(
        app, "POST", "/v1/plans/retail/taxes", {**body, "tax": "VAT20", "target_kind": "plan"}
    )
    assert (status, error["field"]) == (400, "target_kind")
    status, error = await refused(
        app, "POST", "/v1/plans/retail/taxes", {**body, "target_kind": "charge", "target": "x"}
    )
    assert status in (400, 404)
    status, error = await refused(
        app, "PUT", "/v1/accounts/ghost/tax-exemption", {"reference": "C", "levels": ["state"]}
    )
    assert (status, error["reason"]) == (404, "account_not_found")
    status, error = await refused(
        app, "PUT", "/v1/accounts/a1/tax-exemption", {"reference": "C", "levels": ["galaxy"]}
    )
    assert (status, error["field"]) == (400, "levels[0]")
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM plan_taxes") == 0
        assert await conn.fetchval("SELECT count(*) FROM account_tax_exemptions") == 0

    # Subscriptions and plan billing: the new fields are checked too.
    status, error = await refused(
        app, "POST", "/v1/subscriptions",
        {"account": "a1", "plan": "retail", "start_date": "2026-01-01", "billing_country": "usa"},
    )  # fmt: skip
    assert (status, error["field"]) == (400, "billing_country")
    status, error = await refused(
        app, "POST", "/v1/subscriptions",
        {"account": "a1", "plan": "retail", "start_date": "2026-01-01", "billing_email": "nope"},
    )  # fmt: skip
    assert (status, error["field"]) == (400, "billing_email")
    status, error = await refused(
        app, "PUT", "/v1/plans/retail/billing", {**BILLING, "tax_engine": "bogus"}
    )
    assert (status, error["field"]) == (400, "tax_engine")
    billing = await ok(
        app, "PUT", "/v1/plans/retail/billing", {**BILLING, "tax_engine": "external"}
    )
    assert billing["tax_engine"] == "external"
    async with app.services.pool.acquire() as conn:
        engine = await conn.fetchval("SELECT tax_engine FROM plan_billing WHERE plan_id = 'retail'")
    assert engine == "external"

    # Surcharges: a percent one needs a rate, a flat one an amount.
    surcharge = {"id": "s", "name": "Fee", "kind": "percent", "target_kind": "zone",
                 "target": "UK Mobile"}  # fmt: skip
    status, error = await refused(app, "POST", "/v1/plans/retail/surcharges", surcharge)
    assert (status, error["field"]) == (400, "rate")
    status, error = await refused(
        app, "POST", "/v1/plans/retail/surcharges", {**surcharge, "kind": "flat", "rate": "1"}
    )
    assert (status, error["field"]) == (400, "rate")
    status, error = await refused(
        app, "POST", "/v1/plans/nope/surcharges", {**surcharge, "rate": "1"}
    )
    assert (status, error["reason"]) == (404, "plan_not_found")

    # Bundles: a bad rule is named; unknown ids are 404; another currency is refused.
    free_rule = FREE_MINUTES["rules"][0]
    for rules, field in (
        ([{**free_rule, "allowance": None}], "rules[0].allowance"),
        ([{**free_rule, "indicator": "nope"}], "rules[0].indicator"),
        ([{**free_rule, "kind": "discount", "allowance": None,
           "tiers": [{"threshold": 60, "rate": "150"}]}], "rules[0].tiers[0].rate"),
        ([{**free_rule, "periodicity": "monthly"}], "rules[0].periodicity"),
        ([], "rules"),
    ):  # fmt: skip
        status, error = await refused(app, "POST", "/v1/bundles", {**FREE_MINUTES, "rules": rules})
        assert (status, error["field"]) == (400, field), error
    status, error = await refused(
        app, "POST", "/v1/bundles", {**FREE_MINUTES, "resiliation": "fixed"}
    )
    assert (status, error["field"]) == (400, "commitment_months")
    await ok(app, "POST", "/v1/bundles", {**FREE_MINUTES, "id": "usd", "currency": "USD"}, 201)
    path = f"/v1/subscriptions/{sub['id']}/bundles"
    status, error = await refused(app, "POST", path, {"bundle": "usd"})
    assert (status, error["field"]) == (400, "bundle")
    status, error = await refused(app, "POST", path, {"bundle": "nope"})
    assert (status, error["field"]) == (404, "bundle")
    status, error = await refused(
        app, "POST", "/v1/subscriptions/999999/bundles", {"bundle": "usd"}
    )
    assert status == 404
    assert (await refused(app, "GET", "/v1/subscriptions/999999/bundles"))[0] == 404
    status, error = await refused(
        app, "POST", path, {"bundle": "usd", "start_date": "2026-02-01", "end_date": "2026-01-01"}
    )
    assert (status, error["field"]) == (400, "end_date")
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM subscription_bundles") == 0
        assert await conn.fetchval("SELECT count(*) FROM bundles") == 1


async def test_viewers_read_the_rules_and_cannot_write_them(app: RunningApp) -> None:
    await billed_retail(app)
    sub = await subscriber(app, "a1")
    viewer = bearer(await api_tokens.create(app.services.pool, "clerk", "viewer"))
    operator = bearer(await api_tokens.create(app.services.pool, "biller", "operator"))
    bundles = f"/v1/subscriptions/{sub['id']}/bundles"
    writes: list[tuple[str, str, Any]] = [
        ("POST", "/v1/taxes", VAT),
        ("POST", "/v1/plans/retail/taxes",
         {"tax": "VAT20", "target_kind": "tax_code", "target": "STD"}),
        ("PUT", "/v1/accounts/a1/tax-exemption", {"reference": "C", "levels": ["state"]}),
        ("PUT", "/v1/tax-codes", {"kind": "zone", "key": "UK Mobile", "tax_code": "STD"}),
        ("POST", "/v1/plans/retail/surcharges",
         {"id": "s", "name": "Fee", "kind": "flat", "amount": "1", "target_kind": "zone",
          "target": "UK Mobile"}),
        ("POST", "/v1/bundles", FREE_MINUTES),
        ("POST", bundles, {"bundle": "b1"}),
        ("POST", f"{bundles}/detach", {"bundle": "b1", "on": "2026-02-01"}),
        ("DELETE", "/v1/plans/retail/taxes?tax=VAT20&target_kind=tax_code&target=STD", None),
        ("DELETE", "/v1/accounts/a1/tax-exemption", None),
        ("DELETE", "/v1/tax-codes?kind=zone&key=UK%20Mobile", None),
        ("DELETE", "/v1/plans/retail/surcharges?id=s", None),
    ]  # fmt: skip
    for method, path, body in writes:
        status, answer, _ = await app.anonymous(method, path, json=body, headers=viewer)
        assert (status, answer["error"]["reason"]) == (403, "forbidden"), (method, path)
        # An operator may: each write succeeds, in order.
        status, answer, _ = await app.anonymous(method, path, json=body, headers=operator)
        assert status in (200, 201), (method, path, answer)
    for path in (
        "/v1/taxes", "/v1/plans/retail/taxes", "/v1/tax-codes", "/v1/plans/retail/surcharges",
        "/v1/bundles", bundles,
    ):  # fmt: skip
        status, answer, _ = await app.anonymous("GET", path, headers=viewer)
        assert status == 200, (path, answer)
    status, answer, _ = await app.anonymous("GET", "/v1/bundles", headers=viewer)
    assert [b["id"] for b in answer["bundles"]] == ["b1"]
