"""IVR settings (decision 0030): a plan's default and an account's override of what to
announce and in which language, told to the IVR in RADIUS answers (Cisco AVPairs,
docs/ivr-attributes.md) and in the PIN answers; the plan's voicemail server in the
authorize answers (real Redis, PostgreSQL and radclient).
"""

import csv
import io
from typing import Any

from ocs import api_tokens
from ocs.balances import keys
from tests.conftest import RunningApp, RunningRadius, add_plan, bearer, caught_up
from tests.helpers import Pairs, auth, new_account, send
from tests.radclient import RadiusReply

VOICEMAIL = "sip:vm.example.net:5060"
GERMANY = "4930123456"


def request(user: str, destination: str | None, conf_id: str) -> Pairs:
    """An Access-Request of ``user``: a call, or without destination a balance query."""
    pairs: Pairs = [("NAS-IP-Address", "127.0.0.1"), ("User-Name", user)]
    if destination is not None:
        pairs.append(("Called-Station-Id", destination))
    return [*pairs, ("h323-conf-id", f"h323-conf-id={conf_id}")]


async def accepted(nas: RunningRadius, pairs: Pairs) -> RadiusReply:
    """An Access-Request that must be accepted: the reply."""
    reply = await auth(nas, pairs)
    assert reply.code == "Access-Accept", reply.output
    return reply


def ivr_of(reply: RadiusReply) -> tuple[list[str], str | None]:
    """(the ocs-* Cisco AVPairs, h323-preferred-lang) of a reply."""
    pairs = [p for p in reply.attributes.get("Cisco-AVPair", []) if p.startswith("ocs-")]
    return pairs, reply.first("h323-preferred-lang")


async def voicemail_of(
    app: RunningApp, account_id: str, call_id: str | None = None
) -> tuple[int, bool, str]:
    """(status, voicemail_enabled, voicemail_server) of an HTTP authorize of a call."""
    call: dict[str, str] = {"account": account_id, "destination": GERMANY}
    if call_id is not None:
        call["call_id"] = call_id
    status, granted = await send(app, "POST", "/v1/calls", call)
    return status, granted.get("voicemail_enabled", False), granted.get("voicemail_server", "")


async def set_plan(app: RunningApp, plan: str = "retail", **fields: object) -> dict[str, Any]:
    """PUT /v1/plans/<plan>/ivr, which must answer 200; then wait until the catalog
    snapshot holds it (a plan's IVR default is catalog, decision 0035)."""
    status, body = await send(app, "PUT", f"/v1/plans/{plan}/ivr", fields)
    assert status == 200, body
    await caught_up(app.services)
    return dict(body)


async def test_the_plan_default_and_the_account_override_reach_the_radius_answers(
    nas: RunningRadius,
) -> None:
    app = nas.app
    await new_account(app, "1001", balance="5.00", max_lines=10)
    await new_account(app, "1002", balance="5.00", max_lines=10)
    # Without IVR settings, the answers are what they were.
    assert ivr_of(await accepted(nas, request("1001", GERMANY, "C-0"))) == ([], None)

    saved = await set_plan(
        app, announce="both", language="es", voicemail_enabled=True, voicemail_server=VOICEMAIL
    )
    assert saved == {
        "plan": "retail",
        "announce": "both",
        "language": "es",
        "voicemail_enabled": True,
        "voicemail_server": VOICEMAIL,
    }
    status, body = await send(
        app, "PUT", "/v1/accounts/1002/ivr", {"announce": "time", "language": "fr"}
    )
    assert (status, body["effective_announce"], body["effective_language"]) == (200, "time", "fr")

    assert ivr_of(await accepted(nas, request("1001", GERMANY, "C-1"))) == (
        ["ocs-ivr-announce=both", f"ocs-voicemail={VOICEMAIL}"],
        "h323-preferred-lang=es",
    )
    assert ivr_of(await accepted(nas, request("1002", GERMANY, "C-2"))) == (
        ["ocs-ivr-announce=time", f"ocs-voicemail={VOICEMAIL}"],
        "h323-preferred-lang=fr",
    )
    # A balance query: the announcement and language, no voicemail (no call to forward).
    assert ivr_of(await accepted(nas, request("1002", None, "C-3"))) == (
        ["ocs-ivr-announce=time"],
        "h323-preferred-lang=fr",
    )

    # The override cleared, the plan's default again; voicemail disabled: not sent.
    status, body = await send(app, "PUT", "/v1/accounts/1002/ivr", {})
    assert (status, body["announce"], body["effective_announce"]) == (200, None, "both")
    await set_plan(app, announce="balance", voicemail_enabled=False, voicemail_server=VOICEMAIL)
    assert ivr_of(await accepted(nas, request("1002", GERMANY, "C-4"))) == (
        ["ocs-ivr-announce=balance"],
        None,
    )
    status, body = await send(app, "GET", "/v1/plans/retail/ivr")
    assert (status, body["announce"], body["voicemail_enabled"]) == (200, "balance", False)


