"""Calling cards: a PIN batch generated, used over RADIUS and HTTP, expired and guessed.

A card is an account (``card-<batch>-<n>``) that a PIN opens through a digest:
the PIN is in the batch's CSV and nowhere else. FreeRADIUS's ``radclient`` is
the calling-card IVR: User-Name = PIN, Called-Station-Id = destination,
Calling-Station-Id = the caller, whose wrong PINs count against a guessing
limit (h323-return-code 10 once reached).

Rates used (tests/conftest.py RETAIL_DECK, EUR): Germany (49) 0.012 a minute,
1/1 seconds, no connect fee: 1.00 buys 5000 s.
"""

import asyncio
import csv
import io
import json
import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ConnectionError as RedisConnectionError

from ocs.balances import cards, keys
from ocs.balances.card_ids import card_account_id
from ocs.balances.card_orphans import discard_unfinished_batch
from ocs.balances.cards import lock_batch
from ocs.balances.digests import Digests
from ocs.balances.reconcile import reconcile
from ocs.balances.store import BalanceStore
from ocs.charging.lifecycle import CallService
from ocs.errors import OcsError, Reason
from tests.conftest import RunningApp, add_plan, eventually
from tests.helpers import ANSWERED, acct, auth, card_nas, ocs_cli, return_code

GERMANY = "4930901820"
BATCH_SIZE = 10_000
PIN_LENGTH = 12
SETUP_TIME = "h323-setup-time=*10:15:00.000 UTC Mon Mar 2 2026"


# -- helpers ----------------------------------------------------------------------


def card_call(pin: str, conf_id: str, caller: str, destination: str = GERMANY) -> list:
    return [
        ("NAS-IP-Address", "127.0.0.1"),
        ("User-Name", pin),
        ("Called-Station-Id", destination),
        ("Calling-Station-Id", caller),
        ("h323-conf-id", f"h323-conf-id={conf_id}"),
        ("h323-call-origin", "h323-call-origin=answer"),
        ("h323-setup-time", SETUP_TIME),
    ]


async def generate(app: RunningApp, **fields: Any) -> list[dict[str, str]]:
    """POST a PIN batch; the CSV's rows."""
    response = await app.client.post("/v1/pin-batches", json={"plan": "retail", **fields})
    text = await response.text()
    assert response.status == 201, text
    assert response.content_type == "text/csv"
    return list(csv.DictReader(io.StringIO(text)))


async def scrape(app: RunningApp) -> dict[tuple[str, tuple], float]:
    response = await app.client.get("/metrics")
    assert response.status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(await response.text())
        for s in family.samples
    }


def blocked_samples(scraped: dict[tuple[str, tuple], float], scope: str) -> float:
    return scraped.get(("ocs_pin_guesses_blocked_total", (("scope", scope),)), 0.0)


def wrong_pin(pins: set[str]) -> str:
    while True:
        guess = f"{secrets.randbelow(10**PIN_LENGTH):0{PIN_LENGTH}d}"
        if guess not in pins:
            return guess


def pins_inside(text: str, pins: set[str]) -> set[str]:
    """PINs that appear anywhere in ``text`` (inside longer digit runs too)."""
    found = set()
    for run in re.findall(rf"\d{{{PIN_LENGTH},}}", text):
        for start in range(len(run) - PIN_LENGTH + 1):
            if run[start : start + PIN_LENGTH] in pins:
                found.add(run[start : start + PIN_LENGTH])
    return found


# -- the scenario ------------------------------------------------------------------


