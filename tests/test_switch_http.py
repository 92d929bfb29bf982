"""The HTTP call lifecycle as switches drive it (Kamailio http_client, Asterisk CURL).

France here costs 0.01 a second, billed per second, so cents count seconds.
"""

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from ocs.balances.autopipeline import AutoPipeline
from ocs.balances.scripts import START
from ocs.charging.lifecycle import CallService
from ocs.charging.values import AuthorizeRequest, Origin
from ocs.money import format_amount
from tests.conftest import RETAIL_DECK, RunningApp, account, add_plan, eventually

DECK = RETAIL_DECK + "33,France,0.600,0,1,1\n"
FRANCE = "33123456789"


async def setup(app: RunningApp, account_id: str) -> None:
    await add_plan(app.services, deck=DECK, max_lines=4)
    status, body = await app.post(
        "/v1/accounts", {"id": account_id, "plan": "retail", "balance": "10.00"}
    )
    assert status == 201, body


async def authorize(app: RunningApp, account_id: str, call_id: str, **extra: object) -> dict:
    status, body = await app.post(
        "/v1/calls", {"account": account_id, "destination": FRANCE, "call_id": call_id, **extra}
    )
    assert status == 201, body
    return body


async def raw_post(app: RunningApp, path: str, headers: str = "") -> tuple[int, dict]:
    """POST with no body (and no Content-Type unless ``headers`` has one), byte for
    byte as a switch may send it."""
    reader, writer = await asyncio.open_connection(app.client.host, app.client.port)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: ocs\r\nContent-Length: 0\r\n{headers}"
        f"Authorization: Bearer {app.admin_token}\r\nConnection: close\r\n\r\n"
    )
    writer.write(request.encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_start_takes_an_empty_body_without_a_content_type(app: RunningApp) -> None:
    await setup(app, "kam")
    await app.services.calls.authorize(
        AuthorizeRequest("kam", FRANCE, call_id="dlg-1"), Origin(wait_for_start=True)
    )
    status, body = await raw_post(app, "/v1/calls/dlg-1/start")
    assert status == 200, body
    assert body["call_id"] == "dlg-1" and body["started_at"] > 0
    # Kamailio's http_client_query sends "{}" as the POST data: the same answer.
    status, again = await app.post("/v1/calls/dlg-1/start", {})
    assert (status, again["started_at"]) == (200, body["started_at"])
    # And the stop may come as bare: the time since the start is charged.
    status, stopped = await raw_post(app, "/v1/calls/dlg-1/stop")
    assert status == 200, stopped
    assert stopped["duration"] <= int(time.time()) - body["started_at"] + 1


async def test_an_empty_post_as_libcurl_sends_it_is_taken(app: RunningApp) -> None:
    # Kamailio's http_client_request(url, "POST", "", ...) and Asterisk's CURL() with
    # empty data: libcurl adds a form Content-Type to the empty body.
    await setup(app, "curl")
    await app.services.calls.authorize(
        AuthorizeRequest("curl", FRANCE, call_id="c-1"), Origin(wait_for_start=True)
    )
    form = "Content-Type: application/x-www-form-urlencoded\r\n"
    status, started = await raw_post(app, "/v1/calls/c-1/start", form)
    assert status == 200, started
    status, stopped = await raw_post(app, "/v1/calls/c-1/stop", form)
    assert (status, stopped["repeated"]) == (200, False), stopped


@pytest.mark.parametrize(
    ("reported", "charged_seconds"),
    [(12, 12), ("12.000", 12), ("12.01", 13), ("0.2", 1), ("1.2e1", 12), ("0", 0)],
)
async def test_a_decimal_duration_rounds_up_to_the_started_second(
    app: RunningApp, reported: object, charged_seconds: int
) -> None:
    await setup(app, "ast")
    await authorize(app, "ast", "cdr-1")
    # A JSON number written as the switch wrote it (a decimal is never read as a float).
    raw = f'{{"duration": {reported}}}'
    response = await app.client.post(
        "/v1/calls/cdr-1/stop", data=raw, headers={"Content-Type": "application/json"}
    )
    body = await response.json()
    assert response.status == 200, body
    assert (body["duration"], body["billed_seconds"]) == (charged_seconds, charged_seconds)
    assert body["cost"] == f"0.{charged_seconds:02d}0000"
    assert (await account(app, "ast"))["balance"] == (
        f"9.{100 - charged_seconds:02d}0000" if charged_seconds else "10.000000"
    )


@pytest.mark.parametrize(
    "bad", ['"12"', "-1", "-0.5", "true", "604801", "1e400", "[12]", '{"s": 1}']
)
async def test_a_duration_that_is_not_seconds_is_a_400_naming_it(app: RunningApp, bad: str) -> None:
    await setup(app, "bad")
    await authorize(app, "bad", "bad-1")
    response = await app.client.post(
        "/v1/calls/bad-1/stop",
        data=f'{{"duration": {bad}}}',
        headers={"Content-Type": "application/json"},
    )
    body = await response.json()
    assert response.status == 400, body
    assert body["error"]["field"] == "duration"
    assert (await account(app, "bad"))["lines_in_use"] == 1  # nothing was stopped


async def test_a_stop_without_a_duration_charges_the_time_since_start(app: RunningApp) -> None:
    await setup(app, "mute")
    await app.services.calls.authorize(
        AuthorizeRequest("mute", FRANCE, call_id="mute-1"), Origin(wait_for_start=True)
    )
    now = int(time.time())
    # The switch's Start said the call was answered 20 s ago.
    await app.services.store.start(
        account_id="mute", call_id="mute-1", started_at=now - 20, expires_at=now + 3600
    )
    response = await app.client.post("/v1/calls/mute-1/stop")  # no body at all
    body = await response.json()
    assert response.status == 200, body
    assert 20 <= body["duration"] <= int(time.time()) - now + 20
    assert body["cost"] == f"0.{body['duration']:02d}0000"


async def test_a_repeated_stop_with_another_duration_says_so(app: RunningApp) -> None:
    await setup(app, "rep")
    await authorize(app, "rep", "rep-1")
    status, first = await app.post("/v1/calls/rep-1/stop", {"duration": 30})
    assert status == 200
    assert (first["repeated"], first["duration_differs"], first["charged_duration"]) == (
        False,
        False,
        30,
    )
    status, same = await app.post("/v1/calls/rep-1/stop", {"duration": 30})
    assert (status, same["repeated"], same["duration_differs"]) == (200, True, False)
    status, other = await app.post("/v1/calls/rep-1/stop", {"duration": 45})
    assert status == 200
    assert (other["repeated"], other["duration_differs"], other["charged_duration"]) == (
        True,
        True,
        30,
    )
    assert other["cost"] == first["cost"] == "0.300000"
    assert (await account(app, "rep"))["balance"] == "9.700000"  # charged once


async def test_a_repeated_authorize_answers_200_with_the_same_grant(app: RunningApp) -> None:
    await setup(app, "again")
    payload = {"account": "again", "destination": FRANCE, "call_id": "inv-1"}
    status, first = await app.post("/v1/calls", payload)
    assert (status, first["repeated"]) == (201, False)
    status, again = await app.post("/v1/calls", payload)
    assert (status, again["repeated"]) == (200, True)
    assert (again["max_duration"], again["reserved"]) == (first["max_duration"], first["reserved"])
    assert (await account(app, "again"))["lines_in_use"] == 1


def worker_at(app: RunningApp, seconds_ago: int) -> CallService:
    """Another worker of the same ocs, whose authorizations took place ``seconds_ago``."""
    at = time.time() - seconds_ago
    return CallService(
        app.services.catalog,
        app.services.store,
        app.services.settings,
        app.services.digests,
        clock=lambda: at,
    )


async def cdr_of(app: RunningApp, call_id: str) -> tuple[int, int, str]:
    """(duration, charged, termination cause) of a call's CDR, once PostgreSQL has it."""

    async def written() -> bool:
        async with app.services.pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT 1 FROM cdrs WHERE call_id = $1", call_id))

    await eventually(written, what=f"the CDR of {call_id}")
    async with app.services.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT duration, charged, termination_cause FROM cdrs WHERE call_id = $1", call_id
        )
    return int(row["duration"]), int(row["charged"]), str(row["termination_cause"])


