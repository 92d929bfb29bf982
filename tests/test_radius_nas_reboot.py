"""A NAS that restarts and numbers its Acct-Session-Ids from 1 again (decision 0059), and
an Accounting-On whose Event-Timestamp is behind ocs's clock (decision 0005's addendum).

Exact packets over real UDP from 127.0.0.1, client ``gw-a``, whose NAS 10.0.0.1
states its ``NAS-IP-Address``. A call of the NAS's life before its restart is
authorized by a process whose clock reads an hour earlier (``Rig.before``): its record
says it was authorized then, as a call of an hour ago would, while its Accounting-On,
received now, tells when the NAS restarted. ``Rig.other`` is another process of the
same deployment (``--workers``), which took no Accounting-On.

Rates (tests/conftest.py RETAIL_DECK, EUR): Germany (49) 0.012 a minute, by the second:
0.0002 a second. Accounts hold 1.00.
"""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import pytest

from ocs.balances import keys
from ocs.charging.lifecycle import CallService
from ocs.config import RadiusClientConfig, with_overrides
from ocs.radius.server import RadiusServer
from tests.conftest import RunningApp, account, add_plan, eventually, started_radius
from tests.helpers import Pairs, new_account
from tests.radius_udp import UdpClient, access_request, accounting_request, decode_reply, wire

GERMANY = "4930901820"
SECRET = "secret-of-gw-a"
CLIENTS = (RadiusClientConfig(name="gw-a", network="127.0.0.1/32", secret=SECRET),)
NAS = [("NAS-IP-Address", "10.0.0.1")]


@dataclass
class Rig:
    """The server of this process (``now``), one whose clock reads an hour back
    (``before``) and another process's (``other``), and the NAS's socket."""

    app: RunningApp
    now: RadiusServer
    before: RadiusServer
    other: RadiusServer
    nas: UdpClient

    async def access(self, server: RadiusServer, user: str, session: str) -> str:
        """An Access-Request for a call to Germany; the reply's code name (and a
        refusal's message)."""
        pairs = [("User-Name", user), *NAS, ("Acct-Session-Id", session)]
        request = access_request(SECRET, [*pairs, ("Called-Station-Id", GERMANY)])
        data = await self.nas.exchange(wire(request), server.auth_port)
        assert data is not None, "no answer to an Access-Request"
        reply = decode_reply(request, data)
        if reply.code == 2:
            return "Access-Accept"
        return f"Access-Reject: {reply.get('Reply-Message')}"

    async def accounting(self, server: RadiusServer, status: str, pairs: Pairs) -> None:
        """An Accounting-Request from the NAS, which must be answered."""
        request = accounting_request(SECRET, [("Acct-Status-Type", status), *NAS, *pairs])
        data = await self.nas.exchange(wire(request), server.acct_port)
        assert data is not None, f"no Accounting-Response to a {status}"

    async def call(self, server: RadiusServer, user: str, session: str, seconds: int) -> None:
        """A whole call: granted, started and stopped after ``seconds``."""
        assert await self.access(server, user, session) == "Access-Accept"
        ids = [("User-Name", user), ("Acct-Session-Id", session)]
        await self.accounting(server, "Start", ids)
        await self.accounting(server, "Stop", [*ids, ("Acct-Session-Time", str(seconds))])

    async def cdrs(self, account_id: str) -> list[tuple[str, int, str]]:
        """(call id, duration, termination cause) of each CDR of the account, by id."""
        async with self.app.services.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT call_id, duration, termination_cause FROM cdrs"
                " WHERE account_id = $1 ORDER BY call_id, duration",
                account_id,
            )
        return [tuple(row) for row in rows]


def _an_hour_ago() -> float:
    return time.time() - 3600


