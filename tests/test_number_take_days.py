"""The days a number is taken and given back on, and repeated takes (decision 0030,
addendum of 2026-12-07): one account pays for a number at a time, a release is never
dated after today (it frees the number at once), a take never before the account's
first day nor before the previous holder's charge ended, and a repeated take (a named
number the account holds, or a take id) takes and charges nothing more (real Redis and
PostgreSQL).
"""

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ocs.billing.store import Charge, create_charge
from ocs.events.outbox import emit
from tests.billing_helpers import EUR, billed_plan, customer
from tests.conftest import RunningApp
from tests.helpers import Raw, send

NUMBER_CHARGE = "Number Recurring Charge"


async def numbers_plan(app: RunningApp, *numbers: str, charged: bool = True) -> None:
    """The retail plan billed monthly in UTC, a DID set of ``numbers`` serving it whose
    numbers cost 2.00 a month (nothing, held free of charge, when not ``charged``), and
    accounts n1, n2, n3 billed from 2026-01-01."""
    services = app.services
    await billed_plan(services)
    if charged:
        await create_charge(
            services.pool,
            Charge("did-rc", NUMBER_CHARGE, "DID", "EUR", 2 * EUR, "triggered", cadence="monthly"),
        )
    status, body = await send(app, "POST", "/v1/number-sets", {"id": "dids", "kind": "did"})
    assert status == 201, body
    csv = "number\n" + "".join(f"{n}\n" for n in numbers)
    status, body = await send(app, "POST", "/v1/number-sets/dids/numbers", Raw(csv, "text/csv"))
    assert status == 200, body
    status, body = await send(app, "PUT", "/v1/number-sets/dids/plans/retail", {"priority": 1})
    assert status == 200, body
    for account_id in ("n1", "n2", "n3"):
        await customer(services, account_id, None, date(2026, 1, 1))


async def take(app: RunningApp, account_id: str, **fields: object) -> tuple[int, Any]:
    """POST /v1/accounts/{account_id}/numbers."""
    return await send(app, "POST", f"/v1/accounts/{account_id}/numbers", fields)


async def release(app: RunningApp, account_id: str, number: str, on: date) -> tuple[int, Any]:
    """DELETE /v1/accounts/{account_id}/numbers/{number}?on=..."""
    return await send(
        app, "DELETE", f"/v1/accounts/{account_id}/numbers/{number}?on={on.isoformat()}"
    )


def refusal(answer: tuple[int, Any]) -> tuple[int, str, str]:
    """(status, reason, field) of a refusal."""
    status, body = answer
    return status, body["error"]["reason"], body["error"]["field"]


async def charge_rows(app: RunningApp) -> list[tuple[str, str, date, date | None]]:
    """Who is charged for which number, from and until when (PostgreSQL)."""
    async with app.services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT account_id, number, start_date, end_date FROM account_numbers ORDER BY id"
        )
    return [(r["account_id"], r["number"], r["start_date"], r["end_date"]) for r in rows]


async def number_lines(app: RunningApp, account_id: str, at: date) -> list[str]:
    """The amounts of the number charge's lines on the account's invoice preview of the
    month holding ``at``."""
    instant = datetime(at.year, at.month, at.day, tzinfo=UTC).isoformat().replace("+00:00", "Z")
    status, preview = await send(
        app, "GET", f"/v1/accounts/{account_id}/invoice-preview?at={instant}"
    )
    assert status == 200, preview
    return [line["amount"] for line in preview["lines"] if NUMBER_CHARGE in line["description"]]


def next_month(today: date) -> date:
    """The 10th of the month after this one: a month after any change made today."""
    return (today.replace(day=1) + timedelta(days=32)).replace(day=10)