async def test_a_stop_without_a_duration_is_timed_from_the_answer_not_the_authorization(
    app: RunningApp,
) -> None:
    await setup(app, "rings")
    # Authorized, then it rang 30 s before the callee answered (POST /start). Before, an
    # HTTP call counted as started when authorized: its stop charged the ringing too.
    await worker_at(app, 30).authorize(AuthorizeRequest("rings", FRANCE, call_id="ring-1"))
    status, started = await app.post("/v1/calls/ring-1/start", {})
    assert status == 200, started
    answered = started["started_at"]
    assert answered >= int(time.time()) - 1
    # A repeated start keeps the first answer.
    status, again = await app.post("/v1/calls/ring-1/start", {})
    assert (status, again["started_at"]) == (200, answered)
    response = await app.client.post("/v1/calls/ring-1/stop")  # no duration: timed
    stopped = await response.json()
    assert response.status == 200, stopped
    seconds = stopped["duration"]
    assert 0 <= seconds <= int(time.time()) - answered  # not the 30 s it rang
    cost = seconds * 10_000  # 0.01 a second
    assert stopped["cost"] == f"0.{cost:06d}"
    assert (await account(app, "rings"))["balance"] == format_amount(10_000_000 - cost)
    assert await cdr_of(app, "ring-1") == (seconds, cost, "normal")


