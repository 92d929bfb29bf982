"""A real Kamailio 5.6 running deploy/kamailio/ocs.cfg in front of a real `ocs serve`.

sipp places the calls and answers them (deploy/kamailio/sipp/). ocs runs with
``switch_token_required``, so every call that goes through proves that Kamailio
sent its switch token. The tariff (EUR):

- France (33): 0.60 a minute, no connect fee, billed per second: 0.01 a second;
- UK (44): 0.60 a minute, 0.10 connect fee, a first block of 2 s, then 3 s
  increments: a call of 4 s bills 2 + 3 = 5 s, 0.10 + 0.05 = 0.15.

The plan's longest call is 60 s, so a 5.00 account holds 0.60 per France call
and could pay for eight at once: its line limit, not its funds, decides.

Kamailio 5.6's dialog timer ticks once a second, so the switch cuts a call
between one second before and one second after its lifetime; ocs.cfg charges at
most the grant. Its BYE has been seen to be lost: ocs.cfg stops the call when
the lifetime ends without waiting for the BYEs, a caller that gets none hangs up
by itself, and a stop that is lost too leaves the call to ocs's janitor at the
end of its grant plus call_expiry_grace. Either way the operator sees one CDR of
the granted duration, and the tests assert that.
"""

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ocs import api_tokens
from ocs.config import Settings
from ocs.money import parse_amount
from tests.conftest import bearer, eventually, reset_state
from tests.http_relay_helpers import Relay, relay_to
from tests.kamailio_helpers import (
    CallerView,
    Kamailio,
    SippCallee,
    binary,
    call_through,
    one_call,
    running_switch,
    sip_options,
)
from tests.serve_process import ServeProcess, free_port, serve_env

UDP = socket.SOCK_DGRAM
FRANCE = "33123456789"
UK = "44123456"
DECK = (
    "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"
    "33,France,0.600,0,1,1\n"
    "44,UK,0.600,0.100,2,3\n"
)
LONGEST_CALL = 60
GRACE = 2
SERVER_ENV = {
    "OCS_SWITCH_TOKEN_REQUIRED": "true",
    # A call whose stop is lost is closed by the janitor within seconds.
    "OCS_CALL_EXPIRY_GRACE": str(GRACE),
    "OCS_JANITOR_INTERVAL": "0.2",
}


@dataclass
class Cdr:
    """A CDR as PostgreSQL holds it."""

    call_id: str
    duration: int
    billed_seconds: int
    charged: int
    cause: str


