"""A call whose stop was lost expires at its grant plus grace and is charged its grant.

Field trials: a Kamailio dialog whose BYE was lost held 0.10 and a line for ~65
minutes (the plan's longest call) although ocs had granted 10 s, and was then
charged 0 under ``last_reported``. France here costs 0.01 a second (1/1 billing):
0.10 buys exactly 10 s on a plan whose longest call is four hours.
"""

import time

import pytest

from ocs.balances import keys
from ocs.balances.store import LiveEntry
from ocs.charging.janitor import Janitor
from ocs.charging.lifecycle import CallService
from ocs.charging.values import AuthorizeRequest, Origin
from ocs.config import with_overrides
from tests.conftest import RETAIL_DECK, RunningApp, account, add_plan, eventually
from tests.radius_udp import sample

DECK = RETAIL_DECK + "33,France,0.600,0,1,1\n"
FRANCE = "33123456789"
GRACE = 30
CLOSED = "ocs_stale_calls_closed_total"


def service(app: RunningApp, clock: float | None = None, **overrides: object) -> CallService:
    """A call service with a short grace (and a fixed clock, when given)."""
    settings = with_overrides(app.services.settings, call_expiry_grace=GRACE, **overrides)
    if clock is None:
        return CallService(app.services.catalog, app.services.store, settings, app.services.digests)
    return CallService(
        app.services.catalog,
        app.services.store,
        settings,
        app.services.digests,
        clock=lambda: clock,
    )


async def expiry_of(app: RunningApp, account_id: str, call_id: str) -> int | None:
    score = await app.services.redis.zscore(
        keys.call_expiry(keys.bucket_of(account_id)), keys.expiry_member(account_id, call_id)
    )
    return None if score is None else int(score)


async def setup(app: RunningApp, account_id: str, balance: str = "0.10") -> None:
    await add_plan(app.services, deck=DECK, max_call_duration=14_400)
    status, body = await app.post(
        "/v1/accounts", {"id": account_id, "plan": "retail", "balance": balance}
    )
    assert status == 201, body


async def test_a_call_granted_10_s_expires_after_10_s_and_grace_and_is_charged_10_s(
    app: RunningApp,
) -> None:
    await setup(app, "lost-bye")
    now = int(time.time())
    calls = service(app, clock=now)
    grant = await calls.authorize(AuthorizeRequest("lost-bye", FRANCE, call_id="dialog-1"))
    assert grant.max_duration == 10
    assert await expiry_of(app, "lost-bye", "dialog-1") == now + 10 + GRACE
    # Answered (an HTTP call is provisional until its start, decision 0055): it expires
    # at its grant plus grace from the answer.
    answered = (await calls.start("dialog-1")).started_at
    assert await expiry_of(app, "lost-bye", "dialog-1") == answered + 10 + GRACE

    janitor = Janitor(calls, app.services.store)
    assert await janitor.sweep(now=answered + 10 + GRACE - 1) == 0
    closed_before = sample(CLOSED, cause="expired")
    assert await janitor.sweep(now=answered + 10 + GRACE) == 1
    assert sample(CLOSED, cause="expired") == closed_before + 1
    view = await account(app, "lost-bye")
    # Charged the 10 s the switch was told to cut at: the whole 0.10, line released.
    assert (view["balance"], view["reserved"], view["lines_in_use"]) == (
        "0.000000",
        "0.000000",
        0,
    )


async def test_last_reported_charges_the_last_report(app: RunningApp) -> None:
    await setup(app, "quiet")
    now = int(time.time())
    calls = service(app, clock=now, stale_call_policy="last_reported")
    await calls.authorize(AuthorizeRequest("quiet", FRANCE, call_id="talked"))
    answered = (await calls.start("talked")).started_at
    await calls.update("talked", 4)
    # An interim does not move the expiry of a call outside quota mode: its grant stays.
    assert await expiry_of(app, "quiet", "talked") == answered + 10 + GRACE
    assert await Janitor(calls, app.services.store).sweep(now=answered + 10 + GRACE) == 1
    view = await account(app, "quiet")
    assert (view["balance"], view["reserved"]) == ("0.060000", "0.000000")