@asynccontextmanager
async def _rig_of(app: RunningApp) -> AsyncIterator[Rig]:
    """The three servers over ``app``'s services and the NAS's socket, closed after."""
    await add_plan(app.services)
    services = app.services
    # Its calls wait for their Start longer than they are old: none expires meanwhile.
    earlier = with_overrides(services.settings, start_timeout=7200)
    before_calls = CallService(
        services.catalog, services.store, earlier, services.digests, clock=_an_hour_ago
    )
    other_calls = CallService(services.catalog, services.store, services.settings, services.digests)
    servers = [
        await started_radius(services, CLIENTS),
        await started_radius(replace(services, calls=before_calls), CLIENTS),
        await started_radius(replace(services, calls=other_calls), CLIENTS),
    ]
    nas = await UdpClient.open("127.0.0.1")
    try:
        yield Rig(app, *servers, nas)
    finally:
        nas.close()
        for server in servers:
            server.close_listeners()
            await server.drain(5)


@pytest.fixture
async def rig(app: RunningApp) -> AsyncIterator[Rig]:
    async with _rig_of(app) as made:
        yield made


@pytest.fixture
async def backend_rig(backend_app: RunningApp) -> AsyncIterator[Rig]:
    """The rig once on a standalone Redis, once on a Redis Cluster."""
    async with _rig_of(backend_app) as made:
        yield made


def session(user: str, number: str, seconds: int | None = None, delay: int = 0) -> Pairs:
    """A call's accounting attributes: account, session id, and a Stop's time and delay."""
    pairs: Pairs = [("User-Name", user), ("Acct-Session-Id", number)]
    if seconds is not None:
        pairs.append(("Acct-Session-Time", str(seconds)))
    if delay:
        pairs.append(("Acct-Delay-Time", str(delay)))
    return pairs


# The NAS took ten minutes to get its Accounting-On through: it restarted then.
RESTART = [("Acct-Delay-Time", "600")]


async def test_a_session_id_numbered_afresh_after_a_restart_is_a_new_call(rig: Rig) -> None:
    # Call 00000001 stopped after 60 s; the NAS restarted and numbered from 00000001
    # again: its next call was refused for 7 days, "has already been stopped".
    await new_account(rig.app, "nr-1")
    await rig.call(rig.before, "nr-1", "00000001", 60)
    await rig.accounting(rig.now, "Accounting-On", RESTART)
    assert await rig.access(rig.now, "nr-1", "00000001") == "Access-Accept"
    await rig.accounting(rig.now, "Start", session("nr-1", "00000001"))
    await rig.accounting(rig.now, "Stop", session("nr-1", "00000001", 120))
    # Its Stop again (Acct-Delay-Time updated, so no copy the reply cache knows), and
    # the first call's Stop again, come after: neither is charged a second time.
    await rig.accounting(rig.now, "Stop", session("nr-1", "00000001", 120, delay=3))
    await rig.accounting(rig.now, "Stop", session("nr-1", "00000001", 60, delay=700))
    view = await account(rig.app, "nr-1")
    # 60 s and 120 s at 0.012 a minute: 0.012 + 0.024.
    assert (view["balance"], view["lines_in_use"]) == ("0.964000", 0)

    async def recorded() -> bool:
        cdrs = await rig.cdrs("nr-1")
        return len(cdrs) == 2 and [row[1:] for row in cdrs] == [(60, "normal"), (120, "normal")]

    await eventually(recorded, within=10, what="each call's CDR")
    first, second = (row[0] for row in await rig.cdrs("nr-1"))
    assert first == "00000001@gw-a:10.0.0.1"
    assert second.startswith("00000001@gw-a:10.0.0.1~"), second


