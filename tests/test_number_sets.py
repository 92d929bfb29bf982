"""Number sets (decision 0030): pools of DIDs and toll-free numbers imported from CSV,
handed out by the plan's priority or by name, never to two accounts, each number
triggering its recurring charge on the next invoice and identifying its account for
inbound calls, which are rated by the plan's inbound tariff (real Redis and PostgreSQL).
"""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from ocs import api_tokens
from ocs.billing import number_sets
from ocs.billing.store import Charge, Subscription, create_charge, subscribe
from ocs.config import Settings
from ocs.errors import OcsError, Reason
from ocs.services import Services
from tests.billing_helpers import (
    EUR,
    billed_plan,
    customer,
    invoices,
    run,
    today_in,
    zone_off_utcs_day,
)
from tests.conftest import (
    RunningApp,
    RunningRadius,
    account,
    add_plan,
    bearer,
    caught_up,
    eventually,
)
from tests.helpers import Pairs, Raw, acct, auth, new_account, ocs_cli, send


def csv_body(text: str) -> Raw:
    """A CSV request body."""
    return Raw(text, "text/csv")


async def make_set(app: RunningApp, set_id: str, kind: str, csv: str, priority: int) -> None:
    """A set of ``kind`` with the numbers of ``csv``, serving the retail plan."""
    status, body = await send(app, "POST", "/v1/number-sets", {"id": set_id, "kind": kind})
    assert status == 201, body
    status, body = await send(app, "POST", f"/v1/number-sets/{set_id}/numbers", csv_body(csv))
    assert status == 200, body
    status, body = await send(
        app, "PUT", f"/v1/number-sets/{set_id}/plans/retail", {"priority": priority}
    )
    assert (status, body["priority"]) == (200, priority), body


async def take(app: RunningApp, account_id: str, **fields: object) -> tuple[int, Any]:
    """POST /v1/accounts/{account_id}/numbers."""
    return await send(app, "POST", f"/v1/accounts/{account_id}/numbers", fields)


async def test_numbers_go_by_priority_then_by_name_until_none_is_left(app: RunningApp) -> None:
    await add_plan(app.services)
    await make_set(app, "low", "did", "number\n4420100\n+4420101\n", 10)
    await make_set(app, "high", "did", "number,on_net\n4420200,false\n4420201,no\n", 20)
    for account_id in ("a1", "a2", "a3"):
        await new_account(app, account_id)

    # The set of priority 20 is drawn from first, in number order.
    status, first = await take(app, "a1")
    assert (status, first["number"], first["number_set"], first["kind"]) == (
        201,
        "4420200",
        "high",
        "did",
    )
    assert (await take(app, "a2"))[1]["number"] == "4420201"
    # A named number, then the last free one (of the lower set).
    status, named = await take(app, "a3", number="+4420101")
    assert (status, named["number"], named["number_set"]) == (201, "4420101", "low")
    assert (await take(app, "a3"))[1]["number"] == "4420100"

    status, body = await take(app, "a1")
    assert (status, body["error"]["reason"], body["error"]["field"]) == (404, "not_found", "number")
    assert "no free number left" in body["error"]["message"]
    status, body = await take(app, "a2", number="4420200")
    assert (status, body["error"]["reason"]) == (409, "account_exists")
    status, body = await take(app, "a2", number="4420999")
    assert (status, body["error"]["reason"]) == (404, "not_found")

    status, listed = await send(app, "GET", "/v1/number-sets")
    assert status == 200
    assert [(s["id"], s["numbers"], s["free"], s["plans"]) for s in listed["number_sets"]] == [
        ("high", 2, 0, [{"plan": "retail", "priority": 20, "charge": None}]),
        ("low", 2, 0, [{"plan": "retail", "priority": 10, "charge": None}]),
    ]
    status, held = await send(app, "GET", "/v1/accounts/a3/numbers")
    assert [n["number"] for n in held["numbers"]] == ["4420100", "4420101"]

    # Released, the number is the next free one again.
    status, body = await send(app, "DELETE", "/v1/accounts/a1/numbers/4420200")
    assert (status, body) == (200, {"account": "a1", "number": "4420200"})
    status, body = await send(app, "DELETE", "/v1/accounts/a1/numbers/4420200")
    assert (status, body["error"]["reason"]) == (404, "not_found")
    assert (await take(app, "a2"))[1]["number"] == "4420200"