async def test_a_call_that_waits_for_its_start_expires_at_its_grant_from_the_start(
    app: RunningApp,
) -> None:
    await setup(app, "ringing")
    calls = service(app, start_timeout=60)
    before = int(time.time())
    await calls.authorize(
        AuthorizeRequest("ringing", FRANCE, call_id="rings"), Origin(wait_for_start=True)
    )
    unstarted = await expiry_of(app, "ringing", "rings")
    assert unstarted is not None and before + 60 <= unstarted <= int(time.time()) + 60
    started = await calls.start("rings")
    expiry = await expiry_of(app, "ringing", "rings")
    assert expiry == started.started_at + 10 + GRACE
    assert await Janitor(calls, app.services.store).sweep(now=expiry) == 1
    assert (await account(app, "ringing"))["balance"] == "0.000000"


async def test_a_quota_update_moves_the_expiry_to_the_slice_reached(app: RunningApp) -> None:
    await setup(app, "slices")
    calls = service(app)
    grant = await calls.authorize(AuthorizeRequest("slices", FRANCE, call_id="sliced", quota=4))
    assert (grant.max_duration, grant.final) == (4, False)
    # Each report's expiry counts the grant left from the report (its ``used`` seconds
    # in), whatever second the call was taken as answered at.
    reported = int(time.time())
    progress = await calls.update("sliced", 4)
    assert (progress.granted, progress.final) == (8, False)
    expiry = await expiry_of(app, "slices", "sliced")
    assert expiry is not None and reported + 4 + GRACE <= expiry <= int(time.time()) + 4 + GRACE
    # The funds reach 10 s, not the 12 the next slice asks: the call expires at 10.
    reported = int(time.time())
    later = await calls.update("sliced", 8)
    assert (later.granted, later.final, later.started_at) == (10, True, progress.started_at)
    expiry = await expiry_of(app, "slices", "sliced")
    assert expiry is not None and reported + 2 + GRACE <= expiry <= int(time.time()) + 2 + GRACE


@pytest.mark.parametrize("policy", ["full_grant", "last_reported"])
async def test_a_nas_restart_close_is_counted_by_cause(app: RunningApp, policy: str) -> None:
    await setup(app, "rebooted")
    # The call starts at a fixed second and the NAS restarts one second later, whatever
    # the machine's pace between the two.
    started = int(time.time())
    calls = service(app, clock=float(started), stale_call_policy=policy)
    await calls.authorize(
        AuthorizeRequest("rebooted", FRANCE, call_id="on-nas"),
        Origin(nas="sbc-9", wait_for_start=True),
    )
    # Its Accounting-Start, delayed past the authorization: the call started as accepted.
    await calls.start("on-nas", nas="sbc-9", delay=int(time.time()) - started + 60)
    before = sample(CLOSED, cause="nas-reboot")
    closed = await calls.close_calls_of_nas(
        "sbc-9", cause="nas-reboot", before_ms=(started + 1) * 1000
    )
    assert closed == 1
    assert sample(CLOSED, cause="nas-reboot") == before + 1
    balance = (await account(app, "rebooted"))["balance"]
    if policy == "full_grant":
        # Charged up to the restart (a second after the start, at 0.01 a second), not its
        # whole 10 s grant (0.100000): the NAS's restart ended the call.
        assert balance == "0.090000"
    else:
        assert balance == "0.100000"  # nothing reported: nothing charged


async def test_an_interim_without_a_start_sets_the_expiry_from_the_grant(
    app: RunningApp,
) -> None:
    await setup(app, "no-start")
    calls = service(app, start_timeout=60)
    await calls.authorize(
        AuthorizeRequest("no-start", FRANCE, call_id="lost-start"), Origin(wait_for_start=True)
    )
    # The Start was lost; an interim says the call has run 3 s.
    progress = await calls.update("lost-start", 3)
    assert await expiry_of(app, "no-start", "lost-start") == progress.started_at + 10 + GRACE