async def test_the_voicemail_server_is_in_the_http_authorize_answer(nas: RunningRadius) -> None:
    app = nas.app
    await new_account(app, "2001", balance="5.00", max_lines=10)
    assert await voicemail_of(app, "2001") == (201, False, "")
    await set_plan(app, voicemail_enabled=True, voicemail_server=VOICEMAIL)
    assert await voicemail_of(app, "2001", "VM-1") == (201, True, VOICEMAIL)
    # The same call asked again: the grant repeated, with the same settings.
    assert await voicemail_of(app, "2001", "VM-1") == (200, True, VOICEMAIL)


async def test_an_account_now_on_another_plan_gets_that_plan_s_voicemail_at_once(
    nas: RunningRadius,
) -> None:
    app = nas.app
    await add_plan(app.services, "gold")
    await set_plan(app, "gold", voicemail_enabled=True, voicemail_server=VOICEMAIL)
    await new_account(app, "2101", balance="5.00", max_lines=10)
    # A first call: this process now knows the account as on retail (no voicemail).
    assert await voicemail_of(app, "2101") == (201, False, "")
    # The account is moved to gold where this process does not see it (another node).
    await app.services.redis.hset(keys.account("2101"), "plan", "gold")
    # Its IVR reads went out for retail beside the authorize, which answered "gold":
    # the answer carries gold's voicemail, not retail's none.
    assert await voicemail_of(app, "2101") == (201, True, VOICEMAIL)


async def test_the_pin_answers_carry_the_ivr_settings(nas: RunningRadius) -> None:
    app = nas.app
    response = await app.client.post(
        "/v1/pin-batches", json={"plan": "retail", "batch": "b1", "count": 2, "value": "2.00"}
    )
    assert response.status == 201, await response.text()
    first, second = list(csv.DictReader(io.StringIO(await response.text())))

    status, info = await send(app, "GET", f"/v1/pins/{first['pin']}")
    # No settings: the balance is announced, in the card's language.
    assert (status, info["play_balance"], info["play_time"], info["language"]) == (
        200,
        True,
        False,
        "en",
    )
    await set_plan(app, announce="time", language="de")
    status, body = await send(
        app, "PUT", f"/v1/accounts/{second['account']}/ivr", {"announce": "both"}
    )
    assert status == 200, body

    status, info = await send(app, "GET", f"/v1/pins/{first['pin']}")
    assert (info["play_balance"], info["play_time"], info["language"]) == (False, True, "de")
    status, timed = await send(app, "GET", f"/v1/pins/{second['pin']}/time?destination={GERMANY}")
    assert status == 200, timed
    assert (timed["play_balance"], timed["play_time"], timed["language"]) == (True, True, "de")
    assert timed["seconds"] > 0


async def test_bad_ivr_settings_are_named(nas: RunningRadius) -> None:
    app = nas.app
    await new_account(app, "3001")
    for path, payload, status, field in (
        ("/v1/plans/retail/ivr", {"announce": "loud"}, 400, "announce"),
        ("/v1/plans/retail/ivr", {"language": "e n"}, 400, "language"),
        ("/v1/plans/retail/ivr", {"voicemail_enabled": True}, 400, "voicemail_server"),
        ("/v1/plans/retail/ivr", {"voicemail_server": "sip:a|b"}, 400, "voicemail_server"),
        ("/v1/plans/nope/ivr", {"announce": "both"}, 404, "plan_id"),
        ("/v1/accounts/3001/ivr", {"announce": "all"}, 400, "announce"),
        ("/v1/accounts/nobody/ivr", {"announce": "both"}, 404, "account_id"),
    ):
        got, body = await send(app, "PUT", path, payload)
        assert (got, body["error"].get("field")) == (status, field), (path, body)


async def test_a_plans_ivr_and_voicemail_server_are_set_by_an_admin_only(app: RunningApp) -> None:
    await add_plan(app.services)
    operator = await api_tokens.create(app.services.pool, "desk", "operator")
    fields = {"announce": "both", "voicemail_server": "sip:vm.example.net"}
    status, body, _ = await app.anonymous(
        "PUT", "/v1/plans/retail/ivr", json=fields, headers=bearer(operator)
    )
    assert (status, body["error"]["reason"]) == (403, "forbidden"), body
    # An account's own override stays the operators' work.
    await new_account(app, "1002")
    status, body, _ = await app.anonymous(
        "PUT", "/v1/accounts/1002/ivr", json={"announce": "time"}, headers=bearer(operator)
    )
    assert status == 200, body
