"""An invoice's itemised call list at a size a busy trunk reaches: the JSON list comes a
page at a time, and the CSV attachment holds every call, written page by page."""

import csv
import io
from datetime import date

from ocs.billing.itemised import MAX_PAGE
from tests.billing_helpers import billed_plan, customer, invoice_id, run
from tests.conftest import RunningApp

CALLS = MAX_PAGE + 5  # one page and a few calls more
PAIRS_SQL = """
INSERT INTO cdrs (entry_id, call_id, account_id, plan_id, zone, destination, currency,
                  authorized_at, stopped_at, duration, billed_seconds, connect_fee,
                  first_block, increment, price_per_minute, rated_cost, charged)
SELECT 'p-' || lpad(n::text, 6, '0'), 'p-' || n, 'trunk', 'retail', 'UK Fixed',
       '441234567', 'EUR', t, t, 30, 60, 0, 60, 60, 10000, 10000, 10000
FROM generate_series(1, $1) AS n,
     LATERAL (SELECT timestamptz '2026-03-10 09:00:00+00' + (n / 2) * interval '1 s') AS s(t)
"""


async def test_a_long_call_list_pages_in_json_and_streams_whole_as_csv(app: RunningApp) -> None:
    services = app.services
    await billed_plan(services)
    await customer(services, "trunk", None, date(2026, 1, 1))
    # Two calls stop in each second: a page may end between two of the same second.
    async with services.pool.acquire() as conn:
        await conn.execute(PAIRS_SQL, CALLS)
    await run(services, "2026-03")
    invoice = await invoice_id(services, "trunk", "2026-03")

    listed: list[str] = []
    pages = 0
    after = ""
    while True:
        status, page = await app.get(f"/v1/invoices/{invoice}/calls?limit=3000{after}")
        assert status == 200, page
        assert len(page["calls"]) <= 3000
        listed += [c["cdr"] for c in page["calls"]]
        pages += 1
        if page["next"] is None:
            break
        after = f"&after={page['next']}"
    expected = [f"p-{n:06d}" for n in range(1, CALLS + 1)]
    assert (listed, pages) == (expected, 4)  # every call once, in order: 3 full pages + 1

    status, default = await app.get(f"/v1/invoices/{invoice}/calls")
    assert len(default["calls"]) == 1000 and default["next"] is not None
    status, refused = await app.get(f"/v1/invoices/{invoice}/calls?limit={MAX_PAGE + 1}")
    assert (status, refused["error"]["field"]) == (400, "limit"), refused
    status, refused = await app.get(f"/v1/invoices/{invoice}/calls?after=somewhere")
    assert (status, refused["error"]["field"]) == (400, "after"), refused

    response = await app.client.get(f"/v1/invoices/{invoice}/calls?format=csv")
    assert response.status == 200 and response.content_type == "text/csv"
    rows = list(csv.reader(io.StringIO(await response.text())))
    assert rows[0][-1] == "cdr"
    assert [r[-1] for r in rows[1:]] == expected
    assert {r[8] for r in rows[1:]} == {"0.010000"}

    status, missing = await app.get("/v1/invoices/999999/calls?format=csv")
    assert status == 404, missing


async def test_a_cursor_past_the_last_day_a_date_holds_is_a_400_naming_after(
    app: RunningApp,
) -> None:
    services = app.services
    await billed_plan(services)
    await customer(services, "trunk", None, date(2026, 1, 1))
    async with services.pool.acquire() as conn:
        await conn.execute(PAIRS_SQL, 2)
    await run(services, "2026-03")
    invoice = await invoice_id(services, "trunk", "2026-03")
    # 9999-12-31 is the last day a date holds: past it, no call can be, and none is read.
    for cursor in ("253402300800000000_p", "999999999999999999_p", "1" * 4400 + "_p"):
        for form in ("json", "csv"):
            status, refused = await app.get(
                f"/v1/invoices/{invoice}/calls?format={form}&after={cursor}"
            )
            assert (status, refused["error"]["field"]) == (400, "after"), (cursor, refused)
    # Its last microsecond still reads: a page after it holds no call.
    status, page = await app.get(f"/v1/invoices/{invoice}/calls?after=253402300799999999_p")
    assert (status, page) == (200, {"calls": [], "next": None}), page
    status, page = await app.get(f"/v1/invoices/{invoice}/calls?after=0_p")
    assert (status, [c["cdr"] for c in page["calls"]]) == (200, ["p-000001", "p-000002"]), page