async def test_a_switch_that_never_sends_start_is_charged_as_before(app: RunningApp) -> None:
    await setup(app, "no-start")
    calls = worker_at(app, 30)
    # Its stop reports the duration: charged exactly that, as before.
    await calls.authorize(AuthorizeRequest("no-start", FRANCE, call_id="told"))
    status, stopped = await app.post("/v1/calls/told/stop", {"duration": 12})
    assert (status, stopped["cost"], stopped["balance"]) == (200, "0.120000", "9.880000")
    # Its stop reports none: timed from the provisional start, its authorization.
    await calls.authorize(AuthorizeRequest("no-start", FRANCE, call_id="untold"))
    response = await app.client.post("/v1/calls/untold/stop")
    stopped = await response.json()
    assert response.status == 200, stopped
    assert 30 <= stopped["duration"] <= 31
    assert stopped["cost"] == f"0.{stopped['duration']:02d}0000"
    # An interim is the first sign of the answer: the call is timed from it.
    await calls.authorize(AuthorizeRequest("no-start", FRANCE, call_id="reported"))
    status, progress = await app.post("/v1/calls/reported/update", {"used": 5})
    assert status == 200, progress
    response = await app.client.post("/v1/calls/reported/stop")
    stopped = await response.json()
    assert 5 <= stopped["duration"] <= int(time.time()) - progress["started_at"]


ASTERISK_DIALPLAN = Path(__file__).resolve().parent.parent / "deploy/asterisk/extensions.conf"