async def test_a_number_is_charged_to_one_holder_at_a_time(app: RunningApp) -> None:
    """A release dated after today freed the number at once but ended its charge only
    that day: the next holder's take then billed both accounts for it until then."""
    await numbers_plan(app, "4420100")
    today = datetime.now(UTC).date()
    taken_on = today - timedelta(days=20)
    status, body = await take(app, "n1", on=taken_on.isoformat())
    assert (status, body["number"]) == (201, "4420100")

    later = today + timedelta(days=60)
    refused = await release(app, "n1", "4420100", later)
    assert refusal(refused) == (400, "invalid_field", "on")
    assert str(today) in refused[1]["error"]["message"]
    # Still n1's: held, charged, and not another's to take.
    status, held = await send(app, "GET", "/v1/accounts/n1/numbers")
    assert [n["number"] for n in held["numbers"]] == ["4420100"]
    assert refusal(await take(app, "n2", number="4420100")) == (409, "account_exists", "number")

    # Given back today, then taken by n2 today: one charge at a time.
    assert (await release(app, "n1", "4420100", today))[0] == 200
    status, body = await take(app, "n2", number="4420100")
    assert (status, body["assigned_on"]) == (201, today.isoformat())
    assert await charge_rows(app) == [
        ("n1", "4420100", taken_on, today),
        ("n2", "4420100", today, None),
    ]
    month = next_month(today)
    assert await number_lines(app, "n1", month) == []
    assert await number_lines(app, "n2", month) == ["2.000000"]


async def test_a_take_and_a_release_stay_within_the_days_they_can_bill(app: RunningApp) -> None:
    await numbers_plan(app, "4420100", "4420101")
    today = datetime.now(UTC).date()
    tomorrow = today + timedelta(days=1)
    # A take dated later would send the number's calls to the account now, its charge
    # starting only then; one before the account's first day billed decades.
    for on in ("9999-12-31", tomorrow.isoformat(), "1970-01-01", "2025-12-31"):
        assert refusal(await take(app, "n1", on=on)) == (400, "invalid_field", "on"), on
    assert await charge_rows(app) == []

    start = today - timedelta(days=20)
    assert (await take(app, "n1", number="4420100", on=start.isoformat()))[0] == 201
    for on in (date(1, 1, 1), start - timedelta(days=1), tomorrow, date(9999, 12, 31)):
        assert refusal(await release(app, "n1", "4420100", on)) == (400, "invalid_field", "on")
    assert await charge_rows(app) == [("n1", "4420100", start, None)]

    # Given back today: a take dated before today would bill n1 and n2 for the same days.
    assert (await release(app, "n1", "4420100", today))[0] == 200
    back = today - timedelta(days=5)
    refused = await take(app, "n2", number="4420100", on=back.isoformat())
    assert refusal(refused) == (400, "invalid_field", "on")
    assert f"until {today}" in refused[1]["error"]["message"]
    # The next free number, back-dated, is one nobody is charged for on that day.
    status, body = await take(app, "n2", on=back.isoformat())
    assert (status, body["number"], body["assigned_on"]) == (201, "4420101", back.isoformat())
    status, body = await take(app, "n3", on=back.isoformat())
    assert refusal((status, body)) == (404, "not_found", "number")
    status, body = await take(app, "n3")
    assert (status, body["number"]) == (201, "4420100")
    assert await charge_rows(app) == [
        ("n1", "4420100", start, today),
        ("n2", "4420101", back, None),
        ("n3", "4420100", today, None),
    ]


async def number_row(app: RunningApp, number: str) -> tuple[str | None, date | None, date | None]:
    """(holder, assigned_on, freed_on) of ``number``'s row in its set (PostgreSQL)."""
    row = await app.services.pool.fetchrow(
        "SELECT account_id, assigned_on, freed_on FROM number_set_numbers WHERE number = $1",
        number,
    )
    return row["account_id"], row["assigned_on"], row["freed_on"]


async def test_a_number_held_free_of_charge_bounds_its_next_holders_first_day(
    app: RunningApp,
) -> None:
    """A number held free of charge (its plan triggers no number charge) has no charge
    row, and its release left no end anywhere: the next holder's take could be dated
    over the days the free holder held it."""
    await numbers_plan(app, "4420100", charged=False)
    today = datetime.now(UTC).date()
    start, back, freed = (today - timedelta(days=d) for d in (20, 10, 5))
    status, body = await take(app, "n1", number="4420100", on=start.isoformat())
    assert (status, body["charge"]) == (201, None)
    assert (await release(app, "n1", "4420100", freed))[0] == 200

    refused = await take(app, "n2", number="4420100", on=back.isoformat())
    assert refusal(refused) == (400, "invalid_field", "on")
    assert f"until {freed}" in refused[1]["error"]["message"]
    # The next free number, back-dated, is not one another account held on that day.
    assert refusal(await take(app, "n2", on=back.isoformat())) == (404, "not_found", "number")
    assert await charge_rows(app) == []
    assert await number_row(app, "4420100") == (None, None, freed)

    # From the free holder's end on, it is n2's.
    status, body = await take(app, "n2", number="4420100", on=freed.isoformat())
    assert (status, body["assigned_on"]) == (201, freed.isoformat())
    assert await number_row(app, "4420100") == ("n2", freed, freed)
    # Given back and taken again, its end moves on: the bound is the last holder's.
    assert (await release(app, "n2", "4420100", today))[0] == 200
    assert await number_row(app, "4420100") == (None, None, today)
    refused = await take(app, "n3", on=freed.isoformat())
    assert refusal(refused) == (404, "not_found", "number")
    assert (await take(app, "n3"))[1]["assigned_on"] == today.isoformat()
    assert await charge_rows(app) == []


