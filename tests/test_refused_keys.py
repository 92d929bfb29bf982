"""A refused authorization leaves nothing in Redis that outlives a short window.

Field trials: each refused attempt left a ``callref`` key of ~184 bytes for 7 days,
so a client looping on refused calls grew Redis without bound.
"""

from ocs.balances.store import REF_WINDOW
from tests.conftest import RunningApp, add_plan

UK_MOBILE = "447700900123"


async def keys_with_ttl(app: RunningApp) -> dict[str, int]:
    """Every key of the test database and its TTL in seconds (-1: none)."""
    redis = app.services.redis
    found: dict[str, int] = {}
    async for key in redis.scan_iter(count=1000):
        found[key.decode() if isinstance(key, bytes) else key] = await redis.ttl(key)
    return found


async def test_refused_authorizations_leave_no_lasting_key(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "empty", "plan": "retail", "balance": "0.00"})
    await app.post("/v1/accounts", {"id": "busy", "plan": "retail", "balance": "5.00"})
    status, _ = await app.post(
        "/v1/calls", {"account": "busy", "destination": UK_MOBILE, "call_id": "busy-live"}
    )
    assert status == 201
    before = await keys_with_ttl(app)

    refusals: dict[str, int] = {}
    for n in range(300):
        # No funds, no free line, no such account: three ways to be refused.
        account = ("empty", "busy", "nobody")[n % 3]
        status, body = await app.post(
            "/v1/calls", {"account": account, "destination": UK_MOBILE, "call_id": f"loop-{n}"}
        )
        assert status >= 400, body
        reason = body["error"]["reason"]
        refusals[reason] = refusals.get(reason, 0) + 1
    assert refusals == {"zero_balance": 100, "no_free_line": 100, "account_not_found": 100}

    after = await keys_with_ttl(app)
    new = {key: ttl for key, ttl in after.items() if key not in before}
    lasting = {key: ttl for key, ttl in new.items() if ttl == -1 or ttl > REF_WINDOW}
    assert lasting == {}, f"{len(lasting)} keys outlive the window, e.g. {list(lasting)[:3]}"
    assert REF_WINDOW <= 60
    # The live call's own reference is untouched by the refusals: it lasts its life.
    live_refs = [key for key in before if key.endswith(":busy-live") and "callref" in key]
    assert live_refs and after[live_refs[0]] > 7 * 24 * 3600


async def test_a_granted_call_keeps_its_reference_and_is_stopped_elsewhere(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "rich", "plan": "retail", "balance": "5.00"})
    # Refused first (an unknown account), then granted under the same call id: the
    # grant's reference replaces the refused one and lasts the call's life.
    status, _ = await app.post(
        "/v1/calls", {"account": "ghost", "destination": UK_MOBILE, "call_id": "again"}
    )
    assert status == 404
    status, _ = await app.post(
        "/v1/calls", {"account": "rich", "destination": UK_MOBILE, "call_id": "again"}
    )
    assert status == 201
    refs = {k: t for k, t in (await keys_with_ttl(app)).items() if k.endswith(":again")}
    [ref_ttl] = [t for k, t in refs.items() if k.startswith("callref")]
    assert ref_ttl > 14_400  # the plan's longest call and the repeated-stop window
    # Another process (no cached record) finds the call by its id alone.
    from ocs.charging.lifecycle import CallService

    other = CallService(
        app.services.catalog, app.services.store, app.services.settings, app.services.digests
    )
    charge = await other.stop("again", 45)
    assert (charge.account_id, charge.charged) == ("rich", 198_000)
