"""Debits taken whatever the balance, while calls are live (decision 0049).

An invoice posted, a refund paid back or a counter's cycle fee is debited even when
the account cannot pay it (``require_funds=False``): it becomes debt. Taken while a
call is live, it took the funds the call held, and the call's end then found nothing
to charge: a ten-minute call cost nothing. A call now still charges what it held, as
far as such a debit took it; a credit limit the operator lowered stays the floor for
the rest (tests/test_credit_policy.py).

The forced debit here is the balance store's own ``fee(..., require_funds=False)``,
the one call invoice posting, refunds and counter fees make.

Rates: Germany at 0.60 a minute, billed by the second (0.01 a second, no connect fee).
"""

from typing import Any

from ocs.charging.lifecycle import CallService
from ocs.charging.values import AuthorizeRequest
from tests.conftest import RunningApp, account, add_plan

PER_SECOND_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
49,Germany,0.600,0,1,1
"""
GERMANY = "4930123456"


async def new_account(app: RunningApp, account_id: str, **fields: object) -> None:
    status, body = await app.post("/v1/accounts", {"id": account_id, "plan": "retail", **fields})
    assert status == 201, body


async def call(app: RunningApp, account_id: str, call_id: str) -> dict[str, Any]:
    status, body = await app.post(
        "/v1/calls", {"account": account_id, "destination": GERMANY, "call_id": call_id}
    )
    assert status == 201, body
    return body


async def stop(app: RunningApp, call_id: str, duration: int) -> dict[str, Any]:
    status, body = await app.post(f"/v1/calls/{call_id}/stop", {"duration": duration})
    assert status == 200, body
    return body


async def forced_debit(app: RunningApp, account_id: str, amount: int, reference: str) -> None:
    """Debit ``amount`` micro-units whatever the balance, as an invoice's posting does."""
    await app.services.store.fee(account_id, amount, reference, require_funds=False)


async def set_credit_limit(app: RunningApp, account_id: str, limit: str) -> None:
    response = await app.client.patch(f"/v1/accounts/{account_id}", json={"credit_limit": limit})
    assert response.status == 200, await response.text()


async def test_an_invoice_posted_during_a_call_leaves_the_call_its_hold(app: RunningApp) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=100)
    await new_account(app, "fd-1", balance="1.00")
    assert (await call(app, "fd-1", "fd-1-a"))["reserved"] == "1.000000"
    await forced_debit(app, "fd-1", 2_000_000, "invoice:F-1")  # a 2.00 invoice is posted
    # The call ends after a minute: 0.60, taken from what it held, into debt.
    stopped = await stop(app, "fd-1-a", 60)
    assert (stopped["rated_cost"], stopped["cost"], stopped["balance"]) == (
        "0.600000",
        "0.600000",
        "-1.600000",
    )
    view = await account(app, "fd-1")
    assert (view["balance"], view["reserved"], view["lines_in_use"]) == ("-1.600000", "0.000000", 0)


async def test_each_live_call_keeps_what_a_forced_debit_took_of_its_hold(app: RunningApp) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=75, max_lines=2)
    await new_account(app, "fd-2", balance="1.50")
    for call_id in ("fd-2-a", "fd-2-b"):
        assert (await call(app, "fd-2", call_id))["reserved"] == "0.750000"
    # 0.50 taken from 1.50 that two holds of 0.75 need: the first call was charged only
    # 0.25 of its 0.75, the free funds left. Each now takes its whole hold.
    await forced_debit(app, "fd-2", 500_000, "refund:R-1")
    assert (await stop(app, "fd-2-a", 75))["cost"] == "0.750000"
    assert (await stop(app, "fd-2-b", 75))["cost"] == "0.750000"
    assert (await account(app, "fd-2"))["balance"] == "-0.500000"


async def test_a_lowered_credit_limit_floors_what_no_forced_debit_took(app: RunningApp) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=600)
    await new_account(app, "fd-3", credit_limit="1.00")
    assert (await call(app, "fd-3", "fd-3-a"))["reserved"] == "1.000000"
    await forced_debit(app, "fd-3", 500_000, "counter:c:cycle:1")  # the hold lacks 0.50
    await set_credit_limit(app, "fd-3", "0.20")
    # 100 s rate at 1.00: the 0.50 the debit took is charged; the limit, lowered from
    # 1.00 to 0.20, refuses the rest (the balance was already below -0.20).
    stopped = await stop(app, "fd-3-a", 100)
    assert (stopped["rated_cost"], stopped["cost"], stopped["balance"]) == (
        "1.000000",
        "0.500000",
        "-1.000000",
    )