async def test_a_call_the_restart_closed_is_settled_by_its_late_stop_apart_from_the_new_one(
    rig: Rig,
) -> None:
    # The restart closed the live call 00000001 (nas-reboot); the NAS's next call was
    # again 00000001, refused. Now the new call is charged its own 60 s, and the old
    # call's Stop, kept by the NAS through its restart and sent late while the new call
    # is up, its 700 s, to the old call.
    await new_account(rig.app, "nr-2", balance="10.00")
    assert await rig.access(rig.before, "nr-2", "00000001") == "Access-Accept"
    await rig.accounting(rig.before, "Start", session("nr-2", "00000001"))
    await rig.accounting(rig.now, "Accounting-On", RESTART)
    assert await rig.access(rig.now, "nr-2", "00000001") == "Access-Accept"
    await rig.accounting(rig.now, "Start", session("nr-2", "00000001"))
    await rig.accounting(rig.now, "Stop", session("nr-2", "00000001", 700, delay=650))
    view = await account(rig.app, "nr-2")
    assert (view["balance"], view["lines_in_use"]) == ("9.860000", 1)  # 700 s: 0.14
    await rig.accounting(rig.now, "Stop", session("nr-2", "00000001", 60))
    view = await account(rig.app, "nr-2")
    assert (view["balance"], view["lines_in_use"]) == ("9.848000", 0)  # and 60 s: 0.012

    async def recorded() -> bool:
        causes = sorted(row[1:] for row in await rig.cdrs("nr-2"))
        return causes == [(0, "nas-reboot"), (60, "normal"), (700, "late-stop")]

    await eventually(recorded, within=10, what="the close, its late stop and the new call")


async def test_another_process_learns_of_the_restart_from_a_stopped_call(rig: Rig) -> None:
    # Another worker took the Accounting-On: this one knew of no restart, refused the
    # call, and took its Start and Stop for the old call's, which was never charged.
    await new_account(rig.app, "nr-3")
    await rig.call(rig.before, "nr-3", "00000001", 60)
    await rig.accounting(rig.now, "Accounting-On", RESTART)
    assert await rig.access(rig.other, "nr-3", "00000001") == "Access-Accept"
    await rig.accounting(rig.other, "Start", session("nr-3", "00000001"))
    await rig.accounting(rig.other, "Stop", session("nr-3", "00000001", 30))
    view = await account(rig.app, "nr-3")
    assert (view["balance"], view["lines_in_use"]) == ("0.982000", 0)  # 60 s and 30 s


@pytest.mark.cluster
async def test_a_process_that_knew_of_no_restart_does_not_settle_the_old_call_by_a_new_stop(
    backend_rig: Rig,
) -> None:
    # On either backend. The call the restart closed, and the new call of the same
    # session id authorized by the process that took the Accounting-On; its Stop came to
    # another process, which settled it as the old call's late stop: the new call held
    # its line and funds.
    await new_account(backend_rig.app, "nr-4")
    assert await backend_rig.access(backend_rig.before, "nr-4", "00000001") == "Access-Accept"
    await backend_rig.accounting(backend_rig.before, "Start", session("nr-4", "00000001"))
    await backend_rig.accounting(backend_rig.now, "Accounting-On", RESTART)
    assert await backend_rig.access(backend_rig.now, "nr-4", "00000001") == "Access-Accept"
    await backend_rig.accounting(backend_rig.now, "Start", session("nr-4", "00000001"))
    await backend_rig.accounting(backend_rig.other, "Stop", session("nr-4", "00000001", 90))
    view = await account(backend_rig.app, "nr-4")
    assert (view["balance"], view["lines_in_use"]) == ("0.982000", 0)  # 90 s: 0.018

    async def recorded() -> bool:
        causes = sorted(row[1:] for row in await backend_rig.cdrs("nr-4"))
        return causes == [(0, "nas-reboot"), (90, "normal")]

    await eventually(recorded, within=10, what="the close and the new call")


async def test_an_accounting_on_stamped_by_a_slow_clock_closes_the_calls_from_before_it(
    rig: Rig,
) -> None:
    # The NAS's clock is 10 minutes slow: its Event-Timestamp said it restarted 10
    # minutes before it did, and every call authorized in those 10 minutes before the
    # restart stayed live, its funds and line held.
    await new_account(rig.app, "nr-5")
    assert await rig.access(rig.now, "nr-5", "00000007") == "Access-Accept"
    await rig.accounting(rig.now, "Start", session("nr-5", "00000007"))
    stamp = [("Event-Timestamp", int(time.time()) - 600)]
    await rig.accounting(rig.now, "Accounting-On", stamp)
    view = await account(rig.app, "nr-5")
    assert (view["balance"], view["lines_in_use"], view["reserved"]) == ("1.000000", 0, "0.000000")

    async def recorded() -> bool:
        return [row[1:] for row in await rig.cdrs("nr-5")] == [(0, "nas-reboot")]

    await eventually(recorded, within=10, what="the call closed by the restart")


