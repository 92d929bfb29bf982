"""The same ocs on a standalone Redis and on a 3-master Redis Cluster (issue 17).

Each test runs twice, through the ``backend_app`` fixture (tests/redis_cluster.py):
once on the session's standalone Redis, once on a real cluster of three masters,
with the same service code. The accounts are spread over many buckets, so on the
cluster their keys live on every master: the tests check that too, then what an
operator sees (grants, charges, balances, CDR and ledger rows, reconcile, the
janitor's closing of a lost call).

Rates (tests/conftest.py RETAIL_DECK, EUR): UK Mobile 0.060 a minute, 30/6, connect
fee 0.150 (45 s: 0.198); Germany 0.012 a minute, 1/1 s (200 micro-units a second).
"""

import asyncio
import contextlib
import dataclasses
import json
import time
from typing import Any
from unittest.mock import ANY
from urllib.parse import quote

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ocs.balances import keys, slots
from ocs.balances.autopipeline import AutoPipeline
from ocs.balances.card_ids import card_account_id
from ocs.balances.card_orphans import discard_unfinished_batch
from ocs.balances.cluster import wire_for
from ocs.balances.reconcile import reconcile
from ocs.balances.scripts import (
    ALL_SCRIPTS,
    AUTHORIZE,
    AUTHORIZE_WITH_REF,
    CLAIM_CALL_REF,
    RELEASE_UNCONFIRMED,
    SNAPSHOT_BUCKET,
)
from ocs.balances.store import REF_WINDOW
from ocs.balances.wire import RedisWire
from ocs.billing.account_reconcile import Repaired, StateMismatch, check_states, repair_states
from ocs.billing.number_reconcile import check_numbers, repair_numbers
from ocs.call_cutting import call_cutter
from ocs.charging.janitor import Janitor
from ocs.charging.lifecycle import CallService
from ocs.charging.values import AuthorizeRequest, CallRecord, Origin
from ocs.config import RadiusClientConfig, with_overrides
from ocs.state_metrics import sample_live
from tests.conftest import RADIUS_SECRET, RunningApp, add_plan, eventually, started_radius
from tests.helpers import Raw, send
from tests.radius_udp import (
    UdpClient,
    access_request,
    accounting_request,
    decode_reply,
    sample,
    wire,
)
from tests.redis_cluster import Backend, RedisClusterProcess

pytestmark = pytest.mark.cluster

UK_MOBILE = "447700900123"
GERMANY = "4930901820"
ACCOUNTS = [f"acct-{n}" for n in range(12)]

# A supplier's usage file: one record a row, rated by the plan's deck.
USAGE_HEADER = "id,account,called,start,duration\n"
USAGE_TEMPLATE = {
    "name": "carrier-y",
    "supplier": "carrier-y",
    "format": {"kind": "csv", "delimiter": ",", "header": True},
    "columns": {
        "record_id": "id",
        "account": "account",
        "called": "called",
        "start": "start",
        "duration": "duration",
    },
    "start": {"format": "%Y-%m-%d %H:%M:%S", "time_zone": "UTC"},
}


async def accounts_on_every_master(
    app: RunningApp, backend: Backend, request: pytest.FixtureRequest, ids: list[str]
) -> None:
    """On the cluster, the accounts' keys are on more than one master (none on standalone)."""
    if not backend.cluster:
        return
    cluster: RedisClusterProcess = request.getfixturevalue("redis_cluster")
    owners = {cluster.node_of_slot(slots.key_slot(keys.account(a))).port for a in ids}
    assert len(owners) == 3, owners
    for account_id in ids:
        node = cluster.node_of_slot(slots.key_slot(keys.account(account_id)))
        with node.client() as client:
            assert client.exists(keys.account(account_id)) == 1


async def ledger_total(app: RunningApp, account_id: str) -> int:
    async with app.services.pool.acquire() as conn:
        total = await conn.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM ledger WHERE account_id = $1", account_id
        )
    return int(total)


async def balance(app: RunningApp, account_id: str) -> str:
    status, body = await app.get(f"/v1/accounts/{account_id}")
    assert status == 200, body
    return str(body["balance"])


async def test_calls_authorized_started_updated_and_stopped_on_every_master(
    backend_app: RunningApp, backend: Backend, request: pytest.FixtureRequest
) -> None:
    app = backend_app
    await add_plan(app.services, max_lines=2)
    for account_id in ACCOUNTS:
        status, body = await app.post(
            "/v1/accounts", {"id": account_id, "plan": "retail", "balance": "2.00"}
        )
        assert status == 201, body
    await accounts_on_every_master(app, backend, request, ACCOUNTS)

    async def one_call(account_id: str) -> dict[str, Any]:
        call_id = f"{account_id}-call"
        status, grant = await app.post(
            "/v1/calls", {"account": account_id, "destination": UK_MOBILE, "call_id": call_id}
        )
        assert status == 201, grant
        status, started = await app.post(f"/v1/calls/{call_id}/start", {})
        assert status == 200 and started["started_at"] > 0, started
        status, progress = await app.post(f"/v1/calls/{call_id}/update", {"used": 40})
        assert (status, progress["used"]) == (200, 40), progress
        status, stopped = await app.post(f"/v1/calls/{call_id}/stop", {"duration": 45})
        assert status == 200, stopped
        again = await app.post(f"/v1/calls/{call_id}/stop", {"duration": 600})
        assert again[0] == 200 and again[1]["repeated"] is True
        return stopped

    stops = await asyncio.gather(*(one_call(a) for a in ACCOUNTS))
    assert {(s["cost"], s["balance"]) for s in stops} == {("0.198000", "1.802000")}
    for account_id in ACCOUNTS:
        status, shown = await app.get(f"/v1/accounts/{account_id}")
        assert (shown["balance"], shown["reserved"], shown["lines_in_use"]) == (
            "1.802000",
            "0.000000",
            0,
        )

    async def cdrs_written() -> bool:
        async with app.services.pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM cdrs")) == len(ACCOUNTS)

    await eventually(cdrs_written, what="one CDR per call in PostgreSQL")
    async with app.services.pool.acquire() as conn:
        charged = await conn.fetch("SELECT account_id, charged FROM cdrs ORDER BY account_id")
    assert {(r["account_id"], r["charged"]) for r in charged} == {(a, 198_000) for a in ACCOUNTS}


async def test_radius_calls_are_accepted_and_charged_on_either_backend(
    backend_app: RunningApp,
) -> None:
    app = backend_app
    await add_plan(app.services)
    server = await started_radius(
        app.services,
        (RadiusClientConfig(name="nas", network="127.0.0.1/32", secret=RADIUS_SECRET),),
    )
    udp = await UdpClient.open()
    try:
        ids = ACCOUNTS[:6]
        for account_id in ids:
            await app.post("/v1/accounts", {"id": account_id, "plan": "retail", "balance": "1.00"})
        for account_id in ids:
            conf = f"h323-conf-id={account_id}-radius"
            request = access_request(
                RADIUS_SECRET,
                [("User-Name", account_id), ("Called-Station-Id", GERMANY), ("h323-conf-id", conf)],
            )
            data = await udp.exchange(wire(request), server.auth_port)
            assert data is not None
            reply = decode_reply(request, data)
            # 1.00 at 0.012 a minute, by the second: 5000 s.
            assert (reply.code, reply["Session-Timeout"]) == (2, [5000])
            for status, extra in (("Start", []), ("Stop", [("Acct-Session-Time", 45)])):
                accounting = accounting_request(
                    RADIUS_SECRET,
                    [
                        ("Acct-Status-Type", status),
                        ("User-Name", account_id),
                        ("Acct-Session-Id", f"{account_id}-radius"),
                        ("h323-conf-id", conf),
                        *extra,
                    ],
                )
                answer = await udp.exchange(wire(accounting), server.acct_port)
                assert answer is not None and decode_reply(accounting, answer).code == 5
            # 45 s at 0.012 a minute: 0.009.
            assert await balance(app, account_id) == "0.991000"
    finally:
        udp.close()
        server.close_listeners()
        await server.drain(5)