async def test_a_top_up_backs_the_hold_again_and_the_lowered_limit_floors_it(
    app: RunningApp,
) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=600)
    await new_account(app, "fd-4", credit_limit="1.00")
    await call(app, "fd-4", "fd-4-a")  # holds 1.00 of credit
    await forced_debit(app, "fd-4", 1_000_000, "invoice:F-4")
    status, body = await app.post("/v1/accounts/fd-4/topups", {"amount": "1.00"})
    assert status == 201, body
    # The top-up paid the invoice's debt: the hold stands on the credit limit again,
    # and lowering the limit to 0 floors the call at 0, as for any call.
    await set_credit_limit(app, "fd-4", "0.00")
    stopped = await stop(app, "fd-4-a", 100)
    assert (stopped["cost"], stopped["balance"]) == ("0.000000", "0.000000")


async def test_a_raised_then_lowered_credit_limit_floors_the_call(app: RunningApp) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=600)
    await new_account(app, "fd-5", credit_limit="1.00")
    await call(app, "fd-5", "fd-5-a")
    await forced_debit(app, "fd-5", 1_000_000, "invoice:F-5")
    await set_credit_limit(app, "fd-5", "3.00")  # backs the hold again
    await set_credit_limit(app, "fd-5", "0.00")
    stopped = await stop(app, "fd-5-a", 100)
    assert (stopped["cost"], stopped["balance"]) == ("0.000000", "-1.000000")


async def test_a_sliced_call_debits_its_slice_after_a_forced_debit(app: RunningApp) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=600)
    await new_account(app, "fd-6", balance="1.00")
    calls: CallService = app.services.calls
    grant = await calls.authorize(AuthorizeRequest("fd-6", GERMANY, call_id="fd-6-a", quota=30))
    assert (grant.max_duration, grant.reserved) == (30, 300_000)
    await forced_debit(app, "fd-6", 1_000_000, "invoice:F-6")  # takes the slice's funds
    progress = await calls.update("fd-6-a", 30)
    # The slice it used is debited from its hold; no funds for another.
    assert (progress.debited, progress.granted, progress.final) == (300_000, 30, True)
    charge = await calls.stop("fd-6-a", 30)
    assert (charge.rated, charge.charged, charge.balance) == (300_000, 300_000, -300_000)


async def test_what_a_forced_debit_took_is_given_back_once_under_a_lowered_limit(
    app: RunningApp,
) -> None:
    # The debit took 1.00 of two holds of 1.00; the limit then went from 2.00 to 1.00.
    # The first call took the 1.00 back; the second, one more time, took it again.
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=100, max_lines=2)
    await new_account(app, "fd-7", credit_limit="2.00")
    for call_id in ("fd-7-a", "fd-7-b"):
        assert (await call(app, "fd-7", call_id))["reserved"] == "1.000000"
    await forced_debit(app, "fd-7", 1_000_000, "invoice:F-7")
    await set_credit_limit(app, "fd-7", "1.00")
    assert (await stop(app, "fd-7-a", 100))["cost"] == "1.000000"
    stopped = await stop(app, "fd-7-b", 100)
    assert (stopped["rated_cost"], stopped["cost"], stopped["balance"]) == (
        "1.000000",
        "0.000000",
        "-2.000000",
    )


async def test_an_interim_debit_and_the_stop_take_what_was_forced_once(app: RunningApp) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=600)
    await new_account(app, "fd-8", credit_limit="1.00")
    calls: CallService = app.services.calls
    grant = await calls.authorize(AuthorizeRequest("fd-8", GERMANY, call_id="fd-8-a", quota=100))
    assert grant.reserved == 1_000_000
    await forced_debit(app, "fd-8", 500_000, "invoice:F-8")
    await set_credit_limit(app, "fd-8", "0.20")
    # 50 s (0.50) debited from the hold, all of it what the debit took; the stop at
    # 100 s finds nothing more it may take, as when no interim came (fd-3).
    assert (await calls.update("fd-8-a", 50)).debited == 500_000
    charge = await calls.stop("fd-8-a", 100)
    assert (charge.rated, charge.charged, charge.balance) == (1_000_000, 500_000, -1_000_000)
