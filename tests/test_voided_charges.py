"""Charges billed by an invoice that was then voided are not billed again by the runs.

A void reverses what the invoice charged; the days it billed are the operator's to bill
again (decisions 0043, 0046, 0050). Before, the next invoice's reconciliation of an
advance charge no longer saw the void invoice's line and billed its days again, while
an arrears charge's days stayed unbilled: March re-billed March's advance 10.00 voided
with February, not February's arrears 5.00; a first invoice voided had its advance
days of a charge begun in the next month billed again. Now neither kind is billed again
nor credited; the operator re-bills by adding the charge again for the voided days,
which the next invoice bills as an item recorded late (decision 0043).

Plan ``retail``: EUR, invoiced on the 1st at the end of each cycle. Charges: ``adv``
10.00 a month in advance, ``arr`` 5.00 a month in arrears. Every line is read from
PostgreSQL; amounts by hand: days / days in the month, each line rounded once to cents.
"""

from datetime import date

from ocs.billing import posting
from ocs.billing.store import add_charge, end_charge
from ocs.billing.void import void
from ocs.services import Services
from tests.billing_helpers import (
    EUR,
    ChargeLine,
    billed_plan,
    charge_lines_billed,
    customer,
    invoice_id,
    monthly,
    run_months,
)

ADV = ("recurring", "Line rent adv")
ARR = ("recurring", "Line rent arr")


def _month(label: str, kind: tuple[str, str], first: date, amount: int) -> ChargeLine:
    """A whole month's line of one charge on the invoice of ``label``, from ``first``."""
    after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return (label, *kind, first, after, amount, amount)


async def _charges(services: Services) -> None:
    """The plan and its two charges: 10.00 a month in advance, 5.00 in arrears."""
    await billed_plan(services)
    await monthly(services, "adv", 10 * EUR, timing="advance")
    await monthly(services, "arr", 5 * EUR, timing="arrears")


async def _subscribed(services: Services, account: str, adv_from: date | None = None) -> int:
    """An account subscribed from Jan 1 with ``arr`` and ``adv`` (from ``adv_from``, or
    the subscription's start): the ``adv`` item's id."""
    sub = await customer(services, account, "arr", date(2026, 1, 1), balance=100 * EUR)
    return await add_charge(services.pool, sub, "adv", start_date=adv_from)


async def _post_and_void(services: Services, account: str, label: str) -> None:
    """Post the account's invoice of that period, then void it."""
    found = await invoice_id(services, account, label)
    await posting.post(services.pool, services.store, invoice_ids=[found])
    await void(services.pool, services.store, found)


async def _post(services: Services, account: str, label: str) -> None:
    """Post the account's invoice of that period."""
    found = await invoice_id(services, account, label)
    await posting.post(services.pool, services.store, invoice_ids=[found])


# January's invoice: February in advance, January reconciled (begun in it), January's
# arrears.
JANUARY_ADV = [
    _month("2026-01", ADV, date(2026, 2, 1), 10 * EUR),
    _month("2026-01", ADV, date(2026, 1, 1), 10 * EUR),
]


async def test_a_voided_invoice_has_neither_its_advance_nor_its_arrears_billed_again(
    services: Services,
) -> None:
    await _charges(services)
    await _subscribed(services, "c1")
    ended = await _subscribed(services, "c2")
    await run_months(services, "2026-01", "2026-02")
    for account in ("c1", "c2"):
        await _post(services, account, "2026-01")
        # February's invoice billed March ahead and February's arrears: voided.
        await _post_and_void(services, account, "2026-02")
    # c2's advance charge ends Mar 15, recorded after the void.
    await end_charge(services.pool, ended, date(2026, 3, 15))

    await run_months(services, "2026-03", "2026-04")

    # March's invoice bills April ahead and March's arrears; March's advance days,
    # billed by the void invoice, are not billed again (they were, as a plain 10.00
    # line), and February's arrears are not either.
    assert await charge_lines_billed(services, "c1", "adv") == [
        *JANUARY_ADV,
        _month("2026-03", ADV, date(2026, 4, 1), 10 * EUR),
        _month("2026-04", ADV, date(2026, 5, 1), 10 * EUR),
    ]
    assert await charge_lines_billed(services, "c1", "arr") == [
        _month("2026-01", ARR, date(2026, 1, 1), 5 * EUR),
        _month("2026-03", ARR, date(2026, 3, 1), 5 * EUR),
        _month("2026-04", ARR, date(2026, 4, 1), 5 * EUR),
    ]
    # c2 used Mar 1 - 14 of the March the void invoice billed: not billed again (it was,
    # 14/31 of 10.00 = 4.52), and the 17 days after the end, which no invoice that
    # stands billed, are not credited.
    assert await charge_lines_billed(services, "c2", "adv") == JANUARY_ADV
    assert await charge_lines_billed(services, "c2", "arr") == await charge_lines_billed(
        services, "c1", "arr"
    )