async def test_a_refusal_answers_its_reason_on_either_backend(backend_app: RunningApp) -> None:
    app = backend_app
    await add_plan(app.services, max_lines=1)
    await app.post("/v1/accounts", {"id": "poor", "plan": "retail", "balance": "0.10"})
    await app.post("/v1/accounts", {"id": "busy", "plan": "retail", "balance": "5.00"})
    status, body = await app.post(
        "/v1/calls", {"account": "poor", "destination": UK_MOBILE, "call_id": "p-1"}
    )
    assert (status, body["error"]["reason"]) == (402, "insufficient_funds")
    await app.post("/v1/calls", {"account": "busy", "destination": UK_MOBILE, "call_id": "b-1"})
    status, body = await app.post(
        "/v1/calls", {"account": "busy", "destination": UK_MOBILE, "call_id": "b-2"}
    )
    assert (status, body["error"]["reason"]) == (409, "no_free_line")


async def test_call_references_of_refusals_and_grants_on_either_backend(
    backend_app: RunningApp,
) -> None:
    # The reference that finds a call by its id alone: written by the authorize script on
    # one Redis, beside it on a cluster (decision 0044), with the same outcome.
    app = backend_app
    await add_plan(app.services, max_lines=1)
    await app.post("/v1/accounts", {"id": "rich", "plan": "retail", "balance": "5.00"})
    await app.post("/v1/accounts", {"id": "empty", "plan": "retail", "balance": "0.00"})
    redis = app.services.redis

    async def reference(call_id: str) -> tuple[str | None, int]:
        """The account the call's reference names (None: no reference) and its TTL."""
        packed = await redis.get(keys.call_ref(call_id))
        account = None if packed is None else CallRecord.unpack(packed).account_id
        return account, await redis.ttl(keys.call_ref(call_id))

    # A refusal's reference lasts the window of its retransmissions only.
    status, _ = await app.post(
        "/v1/calls", {"account": "empty", "destination": UK_MOBILE, "call_id": "r-1"}
    )
    assert status == 402
    account, ttl = await reference("r-1")
    assert account == "empty" and 0 < ttl <= REF_WINDOW
    # A grant under that id replaces it for the call's life.
    status, _ = await app.post(
        "/v1/calls", {"account": "rich", "destination": UK_MOBILE, "call_id": "r-1"}
    )
    assert status == 201
    account, ttl = await reference("r-1")
    assert account == "rich" and ttl > 14_400
    # A refusal under the live call's id, and a repeat of the call, leave its reference.
    for refused in ("empty", "rich"):
        status, body = await app.post(
            "/v1/calls", {"account": refused, "destination": UK_MOBILE, "call_id": "r-1"}
        )
        assert status >= 400 or body["repeated"] is True, body
        account, ttl = await reference("r-1")
        assert account == "rich" and ttl > 14_400
    # Another process (no cached record) stops the call by its id alone.
    other = CallService(
        app.services.catalog, app.services.store, app.services.settings, app.services.digests
    )
    charge = await other.stop("r-1", 45)
    assert (charge.account_id, charge.charged) == ("rich", 198_000)


async def two_accounts(app: RunningApp, *names: str) -> None:
    """The retail plan, and an account of 1.00 for each of ``names``."""
    await add_plan(app.services)
    for account_id in names:
        status, body = await app.post(
            "/v1/accounts", {"id": account_id, "plan": "retail", "balance": "1.00"}
        )
        assert status == 201, body


async def holds(app: RunningApp, account_id: str) -> tuple[str, str, int]:
    """The account's balance, reserved funds and lines in use, as the API shows them."""
    status, view = await app.get(f"/v1/accounts/{account_id}")
    assert status == 200, view
    return view["balance"], view["reserved"], view["lines_in_use"]


async def test_an_http_call_id_another_accounts_live_call_holds_is_refused_on_either_backend(
    backend_app: RunningApp,
) -> None:
    # Two switches' HTTP call ids collide (Asterisk UNIQUEIDs of two servers). On a
    # cluster the second account's grant took the id's reference: the first call's stop
    # charged the second account's call, and the first was left to the janitor, which
    # charges its whole grant (decision 0052, addendum).
    app = backend_app
    await two_accounts(app, "first", "second")
    status, grant = await app.post(
        "/v1/calls", {"account": "first", "destination": GERMANY, "call_id": "uid-1"}
    )
    assert status == 201, grant
    status, refused = await app.post(
        "/v1/calls", {"account": "second", "destination": GERMANY, "call_id": "uid-1"}
    )
    assert status == 409, refused
    assert (refused["error"]["reason"], refused["error"]["field"]) == ("call_id_in_use", "call_id")
    assert await holds(app, "second") == ("1.000000", "0.000000", 0)
    # A process that cached neither call stops the first by its id alone: 60 s of
    # Germany at 0.012 a minute, charged to the first account.
    elsewhere = CallService(
        app.services.catalog, app.services.store, app.services.settings, app.services.digests
    )
    charge = await elsewhere.stop("uid-1", 60)
    assert (charge.account_id, charge.charged) == ("first", 12_000)
    assert await holds(app, "first") == ("0.988000", "0.000000", 0)
    assert await holds(app, "second") == ("1.000000", "0.000000", 0)
    # Once the first call is over, the second account may take the id; its stop charges it.
    status, grant = await app.post(
        "/v1/calls", {"account": "second", "destination": GERMANY, "call_id": "uid-1"}
    )
    assert status == 201, grant
    status, stopped = await app.post("/v1/calls/uid-1/stop", {"duration": 30})
    assert (status, stopped["account"], stopped["cost"]) == (200, "second", "0.006000"), stopped
    assert await holds(app, "second") == ("0.994000", "0.000000", 0)
    assert await holds(app, "first") == ("0.988000", "0.000000", 0)