async def test_a_call_under_the_restarts_id_is_charged_by_a_process_that_knew_of_no_restart(
    rig: Rig,
) -> None:
    # This process took the Accounting-On and granted session 00000042, new to the NAS,
    # under the restart's id; its Start and Stop came to another process (another
    # worker, or this one after an ocs restart), which knew of no restart, looked for
    # the bare id only and answered unknown_call: the call held its funds and line until
    # the janitor charged it its whole grant.
    await new_account(rig.app, "nr-6")
    await rig.accounting(rig.now, "Accounting-On", RESTART)
    assert await rig.access(rig.now, "nr-6", "00000042") == "Access-Accept"
    await rig.accounting(rig.other, "Start", session("nr-6", "00000042"))
    await rig.accounting(rig.other, "Stop", session("nr-6", "00000042", 60))
    view = await account(rig.app, "nr-6")
    assert (view["balance"], view["lines_in_use"]) == ("0.988000", 0)  # 60 s: 0.012

    async def recorded() -> bool:
        cdrs = await rig.cdrs("nr-6")
        return [row[1:] for row in cdrs] == [(60, "normal")] and "~" in cdrs[0][0]

    await eventually(recorded, within=10, what="the call's CDR, under the restart's id")


async def test_an_accounting_on_retransmitted_without_a_stamp_is_the_same_restart(
    rig: Rig,
) -> None:
    # The NAS's Accounting-On came 10 s late; unanswered, it sent it again with
    # Acct-Delay-Time 9, whole seconds: a cut-off a second later, taken for a restart
    # of its own. The call granted between the two copies, under the first's id, was
    # then looked for under the second's, its Stop answered unknown_call.
    await new_account(rig.app, "nr-7")
    await rig.accounting(rig.now, "Accounting-On", [("Acct-Delay-Time", "10")])
    assert await rig.access(rig.now, "nr-7", "00000001") == "Access-Accept"
    await rig.accounting(rig.now, "Start", session("nr-7", "00000001"))
    await rig.accounting(rig.now, "Accounting-On", [("Acct-Delay-Time", "9")])
    view = await account(rig.app, "nr-7")
    assert view["lines_in_use"] == 1  # granted after the restart: not closed by its copy
    await rig.accounting(rig.now, "Stop", session("nr-7", "00000001", 5))
    view = await account(rig.app, "nr-7")
    assert (view["balance"], view["lines_in_use"]) == ("0.999000", 0)  # 5 s: 0.001
    # The NAS's calls since are of the same life: their ids carry the same restart.
    await rig.call(rig.now, "nr-7", "00000002", 5)

    async def recorded() -> bool:
        cdrs = await rig.cdrs("nr-7")
        restarts = {row[0].partition("~")[2] for row in cdrs}
        return len(cdrs) == 2 and len(restarts) == 1 and "" not in restarts

    await eventually(recorded, within=10, what="both calls' CDRs, under one restart's ids")


async def test_a_call_of_a_restart_kept_twice_is_charged_under_the_id_it_was_granted(
    rig: Rig,
) -> None:
    # The same restart kept twice, a second apart (two processes took two copies of its
    # Accounting-On at once, or a copy came before decision 0059's amendment): the call
    # granted under the first was looked for under the second's id and bare only, its
    # Stop answered unknown_call.
    await new_account(rig.app, "nr-10")
    await rig.accounting(rig.now, "Accounting-On", [("Acct-Delay-Time", "10")])
    assert await rig.access(rig.now, "nr-10", "00000001") == "Access-Accept"
    await rig.accounting(rig.now, "Start", session("nr-10", "00000001"))
    restarts = keys.nas_generations("gw-a", "10.0.0.1")
    (first,) = [int(member) for member in await rig.app.services.redis.zrange(restarts, 0, -1)]
    await rig.app.services.redis.zadd(restarts, {str(first + 1000): first + 1000})
    await rig.accounting(rig.other, "Stop", session("nr-10", "00000001", 5))
    view = await account(rig.app, "nr-10")
    assert (view["balance"], view["lines_in_use"]) == ("0.999000", 0)  # 5 s: 0.001


