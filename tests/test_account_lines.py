"""Lines of an account and of its members: never more live calls than either allows.

An account's ``max_lines`` bounds all its live calls, inbound and outbound; each
member (SIP user, extension) is also bounded by its own ``max_lines`` or else by
the account's ``member_max_lines`` (copied from the plan's policy). Refusals are
``no_free_line`` (HTTP 409, RADIUS h323-return-code 3) or a funds reason; lines
come back when calls stop.

Rates: FLAT_DECK prices Germany at 0.01 a minute on a 60/60 grid, and plans here
allow 600 s calls, so a full grant reserves 0.10 and a call of 7200 s rates 1.20.
"""

import asyncio
from collections import Counter
from typing import Any

import pytest

from ocs.balances import keys
from ocs.charging.values import AuthorizeRequest, CallRecord
from ocs.errors import OcsError
from tests.conftest import RADIUS_SECRET, RunningApp, RunningRadius, account, add_plan, eventually
from tests.radclient import RadiusReply, radclient

FLAT_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
49,Germany,0.010,0,60,60
"""
GERMANY = "4930123456"
MEMBERS = [f"ext-{n}" for n in range(10)]
# ext-0 has its own limit of one line; the others take the account's member_max_lines.
MEMBER_LIMITS = {member: 1 if member == "ext-0" else 3 for member in MEMBERS}


async def send(app: RunningApp, method: str, path: str, payload: object = None) -> tuple[int, Any]:
    response = await app.client.request(method, path, json=payload)
    return response.status, await response.json()


async def set_plan_policy(app: RunningApp, plan: str = "retail", **policy: object) -> None:
    status, body = await send(app, "PUT", f"/v1/plans/{plan}/policy", policy)
    assert status == 200, body


async def add_member(
    app: RunningApp, account_id: str, member: str, max_lines: int | None = None
) -> tuple[int, dict]:
    payload: dict[str, object] = {"member": member}
    if max_lines is not None:
        payload["max_lines"] = max_lines
    return await app.post(f"/v1/accounts/{account_id}/members", payload)


async def live_members(app: RunningApp, account_id: str) -> Counter[str | None]:
    """Live calls per member, read from the live-call records in Redis."""
    live = await app.services.store.live_calls_of(account_id)
    return Counter(CallRecord.unpack(entry.record).member for entry in live.values())


async def member_lines_hash(app: RunningApp, account_id: str) -> dict[str, int]:
    raw = await app.services.redis.hgetall(keys.member_lines(account_id))
    return {k.decode(): int(v) for k, v in raw.items()}


async def pbx_with_members(
    app: RunningApp, *, max_lines: int, balance: str, credit_limit: str = "0"
) -> None:
    """Account "pbx" with ten members: member_max_lines 3 from the plan, ext-0 limited to 1."""
    await add_plan(app.services, deck=FLAT_DECK, max_call_duration=600, max_lines=1)
    await set_plan_policy(app, member_max_lines=3)
    status, body = await app.post(
        "/v1/accounts",
        {
            "id": "pbx",
            "plan": "retail",
            "balance": balance,
            "credit_limit": credit_limit,
            "max_lines": max_lines,
        },
    )
    assert status == 201, body
    assert body["member_max_lines"] == 3  # the plan's default, copied
    for member in MEMBERS:
        status, body = await add_member(app, "pbx", member, 1 if member == "ext-0" else None)
        assert status == 201, body


# (account max_lines, balance, credit limit) -> calls granted, refusal reasons allowed,
# balance after every call is stopped 7200 s in (each rates 1.20).
SCENARIOS = {
    # 1 + 9 x 3 = 28 member lines, fewer than the account's 40: members bind.
    "member-limits-bind": (40, "100.00", "0", 28, {"no_free_line"}, "66.400000"),
    # 20 account lines, fewer than 28 member lines: the account binds.
    "account-lines-bind": (20, "100.00", "0", 20, {"no_free_line"}, "76.000000"),
    # 1.00 + 0.55 credit buys 15 full grants (0.10) and one of 300 s (0.05).
    "funds-bind": (
        20,
        "1.00",
        "0.55",
        16,
        {"no_free_line", "funds_held_by_live_calls"},
        "-0.550000",
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_500_concurrent_calls_across_members_respect_every_limit(
    app: RunningApp, scenario: str
) -> None:
    max_lines, balance, credit, expected, reasons, final_balance = SCENARIOS[scenario]
    await pbx_with_members(app, max_lines=max_lines, balance=balance, credit_limit=credit)

    results = await asyncio.gather(
        *[
            app.post(
                "/v1/calls",
                {
                    "account": "pbx",
                    "member": MEMBERS[n % len(MEMBERS)],
                    "destination": GERMANY,
                    "call_id": f"c{n}",
                },
            )
            for n in range(500)
        ]
    )
    granted = [body for status, body in results if status == 201]
    refused = [(status, body["error"]["reason"]) for status, body in results if status != 201]
    assert len(granted) == expected
    assert len(refused) == 500 - expected
    assert {reason for _, reason in refused} <= reasons
    assert {status for status, reason in refused if reason == "no_free_line"} <= {409}
    assert {status for status, reason in refused if reason != "no_free_line"} <= {402}
    if scenario == "funds-bind":
        assert "funds_held_by_live_calls" in {reason for _, reason in refused}
        assert sorted(g["max_duration"] for g in granted) == [300] + [600] * 15

    # Redis: live calls per account and per member within their limits.
    per_member = await live_members(app, "pbx")
    assert sum(per_member.values()) == expected
    for member, count in per_member.items():
        assert member is not None
        assert count <= MEMBER_LIMITS[member], (member, count)
    if scenario == "member-limits-bind":
        assert dict(per_member) == MEMBER_LIMITS  # every member took exactly its limit
    assert await member_lines_hash(app, "pbx") == dict(per_member)
    view = await account(app, "pbx")
    assert view["lines_in_use"] == expected
    assert await app.services.redis.hlen(keys.live_calls("pbx")) == expected

    # Every call runs far past its grant: no charge takes the balance below -credit_limit.
    stops = await asyncio.gather(
        *[app.post(f"/v1/calls/{g['call_id']}/stop", {"duration": 7200}) for g in granted]
    )
    assert all(status == 200 for status, _ in stops), stops
    view = await account(app, "pbx")
    assert view["balance"] == final_balance
    assert int(view["balance"].replace(".", "")) >= -int(credit.replace(".", "")) * 10_000
    assert (view["reserved"], view["lines_in_use"]) == ("0.000000", 0)
    assert await member_lines_hash(app, "pbx") == {}

    # Lines are back: ext-0 (limit 1) calls again once funds allow it.
    status, body = await app.post("/v1/accounts/pbx/topups", {"amount": "1.00"})
    assert status == 201, body
    status, body = await app.post(
        "/v1/calls", {"account": "pbx", "member": "ext-0", "destination": GERMANY}
    )
    assert status == 201, body
    assert (await account(app, "pbx"))["lines_in_use"] == 1


async def test_lines_come_back_as_calls_stop_under_concurrency(app: RunningApp) -> None:
    """Calls that stop as soon as they are granted, with others still asking: the lines
    they free are taken again, and no sample of Redis ever shows more than the limits."""
    await pbx_with_members(app, max_lines=20, balance="100.00")
    calls = app.services.calls
    redis = app.services.redis
    done = asyncio.Event()
    peaks: dict[str, int] = {"total": 0}
    member_peaks: Counter[str] = Counter()

    async def sample() -> None:
        while not done.is_set():
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hlen(keys.live_calls("pbx"))
                pipe.hgetall(keys.member_lines("pbx"))
                total, per_member = await pipe.execute()
            peaks["total"] = max(peaks["total"], int(total))
            for member, count in per_member.items():
                name = member.decode()
                member_peaks[name] = max(member_peaks[name], int(count))
            await asyncio.sleep(0)

    charged: list[int] = []
    refusals: list[str] = []

    async def one_call(n: int) -> None:
        try:
            grant = await calls.authorize(
                AuthorizeRequest(
                    "pbx", GERMANY, call_id=f"churn-{n}", member=MEMBERS[n % len(MEMBERS)]
                )
            )
        except OcsError as error:
            refusals.append(error.reason.value)
            return
        await asyncio.sleep(0)
        charge = await calls.stop(grant.call_id, 61)  # 120 s billed: 0.02
        charged.append(charge.charged)

    sampler = asyncio.create_task(sample())
    for wave in range(5):  # five waves of 100: each wave finds the lines of the last free
        await asyncio.gather(*[one_call(wave * 100 + n) for n in range(100)])
        assert (await account(app, "pbx"))["lines_in_use"] == 0
    done.set()
    await sampler

    assert set(refusals) <= {"no_free_line"}
    assert len(charged) + len(refusals) == 500
    assert len(charged) >= 5 * 20  # every wave got at least the account's 20 lines
    assert peaks["total"] <= 20
    for member, peak in member_peaks.items():
        assert peak <= MEMBER_LIMITS[member], (member, peak)
    assert set(charged) == {20_000}
    view = await account(app, "pbx")
    expected = 100_000_000 - sum(charged)
    assert view["balance"] == f"{expected // 1_000_000}.{expected % 1_000_000:06d}"
    assert (view["reserved"], view["lines_in_use"]) == ("0.000000", 0)


async def test_inbound_calls_are_free_without_a_tariff_yet_take_lines(app: RunningApp) -> None:
    await add_plan(app.services, deck=FLAT_DECK, max_call_duration=600, max_lines=4)
    status, body = await app.post("/v1/accounts", {"id": "duo", "plan": "retail"})
    assert status == 201, body
    status, body = await add_member(app, "duo", "desk", max_lines=1)
    assert status == 201, body

    # No funds: an outbound call is refused, an inbound one is free.
    status, body = await app.post("/v1/calls", {"account": "duo", "destination": GERMANY})
    assert (status, body["error"]["reason"]) == (402, "zero_balance")
    status, inbound = await app.post(
        "/v1/calls",
        {"account": "duo", "destination": GERMANY, "direction": "inbound", "call_id": "in-1"},
    )
    assert status == 201, inbound
    assert (inbound["direction"], inbound["reserved"]) == ("inbound", "0.000000")
    assert inbound["max_duration"] == 600

    await app.post("/v1/accounts/duo/topups", {"amount": "1.00"})
    status, outbound = await app.post(
        "/v1/calls", {"account": "duo", "destination": GERMANY, "call_id": "out-1"}
    )
    assert status == 201, outbound
    # The member takes a third line with an inbound call ...
    status, body = await app.post(
        "/v1/calls",
        {"account": "duo", "member": "desk", "destination": GERMANY, "direction": "inbound"},
    )
    assert status == 201, body
    # ... so it may place no outbound call (its own limit is 1), a line being free ...
    status, body = await app.post(
        "/v1/calls", {"account": "duo", "member": "desk", "destination": GERMANY}
    )
    assert (status, body["error"]["reason"]) == (409, "no_free_line")
    assert (await account(app, "duo"))["lines_in_use"] == 3
    status, body = await app.post(
        "/v1/calls", {"account": "duo", "destination": GERMANY, "direction": "inbound"}
    )
    assert status == 201, body
    # ... and with the account's 4 lines taken, inbound calls are refused too.
    status, body = await app.post(
        "/v1/calls", {"account": "duo", "destination": GERMANY, "direction": "inbound"}
    )
    assert (status, body["error"]["reason"]) == (409, "no_free_line")
    assert (await account(app, "duo"))["lines_in_use"] == 4
    assert (await account(app, "duo"))["reserved"] == "0.100000"  # the outbound call only

    status, stopped = await app.post("/v1/calls/in-1/stop", {"duration": 120})
    assert status == 200, stopped
    assert (stopped["cost"], stopped["balance"]) == ("0.000000", "1.000000")
    status, body = await app.post(
        "/v1/calls", {"account": "duo", "destination": GERMANY, "direction": "inbound"}
    )
    assert status == 201, body  # the line it held is free again

    async def cdr_written() -> bool:
        async with app.services.pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT count(*) FROM cdrs WHERE call_id = 'in-1'"))

    await eventually(cdr_written, what="the inbound call's CDR")
    async with app.services.pool.acquire() as conn:
        cdr = await conn.fetchrow(
            "SELECT account_id, duration, charged FROM cdrs WHERE call_id = 'in-1'"
        )
    assert (cdr["account_id"], cdr["duration"], cdr["charged"]) == ("duo", 120, 0)


async def test_max_members_is_enforced_through_the_api(app: RunningApp) -> None:
    await add_plan(app.services, deck=FLAT_DECK, max_call_duration=600, max_lines=5)
    await set_plan_policy(app, max_members=2, member_max_lines=2)
    for account_id in ("office", "other"):
        status, body = await app.post(
            "/v1/accounts", {"id": account_id, "plan": "retail", "balance": "5.00"}
        )
        assert status == 201, body

    assert (await add_member(app, "office", "alice"))[0] == 201
    assert (await add_member(app, "office", "bob", max_lines=1))[0] == 201
    status, body = await add_member(app, "office", "carol")
    assert (status, body["error"]["reason"]) == (409, "too_many_members")
    # Changing an existing member's limit is no new member.
    assert (await add_member(app, "office", "alice", max_lines=2))[0] == 201
    # A member belongs to one account only.
    status, body = await add_member(app, "other", "alice")
    assert status == 409, body
    status, listed = await app.get("/v1/accounts/office/members")
    assert status == 200, listed
    assert listed["members"] == [
        {"member": "alice", "max_lines": 2},
        {"member": "bob", "max_lines": 1},
    ]

    # A removed member frees its place and no longer names the account.
    status, body = await send(app, "DELETE", "/v1/accounts/office/members/bob")
    assert status == 200, body
    assert (await add_member(app, "office", "carol"))[0] == 201
    _, listed = await app.get("/v1/accounts/office/members")
    assert [m["member"] for m in listed["members"]] == ["alice", "carol"]
    status, body = await app.post("/v1/calls", {"member": "bob", "destination": GERMANY})
    assert (status, body["error"]["reason"]) == (404, "account_not_found")
    status, body = await send(app, "DELETE", "/v1/accounts/office/members/bob")
    assert status == 404, body


async def test_patch_max_members_raises_and_removes_the_limit(app: RunningApp) -> None:
    await add_plan(app.services, deck=FLAT_DECK, max_call_duration=600, max_lines=5)
    await set_plan_policy(app, max_members=1)
    await app.post("/v1/accounts", {"id": "office", "plan": "retail", "balance": "5.00"})
    assert (await add_member(app, "office", "alice"))[0] == 201
    status, body = await add_member(app, "office", "bob")
    assert (status, body["error"]["reason"]) == (409, "too_many_members")

    # Only max_members in the PATCH: nothing else of the account changes.
    status, body = await send(app, "PATCH", "/v1/accounts/office", {"max_members": 2})
    assert status == 200, body
    assert body["balance"] == "5.000000"
    assert (await add_member(app, "office", "bob"))[0] == 201
    status, body = await add_member(app, "office", "carol")
    assert (status, body["error"]["reason"]) == (409, "too_many_members")
    status, body = await send(app, "PATCH", "/v1/accounts/office", {"max_members": None})
    assert status == 200, body
    assert (await add_member(app, "office", "carol"))[0] == 201
    async with app.services.pool.acquire() as conn:
        stored = await conn.fetchval("SELECT max_members FROM accounts WHERE id = 'office'")
    assert stored is None


async def test_concurrent_member_additions_stop_at_max_members(app: RunningApp) -> None:
    await add_plan(app.services, deck=FLAT_DECK, max_call_duration=600)
    await set_plan_policy(app, max_members=5)
    await app.post("/v1/accounts", {"id": "crowd", "plan": "retail"})
    results = await asyncio.gather(*[add_member(app, "crowd", f"m{n}") for n in range(30)])
    statuses = Counter(status for status, _ in results)
    assert statuses == {201: 5, 409: 25}
    assert {body["error"]["reason"] for status, body in results if status == 409} == {
        "too_many_members"
    }
    _, listed = await app.get("/v1/accounts/crowd/members")
    assert len(listed["members"]) == 5


async def test_a_member_alone_names_its_account(app: RunningApp) -> None:
    await add_plan(app.services, deck=FLAT_DECK, max_call_duration=600, max_lines=5)
    await app.post("/v1/accounts", {"id": "shop", "plan": "retail", "balance": "2.00"})
    await add_member(app, "shop", "till-1", max_lines=1)

    status, grant = await app.post(
        "/v1/calls", {"member": "till-1", "destination": GERMANY, "call_id": "m-1"}
    )
    assert status == 201, grant
    assert grant["reserved"] == "0.100000"
    view = await account(app, "shop")
    assert (view["lines_in_use"], view["reserved"]) == (1, "0.100000")
    assert await live_members(app, "shop") == {"till-1": 1}
    # Its own limit of one line holds for calls naming the member alone.
    status, body = await app.post("/v1/calls", {"member": "till-1", "destination": GERMANY})
    assert (status, body["error"]["reason"]) == (409, "no_free_line")
    status, body = await app.post("/v1/calls", {"member": "nobody", "destination": GERMANY})
    assert (status, body["error"]["reason"]) == (404, "account_not_found")

    status, stopped = await app.post("/v1/calls/m-1/stop", {"duration": 90})
    assert status == 200, stopped
    assert (stopped["account"], stopped["cost"], stopped["balance"]) == (
        "shop",
        "0.020000",
        "1.980000",
    )
    status, body = await app.post("/v1/calls", {"member": "till-1", "destination": GERMANY})
    assert status == 201, body


async def test_patch_member_max_lines_changes_the_limit_of_members_without_their_own(
    app: RunningApp,
) -> None:
    await add_plan(app.services, deck=FLAT_DECK, max_call_duration=600, max_lines=4)
    await set_plan_policy(app, member_max_lines=1)
    await app.post("/v1/accounts", {"id": "desk", "plan": "retail", "balance": "5.00"})
    await add_member(app, "desk", "front")
    await add_member(app, "desk", "back", max_lines=1)

    def member_call(member: str) -> Any:
        return app.post("/v1/calls", {"member": member, "destination": GERMANY})

    assert (await member_call("front"))[0] == 201
    assert (await member_call("front"))[1]["error"]["reason"] == "no_free_line"
    status, body = await send(app, "PATCH", "/v1/accounts/desk", {"member_max_lines": 0})
    assert status == 200, body
    assert body["member_max_lines"] == 0
    # 0: no per-member limit; the account's 4 lines still bound them all.
    assert (await member_call("front"))[0] == 201
    assert (await member_call("front"))[0] == 201
    # A member's own limit is not the account's default.
    assert (await member_call("back"))[0] == 201
    assert (await member_call("back"))[1]["error"]["reason"] == "no_free_line"
    assert (await member_call("front"))[1]["error"]["reason"] == "no_free_line"
    assert await live_members(app, "desk") == {"front": 3, "back": 1}


# -- RADIUS: User-Name is a member ---------------------------------------------------


def access(user: str, conf_id: str) -> list[tuple[str, str]]:
    return [
        ("NAS-IP-Address", "127.0.0.1"),
        ("User-Name", user),
        ("Called-Station-Id", GERMANY),
        ("Calling-Station-Id", "4930111222"),
        ("h323-conf-id", f"h323-conf-id={conf_id}"),
    ]


async def auth(radius: RunningRadius, pairs: list[tuple[str, str]]) -> RadiusReply:
    return await radclient("auth", radius.auth_port, RADIUS_SECRET, pairs)


async def acct(radius: RunningRadius, pairs: list[tuple[str, str]]) -> None:
    reply = await radclient("acct", radius.acct_port, RADIUS_SECRET, pairs)
    assert reply.code == "Accounting-Response", reply.output


async def test_radius_user_name_of_a_member_gets_the_member_line_limit(
    radius: RunningRadius,
) -> None:
    app = radius.app
    await add_plan(app.services, deck=FLAT_DECK, max_call_duration=600, max_lines=5)
    await app.post("/v1/accounts", {"id": "trunk", "plan": "retail", "balance": "5.00"})
    await add_member(app, "trunk", "sip-alice", max_lines=1)
    await add_member(app, "trunk", "sip-bob")

    first = await auth(radius, access("sip-alice", "R-1"))
    assert first.code == "Access-Accept", first.output
    assert first.first("Session-Timeout") == "600"
    second = await auth(radius, access("sip-alice", "R-2"))
    assert second.code == "Access-Reject", second.output
    assert second.first("h323-return-code") == "h323-return-code=3"
    # Another member of the account still has lines.
    other = await auth(radius, access("sip-bob", "R-3"))
    assert other.code == "Access-Accept", other.output
    assert await live_members(app, "trunk") == {"sip-alice": 1, "sip-bob": 1}
    assert (await account(app, "trunk"))["lines_in_use"] == 2

    call = [("User-Name", "sip-alice"), ("h323-conf-id", "h323-conf-id=R-1")]
    await acct(radius, [("Acct-Status-Type", "Start"), *call])
    await acct(radius, [("Acct-Status-Type", "Stop"), *call, ("Acct-Session-Time", "90")])
    view = await account(app, "trunk")
    assert (view["balance"], view["lines_in_use"]) == ("4.980000", 1)  # 120 s billed
    again = await auth(radius, access("sip-alice", "R-4"))
    assert again.code == "Access-Accept", again.output