@pytest.mark.replaces_hot_path_function
async def test_an_http_call_id_taken_after_it_was_read_free_is_refused_and_given_back(
    backend_app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # West's authorization reads the id free, and east's grant takes it before west's
    # grant writes its reference (on a cluster the read and the write are two round
    # trips; on one Redis one script, so east's grant is run just before it). West is
    # refused and keeps nothing; before, on a cluster, both were granted and the id's
    # one reference named west's call: east's stop charged west.
    app = backend_app
    await two_accounts(app, "east", "west")
    original = AutoPipeline.execute
    reading = {CLAIM_CALL_REF.sha, AUTHORIZE_WITH_REF.sha, AUTHORIZE.sha}
    east: list[tuple[int, dict[str, Any]]] = []

    def west_read(args: tuple[Any, ...]) -> bool:
        return any(b"west" in (a if isinstance(a, bytes) else str(a).encode()) for a in args)

    def racing(self: AutoPipeline, *args: Any) -> "asyncio.Future[Any]":
        if east or args[0] != "EVALSHA" or args[1] not in reading or not west_read(args):
            return original(self, *args)
        east.append((0, {}))  # once: east's own commands go through

        async def east_granted() -> None:
            east[0] = await app.post(
                "/v1/calls", {"account": "east", "destination": GERMANY, "call_id": "uid-2"}
            )

        async def east_between() -> Any:
            if args[1] == CLAIM_CALL_REF.sha:  # west's read of the id, then east's grant
                answer = await original(self, *args)
                await east_granted()
                return answer
            await east_granted()  # east's grant, then west's read-and-grant
            return await original(self, *args)

        return asyncio.ensure_future(east_between())

    monkeypatch.setattr(AutoPipeline, "execute", racing)
    status, refused = await app.post(
        "/v1/calls", {"account": "west", "destination": GERMANY, "call_id": "uid-2"}
    )
    monkeypatch.setattr(AutoPipeline, "execute", original)
    assert east[0][0] == 201, east
    assert status == 409, refused
    assert (refused["error"]["reason"], refused["error"]["field"]) == ("call_id_in_use", "call_id")
    assert await holds(app, "west") == ("1.000000", "0.000000", 0)
    packed = await app.services.redis.get(keys.call_ref("uid-2"))
    assert packed is not None and CallRecord.unpack(packed).account_id == "east"
    status, stopped = await app.post("/v1/calls/uid-2/stop", {"duration": 60})
    assert (status, stopped["account"], stopped["cost"]) == (200, "east", "0.012000"), stopped
    assert await holds(app, "east") == ("0.988000", "0.000000", 0)
    assert await holds(app, "west") == ("1.000000", "0.000000", 0)


async def two_clients_on_one_id(app: RunningApp, call_id: str, *, accounts: bool = True) -> None:
    """Accounts ``near`` and ``far`` (1.00 each; made when ``accounts``), and a call of each
    granted under ``call_id``: near's by NAS client gw-a, then far's by gw-b."""
    if accounts:
        await add_plan(app.services)
        for account_id in ("near", "far"):
            status, body = await app.post(
                "/v1/accounts", {"id": account_id, "plan": "retail", "balance": "1.00"}
            )
            assert status == 201, body
    for account_id, client in (("near", "gw-a"), ("far", "gw-b")):
        grant = await app.services.calls.authorize(
            AuthorizeRequest(account_id, GERMANY, call_id=call_id), Origin(nas=client)
        )
        assert (grant.account_id, grant.repeated) == (account_id, False)


async def test_two_clients_authorizing_one_global_id_each_stop_their_own_call(
    backend_app: RunningApp,
) -> None:
    # Two NAS clients authorize one conference id for two accounts (two gateways of one
    # call, or a colliding id). The second grant replaced the first's reference: the
    # first client's Stop found the second client's call, was refused as another
    # client's, and its own call was never charged (decision 0052).
    app = backend_app
    conference = "A1B2 C3D4 0 E5F6"
    await two_clients_on_one_id(app, conference)
    # Each client's Stop, through a process that cached neither call, charges its own:
    # 60 s and 120 s of Germany at 0.012 a minute.
    elsewhere = CallService(
        app.services.catalog, app.services.store, app.services.settings, app.services.digests
    )
    far = await elsewhere.stop(conference, 120, nas="gw-b")
    near = await elsewhere.stop(conference, 60, nas="gw-a")
    assert (near.account_id, near.charged) == ("near", 12_000)
    assert (far.account_id, far.charged) == ("far", 24_000)
    views = [(await app.get(f"/v1/accounts/{a}"))[1] for a in ("near", "far")]
    assert [(v["balance"], v["lines_in_use"]) for v in views] == [
        ("0.988000", 0),
        ("0.976000", 0),
    ]
    # The id's reference still names the first client's call, for the call's life.
    packed = await app.services.redis.get(keys.call_ref(conference))
    assert packed is not None and CallRecord.unpack(packed).account_id == "near"
    assert await app.services.redis.ttl(keys.call_ref(conference)) > 14_400


async def no_nas(record: CallRecord) -> None:
    """A Disconnect for calls with no NAS to tell (these tests' calls come from none)."""


async def test_a_call_sharing_a_global_id_is_cut_and_found_as_its_own(
    backend_app: RunningApp,
) -> None:
    # gw-a's and gw-b's calls share a conference id; the id's reference names gw-a's.
    # Dunning cut the call the reference named, so suspending "far" cut "near"'s call
    # and left far's running; once that reference was gone (expired, or cut short after
    # a refusal racing the grant on a cluster), gw-b's Stop found no call (0052).
    app = backend_app
    conference = "B1C2 D3E4 0 F5A6"
    await two_clients_on_one_id(app, conference)
    for client in ("gw-a", "gw-b"):
        await app.services.calls.start(conference, nas=client)
    # Dunning suspends "far", from a process that cached neither call.
    elsewhere = CallService(
        app.services.catalog, app.services.store, app.services.settings, app.services.digests
    )
    services = dataclasses.replace(app.services, calls=elsewhere)
    await call_cutter(services, disconnect=no_nas)("far", conference)
    assert list(await app.services.store.live_calls_of("far")) == []
    assert list(await app.services.store.live_calls_of("near")) == [conference]
    # The operator cuts near's by the id and its account.
    status, body = await app.delete(f"/v1/calls/{quote(conference)}?account=near")
    assert (status, body["account"]) == (200, "near"), body
    status, body = await app.delete(f"/v1/calls/{quote(conference)}?account=nobody")
    assert (status, body["error"]["reason"]) == (404, "call_not_found"), body

    # Again, and the id's own reference is gone: gw-b's Stop still finds its call.
    again = "C1D2 E3F4 0 A5B6"
    await two_clients_on_one_id(app, again, accounts=False)
    await app.services.redis.delete(keys.call_ref(again))
    charge = await elsewhere.stop(again, 30, nas="gw-b")
    assert (charge.account_id, charge.charged) == ("far", 6_000)


async def test_a_failed_authorize_script_leaves_no_lasting_reference(
    backend_app: RunningApp,
) -> None:
    # A script that fails grants nothing: no reference may outlive the window, on
    # either backend (on a cluster the SET beside the script was written all the same).
    app = backend_app
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "odd", "plan": "retail", "balance": "5.00"})
    redis = app.services.redis
    await redis.hset(keys.account("odd"), "balance", "not-a-number")
    status, _ = await app.post(
        "/v1/calls", {"account": "odd", "destination": UK_MOBILE, "call_id": "f-1"}
    )
    assert status >= 500
    ttl = await redis.ttl(keys.call_ref("f-1"))
    assert ttl == -2 or 0 < ttl <= REF_WINDOW, ttl