async def test_a_voided_first_invoice_has_its_advance_days_not_billed_again(
    services: Services,
) -> None:
    await _charges(services)
    await _subscribed(services, "v1")
    # v2's advance charge begins Feb 10: January's invoice bills Feb 10 - 28 ahead.
    await _subscribed(services, "v2", adv_from=date(2026, 2, 10))
    await run_months(services, "2026-01")
    for account in ("v1", "v2"):
        await _post_and_void(services, account, "2026-01")

    await run_months(services, "2026-02", "2026-03")

    # 19 of February's 28 days: 10.00 x 19 / 28 = 6.785714, 6.79 on the void invoice.
    late_start = ("2026-01", "proration", "Line rent adv (19/28 days)",
                  date(2026, 2, 10), date(2026, 3, 1), 6_785_714, 6_790_000)  # fmt: skip
    assert await charge_lines_billed(services, "v2", "adv", with_void=True) == [
        late_start,
        _month("2026-02", ADV, date(2026, 3, 1), 10 * EUR),
        _month("2026-03", ADV, date(2026, 4, 1), 10 * EUR),
    ]
    # The account's billing begins with February's invoice: it bills March ahead and
    # February's arrears, and neither v1's January and February nor v2's Feb 10 - 28
    # (billed again by February's invoice before) are billed again.
    for account in ("v1", "v2"):
        assert await charge_lines_billed(services, account, "adv") == [
            _month("2026-02", ADV, date(2026, 3, 1), 10 * EUR),
            _month("2026-03", ADV, date(2026, 4, 1), 10 * EUR),
        ]
        assert await charge_lines_billed(services, account, "arr") == [
            _month("2026-02", ARR, date(2026, 2, 1), 5 * EUR),
            _month("2026-03", ARR, date(2026, 3, 1), 5 * EUR),
        ]


async def test_the_operator_bills_the_voided_days_again_by_adding_the_charges_for_them(
    services: Services,
) -> None:
    await _charges(services)
    await _subscribed(services, "r1")
    await run_months(services, "2026-01", "2026-02")
    await _post(services, "r1", "2026-01")
    await _post_and_void(services, "r1", "2026-02")
    # The operator bills what the void invoice billed again, explicitly (what
    # POST /v1/subscriptions/{id}/charges does): February's arrears and March's advance.
    async with services.pool.acquire() as conn:
        sub = await conn.fetchval("SELECT id FROM subscriptions WHERE account_id = 'r1'")
    await add_charge(
        services.pool, sub, "arr", start_date=date(2026, 2, 1), end_date=date(2026, 3, 1)
    )
    await add_charge(
        services.pool, sub, "adv", start_date=date(2026, 3, 1), end_date=date(2026, 4, 1)
    )

    await run_months(services, "2026-03", "2026-04")

    # March's invoice bills each once: the new arrears item's February as recorded late
    # (decision 0043), the new advance item's March by reconciliation; April nothing.
    assert await charge_lines_billed(services, "r1", "adv") == [
        *JANUARY_ADV,
        _month("2026-03", ADV, date(2026, 4, 1), 10 * EUR),
        _month("2026-03", ADV, date(2026, 3, 1), 10 * EUR),
        _month("2026-04", ADV, date(2026, 5, 1), 10 * EUR),
    ]
    assert await charge_lines_billed(services, "r1", "arr") == [
        _month("2026-01", ARR, date(2026, 1, 1), 5 * EUR),
        _month("2026-03", ARR, date(2026, 3, 1), 5 * EUR),
        _month("2026-03", ARR, date(2026, 2, 1), 5 * EUR),
        _month("2026-04", ARR, date(2026, 4, 1), 5 * EUR),
    ]
