"""deploy/asterisk/extensions.conf's HTTP requests, run against a real ocs.

No Asterisk package exists for the test machines, so the shipped dialplan runs in
tests/asterisk_helpers.py's model of the dialplan engine: its own steps, parsed from
the file, drive a real ocs through an HTTP relay that fails the requests chosen
(tests/http_relay_helpers.py). What Asterisk itself does around them (SIP, Dial's
S() and U(), when the hangup handler runs) is not run here.

France costs 0.01 a second, billed per second.
"""

import asyncio

import pytest

from tests.asterisk_helpers import Channel, Dialplan
from tests.conftest import RETAIL_DECK, RunningApp, account, add_plan, eventually
from tests.http_relay_helpers import relay_to

DECK = RETAIL_DECK + "33,France,0.600,0,1,1\n"
FRANCE = "33123456789"


async def setup(app: RunningApp, account_id: str) -> None:
    await add_plan(app.services, deck=DECK, max_lines=4)
    status, body = await app.post(
        "/v1/accounts", {"id": account_id, "plan": "retail", "balance": "10.00"}
    )
    assert status == 201, body


def caller(account_id: str, call_id: str) -> Channel:
    """The caller's channel as a phone of ``account_id`` opens it."""
    return Channel({"UNIQUEID": call_id, "CHANNEL(accountcode)": account_id})


async def answered_call(dialplan: Dialplan, account_id: str, call_id: str) -> Channel:
    """Authorize (ocs-authorize) and start (ocs-answered, on the callee's channel) a call
    as the dialplan does: the caller's channel, granted."""
    channel = caller(account_id, call_id)
    await asyncio.to_thread(dialplan.gosub, channel, "ocs-authorize", account_id, FRANCE)
    assert int(channel.variables["OCS_MAX"]) > 0, channel.log
    callee = Channel({})
    await asyncio.to_thread(dialplan.gosub, callee, "ocs-answered", call_id)
    assert callee.logged("WARNING") == [], callee.log
    return channel


async def hang_up(dialplan: Dialplan, channel: Channel, answered_ms: int) -> None:
    """The caller hangs up after ``answered_ms``: Asterisk runs the hangup handler
    (ocs-stop) on the hung-up channel."""
    channel.variables["ANSWEREDTIME_MS"] = str(answered_ms)
    channel.hung_up = True
    await asyncio.to_thread(dialplan.gosub, channel, "ocs-stop")


async def cdr(app: RunningApp, call_id: str) -> tuple[int, int, str]:
    """The call's CDR in PostgreSQL, once the ledger writer has it: (duration, charged,
    termination cause)."""
    row = None

    async def written() -> bool:
        nonlocal row
        row = await app.services.pool.fetchrow(
            "SELECT duration, charged, termination_cause FROM cdrs WHERE call_id = $1", call_id
        )
        return row is not None

    await eventually(written, what=f"the CDR of {call_id}")
    assert row is not None
    return row["duration"], row["charged"], row["termination_cause"]


@pytest.mark.parametrize(("failure", "fail_with"), [("answered 503", 503), ("dropped", 0)])
async def test_a_failed_stop_is_sent_again_and_the_call_is_charged_once_what_it_ran(
    app: RunningApp, failure: str, fail_with: int
) -> None:
    # The caller hangs up after 7.25 s and the stop fails once: ocs restarting answers
    # 503, or the connection drops. Before, the dialplan sent the stop once and left the
    # call to ocs's janitor, which charged the whole grant at its end ("expired").
    await setup(app, "ast-restop")
    ocs_url = f"http://{app.client.host}:{app.client.port}"
    async with relay_to(ocs_url, stop_failure=fail_with, stop_failures=1) as (relay, url):
        dialplan = Dialplan({"OCS_URL": url, "OCS_TOKEN": app.admin_token})
        channel = await answered_call(dialplan, "ast-restop", "ast-1")
        await hang_up(dialplan, channel, 7250)
        assert relay.statuses("/stop") == [fail_with, 200], (failure, relay.seen)
    got = "no answer" if fail_with == 0 else "503"
    assert channel.logged("NOTICE")[-1] == f"ocs stop of ast-1 got {got} - trying again"
    assert channel.logged("ERROR") == [], channel.log
    assert channel.pauses == [0.2]  # and no Wait() on the hung-up channel ending the handler
    # Charged once, what it ran: 7.25 s is 8 started seconds, by the switch's stop.
    assert await cdr(app, "ast-1") == (8, 80_000, "normal")
    view = await account(app, "ast-restop")
    assert (view["balance"], view["reserved"], view["lines_in_use"]) == (
        "9.920000",
        "0.000000",
        0,
    )


