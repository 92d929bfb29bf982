"""What a void invoice billed that no invoice that stands bills again, listed for the
operator (decision 0046, addendum 2026-12-07): ``GET /v1/invoices/{id}/unbilled`` and
``ocs invoices unbilled ID``.

Plan ``retail``: EUR, invoiced on the 1st at the end of each cycle. Charges: ``adv``
10.00 a month in advance, ``arr`` 5.00 a month in arrears; bundle ``pro``: a 7.00
monthly fee upfront, from Feb 10. February's invoice (posted, then voided) billed
February's arrears, March ahead and the fee period from March 10: the runs bill none of
them again (decision 0046), so they are listed until the operator bills them again.
"""

import json
from datetime import date
from pathlib import Path
from typing import Any

import jsonschema

from ocs import api_tokens
from ocs.billing import posting
from ocs.billing.store import add_charge
from ocs.billing.void import void
from tests.billing_helpers import EUR, billed_plan, customer, invoice_id, monthly, run_months
from tests.conftest import RunningApp, bearer
from tests.helpers import ocs_cli

ARREARS = {
    "kind": "recurring",
    "description": "Line rent arr",
    "charge_id": "arr",
    "period_start": "2026-02-01T00:00:00Z",
    "period_end": "2026-03-01T00:00:00Z",
    "days": 28,
    "amount": "5.000000",
    "unbilled": [{"start_date": "2026-02-01", "end_date": "2026-03-01"}],
    "unbilled_amount": "5.000000",
}
ADVANCE = {
    "kind": "recurring",
    "description": "Line rent adv",
    "charge_id": "adv",
    "period_start": "2026-03-01T00:00:00Z",
    "period_end": "2026-04-01T00:00:00Z",
    "days": 31,
    "amount": "10.000000",
    "unbilled": [{"start_date": "2026-03-01", "end_date": "2026-04-01"}],
    "unbilled_amount": "10.000000",
}
FEE = {
    "kind": "bundle_fee",
    "description": "Pro: monthly fee 2026-03-10..2026-04-10, 7.00 per monthly",
    "charge_id": None,
    "period_start": "2026-03-10T00:00:00Z",
    "period_end": "2026-04-10T00:00:00Z",
    "days": 31,
    "amount": "7.000000",
    "unbilled": [{"start_date": "2026-03-10", "end_date": "2026-04-10"}],
    "unbilled_amount": "7.000000",
}
SHOWN = tuple(ADVANCE)


def shown(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The listed items, by the fields these tests compare."""
    return [{k: item[k] for k in SHOWN} for item in items]


async def _voided_february(app: RunningApp) -> tuple[int, int, int]:
    """r1 invoiced for January (posted) and February (posted, voided): (January's
    invoice, February's, r1's subscription)."""
    services = app.services
    await billed_plan(services)
    await monthly(services, "adv", 10 * EUR, timing="advance")
    await monthly(services, "arr", 5 * EUR, timing="arrears")
    sub = await customer(services, "r1", "arr", date(2026, 1, 1), balance=100 * EUR)
    await add_charge(services.pool, sub, "adv")
    async with services.pool.acquire() as conn:
        await conn.execute("INSERT INTO bundles (id, name, currency) VALUES ('pro', 'Pro', 'EUR')")
        await conn.execute(
            "INSERT INTO bundle_rules (bundle_id, position, kind, description, amount,"
            " periodicity, timing) VALUES ('pro', 1, 'flat_fee', 'monthly fee', 7000000,"
            " 'monthly', 'upfront')"
        )
        await conn.execute(
            "INSERT INTO subscription_bundles (subscription_id, bundle_id, start_date)"
            " VALUES ($1, 'pro', '2026-02-10')",
            sub,
        )
    await run_months(services, "2026-01", "2026-02")
    january = await invoice_id(services, "r1", "2026-01")
    february = await invoice_id(services, "r1", "2026-02")
    await posting.post(services.pool, services.store, invoice_ids=[january, february])
    await void(services.pool, services.store, february)
    return january, february, sub


async def test_a_void_invoice_lists_its_charges_and_fees_until_they_are_billed_again(
    app: RunningApp, tmp_path: Path
) -> None:
    january, february, sub = await _voided_february(app)
    operator = await api_tokens.create(app.services.pool, "biller", "operator")
    viewer = await api_tokens.create(app.services.pool, "clerk", "viewer")
    path = f"/v1/invoices/{february}/unbilled"

    status, body, _ = await app.anonymous("GET", path, headers=bearer(operator))
    assert status == 200, body
    assert body["invoice"] == february
    assert shown(body["items"]) == [ADVANCE, ARREARS, FEE]
    assert [item["subscription_id"] for item in body["items"]] == [sub, sub, None]
    # As /openapi.json documents it (what schemathesis runs over it check too).
    status, document = await app.get("/openapi.json")
    answer = document["paths"]["/v1/invoices/{invoice_id}/unbilled"]["get"]["responses"]["200"]
    schema = answer["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": document["components"]}).validate(body)

    # The operator bills February's arrears again, and March's advance for Mar 1 - 14
    # only (what POST /v1/subscriptions/{id}/charges does); March's invoice bills them.
    await add_charge(
        app.services.pool, sub, "arr", start_date=date(2026, 2, 1), end_date=date(2026, 3, 1)
    )
    await add_charge(
        app.services.pool, sub, "adv", start_date=date(2026, 3, 1), end_date=date(2026, 3, 15)
    )
    await run_months(app.services, "2026-03")

    # February's arrears are gone; of March's advance, Mar 15 - 31 is left: 10.00 x 17 /
    # 31 = 5.483871, 5.48. The fee, billed again by nothing, stays.
    code, out, err = await ocs_cli(
        app.services.settings, tmp_path, "invoices", "unbilled", str(february)
    )
    assert code == 0, err
    listed = json.loads(out)
    rest = {
        **ADVANCE,
        "unbilled": [{"start_date": "2026-03-15", "end_date": "2026-04-01"}],
        "unbilled_amount": "5.480000",
    }
    assert (listed["invoice"], shown(listed["items"])) == (february, [rest, FEE])
    status, body, _ = await app.anonymous("GET", path, headers=bearer(operator))
    assert shown(body["items"]) == [rest, FEE]

    # A viewer may not ask; an invoice that is not void is 409 invoice_state, one that
    # does not exist 404.
    assert (await app.anonymous("GET", path, headers=bearer(viewer)))[0] == 403
    status, refused, _ = await app.anonymous(
        "GET", f"/v1/invoices/{january}/unbilled", headers=bearer(operator)
    )
    assert (status, refused["error"]["reason"], refused["error"]["field"]) == (
        409,
        "invoice_state",
        "invoice_id",
    ), refused
    assert "only a void invoice" in refused["error"]["message"]
    status, missing, _ = await app.anonymous(
        "GET", "/v1/invoices/999999/unbilled", headers=bearer(operator)
    )
    assert (status, missing["error"]["reason"]) == (404, "not_found"), missing
    code, _, err = await ocs_cli(
        app.services.settings, tmp_path, "invoices", "unbilled", str(january)
    )
    assert code == 1 and "invoice_state" in err and "only a void invoice" in err