async def test_a_late_stop_of_the_life_before_a_graceful_reboot_settles_its_call(
    rig: Rig,
) -> None:
    # The NAS restarted (an Accounting-On, taken here an hour back by ocs's clock) and
    # granted 00000005 under that restart's id. It then rebooted gracefully: an
    # Accounting-Off closed the call, an Accounting-On followed. The call's Stop, kept
    # through the reboot, was placed by the latest two restarts only (the Off and the
    # On): before both, looked for bare and answered unknown_call, its 1000 s never
    # charged.
    await new_account(rig.app, "nr-8", balance="10.00")
    await rig.accounting(rig.before, "Accounting-On", [("Acct-Delay-Time", "4000")])
    assert await rig.access(rig.before, "nr-8", "00000005") == "Access-Accept"
    await rig.accounting(rig.before, "Start", session("nr-8", "00000005"))
    await rig.accounting(rig.now, "Accounting-Off", [("Acct-Delay-Time", "1800")])
    await rig.accounting(rig.now, "Accounting-On", [])
    view = await account(rig.app, "nr-8")
    assert (view["balance"], view["lines_in_use"]) == ("10.000000", 0)  # closed by the Off
    # Answered 2900 s ago (its 1000 s ended 1900 s ago): before the Off, after the first On.
    await rig.accounting(rig.now, "Stop", session("nr-8", "00000005", 1000, delay=1900))
    view = await account(rig.app, "nr-8")
    assert (view["balance"], view["lines_in_use"]) == ("9.800000", 0)  # 1000 s: 0.20

    async def recorded() -> bool:
        causes = sorted(row[1:] for row in await rig.cdrs("nr-8"))
        return causes == [(0, "nas-reboot"), (1000, "late-stop")]

    await eventually(recorded, within=10, what="the close and its late stop")


async def test_a_nas_without_a_clock_stamping_each_boot_alike_restarts_each_time(
    rig: Rig,
) -> None:
    # A NAS without a real-time clock stamps each boot's Accounting-On 30 s after
    # 2000-01-01. Its second boot's was taken for a retransmission of the first's: the
    # call of its first life stayed live, and the next call, of the same session id, was
    # taken for it (its Start a repeat), so that call's real time was never charged.
    await new_account(rig.app, "nr-9")
    boot = [("Event-Timestamp", 946_684_830)]
    # Its first boot's, 4000 s ago, and its call of an hour ago.
    await rig.accounting(rig.before, "Accounting-On", [*boot, ("Acct-Delay-Time", "4000")])
    assert await rig.access(rig.before, "nr-9", "00000001") == "Access-Accept"
    await rig.accounting(rig.before, "Start", session("nr-9", "00000001"))
    await rig.accounting(rig.now, "Accounting-On", [*boot, *RESTART])  # its next boot
    view = await account(rig.app, "nr-9")
    assert (view["balance"], view["lines_in_use"], view["reserved"]) == ("1.000000", 0, "0.000000")
    await rig.call(rig.now, "nr-9", "00000001", 30)
    view = await account(rig.app, "nr-9")
    assert (view["balance"], view["lines_in_use"]) == ("0.994000", 0)  # 30 s: 0.006

    async def recorded() -> bool:
        cdrs = await rig.cdrs("nr-9")
        causes = sorted(row[1:] for row in cdrs)
        return causes == [(0, "nas-reboot"), (30, "normal")] and len({r[0] for r in cdrs}) == 2

    await eventually(recorded, within=10, what="the first life's call closed, the next charged")