async def test_a_number_given_back_by_a_release_before_0068_still_bounds_the_next_take(
    app: RunningApp,
) -> None:
    """A process of the release before migration 0068, still serving during an upgrade,
    frees a number without writing its end (freed_on), only its event: the next holder's
    take could then be back-dated over the days the last holder held it, free of
    charge. The end is taken from the event (migration 0073)."""
    await numbers_plan(app, "4420100", charged=False)
    today = datetime.now(UTC).date()
    start, back, freed = (today - timedelta(days=d) for d in (20, 10, 5))
    status, body = await take(app, "n1", number="4420100", on=start.isoformat())
    assert (status, body["charge"]) == (201, None)
    # What that release wrote: the number free, no end, and its event.
    async with app.services.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE number_set_numbers SET account_id = NULL, assigned_on = NULL WHERE number = $1",
            "4420100",
        )
        await emit(
            conn,
            "number.released",
            "n1",
            {"account_id": "n1", "number": "4420100", "on": freed.isoformat()},
        )
    assert await number_row(app, "4420100") == (None, None, freed)
    refused = await take(app, "n2", number="4420100", on=back.isoformat())
    assert refusal(refused) == (400, "invalid_field", "on")
    # An earlier event's day (a replay) moves no end back.
    async with app.services.pool.acquire() as conn:
        await emit(
            conn,
            "number.released",
            "n1",
            {"account_id": "n1", "number": "4420100", "on": start.isoformat()},
        )
    assert await number_row(app, "4420100") == (None, None, freed)


async def test_a_repeated_take_takes_and_charges_nothing_more(app: RunningApp) -> None:
    await numbers_plan(app, "4420100", "4420101", "4420102", "4420103")
    today = datetime.now(UTC).date()
    start = today - timedelta(days=3)

    # A named number the account holds already: the assignment that stands, 200.
    status, first = await take(app, "n1", number="4420100", on=start.isoformat())
    assert (status, first["repeated"]) == (201, False)
    status, again = await take(app, "n1", number="+4420100", on=start.isoformat())
    assert (status, again) == (200, {**first, "repeated": True})
    assert (await take(app, "n1", number="4420100"))[0] == 200
    assert refusal(await take(app, "n1", number="4420100", on=today.isoformat())) == (
        409,
        "account_exists",
        "on",
    )
    assert refusal(await take(app, "n2", number="4420100")) == (409, "account_exists", "number")

    # The next free number, once per take id, even when the repeats race.
    answers = await asyncio.gather(*(take(app, "n2", take_id="order-7") for _ in range(4)))
    assert sorted(status for status, _ in answers) == [200, 200, 200, 201]
    assert {body["number"] for _, body in answers} == {"4420101"}
    assert refusal(await take(app, "n2", number="4420102", take_id="order-7")) == (
        400,
        "invalid_field",
        "take_id",
    )
    # Another account's take id is its own; another id takes another number.
    assert (await take(app, "n3", take_id="order-7"))[1]["number"] == "4420102"
    assert (await take(app, "n2", take_id="order-8"))[1]["number"] == "4420103"
    status, held = await send(app, "GET", "/v1/accounts/n2/numbers")
    assert [n["number"] for n in held["numbers"]] == ["4420101", "4420103"]
    assert [(a, n) for a, n, _, _ in await charge_rows(app)] == [
        ("n1", "4420100"),
        ("n2", "4420101"),
        ("n3", "4420102"),
        ("n2", "4420103"),
    ]

    # Given back, the number is not taken again under the old id.
    assert (await release(app, "n2", "4420101", today))[0] == 200
    refused = await take(app, "n2", take_id="order-7")
    assert refusal(refused) == (400, "invalid_field", "take_id")
    assert "gave back" in refused[1]["error"]["message"]
    assert refusal(await take(app, "n2", take_id="")) == (400, "invalid_field", "take_id")