@dataclass
class Rig:
    """ocs, the switch in front of it, and the callee behind it."""

    http: aiohttp.ClientSession
    http_port: int
    pool: asyncpg.Pool
    kamailio: Kamailio
    callee: SippCallee
    switch_token: str
    workdir: Path

    async def account(self, account_id: str, balance: str, **extra: object) -> None:
        """Open an account on the plan through the admin API."""
        payload = {"id": account_id, "plan": "switch", "balance": balance, **extra}
        async with self.http.post("/v1/accounts", json=payload) as reply:
            assert reply.status == 201, await reply.text()

    async def view(self, account_id: str) -> dict[str, Any]:
        """``GET /v1/accounts/{id}``."""
        async with self.http.get(f"/v1/accounts/{account_id}") as reply:
            assert reply.status == 200, await reply.text()
            body: dict[str, Any] = await reply.json()
            return body

    async def cdrs(self, account_id: str) -> list[Cdr]:
        """The account's CDRs in PostgreSQL."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT call_id, duration, billed_seconds, charged, termination_cause"
                " FROM cdrs WHERE account_id = $1 ORDER BY call_id",
                account_id,
            )
        return [Cdr(*row) for row in rows]

    async def wait_cdrs(self, account_id: str, count: int, within: float = 15.0) -> list[Cdr]:
        """Poll until the account has ``count`` CDRs (the ledger writer is asynchronous)."""
        found: list[Cdr] = []

        async def written() -> bool:
            found[:] = await self.cdrs(account_id)
            return len(found) >= count

        await eventually(written, within=within, what=f"{count} CDR(s) of {account_id}")
        return found

    async def settled(self, account_id: str, within: float = 15.0) -> dict[str, Any]:
        """Poll until the account holds no line and no reservation: its view then."""
        view: dict[str, Any] = {}

        async def released() -> bool:
            view.update(await self.view(account_id))
            return bool(view["lines_in_use"] == 0 and view["reserved"] == "0.000000")

        await eventually(released, within=within, what=f"{account_id}'s lines to be released")
        return view

    async def drained(self, account_id: str) -> None:
        """Asserts the account, once settled, has nothing left: balance and available 0."""
        view = await self.settled(account_id)
        assert (view["balance"], view["available"]) == ("0.000000", "0.000000")

    async def untouched(self, account_id: str, balance: str) -> None:
        """Asserts the account still holds ``balance``, with nothing reserved, no line used."""
        view = await self.view(account_id)
        assert (view["balance"], view["reserved"], view["lines_in_use"]) == (balance, "0.000000", 0)

    async def expired_at_grant(
        self, account_id: str, call_id: str, grant: int, charged: int
    ) -> Cdr:
        """Asserts the call's one CDR (within its grant, the grace and 10 s) is the janitor's:
        its ``grant`` in seconds, ``charged``, cause "expired". The CDR."""
        [cdr] = await self.wait_cdrs(account_id, 1, within=grant + GRACE + 10)
        assert (cdr.call_id, cdr.duration, cdr.charged, cdr.cause) == (
            call_id,
            grant,
            charged,
            "expired",
        )
        return cdr

    @property
    def ocs_url(self) -> str:
        """Where this ocs answers HTTP."""
        return f"http://127.0.0.1:{self.http_port}"

    @staticmethod
    def stop_sent_again(switch: Kamailio, call_id: str) -> None:
        """Asserts the switch's log: the call's stop got a failure, then did not fail."""
        log = switch.log_tail()
        assert f"ocs: stop of {call_id} got " in log, log
        assert f"ocs: stop of {call_id} after" not in log, log  # no failure in the end

    async def charged_what_it_ran(
        self, account_id: str, call_id: str, cdr: Cdr, opening: int
    ) -> None:
        """Asserts ``cdr`` is the call's, 2 s (3 on a slow machine) at 0.01 a second,
        stopped by the switch ("normal"), and the settled balance ``opening`` less it."""
        assert cdr.call_id == call_id
        assert cdr.duration in (2, 3), cdr.duration
        assert (cdr.charged, cdr.cause) == (cdr.duration * 10_000, "normal")
        view = await self.settled(account_id)
        assert parse_amount(view["balance"]) == opening - cdr.charged

    async def charged_per_second(self, account_id: str, call_id: str) -> None:
        """Asserts the account's one CDR is the call's, charged 0.01 a second, not 0."""
        [cdr] = await self.wait_cdrs(account_id, 1)
        assert cdr.call_id == call_id and cdr.charged == cdr.duration * 10_000 > 0, cdr

    @contextlib.asynccontextmanager
    async def relayed_call(
        self,
        tmp_path: Path,
        account_id: str,
        *,
        start_failure: int | None = None,
        stop_failure: int = 503,
        stop_failures: int | None = None,
        slow_s: float = 0.0,
        defines: dict[str, str] | None = None,
        scenario: str = "uac.xml",
        hold_ms: int = 0,
        recv_timeout_ms: int = 15_000,
    ) -> AsyncIterator[tuple[Relay, Kamailio, str, CallerView]]:
        """A switch of the test's own (``defines``) behind a relay to this ocs (failing as
        ``relay_to`` takes it), and one call to France from ``account_id`` through them,
        answered 200 (asserted): the relay, the switch, the Call-ID and what its caller
        saw. The switch, then the relay, stopped on the way out."""
        async with (
            relay_to(
                self.ocs_url,
                start_failure=start_failure,
                stop_failure=stop_failure,
                stop_failures=stop_failures,
                slow_s=slow_s,
            ) as (relay, url),
            self.switch(tmp_path, ocs_url=url, defines=defines) as switch,
        ):
            call_id, seen = await one_call(
                switch,
                final=200,
                caller=account_id,
                dialled=FRANCE,
                scenario=scenario,
                hold_ms=hold_ms,
                recv_timeout_ms=recv_timeout_ms,
            )
            yield relay, switch, call_id, seen

    def switch(
        self,
        tmp_path: Path,
        *,
        ocs_url: str | None = None,
        token: str | None = None,
        trusted: tuple[str, ...] = ("127.0.0.1",),
        defines: dict[str, str] | None = None,
    ) -> contextlib.AbstractAsyncContextManager[Kamailio]:
        """A switch of the test's own (in ``tmp_path``) in front of this ocs (or
        ``ocs_url``) with its switch token (or ``token``), relaying to the callee."""
        return running_switch(
            ocs_url=ocs_url or f"http://127.0.0.1:{self.http_port}",
            token=token or self.switch_token,
            gateway_port=self.callee.port,
            workdir=tmp_path,
            trusted=trusted,
            defines=defines,
        )


async def authorizations_asked(http: aiohttp.ClientSession) -> float:
    """How many call authorizations ocs has answered, whatever the result (``/metrics``)."""
    async with http.get("/metrics") as reply:
        assert reply.status == 200, await reply.text()
        text = await reply.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ocs_call_authorizations_total"
    )


async def _catalog_rates(http: aiohttp.ClientSession, number: str, zone: str) -> bool:
    async with http.get("/v1/plans/switch/lookup", params={"number": number}) as reply:
        return reply.status == 200 and bool((await reply.json())["zone"] == zone)


@pytest.fixture(scope="module")
async def rig(
    redis_url: str,
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    pepper_file: Path,
) -> AsyncIterator[Rig]:
    """ocs serve, the plan, the callee, and Kamailio with ocs.cfg and a switch token."""
    binary("kamailio")  # no binaries: fail before anything starts
    binary("sipp")
    await reset_state(redis_url, database_url)
    workdir = tmp_path_factory.mktemp("kamailio-switch")
    http_port = free_port()
    env = serve_env(
        Settings(redis_url=redis_url, database_url=database_url, pepper_file=pepper_file),
        SERVER_ENV,
    )
    async with contextlib.AsyncExitStack() as stack:
        ocs = ServeProcess(
            http_port=http_port,
            auth_port=0,
            acct_port=0,
            env=env,
            data_dir=workdir / "var",
            log=workdir / "ocs.log",
        )
        stack.callback(ocs.stop)
        await asyncio.to_thread(ocs.wait_ready)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        stack.push_async_callback(pool.close)
        admin = await api_tokens.create(pool, "tests-admin", "admin")
        switch_token = await api_tokens.create(pool, "kamailio-1", "switch")
        http = aiohttp.ClientSession(f"http://127.0.0.1:{http_port}", headers=bearer(admin))
        stack.push_async_callback(http.close)
        plan = {"id": "switch", "currency": "EUR", "max_lines": 2}
        async with http.post("/v1/plans", json={**plan, "max_call_duration": LONGEST_CALL}) as r:
            assert r.status == 201, await r.text()
        headers = {"Content-Type": "text/csv"}
        async with http.post("/v1/plans/switch/tariffs", data=DECK, headers=headers) as r:
            assert r.status == 200, await r.text()
        await eventually(lambda: _catalog_rates(http, UK, "UK"), what="the deck in the catalog")

        callee = SippCallee(port=free_port(UDP), workdir=workdir / "callee")
        stack.callback(callee.stop)
        await asyncio.to_thread(callee.wait_ready)
        kamailio = Kamailio(
            port=free_port(UDP),
            ocs_url=f"http://127.0.0.1:{http_port}",
            token=switch_token,
            gateway_port=callee.port,
            workdir=workdir / "kamailio",
        )
        stack.callback(kamailio.stop)
        await asyncio.to_thread(kamailio.wait_ready)
        yield Rig(http, http_port, pool, kamailio, callee, switch_token, workdir)


async def test_the_switch_cuts_a_call_at_ocs_max_duration_and_ocs_charges_it(rig: Rig) -> None:
    grant = 5
    await rig.account("cut", "0.05")  # 0.01 a second to France: 5 s
    call_id, seen = await one_call(
        rig.kamailio,
        final=200,
        caller="cut",
        dialled=FRANCE,
        scenario="uac_until_cut.xml",
        # A caller whose BYE from the switch was lost gives up after this and hangs up.
        recv_timeout_ms=(grant + 4) * 1000,
    )
    assert call_id in rig.callee.answered()
    if seen.cut_at_ms is not None and seen.answered_at_ms is not None:
        # The switch's BYE: at the grant, give or take the dialog timer's one-second tick.
        held_ms = seen.cut_at_ms - seen.answered_at_ms
        assert (grant - 1) * 1000 <= held_ms <= (grant + 1) * 1000 + 500, held_ms

    # One CDR: the granted 5 s, 0.05, all the account had. Stopped by the switch
    # ("normal"), or by the janitor ("expired") when the switch's stop was lost.
    [cdr] = await rig.wait_cdrs("cut", 1, within=grant + GRACE + 10)
    assert (cdr.call_id, cdr.duration, cdr.billed_seconds, cdr.charged) == (
        call_id,
        grant,
        grant,
        50_000,
    )
    assert cdr.cause in ("normal", "expired"), cdr.cause
    assert f"ocs: {call_id} cut at its grant of {grant} s" in rig.kamailio.log_tail()
    await rig.drained("cut")


async def test_a_caller_without_funds_is_refused_402_and_nothing_is_charged(rig: Rig) -> None:
    await rig.account("broke", "0.00")
    call_id, _ = await one_call(
        rig.kamailio, final=402, caller="broke", dialled=FRANCE, hold_ms=1000
    )
    assert call_id not in rig.callee.answered()  # never relayed
    assert f"from broke to {FRANCE} refused: 402 zero_balance" in rig.kamailio.log_tail()
    await rig.untouched("broke", "0.000000")
    assert await rig.cdrs("broke") == []


async def test_an_invite_from_an_untrusted_source_is_refused_403_and_ocs_is_never_asked(
    rig: Rig,
) -> None:
    # The switch names the account from the caller's own From. A host that is not in its
    # trusted list (the rig trusts 127.0.0.1; this caller sends from 127.0.0.2) writing a
    # victim's account there: before, ocs authorized it and the call went to the gateway
    # on the victim's money. Now the switch answers 403 itself.
    await rig.account("victim", "5.00")
    asked = await authorizations_asked(rig.http)
    call_id, _ = await one_call(
        rig.kamailio,
        final=403,
        caller="victim",
        dialled=FRANCE,
        hold_ms=1000,
        source="127.0.0.2",
    )
    assert call_id not in rig.callee.answered()  # never relayed
    assert "ocs: INVITE from untrusted source 127.0.0.2:" in rig.kamailio.log_tail()
    assert await authorizations_asked(rig.http) == asked  # ocs never asked
    await rig.untouched("victim", "5.000000")
    assert await rig.cdrs("victim") == []


def _final_answer_to(request: bytes, proxy_port: int, source: str) -> int:
    """Send one SIP request over UDP from ``source`` to the switch; the status of its first
    final answer (a provisional 1xx is read past), 0 when none comes within 10 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(10)
        port = sock.getsockname()[1]
        sock.sendto(request.replace(b"{PORT}", str(port).encode()), ("127.0.0.1", proxy_port))
        while True:
            try:
                answer = sock.recv(65535)
            except TimeoutError:
                return 0
            status = int(answer.split(b" ", 2)[1])
            if status >= 200:
                return status