@pytest.mark.replaces_hot_path_function
async def test_a_start_answers_what_a_switch_needs_to_know_whether_to_send_it_again(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Asterisk's dialplan (ocs-answered) cannot read an HTTP status from CURL(): it sends
    # a start again when the answer has no started_at and its error.code is a 5xx (or
    # there is no answer), and not after a 4xx. Kamailio's ocs.cfg reads the status.
    answered = ASTERISK_DIALPLAN.read_text().split("[ocs-answered]")[1].split("\n[")[0]
    assert "JSON_DECODE(started,started_at)" in answered
    assert "JSON_DECODE(started,error.code)" in answered
    await setup(app, "again")
    await authorize(app, "again", "again-1")
    original = AutoPipeline.execute
    failures = [RedisConnectionError("Connection reset by peer")]

    def failing(self: AutoPipeline, *args: Any) -> "asyncio.Future[Any]":
        if args[:2] == ("EVALSHA", START.sha) and failures:
            refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            refused.set_exception(failures.pop())
            return refused
        return original(self, *args)

    monkeypatch.setattr(AutoPipeline, "execute", failing)
    # Redis unreachable for the start: a 5xx, to be sent again.
    status, lost = await app.post("/v1/calls/again-1/start", {})
    assert (status, lost["error"]["code"]) == (503, 503), lost
    # Sent again: the call is answered; a repeat keeps that answer (nothing re-timed).
    status, started = await app.post("/v1/calls/again-1/start", {})
    assert status == 200 and started["started_at"] >= int(time.time()) - 1, started
    status, again = await app.post("/v1/calls/again-1/start", {})
    assert (status, again["started_at"]) == (200, started["started_at"])
    status, stopped = await app.post("/v1/calls/again-1/stop", {"duration": 7})
    assert (status, stopped["cost"], stopped["balance"]) == (200, "0.070000", "9.930000")
    # A 4xx is the answer for good: the call stopped, or one ocs never granted.
    status, late = await app.post("/v1/calls/again-1/start", {})
    assert (status, late["error"]["code"]) == (409, 409), late
    status, unknown = await app.post("/v1/calls/never-granted/start", {})
    assert (status, unknown["error"]["code"]) == (404, 404), unknown


async def test_a_call_id_live_for_another_account_is_refused_and_keeps_its_stop(
    app: RunningApp,
) -> None:
    # Two Asterisk servers whose UNIQUEIDs collide. Before, the second grant took the id:
    # the first call's stop charged the second account, the first kept its hold and line
    # until the janitor charged it the whole grant, and the second's own stop was lost.
    await setup(app, "a3")
    status, body = await app.post(
        "/v1/accounts", {"id": "a4", "plan": "retail", "balance": "10.00"}
    )
    assert status == 201, body
    first = await authorize(app, "a3", "shared")
    status, refused = await app.post(
        "/v1/calls", {"account": "a4", "destination": FRANCE, "call_id": "shared"}
    )
    assert status == 409, refused
    assert (refused["error"]["reason"], refused["error"]["field"]) == ("call_id_in_use", "call_id")
    a4 = await account(app, "a4")
    assert (a4["balance"], a4["reserved"], a4["lines_in_use"]) == ("10.000000", "0.000000", 0)
    # The first account's repeat is still the idempotent 200.
    status, again = await app.post(
        "/v1/calls", {"account": "a3", "destination": FRANCE, "call_id": "shared"}
    )
    assert (status, again["repeated"], again["reserved"]) == (200, True, first["reserved"])
    status, stopped = await app.post("/v1/calls/shared/stop", {"duration": 10})
    assert (status, stopped["account"], stopped["cost"]) == (200, "a3", "0.100000"), stopped
    a3 = await account(app, "a3")
    assert (a3["balance"], a3["reserved"], a3["lines_in_use"]) == ("9.900000", "0.000000", 0)
    # Once that call is over, another account may take its id: its stop charges it.
    await authorize(app, "a4", "shared")
    status, stopped = await app.post("/v1/calls/shared/stop", {"duration": 5})
    assert (status, stopped["account"], stopped["cost"]) == (200, "a4", "0.050000"), stopped
    assert (await account(app, "a4"))["balance"] == "9.950000"
    assert (await account(app, "a3"))["balance"] == "9.900000"


async def test_every_update_answers_the_calls_recorded_start(app: RunningApp) -> None:
    # Before, an update answered now - used (the request's seconds): each report showed
    # another start, disagreeing with /start's answer.
    await setup(app, "upd")
    await authorize(app, "upd", "answered")
    status, started = await app.post("/v1/calls/answered/start", {})
    assert status == 200, started
    for used in (30, 45):
        status, progress = await app.post("/v1/calls/answered/update", {"used": used})
        assert (status, progress["started_at"]) == (200, started["started_at"]), progress
        assert progress["used"] == used
    status, stopped = await app.post("/v1/calls/answered/stop", {"duration": 50})
    assert status == 200, stopped
    # No /start: the first report is the answer; the next answers the same start.
    await authorize(app, "upd", "unstarted")
    status, first = await app.post("/v1/calls/unstarted/update", {"used": 5})
    assert status == 200, first
    assert int(time.time()) - 6 <= first["started_at"] <= int(time.time()) - 5
    status, later = await app.post("/v1/calls/unstarted/update", {"used": 40})
    assert (status, later["started_at"], later["used"]) == (200, first["started_at"], 40)