async def test_a_stop_that_timed_out_is_sent_again_and_the_call_is_charged_once_what_it_ran(
    app: RunningApp,
) -> None:
    # ocs too slow: the first stop gets no answer within the channel's 2 s. That try
    # took the whole timeout, so before, EPOCH was 2 s past the first and no other
    # began: the call was left to ocs's janitor, which charged the whole grant. A try
    # may now begin until twice the timeout.
    await setup(app, "ast-slow")
    ocs_url = f"http://{app.client.host}:{app.client.port}"
    async with relay_to(ocs_url, stop_failure=503, stop_failures=1, slow_s=2.5) as (relay, url):
        dialplan = Dialplan({"OCS_URL": url, "OCS_TOKEN": app.admin_token})
        channel = await answered_call(dialplan, "ast-slow", "ast-3")
        await hang_up(dialplan, channel, 7250)
        assert relay.statuses("/stop") == [0, 200], relay.seen
    assert channel.logged("NOTICE")[-1] == "ocs stop of ast-3 got no answer - trying again"
    assert channel.logged("ERROR") == [], channel.log
    # Charged once, what it ran: 7.25 s is 8 started seconds, by the switch's stop.
    assert await cdr(app, "ast-3") == (8, 80_000, "normal")
    view = await account(app, "ast-slow")
    assert (view["balance"], view["reserved"], view["lines_in_use"]) == (
        "9.920000",
        "0.000000",
        0,
    )


async def test_a_stop_failing_every_try_is_given_up_after_the_tries_and_logged(
    app: RunningApp,
) -> None:
    # ocs stays unreachable: the stop is sent OCS_STOP_TRIES times, then logged with the
    # duration for a manual stop; the call is left to ocs's janitor, still reserved.
    await setup(app, "ast-lost")
    ocs_url = f"http://{app.client.host}:{app.client.port}"
    async with relay_to(ocs_url, stop_failure=503) as (relay, url):
        dialplan = Dialplan({"OCS_URL": url, "OCS_TOKEN": app.admin_token})
        channel = await answered_call(dialplan, "ast-lost", "ast-2")
        await hang_up(dialplan, channel, 4000)
        assert relay.statuses("/stop") == [503, 503, 503], relay.seen
    assert channel.pauses == [0.2, 0.2]
    [lost] = channel.logged("ERROR")
    assert lost.startswith("ocs stop of ast-2 after 4000 ms failed after 3 tries - "), lost
    view = await account(app, "ast-lost")
    assert (view["balance"], view["lines_in_use"]) == ("10.000000", 1)


async def test_a_stop_refused_4xx_is_not_sent_again(app: RunningApp) -> None:
    # A 4xx is final: a call ocs does not know is answered 404 however often it is sent.
    await setup(app, "ast-unknown")
    ocs_url = f"http://{app.client.host}:{app.client.port}"
    async with relay_to(ocs_url, stop_failures=0) as (relay, url):
        dialplan = Dialplan({"OCS_URL": url, "OCS_TOKEN": app.admin_token})
        channel = caller("ast-unknown", "never-granted")
        channel.variables.update({"OCS_CALL": "never-granted", "OCS_MAX": "60"})
        await asyncio.to_thread(dialplan.gosub, channel, "ocs-http")
        await hang_up(dialplan, channel, 5000)
        assert relay.statuses("/stop") == [404], relay.seen
    assert channel.pauses == []
    [refused] = channel.logged("ERROR")
    assert refused.startswith(
        "ocs stop of never-granted after 5000 ms refused (404) - not sent again - "
    ), refused