def breaking(point: str, args: tuple[Any, ...]) -> Exception | None:
    """The error the command ``args`` answers with when an authorization fails at
    ``point`` (None: it answers as Redis does): after the authorize script ran, its reply
    lost (``reply``, ``repeat``); the grant's shorter expiry not set (``expiry``); on a
    cluster, the call reference's SET on its master refused (``reference``); the reply
    lost, and the release never reaching Redis (``unreleased``, see ``unsent``)."""
    command = args[0]
    scripted = args[1] if command == "EVALSHA" else None
    authorizing = scripted in (AUTHORIZE.sha, AUTHORIZE_WITH_REF.sha)
    if point in ("reply", "repeat", "unreleased") and authorizing:
        return RedisConnectionError("Redis did not answer within 5.0 s")
    if point == "unreleased" and scripted == RELEASE_UNCONFIRMED.sha:
        return RedisConnectionError("Connection reset by peer")
    if point == "expiry" and command == "ZADD" and args[2] == "XX":
        return RedisConnectionError("Connection reset by peer")
    if point == "reference" and command == "SET" and "NX" in args:
        return ResponseError("CLUSTERDOWN The cluster is down")
    return None


def unsent(point: str, args: tuple[Any, ...]) -> bool:
    """Whether the command ``args`` never reaches Redis when failing at ``point``."""
    return point == "unreleased" and args[:2] == ("EVALSHA", RELEASE_UNCONFIRMED.sha)


def losing(ran: "asyncio.Future[Any]", error: Exception) -> "asyncio.Future[Any]":
    """A future that fails with ``error`` once ``ran`` (the command, run on Redis) is done:
    its reply is what is lost."""
    lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def lose(done: "asyncio.Future[Any]") -> None:
        if not done.cancelled():
            done.exception()  # retrieved: the reply is what is lost
        lost.set_exception(error)

    ran.add_done_callback(lose)
    return lost


async def cdr_rows(app: RunningApp, account_id: str) -> list[tuple[str, str, int]]:
    async with app.services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT call_id, termination_cause, charged FROM cdrs WHERE account_id = $1",
            account_id,
        )
    return sorted((r["call_id"], r["termination_cause"], int(r["charged"])) for r in rows)


