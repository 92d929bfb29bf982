"""A call's hold pays for that call, whatever else is debited while it runs.

Some debits take no notice of what live calls hold: an invoice posted to the balance, a
counter cycle's fee. They may take the balance below what the holds cover; the funds set
aside for a live call still pay for it when it is charged, at an interim or at its stop.
"""

from ocs.charging.lifecycle import CallService
from ocs.charging.values import AuthorizeRequest
from ocs.config import with_overrides
from tests.conftest import RunningApp, account, add_plan

UK_MOBILE = "447700900123"  # 0.15 to connect, then 0.06 a minute on a 30/6 grid


async def funded(app: RunningApp, account_id: str) -> None:
    await add_plan(app.services, max_call_duration=600)
    status, body = await app.post(
        "/v1/accounts", {"id": account_id, "plan": "retail", "balance": "1.00"}
    )
    assert status == 201, body


async def test_a_debit_during_a_call_does_not_make_the_call_free(app: RunningApp) -> None:
    await funded(app, "ann")
    calls, store = app.services.calls, app.services.store
    grant = await calls.authorize(AuthorizeRequest("ann", UK_MOBILE, call_id="c1"))
    assert grant.max_duration == 600  # 0.15 + 10 min at 0.06 = 0.75 held
    # An invoice of 2.00 is posted meanwhile, as billing does: funds or not.
    assert await store.fee("ann", 2_000_000, "invoice:ann:1", require_funds=False)
    view = await account(app, "ann")
    assert (view["balance"], view["reserved"]) == ("-1.000000", "0.750000")

    charge = await calls.stop("c1", 600)
    assert (charge.rated, charge.charged) == (750_000, 750_000)
    view = await account(app, "ann")
    assert (view["balance"], view["reserved"]) == ("-1.750000", "0.000000")


async def test_an_interim_debit_after_such_a_debit_takes_the_hold(app: RunningApp) -> None:
    await funded(app, "bob")
    settings = with_overrides(app.services.settings, debit_on_interim=True)
    calls = CallService(app.services.catalog, app.services.store, settings)
    await calls.authorize(AuthorizeRequest("bob", UK_MOBILE, call_id="c2"))
    await calls.start("c2")
    assert await app.services.store.fee("bob", 2_000_000, "invoice:bob:1", require_funds=False)

    progress = await calls.update("c2", 300)  # 0.15 + 5 min at 0.06
    assert progress.debited == 450_000
    view = await account(app, "bob")
    assert (view["balance"], view["reserved"]) == ("-1.450000", "0.300000")
    charge = await calls.stop("c2", 600)
    assert charge.charged == 750_000  # the interim's 0.45 and 0.30 at the stop
    view = await account(app, "bob")
    assert (view["balance"], view["reserved"]) == ("-1.750000", "0.000000")