async def test_a_bad_csv_is_refused_whole_naming_its_lines(app: RunningApp) -> None:
    status, _ = await send(app, "POST", "/v1/number-sets", {"id": "s1", "kind": "toll_free"})
    assert status == 201
    status, body = await send(
        app, "POST", "/v1/number-sets/s1/numbers", csv_body("number\n800\n12ab\n801\n800\n")
    )
    assert (status, body["error"]["reason"], body["error"]["field"]) == (
        400,
        "invalid_deck",
        "numbers",
    )
    assert [p["line"] for p in body["error"]["problems"]] == [3, 5]
    assert [p["column"] for p in body["error"]["problems"]] == ["number", "number"]
    status, body = await send(app, "POST", "/v1/number-sets/s1/numbers", csv_body("number\n800\n"))
    assert (status, body) == (200, {"number_set": "s1", "added": 1})
    # A number already in a set is a problem of its line; nothing else is added.
    status, body = await send(
        app, "POST", "/v1/number-sets/s1/numbers", csv_body("number\n802\n800\n")
    )
    assert status == 400
    assert [(p["line"], p["message"]) for p in body["error"]["problems"]] == [
        (3, "number: 800 is in set s1 already")
    ]
    status, listed = await send(app, "GET", "/v1/number-sets")
    assert listed["number_sets"][0]["numbers"] == 1
    for method, path, payload, field in (
        ("POST", "/v1/number-sets", {"id": "s2", "kind": "fax"}, "kind"),
        ("POST", "/v1/number-sets", {"id": "s1", "kind": "did"}, "id"),
        ("PUT", "/v1/number-sets/s1/plans/retail", {"priority": -1}, "priority"),
    ):
        status, body = await send(app, method, path, payload)
        assert (status, body["error"]["field"]) == (400, field), body
    status, body = await send(app, "POST", "/v1/number-sets/nope/numbers", csv_body("number\n1\n"))
    assert (status, body["error"]["field"]) == (404, "number_set_id")


async def test_concurrent_takers_never_share_a_number(services: Services) -> None:
    await add_plan(services)
    await number_sets.create_set(services.pool, "pool", "did")
    await number_sets.import_numbers(
        services.pool, "pool", "number\n" + "".join(f"44201{n:02d}\n" for n in range(10))
    )
    await number_sets.assign_to_plan(services.pool, "pool", "retail", 1)
    from ocs.balances.accounts import AccountSpec

    for n in range(16):
        await services.accounts.create(AccountSpec(f"c{n}", plan_id="retail"))

    async def one(n: int) -> str | None:
        try:
            taken = await number_sets.take_number(services.pool, services.store, f"c{n}")
        except OcsError as error:
            assert error.reason is Reason.NOT_FOUND
            return None
        return taken.number

    got = await asyncio.gather(*(one(n) for n in range(16)))
    numbers = [g for g in got if g is not None]
    assert sorted(numbers) == [f"44201{n:02d}" for n in range(10)]
    assert got.count(None) == 6


