"""What authorization quotes for d seconds is what stop charges for d seconds."""

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocs.charging.values import AuthorizeRequest
from ocs.rating.rates import cost
from tests.conftest import RunningApp, add_plan

DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
44,UK,0.013,0.020,30,6
"""
_ids = itertools.count()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fraction=st.floats(0, 1), balance_cents=st.integers(5, 500))
async def test_stop_charges_exactly_the_quote_for_any_duration_within_the_grant(
    app: RunningApp, fraction: float, balance_cents: int
) -> None:
    if app.services.catalog.snapshot.plan("retail") is None:
        await add_plan(app.services, deck=DECK, max_lines=100)
    account = f"q{next(_ids)}"
    await app.post(
        "/v1/accounts", {"id": account, "plan": "retail", "balance": f"{balance_cents / 100:.2f}"}
    )
    calls = app.services.calls
    grant = await calls.authorize(AuthorizeRequest(account, "442079460000"))
    duration = int(grant.max_duration * fraction)  # any duration the grant allows
    quoted = cost(grant.rate, duration)
    assert quoted <= grant.reserved
    charge = await calls.stop(grant.call_id, duration)
    assert (charge.rated, charge.charged) == (quoted, quoted)
    state = await app.services.store.get_account(account)
    assert state is not None and state.balance == balance_cents * 10_000 - quoted