async def test_a_start_where_the_call_was_authorized_takes_one_round_trip_and_the_same_expiry(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup(app, "node-a", balance="0.05")
    status, body = await app.post(
        "/v1/accounts", {"id": "node-b", "plan": "retail", "balance": "0.07"}
    )
    assert status == 201, body
    here, there = service(app, start_timeout=60), service(app, start_timeout=60)
    for account_id in ("node-a", "node-b"):
        await here.authorize(
            AuthorizeRequest(account_id, FRANCE, call_id=f"call-{account_id}"),
            Origin(wait_for_start=True),
        )
    # Started at another process: the entry is read first.
    theirs = await there.start("call-node-b")
    assert await expiry_of(app, "node-b", "call-node-b") == theirs.started_at + 7 + GRACE

    # Started where it was authorized: the entry is known, one script run and no read.
    store = app.services.store
    started = store.start
    runs: list[object] = []

    async def no_read(*_: object) -> None:
        raise AssertionError("the live entry was read")

    async def counted(**kwargs: object) -> object:
        runs.append(kwargs)
        return await started(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "live_entry", no_read)
    monkeypatch.setattr(store, "start", counted)
    mine = await here.start("call-node-a")
    assert len(runs) == 1
    assert await expiry_of(app, "node-a", "call-node-a") == mine.started_at + 5 + GRACE


async def test_a_start_that_expects_another_entry_changes_nothing_and_gets_the_entry(
    app: RunningApp,
) -> None:
    await setup(app, "moved-on")
    calls = service(app, start_timeout=60)
    await calls.authorize(
        AuthorizeRequest("moved-on", FRANCE, call_id="c1"), Origin(wait_for_start=True)
    )
    store = app.services.store
    entry = await store.live_entry("moved-on", "c1")
    assert entry is not None and (entry.held, entry.started) == (100_000, 0)
    unstarted = await expiry_of(app, "moved-on", "c1")
    now = int(time.time())

    stale = LiveEntry(entry.held - 1, 0, 0, 0, b"")
    answer = await store.start(
        account_id="moved-on", call_id="c1", started_at=now, expires_at=now + 1, expected=stale
    )
    assert answer == entry  # not started, the expiry untouched
    assert await expiry_of(app, "moved-on", "c1") == unstarted
    assert (await store.live_entry("moved-on", "c1")) == entry

    answer = await store.start(
        account_id="moved-on", call_id="c1", started_at=now, expires_at=now + 7, expected=entry
    )
    assert answer == now
    assert await expiry_of(app, "moved-on", "c1") == now + 7


async def test_an_http_call_never_answered_nor_stopped_is_closed_free(app: RunningApp) -> None:
    # Granted over HTTP, the call was never answered (no /start, no interim) and its stop
    # was lost: before, it counted as started when granted, and full_grant charged all 10 s.
    await setup(app, "unanswered")
    now = int(time.time())
    calls = service(app, clock=now)
    await calls.authorize(AuthorizeRequest("unanswered", FRANCE, call_id="rang-out"))
    assert await expiry_of(app, "unanswered", "rang-out") == now + 10 + GRACE
    janitor = Janitor(calls, app.services.store)
    assert await janitor.sweep(now=now + 10 + GRACE - 1) == 0
    closed_before = sample(CLOSED, cause="start-timeout")
    assert await janitor.sweep(now=now + 10 + GRACE) == 1
    assert sample(CLOSED, cause="start-timeout") == closed_before + 1
    view = await account(app, "unanswered")
    assert (view["balance"], view["reserved"], view["lines_in_use"]) == (
        "0.100000",
        "0.000000",
        0,
    )

    async def cdrs() -> list[tuple[int, int, str]]:
        async with app.services.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT duration, charged, termination_cause FROM cdrs"
                " WHERE call_id = 'rang-out' ORDER BY stopped_at"
            )
        return [tuple(r) for r in rows]

    async def closed_written() -> bool:
        return len(await cdrs()) == 1

    await eventually(closed_written, what="the close's CDR")
    assert await cdrs() == [(0, 0, "start-timeout")]
    # A stop that was only late, with the duration the switch measured, is charged then.
    charge = await calls.stop("rang-out", 7)
    assert (charge.charged, charge.cause) == (70_000, "late-stop")
    assert (await account(app, "unanswered"))["balance"] == "0.030000"