async def test_each_number_triggers_its_kind_s_charge_on_the_next_invoice(
    services: Services,
) -> None:
    await billed_plan(services)
    await create_charge(
        services.pool,
        Charge(
            "did-rc",
            "Number Recurring Charge",
            "DID",
            "EUR",
            2 * EUR,
            "triggered",
            cadence="monthly",
        ),
    )
    await create_charge(
        services.pool,
        Charge(
            "tf-rc",
            "Toll-Free Number Recurring Charge",
            "TF",
            "EUR",
            3 * EUR,
            "triggered",
            cadence="monthly",
        ),
    )
    for set_id, kind, number, priority in (
        ("dids", "did", "4420100", 20),
        ("free", "toll_free", "8005550100", 10),
    ):
        await number_sets.create_set(services.pool, set_id, kind)
        await number_sets.import_numbers(services.pool, set_id, f"number\n{number}\n")
        await number_sets.assign_to_plan(services.pool, set_id, "retail", priority)
    await customer(services, "n1", None, date(2026, 1, 1))
    on = date(2026, 3, 17)
    did = await number_sets.take_number(services.pool, services.store, "n1", on=on)
    toll_free = await number_sets.take_number(services.pool, services.store, "n1", on=on)
    assert (did.number, did.charge_id) == ("4420100", "did-rc")
    assert (toll_free.number, toll_free.charge_id) == ("8005550100", "tf-rc")

    await run(services, "2026-03")

    [invoice] = await invoices(services)
    assert sorted((line["description"], line["amount"]) for line in invoice["lines"]) == [
        # From Mar 17: 2.00 * 15 / 31 = 0.967741.. -> 0.97
        ("Number Recurring Charge 4420100 (15/31 days)", 970_000),
        # 3.00 * 15 / 31 = 1.451612.. -> 1.45
        ("Toll-Free Number Recurring Charge 8005550100 (15/31 days)", 1_450_000),
    ]
    assert invoice["total"] == 2_420_000
    # Released on Apr 11: April bills 10 of 30 days of the DID, 2.00 * 10 / 30 -> 0.67.
    await number_sets.release(services.pool, services.store, "n1", "4420100", date(2026, 4, 11))
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    april = (await invoices(services))[1]
    assert sorted((line["description"], line["amount"]) for line in april["lines"]) == [
        ("Number Recurring Charge 4420100 (10/30 days)", 670_000),
        ("Toll-Free Number Recurring Charge 8005550100", 3 * EUR),
    ]


async def test_a_number_taken_and_released_without_a_day_counts_where_the_plan_bills(
    services: Services,
) -> None:
    """A take or release with no day is dated today where the plan bills, the zone its
    invoices cut their periods in. Before, it was today in UTC: a number taken at 20:00
    in New York on 31 March started on 1 April, and its charge moved to April's invoice."""
    zone = zone_off_utcs_day()
    await billed_plan(services, tz=zone)
    await create_charge(
        services.pool,
        Charge("did-rc", "Number Recurring Charge", "DID", "EUR", 2 * EUR, "triggered",
               cadence="monthly"),
    )  # fmt: skip
    await number_sets.create_set(services.pool, "dids", "did")
    await number_sets.import_numbers(services.pool, "dids", "number\n4420100\n")
    await number_sets.assign_to_plan(services.pool, "dids", "retail", 10)
    await customer(services, "n1", None, date(2026, 1, 1))

    today = today_in(zone)
    taken = await number_sets.take_number(services.pool, services.store, "n1")
    assert taken.assigned_on == today
    await number_sets.release(services.pool, services.store, "n1", "4420100")
    async with services.pool.acquire() as conn:
        charged = await conn.fetchrow(
            "SELECT start_date, end_date FROM account_numbers WHERE account_id = 'n1'"
        )
        [event] = await conn.fetch(
            "SELECT data FROM events WHERE kind = 'number.assigned' AND subject = 'n1'"
        )
    # Its charge runs from that day, and stops on it (released the same day).
    assert (charged["start_date"], charged["end_date"]) == (today, today)
    assert json.loads(event["data"])["on"] == today.isoformat()


async def numbered_customers(services: Services) -> None:
    """Two customers of the billed plan, whose DID set (two numbers) triggers did-rc."""
    await billed_plan(services)
    await create_charge(
        services.pool,
        Charge(
            "did-rc",
            "Number Recurring Charge",
            "DID",
            "EUR",
            2 * EUR,
            "triggered",
            cadence="monthly",
        ),
    )
    await number_sets.create_set(services.pool, "dids", "did")
    await number_sets.import_numbers(services.pool, "dids", "number\n4420100\n4420101\n")
    await number_sets.assign_to_plan(services.pool, "dids", "retail", 10)
    await customer(services, "n1", None, date(2026, 1, 1))
    await customer(services, "n2", None, date(2026, 1, 1))