async def test_pin_batch_of_10000_generated_used_expired_guessed(app: RunningApp) -> None:
    await add_plan(app.services, max_lines=2)
    services = app.services

    # -- generated -------------------------------------------------------------------
    # How long it takes is benchmarks/pin_batch.py's to say, not a timed test's.
    rows = await generate(app, batch="b10k", count=BATCH_SIZE, length=PIN_LENGTH, value="1.00")
    assert len(rows) == BATCH_SIZE
    assert list(rows[0]) == ["pin", "password", "account", "value", "currency", "expires"]
    pins = {row["pin"] for row in rows}
    assert len(pins) == BATCH_SIZE, "PINs are not unique"
    assert all(len(p) == PIN_LENGTH and p.isdigit() for p in pins)
    accounts = {row["account"] for row in rows}
    assert accounts == {f"card-b10k-{n:07d}" for n in range(1, BATCH_SIZE + 1)}
    assert {(r["password"], r["value"], r["currency"], r["expires"]) for r in rows} == {
        ("", "1.000000", "EUR", "never")
    }
    by_pin = {row["pin"]: row["account"] for row in rows}

    async with services.pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM accounts WHERE id LIKE 'card-b10k-%'")
            == BATCH_SIZE
        )
        stored = {
            r["pin_digest"]: r["account_id"]
            for r in await conn.fetch(
                "SELECT pin_digest, account_id FROM pins WHERE batch_id = 'b10k'"
            )
        }
        # Every column of every row, as text: no PIN in cleartext anywhere.
        dumped = [
            r["t"]
            for table in ("pins", "accounts", "pin_batches")
            for r in await conn.fetch(f"SELECT {table}::text AS t FROM {table}")
        ]
    assert stored == {services.digests.pin(pin): account for pin, account in by_pin.items()}
    assert not pins_inside("\n".join(dumped), pins)

    pin_keys = [key async for key in services.redis.scan_iter(match="pin:*", count=5_000)]
    assert len(pin_keys) == BATCH_SIZE
    all_keys = [key.decode() async for key in services.redis.scan_iter(count=5_000)]
    assert not pins_inside("\n".join(all_keys), pins)
    values = await services.redis.mget(pin_keys)
    assert {v.decode() for v in values} == accounts
    assert not pins_inside("\n".join(v.decode() for v in values), pins)

    rows_iter = iter(rows)
    over_radius, over_http, blocked_pin = (next(rows_iter)["pin"] for _ in range(3))

    async with card_nas(app) as nas:
        # -- used over RADIUS, as a calling-card IVR does ------------------------------
        reply = await auth(nas, card_call(over_radius, "CARD-1", "4930111000"), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
        assert reply.attributes["h323-credit-time"] == ["h323-credit-time=5000"]
        assert reply.attributes["Session-Timeout"] == ["5000"]
        assert return_code(reply) == "h323-return-code=0"
        used = [("User-Name", over_radius), ("h323-conf-id", "h323-conf-id=CARD-1")]
        await acct(nas, "Start", used)
        await acct(nas, "Stop", [*used, ("Acct-Session-Time", "125")])
        account = by_pin[over_radius]
        _, shown = await app.get(f"/v1/accounts/{account}")
        # 125 s at 0.012 a minute.
        assert shown["balance"] == "0.975000"

        async def cdr_written() -> bool:
            async with services.pool.acquire() as conn:
                return (
                    await conn.fetchval(
                        "SELECT charged FROM cdrs WHERE call_id = 'CARD-1' AND account_id = $1",
                        account,
                    )
                    == 25_000
                )

        await eventually(cdr_written, what="the card call's CDR in PostgreSQL")

        # -- used over HTTP (an IVR's "you have N minutes") -----------------------------
        status, info = await app.get(f"/v1/pins/{over_http}")
        assert status == 200, info
        assert info["account"] == by_pin[over_http]
        assert info["balance"] == "1.000000"
        assert info["currency"] == "EUR"
        assert info["language"] == "en"
        assert info["expires_at"] is None
        assert not info["expires_days_after_first_use"]
        status, quote = await app.get(f"/v1/pins/{over_http}/time?destination={GERMANY}")
        assert status == 200, quote
        assert quote["seconds"] == 5000
        assert quote["zone"] == "Germany"
        status, refused = await app.get(f"/v1/pins/{wrong_pin(pins)}")
        assert status == 404, refused

        # -- expired: a batch whose fixed expiry has passed ------------------------------
        old = await generate(
            app, batch="old", count=3, length=PIN_LENGTH, value="1.00",
            expires_at="2020-01-01T00:00:00Z",
        )  # fmt: skip
        assert {row["expires"] for row in old} == {"2020-01-01T00:00:00+00:00"}
        expired = old[0]["pin"]
        reply = await auth(nas, card_call(expired, "CARD-OLD", "4930111001"), expect=ANSWERED)
        assert reply.code == "Access-Reject", reply.output
        assert return_code(reply) == "h323-return-code=5"
        status, info = await app.get(f"/v1/pins/{expired}")
        assert status == 200, info
        assert info["expires_at"] == int(datetime(2020, 1, 1, tzinfo=UTC).timestamp())

        # -- guessed: wrong PINs from one caller id until it is blocked -------------------
        before = await scrape(app)
        guesser, honest = "4930999000", "4930999111"
        limit = services.settings.pin_guess_limit_caller
        for n in range(limit):
            reply = await auth(
                nas, card_call(wrong_pin(pins), f"GUESS-{n}", guesser), expect=ANSWERED
            )
            assert reply.code == "Access-Reject", reply.output
            assert return_code(reply) == "h323-return-code=1"
        # Blocked now, even with a right PIN.
        reply = await auth(nas, card_call(blocked_pin, "GUESS-BLOCKED", guesser), expect=ANSWERED)
        assert reply.code == "Access-Reject", reply.output
        assert return_code(reply) == "h323-return-code=10"
        reply = await auth(nas, card_call(wrong_pin(pins), "GUESS-MORE", guesser), expect=ANSWERED)
        assert return_code(reply) == "h323-return-code=10"
        # Another caller id on the same NAS still gets through.
        reply = await auth(nas, card_call(blocked_pin, "HONEST-1", honest), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
        assert reply.attributes["h323-credit-time"] == ["h323-credit-time=5000"]

        after = await scrape(app)
        assert blocked_samples(after, "caller") - blocked_samples(before, "caller") == 2
        failures = ("ocs_pin_failures_total", (("channel", "radius"),))
        assert after[failures] - before.get(failures, 0.0) == limit
        _, shown = await app.get(f"/v1/accounts/{by_pin[blocked_pin]}")
        assert shown["lines_in_use"] == 1  # only the honest caller's call


async def test_a_card_with_expire_days_starts_its_life_at_first_use(app: RunningApp) -> None:
    await add_plan(app.services, max_lines=2)
    rows = await generate(
        app, batch="days", count=2, length=PIN_LENGTH, value="1.00", expire_days=30
    )
    assert {row["expires"] for row in rows} == {"30 days after first use"}
    pin = rows[0]["pin"]
    status, info = await app.get(f"/v1/pins/{pin}")
    assert status == 200, info
    assert info["expires_at"] is None
    assert info["expires_days_after_first_use"] == 30

    now = [float(datetime(2026, 3, 2, 10, 15, tzinfo=UTC).timestamp())]
    first_use = int(now[0])
    calls = CallService(
        app.services.catalog,
        app.services.store,
        app.services.settings,
        app.services.digests,
        clock=lambda: now[0],
    )
    async with card_nas(app, calls) as nas:
        reply = await auth(nas, card_call(pin, "DAYS-1", "4930222000"), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
        status, info = await app.get(f"/v1/pins/{pin}")
        assert info["expires_at"] == first_use + 30 * 86_400
        assert info["expires_days_after_first_use"] is None
        await acct(
            nas, "Stop", [("h323-conf-id", "h323-conf-id=DAYS-1"), ("Acct-Session-Time", "0")]
        )

        now[0] = first_use + 30 * 86_400 - 1.0
        reply = await auth(nas, card_call(pin, "DAYS-2", "4930222000"), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
        await acct(
            nas, "Stop", [("h323-conf-id", "h323-conf-id=DAYS-2"), ("Acct-Session-Time", "0")]
        )

        now[0] = first_use + 30 * 86_400
        reply = await auth(nas, card_call(pin, "DAYS-3", "4930222000"), expect=ANSWERED)
        assert reply.code == "Access-Reject", reply.output
        assert return_code(reply) == "h323-return-code=5"
        # The other card of the batch has not been used: its 30 days have not started.
        reply = await auth(nas, card_call(rows[1]["pin"], "DAYS-4", "4930222000"), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
        status, info = await app.get(f"/v1/pins/{rows[1]['pin']}")
        assert info["expires_at"] == int(now[0]) + 30 * 86_400


async def test_an_expired_card_is_quoted_no_time(app: RunningApp) -> None:
    await add_plan(app.services)
    rows = await generate(
        app, batch="gone", count=1, length=PIN_LENGTH, value="1.00",
        expires_at="2020-01-01T00:00:00Z",
    )  # fmt: skip
    status, quote = await app.get(f"/v1/pins/{rows[0]['pin']}/time?destination={GERMANY}")
    # The switch refuses this card (account_expired): the IVR must not promise minutes.
    assert (status == 200 and quote["seconds"] == 0) or (
        status == 403 and quote["error"]["reason"] == "account_expired"
    ), (status, quote)


async def test_wrong_pins_over_http_block_the_caller_and_count(app: RunningApp) -> None:
    await add_plan(app.services)
    rows = await generate(app, batch="web", count=5, length=PIN_LENGTH, value="2.00")
    pins = {row["pin"] for row in rows}
    good = rows[0]["pin"]
    before = await scrape(app)
    limit = app.services.settings.pin_guess_limit_caller
    for _ in range(limit):
        status, body = await app.get(f"/v1/pins/{wrong_pin(pins)}?caller=4930555000")
        assert status == 404, body
    status, body = await app.get(f"/v1/pins/{good}?caller=4930555000")
    assert status == 403, body
    assert body["error"]["reason"] == "pin_blocked"
    status, body = await app.get(f"/v1/pins/{good}/time?destination={GERMANY}&caller=4930555000")
    assert status == 403, body
    status, body = await app.get(f"/v1/pins/{good}?caller=4930555111")
    assert status == 200, body
    assert body["balance"] == "2.000000"
    after = await scrape(app)
    assert blocked_samples(after, "caller") - blocked_samples(before, "caller") == 2
    failures = ("ocs_pin_failures_total", (("channel", "http"),))
    assert after[failures] - before.get(failures, 0.0) == limit


async def test_wrong_pins_sent_in_parallel_are_all_counted_before_any_is_answered(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    rows = await generate(app, batch="par", count=5, length=PIN_LENGTH, value="2.00")
    pins = {row["pin"] for row in rows}
    limit = app.services.settings.pin_guess_limit_caller
    # Four times the limit at once, as a client guessing in parallel sends them.
    guesses = [wrong_pin(pins) for _ in range(4 * limit)]
    answers = await asyncio.gather(
        *(app.get(f"/v1/pins/{guess}?caller=4930777000") for guess in guesses)
    )
    statuses = sorted(status for status, _ in answers)
    # Only `limit` of them were looked up; the rest were refused unseen.
    assert statuses == [403] * (3 * limit) + [404] * limit, statuses
    status, body = await app.get(f"/v1/pins/{rows[0]['pin']}?caller=4930777000")
    assert (status, body["error"]["reason"]) == (403, "pin_blocked")
    # Right PINs are not guesses: another caller's many lookups block nothing.
    for _ in range(2 * limit):
        status, body = await app.get(f"/v1/pins/{rows[0]['pin']}?caller=4930777111")
        assert status == 200, body


async def test_wrong_pins_over_http_from_ever_new_callers_block_the_ivr(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    rows = await generate(app, batch="ivr", count=5, length=PIN_LENGTH, value="1.00")
    pins = {row["pin"] for row in rows}
    before = await scrape(app)
    # Each guess names a fresh caller, staying under the caller limit: the IVR's
    # address (the NAS limit) stops them.
    for n in range(app.services.settings.pin_guess_limit_nas):
        status, body = await app.get(f"/v1/pins/{wrong_pin(pins)}?caller=4930{n:07d}")
        assert status == 404, body
    status, body = await app.get(f"/v1/pins/{rows[0]['pin']}?caller=4930999999")
    assert (status, body["error"]["reason"]) == (403, "pin_blocked")
    after = await scrape(app)
    assert blocked_samples(after, "nas") - blocked_samples(before, "nas") == 1


async def test_wrong_pins_from_many_callers_block_the_nas(app: RunningApp) -> None:
    await add_plan(app.services)
    rows = await generate(app, batch="nas", count=5, length=PIN_LENGTH, value="1.00")
    pins = {row["pin"] for row in rows}
    before = await scrape(app)
    # Callers hiding behind fresh numbers: each stays under its own limit of 5.
    async with card_nas(app, pin_guess_limit_caller=5, pin_guess_limit_nas=6) as nas:
        for n in range(6):
            reply = await auth(
                nas, card_call(wrong_pin(pins), f"NAS-{n}", f"49301000{n:02d}"), expect=ANSWERED
            )
            assert return_code(reply) == "h323-return-code=1", reply.output
        reply = await auth(
            nas, card_call(rows[0]["pin"], "NAS-NEXT", "4930100099"), expect=ANSWERED
        )
        assert reply.code == "Access-Reject", reply.output
        assert return_code(reply) == "h323-return-code=10"
    after = await scrape(app)
    assert blocked_samples(after, "nas") - blocked_samples(before, "nas") == 1


async def test_pin_batches_refuse_bad_requests(app: RunningApp) -> None:
    await add_plan(app.services)
    for body, status in (
        ({"batch": "x", "plan": "retail", "count": 10_000, "length": 6, "value": "1"}, 400),
        ({"batch": "x y", "plan": "retail", "count": 1, "value": "1"}, 400),
        ({"batch": "x", "plan": "nope", "count": 1, "value": "1"}, 404),
        (
            {
                "batch": "x", "plan": "retail", "count": 1, "value": "1",
                "expires_at": "2030-01-01T00:00:00Z", "expire_days": 3,
            },
            400,
        ),
    ):  # fmt: skip
        response = await app.client.post("/v1/pin-batches", json=body)
        assert response.status == status, (body, await response.text())
    # Expiries at the calendar's ends: refused naming the field, for cards and accounts.
    for expires_at in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        card = {"batch": "x", "plan": "retail", "count": 1, "value": "1", "expires_at": expires_at}
        account = {"id": "a-1", "plan": "retail", "expires_at": expires_at}
        for path, body in (("/v1/pin-batches", card), ("/v1/accounts", account)):
            response = await app.client.post(path, json=body)
            error = (await response.json())["error"]
            assert (response.status, error["field"]) == (400, "expires_at"), (path, error)
    await generate(app, batch="once", count=1, value="1")
    response = await app.client.post(
        "/v1/pin-batches", json={"batch": "once", "plan": "retail", "count": 1, "value": "1"}
    )
    assert response.status == 409, await response.text()
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM pins") == 1
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 1


async def test_pin_space_fills_across_batches_and_the_batch_overfilling_it_is_refused(
    app: RunningApp,
) -> None:
    # 6 digits hold 1000 live cards at most (one guess in 1000 may open one).
    await add_plan(app.services)
    await generate(app, batch="first", count=600, length=6, value="1")
    response = await app.client.post(
        "/v1/pin-batches",
        json={"batch": "over", "plan": "retail", "count": 401, "length": 6, "value": "1"},
    )
    error = (await response.json())["error"]
    assert (response.status, error["field"]) == (400, "length"), error
    assert "600 cards of that length are live" in error["message"], error
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM pins") == 600
        assert await conn.fetchval("SELECT count(*) FROM pin_batches WHERE id = 'over'") == 0
    # What is left of the space, and another length's, are still there.
    assert len(await generate(app, batch="rest", count=400, length=6, value="1")) == 400
    assert len(await generate(app, batch="seven", count=5_000, length=7, value="1")) == 5_000


async def test_live_cards_of_a_batch_with_no_recorded_length_count_against_every_length(
    app: RunningApp,
) -> None:
    """A batch made before PIN lengths were recorded (migration 0063) has no length: its
    600 live cards were left out of the count, so 1000 more 6-digit cards were made, one
    guess in 625 opening a card. They now count against every length, and the refusal
    says so; what is left of the space is still there."""
    await add_plan(app.services)
    await generate(app, batch="old", count=600, length=6, value="1")
    async with app.services.pool.acquire() as conn:
        await conn.execute("UPDATE pin_batches SET pin_length = NULL WHERE id = 'old'")
    response = await app.client.post(
        "/v1/pin-batches",
        json={"batch": "over", "plan": "retail", "count": 401, "length": 6, "value": "1"},
    )
    error = (await response.json())["error"]
    assert (response.status, error["field"]) == (400, "length"), error
    assert (
        "0 cards of that length are live, and 600 of batches made before PIN lengths were"
        " recorded (counted against every length), and at most 1000 may be"
    ) in error["message"], error
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM pins") == 600
    assert len(await generate(app, batch="rest", count=400, length=6, value="1")) == 400


async def test_a_pin_space_with_no_free_pin_refuses_the_batch_rather_than_hang(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_plan(app.services)
    monkeypatch.setattr(cards, "draw_digits", lambda length: "0" * length)
    [card] = await generate(app, batch="first", count=1, length=6, value="1")
    assert card["pin"] == "000000"
    # Every PIN drawn now is taken: the request is answered, not held for ever.
    response = await asyncio.wait_for(
        app.client.post(
            "/v1/pin-batches",
            json={"batch": "full", "plan": "retail", "count": 1, "length": 6, "value": "1"},
        ),
        timeout=60,
    )
    error = (await response.json())["error"]
    assert (response.status, error["field"]) == (400, "length"), error
    assert "too full" in error["message"], error
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM pins") == 1
        assert await conn.fetchval("SELECT count(*) FROM pin_batches WHERE id = 'full'") == 0


# -- a batch Redis failed part-way -----------------------------------------------------

HALF_MADE = {"batch": "half", "count": 5, "length": PIN_LENGTH, "value": "5.00"}


def fail_part_way(monkeypatch: pytest.MonkeyPatch, *, withdrawable: bool) -> set[str]:
    """Make the next batch fail as a Redis lost mid-batch does: the third card's PIN is
    answered with a lost connection, the other cards made (and, unless ``withdrawable``,
    Redis unreachable by the time the batch gives up). The PINs it deals, collected."""
    dealt: set[str] = set()
    real_digest = Digests.pin
    real_set_pin = BalanceStore.set_pin
    named: list[str] = []

    def recorded(self: Digests, pin: str) -> str:
        dealt.add(pin)
        return real_digest(self, pin)

    async def lost_at_the_third(self: BalanceStore, digest: str, account_id: str) -> None:
        named.append(account_id)
        if len(named) == 3:
            raise RedisConnectionError("connection to Redis lost: reset by peer")
        await real_set_pin(self, digest, account_id)

    async def unreachable(self: BalanceStore, digest: str, account_id: str) -> bool:
        raise RedisConnectionError("cannot connect to Redis")

    monkeypatch.setattr(Digests, "pin", recorded)
    monkeypatch.setattr(BalanceStore, "set_pin", lost_at_the_third)
    if not withdrawable:
        monkeypatch.setattr(BalanceStore, "release_pin", unreachable, raising=False)
    return dealt


async def opening(app: RunningApp, pin: str) -> int:
    """The status ``GET /v1/pins/{pin}`` answers (200: the PIN opens a card), asked for a
    caller of its own, so that the wrong PINs looked up block no caller."""
    status, _ = await app.get(f"/v1/pins/{pin}?caller=4930{pin}")
    return status


async def test_a_batch_redis_failed_part_way_is_finished_by_its_retry_with_new_pins(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_plan(app.services)
    first_try = fail_part_way(monkeypatch, withdrawable=False)
    response = await app.client.post("/v1/pin-batches", json={"plan": "retail", **HALF_MADE})
    assert response.status == 503, await response.text()
    monkeypatch.undo()
    ids = [card_account_id("half", n) for n in range(1, 6)]
    # PostgreSQL kept nothing; Redis holds the five cards, funded, and four PINs the
    # operator never received open them, since Redis was gone before they were withdrawn.
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 0
    assert sorted([await opening(app, pin) for pin in first_try]) == [200, 200, 200, 200, 404]
    found = await reconcile(app.services.redis, app.services.pool, orphan_grace_ms=0)
    assert [(o.account_id, o.redis_balance) for o in found.orphans] == [(i, 5_000_000) for i in ids]

    # The same request again finishes the batch (before: refused, "exists already in
    # Redis", for ever): every card, with a new PIN, the only one that opens it.
    rows = await generate(app, **HALF_MADE)
    assert sorted(row["account"] for row in rows) == ids
    assert {row["value"] for row in rows} == {"5.000000"}
    assert not {row["pin"] for row in rows} & first_try
    assert {await opening(app, pin) for pin in first_try} == {404}
    for row in rows:
        status, info = await app.get(f"/v1/pins/{row['pin']}?caller=4930{row['pin']}")
        assert status == 200, info
        assert (info["account"], info["balance"]) == (row["account"], "5.000000")
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 5
        assert await conn.fetchval("SELECT count(*) FROM pins WHERE batch_id = 'half'") == 5

    async def openings_written() -> bool:
        async with app.services.pool.acquire() as conn:
            total = await conn.fetchval("SELECT sum(amount) FROM ledger")
        return bool(total == 25_000_000)

    # Each card's opening balance once: the retry took the cards over as they were.
    await eventually(openings_written, what="the cards' opening balances in PostgreSQL")
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ledger") == 5
    result = await reconcile(app.services.redis, app.services.pool, orphan_grace_ms=0)
    assert result.ok, result


async def test_a_half_made_batch_nobody_sends_again_is_discarded_by_the_operator(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A batch that failed part-way and is never sent again stayed in Redis for ever:
    `ocs reconcile` listed its cards and exited 1 on every run, with nothing to remove
    them. `ocs pins discard` does, PINs first, their balances written off in the ledger,
    and the batch id can be used anew."""
    await add_plan(app.services)
    redis, pool, settings = app.services.redis, app.services.pool, app.services.settings
    first_try = fail_part_way(monkeypatch, withdrawable=False)
    response = await app.client.post("/v1/pin-batches", json={"plan": "retail", **HALF_MADE})
    assert response.status == 503, await response.text()
    monkeypatch.undo()
    ids = [card_account_id("half", n) for n in range(1, 6)]
    # A day old (stamped so): past reconcile's grace for a creation still running.
    aged = int(time.time() * 1000) - 86_400_000
    for account_id in ids:
        created = (await redis.hget(keys.account(account_id), "created") or b"").decode()
        await redis.hset(keys.account(account_id), "created", f"{aged}:{created.partition(':')[2]}")
    code, out, _ = await ocs_cli(settings, tmp_path, "reconcile")
    assert code == 1 and [o["account"] for o in json.loads(out)["orphans"]] == ids

    code, out, err = await ocs_cli(settings, tmp_path, "pins", "discard", "--batch", "half")
    assert code == 0, err
    assert json.loads(out) == {
        "batch": "half",
        "cards_discarded": 5,
        "pins_withdrawn": 4,  # Redis was gone before the failed try withdrew them
        "written_off": "25.000000",
        "currency": "EUR",
    }
    assert {await opening(app, pin) for pin in first_try} == {404}
    assert [key async for key in redis.scan_iter(match="acct:*card-half-*")] == []
    assert await redis.exists(keys.card_batch("half")) == 0

    async def written_off() -> bool:
        rows = await pool.fetch(
            "SELECT kind, sum(amount) AS total FROM ledger GROUP BY kind ORDER BY kind"
        )
        return [(r["kind"], r["total"]) for r in rows] == [
            ("discarded", -25_000_000),
            ("opening", 25_000_000),
        ]

    await eventually(written_off, what="the openings and their write-offs in PostgreSQL")
    code, out, _ = await ocs_cli(settings, tmp_path, "reconcile")
    assert (code, json.loads(out)["ok"]) == (0, True)
    code, _, err = await ocs_cli(settings, tmp_path, "pins", "discard", "--batch", "half")
    assert code == 1 and "not_found" in err, err

    # The id is free: a batch of other settings is made under it, its cards from zero.
    rows = await generate(app, **{**HALF_MADE, "value": "6.00"})
    assert {await opening(app, row["pin"]) for row in rows} == {200}
    assert {(await app.get(f"/v1/accounts/{i}"))[1]["balance"] for i in ids} == {"6.000000"}

    async def reconciled() -> bool:
        return (await reconcile(redis, pool, orphan_grace_ms=0)).ok

    await eventually(reconciled, what="every card's balance to equal its ledger")
    # A batch PostgreSQL records is never discarded.
    code, _, err = await ocs_cli(settings, tmp_path, "pins", "discard", "--batch", "half")
    assert code == 1 and "account_exists" in err, err
    assert {await opening(app, row["pin"]) for row in rows} == {200}


async def test_a_discard_waits_for_the_batch_s_creation_in_flight_and_spares_it(
    app: RunningApp,
) -> None:
    """A discard of a batch whose creation is running (its cards in Redis, PostgreSQL's
    transaction open) must not remove the cards it is about to hand out."""
    await add_plan(app.services)
    services = app.services

    async def waiting(count: int) -> bool:
        found = await services.pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )
        return bool(found == count)

    # The test holds the batch's lock: the creation, then the discard, queue behind it.
    async with services.pool.acquire() as conn, conn.transaction():
        await lock_batch(conn, "half")
        creation = asyncio.create_task(generate(app, **HALF_MADE))
        await eventually(lambda: waiting(1), what="the creation to wait for the batch")
        discard = asyncio.create_task(
            discard_unfinished_batch(services.redis, services.pool, services.store, "half")
        )
        await eventually(lambda: waiting(2), what="the discard to wait for the batch")
    rows = await creation
    with pytest.raises(OcsError) as refused:
        await discard
    assert (refused.value.reason, refused.value.field) == (Reason.ACCOUNT_EXISTS, "batch")
    assert {await opening(app, row["pin"]) for row in rows} == {200}


async def test_a_half_made_batch_is_finished_only_by_the_same_request(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_plan(app.services)
    first_try = fail_part_way(monkeypatch, withdrawable=True)
    response = await app.client.post("/v1/pin-batches", json={"plan": "retail", **HALF_MADE})
    assert response.status == 503, await response.text()
    monkeypatch.undo()
    # Redis still answered when the batch gave up: no PIN it dealt opens a card.
    assert {await opening(app, pin) for pin in first_try} == {404}

    # Another request under the batch's id is refused before it makes any card.
    other = {"plan": "retail", **HALF_MADE, "value": "6.00"}
    response = await app.client.post("/v1/pin-batches", json=other)
    error = (await response.json())["error"]
    assert (response.status, error["field"]) == (409, "batch"), error
    redis = app.services.redis
    assert len([key async for key in redis.scan_iter(match="acct:*card-half-*")]) == 5
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 0

    rows = await generate(app, **HALF_MADE)
    assert len(rows) == 5
    assert {await opening(app, row["pin"]) for row in rows} == {200}


async def test_a_batch_whose_commit_answer_is_lost_hands_out_its_pins(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_plan(app.services)
    batch_connections: set[int] = set()
    real_copy = asyncpg.Connection.copy_records_to_table
    real_commit = asyncpg.transaction.Transaction._Transaction__commit  # type: ignore[attr-defined]

    async def copy_noted(self: asyncpg.Connection, table: str, **kwargs: Any) -> str:
        if table == "pins":
            batch_connections.add(id(self))
        return await real_copy(self, table, **kwargs)

    async def committed_answer_lost(self: Any) -> None:
        await real_commit(self)
        if id(self._connection) in batch_connections:
            batch_connections.discard(id(self._connection))
            raise asyncpg.exceptions.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation"
            )

    monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", copy_noted)
    monkeypatch.setattr(
        asyncpg.transaction.Transaction, "_Transaction__commit", committed_answer_lost
    )
    # The COMMIT went through, its answer did not: the batch stands, and its PINs are
    # handed out (not withdrawn as those of a batch that failed).
    rows = await generate(app, batch="late", count=3, length=PIN_LENGTH, value="2.00")
    monkeypatch.undo()
    assert len(rows) == 3
    assert {await opening(app, row["pin"]) for row in rows} == {200}


# -- the PIN in the body, out of the URL that proxies log ---------------------------------


async def test_pin_queries_with_the_pin_in_the_body_answer_as_those_with_it_in_the_url(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    rows = await generate(app, batch="body", count=3, length=PIN_LENGTH, value="1.00")
    pins = {row["pin"] for row in rows}
    pin, caller = rows[0]["pin"], "4930444000"

    status, by_url = await app.get(f"/v1/pins/{pin}?caller={caller}")
    assert status == 200, by_url
    status, by_body = await app.post("/v1/pins/lookup", {"pin": pin, "caller": caller})
    assert status == 200, by_body
    assert by_body == by_url
    assert (by_body["account"], by_body["balance"], by_body["currency"]) == (
        rows[0]["account"], "1.000000", "EUR",
    )  # fmt: skip

    status, time_by_url = await app.get(f"/v1/pins/{pin}/time?destination={GERMANY}")
    assert status == 200, time_by_url
    status, time_by_body = await app.post("/v1/pins/time", {"pin": pin, "destination": GERMANY})
    assert status == 200, time_by_body
    assert time_by_body == time_by_url
    assert (time_by_body["seconds"], time_by_body["zone"]) == (5000, "Germany")
    # Every field the query string takes, the body takes too.
    status, with_all = await app.post(
        "/v1/pins/time",
        {"pin": pin, "destination": GERMANY, "access_number": "+18005550100", "caller": caller},
    )
    assert (status, with_all) == (200, time_by_url)

    # A PIN no card has: the same 404 either way, naming the PIN's field.
    wrong = wrong_pin(pins)
    status, refused_by_url = await app.get(f"/v1/pins/{wrong}?caller={caller}")
    assert status == 404, refused_by_url
    for path, extra in (("/v1/pins/lookup", {}), ("/v1/pins/time", {"destination": GERMANY})):
        status, refused = await app.post(path, {"pin": wrong, "caller": caller, **extra})
        assert (status, refused) == (404, refused_by_url), (path, refused)
    assert (refused["error"]["reason"], refused["error"]["field"]) == ("account_not_found", "pin")


async def test_wrong_pins_in_the_body_and_in_the_url_are_counted_together(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    rows = await generate(app, batch="both", count=5, length=PIN_LENGTH, value="2.00")
    pins = {row["pin"] for row in rows}
    good = rows[0]["pin"]
    before = await scrape(app)
    limit = app.services.settings.pin_guess_limit_caller
    guesser, honest = "4930666000", "4930666111"
    # The guesses alternate between the forms: neither alone reaches the limit.
    for n in range(limit):
        if n % 2:
            status, body = await app.get(f"/v1/pins/{wrong_pin(pins)}?caller={guesser}")
        else:
            status, body = await app.post(
                "/v1/pins/lookup", {"pin": wrong_pin(pins), "caller": guesser}
            )
        assert status == 404, body
    # Blocked now in every form, even with a right PIN.
    asked = (
        ("POST", "/v1/pins/lookup", {"pin": good, "caller": guesser}),
        ("POST", "/v1/pins/time", {"pin": good, "destination": GERMANY, "caller": guesser}),
        ("GET", f"/v1/pins/{good}?caller={guesser}", None),
    )
    for method, path, payload in asked:
        response = await app.client.request(method, path, json=payload)
        body = await response.json()
        assert (response.status, body["error"]["reason"]) == (403, "pin_blocked"), (path, body)
    # Another caller id through the same IVR still gets through.
    status, body = await app.post("/v1/pins/lookup", {"pin": good, "caller": honest})
    assert (status, body["balance"]) == (200, "2.000000"), body
    after = await scrape(app)
    assert blocked_samples(after, "caller") - blocked_samples(before, "caller") == len(asked)
    failures = ("ocs_pin_failures_total", (("channel", "http"),))
    assert after[failures] - before.get(failures, 0.0) == limit