async def test_an_untrusted_request_with_a_to_tag_and_a_route_is_not_relayed(rig: Rig) -> None:
    # An INVITE that claims a dialog (a To-tag) and routes itself to the gateway went on
    # through route[WITHINDLG]'s loose_route() before: the proxy relayed to the gateway,
    # from its own address, a call ocs was never asked about. Outside a dialog this proxy
    # made, an untrusted source is now refused there too.
    await rig.account("forged-victim", "5.00")
    asked = await authorizations_asked(rig.http)
    gateway = f"127.0.0.1:{rig.callee.port}"
    proxy = f"127.0.0.1:{rig.kamailio.port}"
    invite = (
        f"INVITE sip:{FRANCE}@{gateway} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.2:{PORT};branch=z9hG4bK-forged-1\r\n"
        f"Route: <sip:{proxy};lr>\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:forged-victim@127.0.0.2>;tag=caller-1\r\n"
        f"To: <sip:{FRANCE}@{gateway}>;tag=forged\r\n"
        "Call-ID: forged-in-dialog-1\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:forged-victim@127.0.0.2:{PORT}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    status = await asyncio.to_thread(_final_answer_to, invite, rig.kamailio.port, "127.0.0.2")
    assert status == 403, rig.kamailio.log_tail()
    assert "ocs: INVITE from untrusted source 127.0.0.2:" in rig.kamailio.log_tail()
    assert "forged-in-dialog-1" not in rig.callee.answered()
    assert await authorizations_asked(rig.http) == asked
    view = await rig.view("forged-victim")
    assert (view["balance"], view["lines_in_use"]) == ("5.000000", 0)


async def test_a_caller_hang_up_is_charged_by_the_tariffs_increments(rig: Rig) -> None:
    await rig.account("talk", "5.00")
    call_id, _ = await one_call(
        rig.kamailio,
        final=200,
        caller="talk",
        dialled=UK,
        hold_ms=3500,  # from the ACK to the caller's BYE
    )
    [cdr] = await rig.wait_cdrs("talk", 1)
    assert cdr.call_id == call_id
    # 3.5 s and a little: 4 s (5 on a slow machine), which the UK tariff bills as
    # its 2 s first block and one 3 s increment: 5 s, 0.10 + 5 x 0.01 = 0.15.
    assert cdr.duration in (4, 5), cdr.duration
    assert (cdr.billed_seconds, cdr.charged, cdr.cause) == (5, 150_000, "normal")
    view = await rig.settled("talk")
    assert view["balance"] == "4.850000"


async def test_twenty_calls_at_once_on_a_two_line_account_put_exactly_two_through(
    rig: Rig,
) -> None:
    await rig.account("busy", "5.00", max_lines=2)
    views = await call_through(rig.kamailio, caller="busy", dialled=FRANCE, calls=20, hold_ms=2000)
    assert len(views) == 20
    # Two answered; the other eighteen told "486 Busy Here" (no_free_line).
    assert Counter(seen.final for seen in views.values()) == {200: 2, 486: 18}
    through = {call_id for call_id, seen in views.items() if seen.final == 200}
    assert rig.callee.answered() & set(views) == through
    cdrs = await rig.wait_cdrs("busy", 2)
    assert {cdr.call_id for cdr in cdrs} == through
    for cdr in cdrs:
        assert cdr.charged == cdr.duration * 10_000 > 0, cdr  # France: 0.01 a second
    view = await rig.settled("busy")
    assert parse_amount(view["balance"]) == 5_000_000 - sum(cdr.charged for cdr in cdrs)


@pytest.mark.parametrize(
    ("case", "logged"),
    [
        # Nothing listens where this switch looks for ocs.
        ("ocs unreachable", "failing closed"),
        # ocs answers 401, whose sip_status is 503: the deployment's fault, not the caller's.
        ("token refused", "refused: 503 unauthorized"),
    ],
)
async def test_the_switch_fails_closed_with_503(
    rig: Rig, tmp_path: Path, case: str, logged: str
) -> None:
    unreachable = case == "ocs unreachable"
    account_id = "unreached" if unreachable else "untrusted"
    async with rig.switch(
        tmp_path,
        ocs_url=f"http://127.0.0.1:{free_port() if unreachable else rig.http_port}",
        token=rig.switch_token if unreachable else "ocs_not-a-token-of-this-ocs",
    ) as switch:
        await rig.account(account_id, "5.00")
        call_id, _ = await one_call(
            switch, final=503, caller=account_id, dialled=FRANCE, hold_ms=1000
        )
        assert call_id not in rig.callee.answered()
        assert logged in switch.log_tail()
        await rig.untouched(account_id, "5.000000")


@pytest.mark.parametrize(("failure", "fail_with"), [("answered 503", 503), ("dropped", 0)])
async def test_a_failed_start_is_sent_again_and_the_call_is_charged_when_its_stop_is_lost(
    rig: Rig, tmp_path: Path, failure: str, fail_with: int
) -> None:
    # The answer's /start fails (a 503, or the connection dropped unanswered), and every
    # stop is lost too. Before, ocs.cfg sent the start once: ocs never learnt the call
    # was answered, and its janitor closed it free as never answered ("start-timeout",
    # decision 0055). The switch now sends the start again, so the janitor charges the
    # call as answered: its whole grant, which is what it ran (the switch cut it there).
    grant = 3
    account_id = f"restart-{fail_with}"
    await rig.account(account_id, "0.03")  # 0.01 a second to France: 3 s
    async with rig.relayed_call(
        tmp_path,
        account_id,
        start_failure=fail_with,
        scenario="uac_until_cut.xml",
        recv_timeout_ms=(grant + 4) * 1000,
    ) as (relay, switch, call_id, _):
        start = f"/v1/calls/{call_id}/start"
        starts = [status for path, status in relay.seen if path == start]
        assert starts == [fail_with, 200], (failure, relay.seen)
        stops = [status for path, status in relay.seen if path.endswith("/stop")]
        assert stops and set(stops) == {503}, relay.seen
        log = switch.log_tail()
        assert f"ocs: start of {call_id} got " in log, log
        assert f"ocs: start of {call_id} failed" not in log
    # Closed by the janitor at the end of its grant plus grace from the answer, as an
    # answered call: charged its grant (stale_call_policy full_grant), not closed free.
    cdr = await rig.expired_at_grant(account_id, call_id, grant, 30_000)
    assert cdr.billed_seconds == grant
    await rig.drained(account_id)


@pytest.mark.parametrize(("failure", "fail_with"), [("answered 503", 503), ("dropped", 0)])
async def test_a_failed_stop_is_sent_again_and_the_call_is_charged_once_what_it_ran(
    rig: Rig, tmp_path: Path, failure: str, fail_with: int
) -> None:
    # The caller hangs up, and the stop fails once: ocs restarting answers 503, or the
    # connection drops unanswered. Before, ocs.cfg sent the stop once: the call was left
    # to ocs's janitor, which closed it at the end of its grant and charged the whole
    # grant ("expired"), not what the call ran. The switch now sends the stop again.
    account_id = f"restop-{fail_with}"
    await rig.account(account_id, "0.05")  # 0.01 a second to France: a 5 s grant
    async with rig.relayed_call(
        tmp_path, account_id, stop_failure=fail_with, stop_failures=1, hold_ms=1500
    ) as (relay, switch, call_id, _):
        [cdr] = await rig.wait_cdrs(account_id, 1)
        assert relay.statuses("/stop") == [fail_with, 200], (failure, relay.seen)
        rig.stop_sent_again(switch, call_id)
    # Charged once, what it ran: 1.5 s and a little, 2 s (3 on a slow machine), by the
    # switch's stop ("normal"), well before the grant's end.
    assert cdr.billed_seconds == cdr.duration
    await rig.charged_what_it_ran(account_id, call_id, cdr, opening=50_000)


async def test_a_stop_that_timed_out_is_sent_again_and_the_call_is_charged_once_what_it_ran(
    rig: Rig, tmp_path: Path
) -> None:
    # ocs too slow: the first stop gets no answer within OCS_HTTP_TIMEOUT (2 s). That try
    # took the whole timeout, and before, no other began past it: the call was left to
    # ocs's janitor, which charged the whole grant ("expired"). A try may now begin until
    # twice the timeout.
    account_id = "restop-slow"
    await rig.account(account_id, "0.05")  # 0.01 a second to France: a 5 s grant
    async with rig.relayed_call(tmp_path, account_id, stop_failures=1, slow_s=3, hold_ms=1500) as (
        relay,
        switch,
        call_id,
        _,
    ):
        [cdr] = await rig.wait_cdrs(account_id, 1)
        assert relay.statuses("/stop") == [0, 200], relay.seen
        rig.stop_sent_again(switch, call_id)
    # Charged once, what it ran (1.5 s and a little: 2 s, 3 on a slow machine), by the
    # switch's stop, not the grant by the janitor.
    await rig.charged_what_it_ran(account_id, call_id, cdr, opening=50_000)


async def test_a_call_cut_at_its_grant_is_cut_on_time_while_its_stop_waits_for_a_slow_ocs(
    rig: Rig, tmp_path: Path
) -> None:
    # The grant runs out while ocs is slow: the stop's first try gets no answer within
    # OCS_HTTP_TIMEOUT (3 s here). Before, route[OCS_TIMEOUT] sent it from the dialog
    # timer, and the BYEs (and every other dialog's timeout) waited for its tries: the
    # caller was cut 3 s past the grant, and the stop that timed out was not tried
    # again. An async worker sends it now: the caller is cut at the grant, and the stop
    # reaches ocs once, on its second try.
    grant = 3
    account_id = "cut-slow"
    await rig.account(account_id, "0.03")  # 0.01 a second to France: 3 s
    async with rig.relayed_call(
        tmp_path,
        account_id,
        stop_failures=1,
        slow_s=4,
        defines={"OCS_HTTP_TIMEOUT": "3"},
        scenario="uac_until_cut.xml",
        recv_timeout_ms=(grant + 6) * 1000,
    ) as (relay, switch, call_id, seen):
        assert seen.cut_at_ms is not None and seen.answered_at_ms is not None, seen
        # The switch's BYE: at the grant, give or take the dialog timer's tick.
        held_ms = seen.cut_at_ms - seen.answered_at_ms
        assert (grant - 1) * 1000 <= held_ms <= (grant + 1) * 1000 + 500, held_ms

        async def stopped() -> bool:
            return f"ocs: {call_id} stopped after {grant} s" in switch.log_tail()

        await eventually(stopped, within=10, what="the stop's second try answered")
        log = switch.log_tail()
        assert relay.statuses("/stop") == [0, 200], (relay.seen, log)
        assert f"ocs: {call_id} cut at its grant of {grant} s" in log, log
        assert f"ocs: stop of {call_id} got 28, trying again" in log, log  # curl: timeout
    # Charged once, its grant: by the switch's stop ("normal"), or by ocs's janitor
    # (grant plus 2 s of grace, "expired") when that came first, the stop then a late
    # stop that changes nothing.
    [cdr] = await rig.wait_cdrs(account_id, 1)
    assert (cdr.call_id, cdr.duration, cdr.charged) == (call_id, grant, 30_000)
    assert cdr.cause in ("normal", "expired"), cdr.cause
    await rig.drained(account_id)


async def test_a_start_that_timed_out_is_sent_again_and_the_call_is_charged_when_its_stop_is_lost(
    rig: Rig, tmp_path: Path
) -> None:
    # ocs too slow for the answer's /start: its first try gets no answer within
    # OCS_HTTP_TIMEOUT (2 s), and every stop is lost too. Before, that try took the
    # whole timeout and none other began past it: ocs never learnt the call was
    # answered, and its janitor closed it free as never answered ("start-timeout",
    # decision 0055), a call that ran its whole grant. The start is now sent by an
    # async worker, again after a timeout, so the janitor charges the call's grant.
    grant = 3
    account_id = "restart-slow"
    await rig.account(account_id, "0.03")  # 0.01 a second to France: 3 s
    async with rig.relayed_call(
        tmp_path,
        account_id,
        start_failure=503,
        slow_s=3,
        scenario="uac_until_cut.xml",
        recv_timeout_ms=(grant + 4) * 1000,
    ) as (relay, switch, call_id, _):

        async def started() -> bool:
            return relay.statuses("/start") == [0, 200]

        await eventually(started, within=10, what="the start's second try answered")
        log = switch.log_tail()
        assert f"ocs: start of {call_id} got 28, trying again" in log, log  # curl: timeout
    # Closed by the janitor as an answered call: charged its grant ("expired"), which is
    # what it ran (the switch cut it there), not closed free.
    await rig.expired_at_grant(account_id, call_id, grant, 30_000)
    await rig.drained(account_id)


def _options_delays(port: int, probes: int) -> list[float | None]:
    """Send ``probes`` OPTIONS to the switch, one every 0.1 s: how long each took to be
    answered 200 (None: not within a second)."""
    delays: list[float | None] = []
    for _ in range(probes):
        began = time.monotonic()
        answered = sip_options(port, timeout=1.0) == 200
        delays.append(time.monotonic() - began if answered else None)
        time.sleep(0.1)
    return delays


async def test_a_stalled_ocs_holds_up_no_sip_worker_while_calls_end_and_gets_every_stop_back(
    rig: Rig, tmp_path: Path
) -> None:
    # ocs stalls (answers no stop) while twenty calls end at once. Before, each BYE's
    # stop was sent, with its tries and pauses, by the SIP worker relaying the BYE:
    # about 4.2 s a stop, so the four workers were all asleep and the switch answered
    # nothing, BYEs, OPTIONS and new INVITEs alike, for about 20 s. The stops now go
    # to async workers and their queue: the SIP workers answer at once, and a stop
    # whose round failed while ocs stalled waits for another, so every one reaches ocs
    # when it comes back and each call is charged what it ran.
    calls = 20
    account_id = "storm"
    # Each call holds 0.60 (the plan's longest call, 60 s): enough for all of them.
    await rig.account(account_id, "15.00", max_lines=calls + 1)
    # It fails no request: it holds the stops (relay.stall) until ocs comes back.
    async with (
        relay_to(rig.ocs_url, stop_failures=0) as (relay, url),
        rig.switch(tmp_path, ocs_url=url, defines={"OCS_RETRY_PAUSE_S": "1"}) as switch,
    ):
        relay.stall("/stop")
        began = time.monotonic()
        views = await call_through(
            switch,
            caller=account_id,
            dialled=FRANCE,
            calls=calls,
            hold_ms=1000,
            recv_timeout_ms=10_000,
        )
        ended_s = time.monotonic() - began
        assert Counter(seen.final for seen in views.values()) == {200: calls}, views
        # Answered, held 1 s, hung up: each BYE's 200 came back at once.
        assert ended_s < 5, (ended_s, switch.log_tail())
        assert relay.held >= 1, relay.seen  # ocs is stalled: the stops wait

        # Still stalled: OPTIONS and a new call are answered at once.
        delays = await asyncio.to_thread(_options_delays, switch.port, 10)
        assert None not in delays and max(d for d in delays if d) < 0.5, delays
        began = time.monotonic()
        late = await call_through(switch, caller=account_id, dialled=FRANCE, hold_ms=500)
        assert [seen.final for seen in late.values()] == [200], switch.log_tail()
        assert time.monotonic() - began < 3, switch.log_tail()

        # A round that failed while ocs stalled (two tries timed out)...
        async def round_failed() -> bool:
            return "failed (28) after 2 tries" in switch.log_tail(200_000)

        await eventually(round_failed, within=10, what="a stop's round to fail")
        # ... is not the end: ocs comes back, and every call gets its stop.
        relay.resume()
        cdrs = await rig.wait_cdrs(account_id, calls + 1, within=20)
        log = switch.log_tail(200_000)
        assert "given up" not in log, log
    assert {cdr.call_id for cdr in cdrs} == set(views) | set(late)
    for cdr in cdrs:
        # Charged once, what it ran (1 s and a little: 2 s, 3 on a slow machine), by
        # the switch's stop, not its grant by the janitor.
        assert cdr.duration in (1, 2, 3), cdr
        assert (cdr.charged, cdr.cause) == (cdr.duration * 10_000, "normal"), cdr
    view = await rig.settled(account_id)
    assert parse_amount(view["balance"]) == 15_000_000 - sum(cdr.charged for cdr in cdrs)


async def test_a_stop_refused_4xx_is_not_sent_again(rig: Rig, tmp_path: Path) -> None:
    # A 4xx is final (the call unknown, the stop itself wrong): sending it again would get
    # the same answer. The switch logs it once and leaves the call to ocs's janitor, which
    # charges the grant when it has run out.
    grant = 3
    account_id = "stop-refused"
    await rig.account(account_id, "0.03")  # 0.01 a second to France: 3 s
    async with rig.relayed_call(
        tmp_path, account_id, stop_failure=404, stop_failures=1, hold_ms=1000
    ) as (relay, switch, call_id, _):
        refused = f"ocs: stop of {call_id} after "

        async def logged() -> bool:
            return refused in switch.log_tail()

        await eventually(logged, what="the refused stop in Kamailio's log")
        assert "refused (404), not sent again" in switch.log_tail()
        # Logged after the last try: there was only the one.
        assert relay.statuses("/stop") == [404], relay.seen
        assert f"ocs: stop of {call_id} got " not in switch.log_tail()
    await rig.expired_at_grant(account_id, call_id, grant, 30_000)


async def test_a_source_added_to_the_trusted_list_is_accepted_after_a_kamcmd_reload(
    rig: Rig,
) -> None:
    # Kamailio reads the trusted list when it starts. An operator who lists a new PBX
    # reloads it through the control socket instead of restarting the switch (which
    # would cut every call in progress).
    await rig.account("new-pbx", "5.00")
    before = await call_through(
        rig.kamailio, caller="new-pbx", dialled=FRANCE, hold_ms=500, source="127.0.0.4"
    )
    assert [seen.final for seen in before.values()] == [403], rig.kamailio.log_tail()

    listed = rig.kamailio.trusted_file.read_text()
    rig.kamailio.trusted_file.write_text(listed + "1 127.0.0.4\n")
    reloaded = await asyncio.to_thread(rig.kamailio.rpc, "permissions.addressReload")
    assert reloaded.strip() == "Reload OK", reloaded
    assert "127.0.0.4" in await asyncio.to_thread(rig.kamailio.rpc, "permissions.addressDump")

    call_id, _ = await one_call(
        rig.kamailio,
        final=200,
        caller="new-pbx",
        dialled=FRANCE,
        hold_ms=500,
        source="127.0.0.4",
    )
    await rig.charged_per_second("new-pbx", call_id)


async def test_a_source_flooding_invites_is_refused_503_past_the_rate_limit(
    rig: Rig, tmp_path: Path
) -> None:
    # Every INVITE from a trusted source is an authorization in ocs. A PBX that loops, or
    # is taken over, could send thousands a second; nothing limited them before. A
    # source past OCS_PIKE_DENSITY INVITEs per OCS_PIKE_UNIT_S seconds (pike: blocking
    # comes between the density and three times it) is now answered 503 by the switch
    # itself, while another source's call still goes through.
    density = 3
    burst = 20
    await rig.account("flooder", "0.00")  # ocs refuses each call it is asked: 402
    await rig.account("calm", "5.00")
    async with rig.switch(
        tmp_path,
        trusted=("127.0.0.1", "127.0.0.3"),
        defines={"OCS_PIKE_DENSITY": str(density), "OCS_PIKE_UNIT_S": "10"},
    ) as switch:
        asked = await authorizations_asked(rig.http)
        flood = await call_through(
            switch, caller="flooder", dialled=FRANCE, calls=burst, source="127.0.0.3"
        )
        finals = Counter(seen.final for seen in flood.values())
        assert set(finals) == {402, 503}, (finals, switch.log_tail())
        assert 1 <= finals[402] <= 3 * density, finals
        # ocs was asked about the ones let through only.
        assert await authorizations_asked(rig.http) - asked == finals[402]
        log = switch.log_tail()
        assert "ocs: 127.0.0.3 is over the INVITE rate limit (3 in 10 s)" in log, log

        call_id, _ = await one_call(switch, final=200, caller="calm", dialled=FRANCE, hold_ms=500)
        await rig.charged_per_second("calm", call_id)
    await rig.untouched("flooder", "0.000000")