@pytest.mark.replaces_hot_path_function
async def test_an_authorization_answered_503_leaves_no_grant_standing(
    backend_app: RunningApp, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each command runs on Redis; the answers the point names are lost on the way back.
    # The switch, told 503, refused the call: before, its grant stood, holding a line and
    # funds until the janitor charged it (its whole grant under full_grant).
    app = backend_app
    await add_plan(app.services, max_lines=2, max_call_duration=600)
    # A call to Germany (0.012 a minute) holds 0.12 for its longest call; the next has
    # 0.08 left, which pays less: its expiry is moved after the script (ZADD XX).
    await app.post("/v1/accounts", {"id": "unsure", "plan": "retail", "balance": "0.20"})
    status, _ = await app.post(
        "/v1/calls", {"account": "unsure", "destination": GERMANY, "call_id": "unsure-repeat"}
    )
    assert status == 201
    original = AutoPipeline.execute
    point = ""

    def failing(self: AutoPipeline, *args: Any) -> "asyncio.Future[Any]":
        error = breaking(point, args)
        if error is not None and unsent(point, args):
            refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            refused.set_exception(error)
            return refused
        ran = original(self, *args)
        return ran if error is None else losing(ran, error)

    monkeypatch.setattr(AutoPipeline, "execute", failing)
    points = ["reply", "expiry", "repeat", *(["reference"] if backend.cluster else [])]
    released_before = sample("ocs_stale_calls_closed_total", cause="unconfirmed")
    for point in points:
        call_id = "unsure-repeat" if point == "repeat" else f"unsure-{point}"
        status, body = await app.post(
            "/v1/calls", {"account": "unsure", "destination": GERMANY, "call_id": call_id}
        )
        assert (status, body["error"]["reason"]) == (503, "unavailable"), (point, body)
        # Only the call granted before holds a line and funds; a repeat of it keeps it.
        live = await app.services.store.live_calls_of("unsure")
        assert sorted(live) == ["unsure-repeat"], point
        _, view = await app.get("/v1/accounts/unsure")
        assert (view["reserved"], view["available"], view["lines_in_use"]) == (
            "0.120000",
            "0.080000",
            1,
        ), point
    released = sample("ocs_stale_calls_closed_total", cause="unconfirmed") - released_before
    assert released == len(points) - 1
    point = ""
    # The switch's retry is granted afresh (201), not refused as stopped nor repeated.
    status, retried = await app.post(
        "/v1/calls", {"account": "unsure", "destination": GERMANY, "call_id": "unsure-reply"}
    )
    assert (status, retried["repeated"], retried["reserved"]) == (201, False, "0.080000")
    status, stopped = await app.post("/v1/calls/unsure-reply/stop", {"duration": 10})
    assert (status, stopped["cost"], stopped["repeated"]) == (200, "0.002000", False)
    # The call granted before goes on.
    status, stopped = await app.post("/v1/calls/unsure-repeat/stop", {"duration": 45})
    assert (status, stopped["cost"], stopped["balance"]) == (200, "0.009000", "0.189000")
    # A release that fails too leaves the grant standing: never answered, the janitor
    # closes it free at the end of its grant plus grace (decision 0055).
    point = "unreleased"
    status, body = await app.post(
        "/v1/calls", {"account": "unsure", "destination": GERMANY, "call_id": "unsure-left"}
    )
    assert (status, body["error"]["reason"]) == (503, "unavailable"), body
    point = ""
    assert sorted(await app.services.store.live_calls_of("unsure")) == ["unsure-left"]
    assert await Janitor(app.services.calls, app.services.store).sweep(now=2_000_000_000) == 1
    _, view = await app.get("/v1/accounts/unsure")
    assert (view["balance"], view["reserved"], view["lines_in_use"]) == ("0.189000", "0.000000", 0)

    async def written() -> bool:
        return len(await cdr_rows(app, "unsure")) == 3

    await eventually(written, what="the CDRs of the account")
    # No CDR for a released grant: no call took place.
    assert await cdr_rows(app, "unsure") == [
        ("unsure-left", "start-timeout", 0),
        ("unsure-repeat", "normal", 9_000),
        ("unsure-reply", "normal", 2_000),
    ]
    assert await ledger_total(app, "unsure") == 189_000


async def counter_fields(app: RunningApp, account_id: str, counter_id: str) -> dict[str, str]:
    """The fields of one counter in an account's counters hash in Redis, by suffix."""
    raw = await app.services.redis.hgetall(keys.counters(account_id))
    prefix = f"{counter_id}:"
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    return {k[len(prefix) :]: v for k, v in fields.items() if k.startswith(prefix)}


@pytest.mark.replaces_hot_path_function
async def test_a_grant_given_back_as_the_last_holder_of_a_cancelled_counter_removes_it(
    backend_app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A counter cancelled while a grant holds some of its seconds is only marked gone;
    # its last holder removes it (decision 0055: the release of a grant answered 503 is
    # such a holder), '<id>:carried' included. What its closed cycle left for late usage
    # records stays, as '<id>:closed' whatever the carryover (decision 0032's addendum of
    # 2026-12-07: the bundle was live in that cycle), until the next reset removes it.
    app = backend_app
    await add_plan(app.services, max_call_duration=600)
    kept = {"carries": ("de-carry", "carried"), "closes": ("de-close", "closed")}
    for counter_id, field in kept.values():
        counter = {"id": counter_id, "seconds": 600, "zones": ["Germany"], "mandatory": False}
        counter.update(price_per_minute="0.00", carryover=field == "carried")
        status, body = await app.post("/v1/plans/retail/counters", counter)
        assert status == 201, body

    async def loaded() -> bool:
        found = {c.id for c in app.services.catalog.snapshot.counters_for("retail")}
        return found >= {"de-carry", "de-close"}

    await eventually(loaded, what="the counters in the snapshot")
    for account_id, (counter_id, field) in kept.items():
        await app.post("/v1/accounts", {"id": account_id, "plan": "retail", "balance": "1.00"})
        status, body = await app.post(
            f"/v1/accounts/{account_id}/counters", {"counter": counter_id}
        )
        assert status == 201, body
        call = {"account": account_id, "destination": GERMANY, "call_id": f"{account_id}-1"}
        status, grant = await app.post("/v1/calls", call)
        assert (status, grant["counter_seconds"]) == (201, 600), grant
        status, stopped = await app.post(f"/v1/calls/{account_id}-1/stop", {"duration": 100})
        assert (status, stopped["cost"]) == (200, "0.000000"), stopped
        status, reset = await app.post("/v1/counters/reset", {"account": account_id})
        assert status == 200, reset
        # The closed cycle left 500 s unused, kept for its late records.
        assert (await counter_fields(app, account_id, counter_id))[field] == "500"

    original = AutoPipeline.execute
    cancelling: list[tuple[str, str]] = []

    def cancelled_meanwhile(self: AutoPipeline, *args: Any) -> "asyncio.Future[Any]":
        ran = original(self, *args)
        if not cancelling or args[:2] not in (
            ("EVALSHA", AUTHORIZE.sha),
            ("EVALSHA", AUTHORIZE_WITH_REF.sha),
        ):
            return ran

        async def lost() -> Any:
            # Once the script granted the call (not asked to price it again: "CNT"), its
            # grant holds the counter's seconds; the counter is cancelled; then the
            # authorization's reply is lost on its way back.
            reply = await ran
            if reply[0] not in (b"OK", "OK"):
                return reply
            account_id, counter_id = cancelling.pop()
            await app.services.counters.cancel(account_id, counter_id)
            assert "gone" in await counter_fields(app, account_id, counter_id)
            raise RedisConnectionError("Redis did not answer within 5.0 s")

        return asyncio.ensure_future(lost())

    monkeypatch.setattr(AutoPipeline, "execute", cancelled_meanwhile)
    for account_id, (counter_id, field) in kept.items():
        cancelling.append((account_id, counter_id))
        call = {"account": account_id, "destination": GERMANY, "call_id": f"{account_id}-2"}
        status, body = await app.post("/v1/calls", call)
        assert (status, body["error"]["reason"]) == (503, "unavailable"), body
        assert cancelling == []
        # The grant was given back, and with it the counter went: only the stamp of its
        # cancel is left (for a reset that read the account before it), and the 500 s its
        # closed cycle left for that cycle's late records.
        left = await counter_fields(app, account_id, counter_id)
        assert left == {"cancelled": ANY, "closed": "500"}, field
        status, shown = await app.get(f"/v1/accounts/{account_id}/counters")
        assert (status, shown["counters"]) == (200, [])
        _, view = await app.get(f"/v1/accounts/{account_id}")
        assert (view["balance"], view["reserved"], view["lines_in_use"]) == (
            "1.000000",
            "0.000000",
            0,
        )


@pytest.mark.replaces_hot_path_function
async def test_a_retry_answered_before_the_release_keeps_its_call(
    backend_app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first authorization's reply is lost only after the switch's retry (it gave up
    # waiting) was answered with the grant as a repeat: the switch holds that answer, so
    # the first request's release must leave the call (before the fix in decision 0055,
    # a release closed it, and the call's stop was charged nothing).
    app = backend_app
    await add_plan(app.services, max_call_duration=600)
    await app.post("/v1/accounts", {"id": "patient", "plan": "retail", "balance": "1.00"})
    original = AutoPipeline.execute
    retried = asyncio.Event()
    held: list[bool] = []

    def holding(self: AutoPipeline, *args: Any) -> "asyncio.Future[Any]":
        ran = original(self, *args)
        if held or args[0] != "EVALSHA" or "slow-1" not in args:
            return ran
        held.append(True)  # the first authorization only
        lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def lose_after_the_retry() -> None:
            with contextlib.suppress(Exception):
                await ran
            await retried.wait()
            lost.set_exception(RedisConnectionError("Redis did not answer within 5.0 s"))

        tasks.append(asyncio.create_task(lose_after_the_retry()))
        return lost

    tasks: list[asyncio.Task[None]] = []
    monkeypatch.setattr(AutoPipeline, "execute", holding)
    payload = {"account": "patient", "destination": GERMANY, "call_id": "slow-1"}
    first = asyncio.create_task(app.post("/v1/calls", payload))

    async def granted() -> bool:
        return "slow-1" in await app.services.store.live_calls_of("patient")

    await eventually(granted, what="the first authorization's grant")
    status, again = await app.post("/v1/calls", payload)
    assert (status, again["repeated"]) == (200, True), again
    retried.set()
    status, body = await first
    assert (status, body["error"]["reason"]) == (503, "unavailable"), body
    await asyncio.gather(*tasks)
    monkeypatch.setattr(AutoPipeline, "execute", original)
    status, started = await app.post("/v1/calls/slow-1/start", {})
    assert status == 200, started
    status, stopped = await app.post("/v1/calls/slow-1/stop", {"duration": 45})
    assert (status, stopped["cost"], stopped["balance"]) == (200, "0.009000", "0.991000")


@pytest.mark.replaces_hot_path_function
async def test_a_radius_call_whose_reference_was_not_written_is_found_by_its_stop(
    backend_app: RunningApp, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a cluster the grant's call reference is SET beside the script; that SET refused,
    # the Access-Request is not answered and the NAS sends it again, answered as a repeat.
    # Before, the repeat left the reference for a minute only (a refusal's window): a Stop
    # after that found no call (unknown_call) and the janitor closed it instead.
    app = backend_app
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "lost-ref", "plan": "retail", "balance": "1.00"})
    original = AutoPipeline.execute
    refusing = [backend.cluster]  # a standalone Redis writes the reference in the script

    def refused_once(self: AutoPipeline, *args: Any) -> "asyncio.Future[Any]":
        if refusing[0] and args[0] == "SET" and "NX" in args:
            refusing[0] = False
            refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            refused.set_exception(ResponseError("CLUSTERDOWN The cluster is down"))
            return refused
        return original(self, *args)

    monkeypatch.setattr(AutoPipeline, "execute", refused_once)
    server = await started_radius(
        app.services,
        (RadiusClientConfig(name="nas", network="127.0.0.1/32", secret=RADIUS_SECRET),),
    )
    udp = await UdpClient.open()
    try:
        conf = "h323-conf-id=lost-ref-1"
        request = access_request(
            RADIUS_SECRET,
            [("User-Name", "lost-ref"), ("Called-Station-Id", GERMANY), ("h323-conf-id", conf)],
        )
        datagram = wire(request)
        dropped = sample("ocs_radius_dropped_total", reason="backend_unavailable")
        udp.send(datagram, server.auth_port)

        async def unanswered() -> bool:
            return sample("ocs_radius_dropped_total", reason="backend_unavailable") > dropped

        if backend.cluster:
            await eventually(unanswered, what="the first Access-Request dropped")
            assert udp.unread() == []
        else:
            data = await udp.receive(5.0)
            assert data is not None and decode_reply(request, data).code == 2
        # The NAS's retransmission is granted (a repeat of the live call on the cluster).
        data = await udp.exchange(datagram, server.auth_port)
        assert data is not None
        reply = decode_reply(request, data)
        assert (reply.code, reply["Session-Timeout"]) == (2, [5000])
        live = await app.services.store.live_calls_of("lost-ref")
        assert len(live) == 1
        call_id = next(iter(live))
        # The reference names the live call for the call's life, not a minute.
        redis = app.services.redis
        entry = await app.services.store.live_entry("lost-ref", call_id)
        assert entry is not None
        assert await redis.ttl(keys.call_ref(call_id)) > REF_WINDOW
        assert await redis.get(keys.call_ref(call_id)) == entry.record
        for status, extra in (("Start", []), ("Stop", [("Acct-Session-Time", 45)])):
            accounting = accounting_request(
                RADIUS_SECRET,
                [
                    ("Acct-Status-Type", status),
                    ("User-Name", "lost-ref"),
                    ("Acct-Session-Id", "lost-ref-1"),
                    ("h323-conf-id", conf),
                    *extra,
                ],
            )
            answer = await udp.exchange(wire(accounting), server.acct_port)
            assert answer is not None and decode_reply(accounting, answer).code == 5
        # 45 s at 0.012 a minute: 0.009, charged by the Stop.
        assert await balance(app, "lost-ref") == "0.991000"
        assert await app.services.store.live_calls_of("lost-ref") == {}
    finally:
        udp.close()
        server.close_listeners()
        await server.drain(5)


async def test_topups_credit_once_per_id_and_reach_the_ledger(
    backend_app: RunningApp, backend: Backend, request: pytest.FixtureRequest
) -> None:
    app = backend_app
    await add_plan(app.services)
    for account_id in ACCOUNTS:
        await app.post("/v1/accounts", {"id": account_id, "plan": "retail", "balance": "1.00"})
    await accounts_on_every_master(app, backend, request, ACCOUNTS)
    answers = await asyncio.gather(
        *(
            app.post(f"/v1/accounts/{a}/topups", {"amount": "2.50", "topup_id": f"{a}-t{n}"})
            for a in ACCOUNTS
            for n in (1, 1, 2)  # the first top-up twice
        )
    )
    assert sorted(status for status, _ in answers).count(201) == 2 * len(ACCOUNTS), answers
    for account_id in ACCOUNTS:
        assert await balance(app, account_id) == "6.000000"

    async def written() -> bool:
        totals = [await ledger_total(app, a) for a in ACCOUNTS]
        return totals == [6_000_000] * len(ACCOUNTS)

    await eventually(written, what="each account's ledger at 6.00 in PostgreSQL")


async def test_a_usage_import_charges_each_record_once(backend_app: RunningApp) -> None:
    app = backend_app
    await add_plan(app.services)
    async with app.services.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO usage_templates (name, version, supplier, definition)"
            " VALUES ($1, 1, $2, $3)",
            USAGE_TEMPLATE["name"],
            USAGE_TEMPLATE["supplier"],
            json.dumps(USAGE_TEMPLATE),
        )
    for account_id in ACCOUNTS:
        status, body = await app.post(
            "/v1/accounts", {"id": account_id, "plan": "retail", "balance": "10.00"}
        )
        assert status == 201, body
    # One minute to Germany (0.012) per account, in one file imported twice: charged once.
    records = USAGE_HEADER + "".join(
        f"r{n},{a},{GERMANY},2026-03-03 09:00:00,60\n" for n, a in enumerate(ACCOUNTS)
    )
    for _ in range(2):
        response = await app.client.post(
            "/v1/usage/imports?template=carrier-y&file_name=day.csv",
            data=records.encode(),
            headers={"Content-Type": "text/csv"},
        )
        answer = await response.json()
        assert response.status == 200, answer
        assert answer["rows_rejected"] == 0, answer["problems"]
    for account_id in ACCOUNTS:
        assert await balance(app, account_id) == "9.988000"

    async def cdrs_written() -> bool:
        async with app.services.pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM cdrs")) == len(ACCOUNTS)

    await eventually(cdrs_written, what="one CDR per imported record")


async def test_usage_events_are_charged_once_on_either_backend(backend_app: RunningApp) -> None:
    app = backend_app
    deck = (
        "prefix,zone,price_per_minute,connect_fee,first_block,increment\n990001,Data,0.010,0,0,10\n"
    )
    await add_plan(app.services, deck=deck)
    response = await app.client.put("/v1/plans/retail/tariffs/Data/shape", json={"per": 1})
    assert response.status == 200, await response.text()

    async def per_unit() -> bool:
        found = app.services.catalog.snapshot.tariff_named("retail", "Data")
        return bool(found and found.rate.per == 1)

    await eventually(per_unit, what="the per-unit tariff in the snapshot")
    ids = ACCOUNTS[:6]
    for account_id in ids:
        await app.post("/v1/accounts", {"id": account_id, "plan": "retail", "balance": "20.00"})
    for account_id in ids:
        event = {"account": account_id, "event_id": "mb-1", "service": "Data", "quantity": 350}
        status, first = await app.post("/v1/usage", event)
        # 0.01 a MB in 10 MB steps: 350 MB cost 3.50.
        assert (status, first["cost"], first["balance"]) == (201, "3.500000", "16.500000")
        status, again = await app.post("/v1/usage", event)
        assert (status, again["repeated"], again["balance"]) == (200, True, "16.500000")


async def test_counters_give_free_seconds_on_either_backend(backend_app: RunningApp) -> None:
    app = backend_app
    await add_plan(app.services)
    status, counter = await app.post(
        "/v1/plans/retail/counters",
        {"id": "de-600", "seconds": 600, "zones": ["Germany"], "price_per_minute": "0.00"},
    )
    assert status == 201, counter

    async def loaded() -> bool:
        return any(c.id == "de-600" for c in app.services.catalog.snapshot.counters_for("retail"))

    await eventually(loaded, what="the counter in the snapshot")
    ids = ACCOUNTS[:6]
    for account_id in ids:
        await app.post("/v1/accounts", {"id": account_id, "plan": "retail", "balance": "1.00"})
    for account_id in ids:
        call = {"account": account_id, "destination": GERMANY, "call_id": f"{account_id}-1"}
        status, grant = await app.post("/v1/calls", call)
        assert (status, grant["counter_seconds"], grant["max_duration"]) == (201, 600, 5600)
        status, stopped = await app.post(f"/v1/calls/{account_id}-1/stop", {"duration": 800})
        # 600 s free, 200 s at 0.012 a minute.
        assert (status, stopped["cost"]) == (200, "0.040000"), stopped
        status, shown = await app.get(f"/v1/accounts/{account_id}/counters")
        assert status == 200
        assert [(c["counter"], c["used"], c["left"]) for c in shown["counters"]] == [
            ("de-600", 600, 0)
        ]
    # A new cycle gives every account its seconds again, once however often it is run
    # (its first run's start is kept on whichever master owns its key).
    for _ in range(2):
        status, reset = await app.post("/v1/counters/reset", {"cycle": "2027-01"})
        assert (status, reset["accounts"], reset["counters"]) == (200, 6, 6), reset
    for account_id in ids:
        status, shown = await app.get(f"/v1/accounts/{account_id}/counters")
        assert [(c["counter"], c["used"], c["left"]) for c in shown["counters"]] == [
            ("de-600", 0, 600)
        ]


async def test_cards_answer_their_balance_and_time(backend_app: RunningApp) -> None:
    app = backend_app
    await add_plan(app.services, max_lines=2)
    response = await app.client.post(
        "/v1/pin-batches",
        json={"plan": "retail", "batch": "b1", "count": 8, "length": 12, "value": "1.20"},
    )
    text = await response.text()
    assert response.status == 201, text
    pins = [line.split(",")[0] for line in text.splitlines()[1:]]
    assert len(pins) == 8
    for pin in pins:
        status, info = await app.get(f"/v1/pins/{pin}")
        assert (status, info["balance"]) == (200, "1.200000"), info
        status, quote = await app.get(f"/v1/pins/{pin}/time?destination={GERMANY}")
        # 1.20 at 0.012 a minute, 1/1 s: 6000 s.
        assert (status, quote["seconds"]) == (200, 6000), quote


async def test_an_unfinished_card_batch_is_discarded_on_either_backend(
    backend_app: RunningApp,
) -> None:
    """Cards a failed batch left in Redis (PostgreSQL has none), on every master: their
    PINs (in other slots) and the cards go, their balances written off in the ledger."""
    app = backend_app
    store = app.services.store
    ids = [card_account_id("lost", n) for n in range(1, 13)]
    for n, account_id in enumerate(ids, start=1):
        digest = app.services.digests.pin(f"{n:012d}")
        created = await store.create_account(
            account_id, plan_id="retail", currency="EUR", credit_limit=0, max_lines=1,
            status="active", opening_balance=1_000_000, token="t", pin_digest=digest,
        )  # fmt: skip
        assert created is not None
        await store.set_pin(digest, account_id)
    assert await store.claim_batch("lost", "t")
    done = await discard_unfinished_batch(app.services.redis, app.services.pool, store, "lost")
    assert (done.cards, done.pins_withdrawn, done.written_off) == (12, 12, 12_000_000)
    for n, account_id in enumerate(ids, start=1):
        assert await store.get_account(account_id) is None
        assert await store.pin_account(app.services.digests.pin(f"{n:012d}")) is None

    async def written_off() -> bool:
        total = await app.services.pool.fetchval(
            "SELECT sum(amount) FROM ledger WHERE account_id LIKE 'card-lost-%'"
        )
        count = await app.services.pool.fetchval(
            "SELECT count(*) FROM ledger WHERE account_id LIKE 'card-lost-%'"
        )
        return bool(total == 0 and count == 24)

    await eventually(written_off, what="each card's opening and write-off in PostgreSQL")


async def test_live_calls_are_listed_and_sampled_from_every_master(
    backend_app: RunningApp,
) -> None:
    app = backend_app
    await add_plan(app.services, max_lines=2)
    for account_id in ACCOUNTS:
        await app.post("/v1/accounts", {"id": account_id, "plan": "retail", "balance": "2.00"})
        status, grant = await app.post(
            "/v1/calls",
            {"account": account_id, "destination": UK_MOBILE, "call_id": f"{account_id}-live"},
        )
        assert status == 201, grant
    live = await app.services.store.all_live_calls()
    assert sorted((a, c) for a, c, _ in live) == sorted((a, f"{a}-live") for a in ACCOUNTS)
    # What /metrics and `ocs top` show, read through redis-py's (cluster) client.
    state = await sample_live(app.services.redis)
    assert (sum(state.calls.values()), state.accounts_with_calls) == (12, 12)
    assert state.reserved == {"EUR": 12 * 2_000_000}


async def test_the_janitor_closes_a_lost_call_on_either_backend(backend_app: RunningApp) -> None:
    app = backend_app
    await add_plan(app.services, deck="prefix,zone,price_per_minute,connect_fee,first_block,"
                   "increment\n33,France,0.600,0,1,1\n")  # fmt: skip
    ids = ACCOUNTS[:6]
    for account_id in ids:
        await app.post("/v1/accounts", {"id": account_id, "plan": "retail", "balance": "0.10"})
    now = int(time.time())
    settings = with_overrides(app.services.settings, call_expiry_grace=30)
    calls = CallService(
        app.services.catalog, app.services.store, settings, app.services.digests, clock=lambda: now
    )
    answered = []
    for account_id in ids:
        grant = await calls.authorize(
            AuthorizeRequest(account_id, "33123456789", call_id=f"{account_id}-lost")
        )
        assert grant.max_duration == 10
        # Answered (decision 0055): each expires at its grant plus grace from its start.
        answered.append((await calls.start(f"{account_id}-lost")).started_at)
    janitor = Janitor(calls, app.services.store)
    assert await janitor.sweep(now=min(answered) + 39) == 0
    assert await janitor.sweep(now=max(answered) + 40) == len(ids)
    for account_id in ids:
        _, shown = await app.get(f"/v1/accounts/{account_id}")
        assert (shown["balance"], shown["reserved"], shown["lines_in_use"]) == (
            "0.000000",
            "0.000000",
            0,
        )
    assert await janitor.sweep(now=now + 100) == 0


async def test_reconcile_is_exact_while_the_writer_runs(backend_app: RunningApp) -> None:
    app = backend_app
    await add_plan(app.services, max_lines=5)
    for account_id in ACCOUNTS:
        await app.post("/v1/accounts", {"id": account_id, "plan": "retail", "balance": "3.00"})

    async def traffic(account_id: str) -> None:
        for n in range(3):
            await app.post(f"/v1/accounts/{account_id}/topups", {"amount": "0.25"})
            await app.post(
                "/v1/calls",
                {"account": account_id, "destination": UK_MOBILE, "call_id": f"{account_id}-{n}"},
            )
            await app.post(f"/v1/calls/{account_id}-{n}/stop", {"duration": 30 + n})

    running = asyncio.gather(*(traffic(a) for a in ACCOUNTS))
    checks = []
    while not running.done():
        checks.append(await reconcile(app.services.redis, app.services.pool))
    await running
    checks.append(await reconcile(app.services.redis, app.services.pool))
    assert all(c.ok for c in checks), [c.mismatches for c in checks if not c.ok]
    assert checks[-1].accounts == len(ACCOUNTS)
    # A balance changed behind the scripts' back shows, on whichever master holds it.
    await app.services.redis.hincrby(keys.account(ACCOUNTS[5]), "balance", 1)
    found = await reconcile(app.services.redis, app.services.pool)
    assert [m.account_id for m in found.mismatches] == [ACCOUNTS[5]]
    # So does an account Redis holds and PostgreSQL does not (every master is scanned).
    for ghost in ("ghost-1", "ghost-2", "ghost-3"):
        await app.services.redis.hset(keys.account(ghost), mapping={"balance": 7, "plan": "x"})
    found = await reconcile(app.services.redis, app.services.pool)
    assert [(o.account_id, o.redis_balance) for o in found.orphans] == [
        ("ghost-1", 7),
        ("ghost-2", 7),
        ("ghost-3", 7),
    ]


async def test_number_references_are_checked_and_repaired_on_every_master(
    backend_app: RunningApp, backend: Backend, request: pytest.FixtureRequest
) -> None:
    """Reconcile scans the numbers' references on every master, and repairs each in
    its own slot."""
    app = backend_app
    await add_plan(app.services)
    numbers = [f"4420794600{n:02d}" for n in range(12)]
    status, body = await send(app, "POST", "/v1/number-sets", {"id": "london", "kind": "did"})
    assert status == 201, body
    csv = "number\n" + "\n".join(numbers) + "\n"
    status, body = await send(app, "POST", "/v1/number-sets/london/numbers", Raw(csv, "text/csv"))
    assert status == 200, body
    status, body = await send(app, "PUT", "/v1/number-sets/london/plans/retail", {"priority": 1})
    assert status == 200, body
    await app.post("/v1/accounts", {"id": "holder", "plan": "retail", "balance": "3.00"})
    for number in numbers:
        status, body = await app.post("/v1/accounts/holder/numbers", {"number": number})
        assert status == 201, body
    if backend.cluster:
        cluster: RedisClusterProcess = request.getfixturevalue("redis_cluster")
        owners = {cluster.node_of_slot(slots.key_slot(keys.did_ref(n))).port for n in numbers}
        assert len(owners) == 3, owners
    redis, pool = app.services.redis, app.services.pool
    assert await check_numbers(redis, pool) == []
    # Half the references lost, the other half naming another account.
    for number in numbers[:6]:
        await redis.delete(keys.did_ref(number))
    for number in numbers[6:]:
        await redis.set(keys.did_ref(number), "someone-else")
    found = await check_numbers(redis, pool)
    assert [(m.number, m.redis_account, m.holder) for m in found] == [
        *((n, None, "holder") for n in numbers[:6]),
        *((n, "someone-else", "holder") for n in numbers[6:]),
    ]
    assert await repair_numbers(pool, app.services.store, found) == dict.fromkeys(numbers, "holder")
    assert await check_numbers(redis, pool) == []
    for number in numbers:
        assert await app.services.store.did_account(number) == "holder"


async def test_account_states_are_checked_and_repaired_on_every_master(
    backend_app: RunningApp, backend: Backend, request: pytest.FixtureRequest
) -> None:
    """Reconcile reads the accounts' states on every master, and repairs each in its own
    slot: suspensions Redis lost are put back, and their calls refused."""
    app = backend_app
    await add_plan(app.services)
    for account_id in ACCOUNTS:
        await app.post("/v1/accounts", {"id": account_id, "plan": "retail", "balance": "3.00"})
    if backend.cluster:
        cluster: RedisClusterProcess = request.getfixturevalue("redis_cluster")
        owners = {cluster.node_of_slot(slots.key_slot(keys.account(a))).port for a in ACCOUNTS}
        assert len(owners) == 3, owners
    redis, pool, store = app.services.redis, app.services.pool, app.services.store
    assert await check_states(redis, pool) == []
    async with pool.acquire() as conn:
        await conn.execute("UPDATE accounts SET status = 'suspended' WHERE id LIKE 'acct-%'")
    found = await check_states(redis, pool)
    assert found == [StateMismatch(a, "suspended", "active", "") for a in sorted(ACCOUNTS)]
    repaired = await repair_states(pool, redis, store, found)
    assert repaired == dict.fromkeys(ACCOUNTS, Repaired("suspended", ""))
    assert await check_states(redis, pool) == []
    status, body = await send(
        app, "POST", "/v1/calls", {"account": ACCOUNTS[0], "destination": UK_MOBILE}
    )
    assert (status, body["error"]["reason"]) == (403, "account_suspended"), body


async def test_an_entry_postgresql_refuses_is_set_aside_once_on_either_backend(
    backend_app: RunningApp,
) -> None:
    """The set-aside script (its two streams in the bucket's slot) runs on the master of
    that slot, and is loaded again where a master lost it (SCRIPT FLUSH: a restart)."""
    app = backend_app
    bucket = keys.bucket_of("w0")
    wire = wire_for(app.services.redis)
    try:
        await wire.execute_on_every_master([("SCRIPT", "FLUSH")])
    finally:
        await wire.close()
    # The app's ledger writer reads it, PostgreSQL refuses it (a NUL in a text column).
    await app.services.redis.xadd(
        keys.ledger(bucket),
        {"kind": "topup", "account": "w0", "amount": "1", "balance": "1",
         "reference": "bad\x00ref", "ts": "1700000000000"},
    )  # fmt: skip

    async def set_aside() -> bool:
        return await app.services.redis.xlen(keys.ledger(bucket)) == 0

    await eventually(set_aside, what="the refused entry to leave the ledger stream")
    dead = await app.services.redis.xrange(keys.dead_letters(bucket))
    assert [d[1][b"reference"] for d in dead] == [b"bad\x00ref"]


async def test_every_command_names_keys_of_one_slot(
    backend_app: RunningApp, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every command the hot path sends, scripts included, stays in one slot: a cluster
    runs it. The flows above run with a recorder on the wire."""
    app = backend_app
    sent: list[tuple[Any, ...]] = []
    original = RedisWire.execute_many
    original_answered = RedisWire.execute_answered
    original_now = RedisWire.send_now

    async def recording(self: RedisWire, commands: Any) -> list[Any]:
        sent.extend(tuple(c) for c in commands)
        return await original(self, commands)

    async def recording_answered(self: RedisWire, commands: Any) -> Any:
        sent.extend(tuple(c) for c in commands)
        return await original_answered(self, commands)

    def recording_now(self: RedisWire, commands: Any) -> Any:
        written = original_now(self, commands)
        if written is not None:  # else execute_many sends (and records) them
            sent.extend(tuple(c) for c in commands)
        return written

    # A batch goes out by one of these: written at once, or awaited through execute_many
    # (the ledger writer, reconcile) or execute_answered (the auto-pipeline).
    monkeypatch.setattr(RedisWire, "execute_many", recording)
    monkeypatch.setattr(RedisWire, "execute_answered", recording_answered)
    monkeypatch.setattr(RedisWire, "send_now", recording_now)
    await add_plan(app.services, max_lines=3)
    await app.post("/v1/accounts", {"id": "one", "plan": "retail", "balance": "5.00"})
    await app.post("/v1/accounts/one/topups", {"amount": "1.00", "topup_id": "t"})
    await app.post("/v1/calls", {"account": "one", "destination": UK_MOBILE, "call_id": "s-1"})
    await app.post("/v1/calls/s-1/start", {})
    await app.post("/v1/calls/s-1/update", {"used": 10})
    await app.post("/v1/calls/s-1/stop", {"duration": 12})
    await Janitor(app.services.calls, app.services.store).sweep()
    assert sent
    # On a standalone server the ledger writer reads every stream in one command, and
    # the authorize script writes the call's reference (decision 0044).
    crossing = [
        c
        for c in sent
        if not slots.one_slot(c)
        and (backend.cluster or (c[0] != "XREADGROUP" and c[1] != AUTHORIZE_WITH_REF.sha))
    ]
    assert crossing == []
    shas = {c[1] for c in sent if c[0] == "EVALSHA"}
    names = {s.name for s in ALL_SCRIPTS if s.sha in shas}
    authorizing = "authorize" if backend.cluster else "authorize_with_ref"
    # Stopped where it was authorized: stop_live checks the kept record is the live call's.
    assert {"create_account", "topup", authorizing, "start", "update", "stop_live"} <= names
    assert ({"authorize", "authorize_with_ref"} - {authorizing}).isdisjoint(names)
    assert SNAPSHOT_BUCKET.name not in names  # reconcile's, sent by redis-py