async def number_rows(services: Services) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(who holds each number, the number charges: account, number, end date)."""
    async with services.pool.acquire() as conn:
        held = await conn.fetch("SELECT number, account_id FROM number_set_numbers ORDER BY 1")
        charges = await conn.fetch(
            "SELECT account_id, number, end_date FROM account_numbers ORDER BY id"
        )
    return [tuple(r) for r in held], [tuple(r) for r in charges]


class RedisBlip:
    """``BalanceStore.set_did`` failing once with a lost connection: after the write
    (``applied``: its reply lost) or before it."""

    def __init__(self, services: Services, monkeypatch: pytest.MonkeyPatch, applied: bool):
        self.real = services.store.set_did
        self.applied = applied
        self.failed = False
        monkeypatch.setattr(services.store, "set_did", self)

    async def __call__(self, number: str, account_id: str | None) -> None:
        if not self.failed:
            self.failed = True
            if self.applied:
                await self.real(number, account_id)
            raise RedisConnectionError("connection lost")
        await self.real(number, account_id)


@pytest.mark.parametrize("applied", [False, True])
async def test_a_take_failing_at_redis_leaves_no_charge_and_the_number_free(
    services: Services, monkeypatch: pytest.MonkeyPatch, applied: bool
) -> None:
    """The charge row was committed on its own connection: a take failing after it
    billed the account for a number it did not hold, and every later take of that
    number, by anyone, was refused 400 "triggers did-rc already"."""
    await numbered_customers(services)
    blip = RedisBlip(services, monkeypatch, applied)
    on = date(2026, 3, 1)
    with pytest.raises(RedisConnectionError):
        await number_sets.take_number(services.pool, services.store, "n1", on=on)
    assert blip.failed
    assert await number_rows(services) == ([("4420100", None), ("4420101", None)], [])
    assert await services.store.did_account("4420100") is None

    # The pool is not stuck: the next take gets the same first number, charged once.
    taken = await number_sets.take_number(services.pool, services.store, "n2", on=on)
    assert (taken.number, taken.charge_id) == ("4420100", "did-rc")
    assert await number_rows(services) == (
        [("4420100", "n2"), ("4420101", None)],
        [("n2", "4420100", None)],
    )
    assert await services.store.did_account("4420100") == "n2"


@pytest.mark.parametrize("applied", [False, True])
async def test_a_release_failing_at_redis_leaves_the_number_held_and_charged(
    services: Services, monkeypatch: pytest.MonkeyPatch, applied: bool
) -> None:
    await numbered_customers(services)
    await number_sets.take_number(services.pool, services.store, "n1", on=date(2026, 3, 1))
    blip = RedisBlip(services, monkeypatch, applied)
    with pytest.raises(RedisConnectionError):
        await number_sets.release(services.pool, services.store, "n1", "4420100", date(2026, 4, 1))
    assert blip.failed
    # Still n1's: held, charged, and its inbound calls n1's.
    assert await number_rows(services) == (
        [("4420100", "n1"), ("4420101", None)],
        [("n1", "4420100", None)],
    )
    assert await services.store.did_account("4420100") == "n1"

    await number_sets.release(services.pool, services.store, "n1", "4420100", date(2026, 4, 1))
    assert await number_rows(services) == (
        [("4420100", None), ("4420101", None)],
        [("n1", "4420100", date(2026, 4, 1))],
    )
    assert await services.store.did_account("4420100") is None


class TakeMeanwhile:
    """The pool, whose connection given back after a failed transaction (rolled back,
    the number's row free again) first lets another account take the number: the
    failed take's put-back in Redis comes after that take committed and told Redis."""

    def __init__(self, services: Services, account_id: str, number: str) -> None:
        self._services = services
        self._account_id = account_id
        self._number = number
        self.taken: number_sets.TakenNumber | None = None

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        """A connection of the real pool; on a failure, the other take runs first."""
        async with self._services.pool.acquire() as conn:
            try:
                yield conn
            except BaseException:
                if self.taken is None:
                    self.taken = await number_sets.take_number(
                        self._services.pool,
                        self._services.store,
                        self._account_id,
                        self._number,
                        date(2026, 3, 1),
                    )
                raise


async def test_a_failed_take_leaves_the_number_to_the_account_that_took_it_meanwhile(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """n1's take told Redis, then failed (the reply lost); n2 took the same number and
    committed before n1's put-back ran, which deleted n2's reference: PostgreSQL said
    n2 held and was charged for the number, and its inbound calls reached nobody."""
    await numbered_customers(services)
    RedisBlip(services, monkeypatch, applied=True)
    meanwhile = TakeMeanwhile(services, "n2", "4420100")
    with pytest.raises(RedisConnectionError):
        await number_sets.take_number(
            meanwhile,  # type: ignore[arg-type]
            services.store,
            "n1",
            "4420100",
            date(2026, 3, 1),
        )
    assert meanwhile.taken is not None and meanwhile.taken.number == "4420100"
    assert await number_rows(services) == (
        [("4420100", "n2"), ("4420101", None)],
        [("n2", "4420100", None)],
    )
    assert await services.store.did_account("4420100") == "n2"


INBOUND_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment,direction
44,UK Fixed,0.010,0,60,60,outbound
4420,London DID,0.020,0,60,60,inbound
"""


async def test_an_inbound_call_to_a_taken_did_is_its_account_s_at_the_inbound_tariff(
    app: RunningApp,
) -> None:
    await add_plan(app.services, deck=INBOUND_DECK)
    await make_set(app, "london", "did", "number\n442079460001\n", 10)
    await new_account(app, "callee", balance="1.00")
    status, body = await send(
        app, "POST", "/v1/calls", {"destination": "442079460001", "direction": "inbound"}
    )
    # No account holds the number yet: the switch must name one.
    assert (status, body["error"]["field"]) == (400, "account"), body
    assert (await take(app, "callee"))[0] == 201

    status, granted = await send(
        app,
        "POST",
        "/v1/calls",
        {"destination": "+442079460001", "direction": "inbound", "call_id": "in-1"},
    )
    assert status == 201, granted
    assert (granted["account"], granted["zone"], granted["direction"]) == (
        "callee",
        "London DID",
        "inbound",
    )
    status, _ = await send(app, "POST", "/v1/calls/in-1/start")
    assert status == 200
    status, stopped = await send(app, "POST", "/v1/calls/in-1/stop", {"duration": 90})
    # 90 s in blocks of 60 at 0.02/min: 120 s = 0.04.
    assert (status, stopped["account"], stopped["cost"]) == (200, "callee", "0.040000"), stopped
    await caught_up(app.services)
    assert (await account(app, "callee"))["balance"] == "0.960000"

    # Released, the number identifies no one again.
    assert (await send(app, "DELETE", "/v1/accounts/callee/numbers/442079460001"))[0] == 200
    status, _ = await send(
        app, "POST", "/v1/calls", {"destination": "442079460001", "direction": "inbound"}
    )
    assert status == 400


async def test_a_call_to_an_on_net_number_rates_in_the_on_net_zone(app: RunningApp) -> None:
    # The On-net tariff's own prefix covers neither number: only the on-net ranges do.
    deck = INBOUND_DECK + "999,On-net,0.001,0,60,60,outbound\n"
    await add_plan(app.services, deck=deck)
    await make_set(app, "own", "did", "number,on_net\n447911000001,true\n", 10)
    await new_account(app, "caller", balance="1000.00", max_lines=5)

    async def zone(destination: str) -> str:
        status, granted = await send(
            app, "POST", "/v1/calls", {"account": "caller", "destination": destination}
        )
        assert status == 201, granted
        return str(granted["zone"])

    # The catalog reloads the on-net ranges it was told of.
    await app.services.catalog.reload()
    assert await zone("447911000001") == "On-net"
    assert await zone("442012345678") == "UK Fixed"

    # The operator's own ranges, replaced, leave the sets' on-net numbers on-net.
    status, saved = await send(app, "PUT", "/v1/on-net", {"prefixes": ["4420"]})
    assert (status, saved["prefixes"]) == (200, 1), saved
    await app.services.catalog.reload()
    assert await zone("442012345678") == "On-net"
    assert await zone("447911000001") == "On-net"


async def test_only_an_admin_may_import_on_net_numbers(app: RunningApp) -> None:
    """An on-net number changes how every plan rates it, as PUT /v1/on-net (admin) does:
    an operator's file with one is refused whole, naming on_net."""
    await add_plan(app.services, deck=INBOUND_DECK + "999,On-net,0.001,0,60,60,outbound\n")
    await new_account(app, "caller", balance="1000.00", max_lines=5)
    operator = await api_tokens.create(app.services.pool, "care", "operator")
    as_operator = {**bearer(operator), "Content-Type": "text/csv"}
    status, body = await send(app, "POST", "/v1/number-sets", {"id": "mine", "kind": "did"})
    assert status == 201, body

    for csv in ("number,on_net\n4,true\n", "number,on_net\n4420100,false\n442079460001,yes\n"):
        status, body, _ = await app.anonymous(
            "POST", "/v1/number-sets/mine/numbers", headers=as_operator, data=csv
        )
        assert (status, body["error"]["reason"], body["error"]["field"]) == (
            403,
            "forbidden",
            "on_net",
        ), body
    # Nothing of a refused file was added, and no call became on-net.
    status, listed = await send(app, "GET", "/v1/number-sets")
    assert [(s["id"], s["numbers"]) for s in listed["number_sets"]] == [("mine", 0)]
    await caught_up(app.services)
    status, granted = await send(
        app, "POST", "/v1/calls", {"account": "caller", "destination": "447700900123"}
    )
    assert (status, granted["zone"]) == (201, "UK Fixed"), granted

    # Numbers that are not on-net are the operator's to import; an admin's may be on-net.
    status, body, _ = await app.anonymous(
        "POST",
        "/v1/number-sets/mine/numbers",
        headers=as_operator,
        data="number,on_net\n4420100,false\n4420101,no\n",
    )
    assert (status, body["added"]) == (200, 2), body
    status, body = await send(
        app, "POST", "/v1/number-sets/mine/numbers", csv_body("number,on_net\n4420102,true\n")
    )
    assert (status, body["added"]) == (200, 1), body


async def test_an_on_net_number_is_that_number_not_a_prefix(app: RunningApp) -> None:
    """A set's on-net number is one destination: the longer numbers starting with it
    (another subscriber's extension, a whole country for a number "4") rate as before."""
    await add_plan(app.services, deck=INBOUND_DECK + "999,On-net,0.001,0,60,60,outbound\n")
    await make_set(app, "own", "did", "number,on_net\n4,true\n442079460001,true\n", 10)
    await new_account(app, "caller", balance="1000.00", max_lines=5)
    await app.services.catalog.reload()

    async def zone(destination: str) -> str:
        status, granted = await send(
            app, "POST", "/v1/calls", {"account": "caller", "destination": destination}
        )
        assert status == 201, granted
        return str(granted["zone"])

    assert await zone("442079460001") == "On-net"
    assert await zone("4420794600019") == "UK Fixed"
    assert await zone("447700900123") == "UK Fixed"
    # The operator's own ranges (PUT /v1/on-net) stay prefixes.
    status, _ = await send(app, "PUT", "/v1/on-net", {"prefixes": ["4477"]})
    assert status == 200
    await app.services.catalog.reload()
    assert await zone("447700900123") == "On-net"
    assert await zone("4420794600019") == "UK Fixed"


@pytest.mark.parametrize("number", ["12ab", "+", "1" * 33])
async def test_a_bad_number_is_named(app: RunningApp, number: str) -> None:
    await add_plan(app.services)
    await new_account(app, "a1")
    status, body = await take(app, "a1", number=number)
    assert (status, body["error"]["field"]) == (400, "number"), body


async def test_the_cli_creates_imports_assigns_and_takes(
    services: Services, settings: Settings, tmp_path: Path
) -> None:
    await add_plan(services)
    from ocs.balances.accounts import AccountSpec

    await services.accounts.create(AccountSpec("k1", plan_id="retail"))
    # Billed from January: a number may be the account's from then (not before its first day).
    await subscribe(services.pool, Subscription("k1", "retail", date(2026, 1, 1)))
    (tmp_path / "numbers.csv").write_text("number,on_net\n4420500,false\n4420501,false\n")
    (tmp_path / "bad.csv").write_text("number\n44x\n")

    async def cli(*args: str) -> Any:
        code, out, err = await ocs_cli(settings, tmp_path, *args)
        assert code == 0, err
        return json.loads(out)

    made = await cli("number-sets", "create", "tf", "--kind", "toll_free")
    assert (made["id"], made["kind"], made["numbers"]) == ("tf", "toll_free", 0)
    assert await cli("number-sets", "import", "tf", "numbers.csv") == {
        "number_set": "tf",
        "added": 2,
    }
    code, _, err = await ocs_cli(settings, tmp_path, "number-sets", "import", "tf", "bad.csv")
    assert code != 0 and "line 2" in err, err
    await cli("number-sets", "assign", "tf", "--plan", "retail", "--priority", "5")
    taken = await cli("numbers", "take", "k1", "--number", "4420501", "--on", "2026-03-01")
    assert (taken["number"], taken["kind"], taken["assigned_on"]) == (
        "4420501",
        "toll_free",
        "2026-03-01",
    )
    assert [n["number"] for n in (await cli("numbers", "list", "k1"))["numbers"]] == ["4420501"]
    # A take id: its repeat answers the number it took and takes no second one.
    once = await cli("numbers", "take", "k1", "--take-id", "t-1")
    again = await cli("numbers", "take", "k1", "--take-id", "t-1")
    assert (once["number"], once["repeated"]) == ("4420500", False)
    assert again == {**once, "repeated": True}
    await cli("numbers", "release", "k1", "4420500")
    [listed] = (await cli("number-sets", "list"))["number_sets"]
    assert (listed["numbers"], listed["free"]) == (2, 1)
    assert await cli("numbers", "release", "k1", "4420501", "--on", "2026-03-05") == {
        "account": "k1",
        "number": "4420501",
    }
    shown = await cli("ivr", "plan", "retail", "--announce", "both", "--language", "it")
    assert (shown["announce"], shown["language"], shown["voicemail_enabled"]) == (
        "both",
        "it",
        False,
    )
    own = await cli("ivr", "account", "k1", "--announce", "none")
    assert own == {"account": "k1", "announce": "none", "language": None}
    # The plan's default came through the catalog (the CLI is another process): its
    # language, under the account's own announcement.
    await caught_up(services)
    found = await services.calls.ivr_of("k1")
    assert (found.announce, found.language) == ("none", "it")


async def test_an_inbound_radius_call_to_a_taken_did_is_its_account_s(
    radius: RunningRadius,
) -> None:
    app = radius.app
    await add_plan(app.services, deck=INBOUND_DECK)
    await make_set(app, "london", "did", "number\n442079460001\n", 10)
    await new_account(app, "callee", balance="1.00")
    # The switch says the call comes in to the DID; no User-Name.
    inbound: Pairs = [
        ("NAS-IP-Address", "127.0.0.1"),
        ("Called-Station-Id", "442079460001"),
        ("Cisco-AVPair", "ocs-direction=inbound"),
        ("h323-conf-id", "h323-conf-id=IN-R1"),
    ]
    # No account holds the number yet: refused, as an unknown account.
    refused = await auth(radius, inbound)
    assert refused.code == "Access-Reject", refused.output
    assert (await take(app, "callee"))[0] == 201

    granted = await auth(radius, inbound)
    assert granted.code == "Access-Accept", granted.output
    await acct(radius, "Start", inbound)
    await acct(radius, "Stop", [*inbound, ("Acct-Session-Time", "90")])
    await caught_up(app.services)
    # 90 s in blocks of 60 at the inbound 0.02/min: 120 s = 0.04, from the callee.
    assert (await account(app, "callee"))["balance"] == "0.960000"

    async def cdr_of_call() -> Any:
        async with app.services.pool.acquire() as conn:
            return await conn.fetchrow(
                "SELECT account_id, zone, direction FROM cdrs WHERE call_id = 'IN-R1'"
            )

    async def cdr_written() -> bool:
        # The ledger writer stores the CDR after the stop is answered: wait for the row.
        return await cdr_of_call() is not None

    await eventually(cdr_written, what="the call's CDR in PostgreSQL")
    assert tuple(await cdr_of_call()) == ("callee", "London DID", "inbound")
