"""Calling cards at their edges: a PIN that is an account's id, a batch id that is not
ASCII, a fixed expiry in the epoch's first second.

- A RADIUS User-Name names an account by its id before any card by its PIN (decision
  0053): a card dealt a PIN equal to a plain account's id would call on that account's
  money, while ``POST /v1/pins/lookup`` showed the card. A batch draws such a PIN again,
  and an account whose id is a live card's PIN is refused (409 naming ``id``).
- An account created while a batch of PINs of its id's length is being made waits for
  the batch (and the batch for it): neither misses the other. The refusal of a PIN as an
  id is an existing account's refusal, word for word, and counts against the PIN guard
  of the token asking, so that creating accounts is no way to test PINs.
- A batch id such as ``café`` made cards whose ids the API's account paths refuse (400
  on every view, lock and top-up): batch ids are ASCII, as the HTTP pattern says.
- Redis keeps an expiry as whole seconds after the epoch, 0 meaning "never": a fixed
  expiry at or before 1970-01-01T00:00:00Z (in UTC) never expired, so it is refused.

FreeRADIUS's ``radclient`` is the IVR. Rates used (tests/conftest.py RETAIL_DECK, EUR):
Germany (49) 0.012 a minute, 1/1 seconds, no connect fee.
"""

import asyncio
import csv
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ocs import api_tokens
from ocs.balances import accounts, cards
from ocs.balances.pin_guard import PinGuard
from ocs.errors import OcsError
from ocs.http.app import create_app
from tests.conftest import RunningApp, account, add_plan, bearer, eventually
from tests.helpers import ANSWERED, Pairs, auth, card_nas, ocs_cli

GERMANY = "4930901820"
CALLER = "4930111222"
SETUP_TIME = "h323-setup-time=*10:15:00.000 UTC Mon Mar 2 2026"
PHONE = "491701234567"  # a plain account's id, of a 12-digit PIN's form


def ivr_call(user: str, conf_id: str) -> Pairs:
    """An IVR's Access-Request for a call to Germany, User-Name as the caller keyed it."""
    return [
        ("NAS-IP-Address", "127.0.0.1"),
        ("User-Name", user),
        ("Called-Station-Id", GERMANY),
        ("Calling-Station-Id", CALLER),
        ("h323-conf-id", f"h323-conf-id={conf_id}"),
        ("h323-call-origin", "h323-call-origin=answer"),
        ("h323-setup-time", SETUP_TIME),
    ]


def draws_first(monkeypatch: pytest.MonkeyPatch, *first: str) -> None:
    """Make the next PIN draws give ``first``, in order, and random digits after them."""
    forced: Iterator[str] = iter(first)
    real = cards.draw_digits
    monkeypatch.setattr(cards, "draw_digits", lambda length: next(forced, None) or real(length))


async def card_batch(app: RunningApp, batch_id: str) -> list[dict[str, str]]:
    """A batch of one card, a 12-digit PIN worth 2.00, made over the API: its CSV's rows."""
    response = await app.client.post(
        "/v1/pin-batches",
        json={"plan": "retail", "batch": batch_id, "count": 1, "length": 12, "value": "2.00"},
    )
    text = await response.text()
    assert response.status == 201, text
    return list(csv.DictReader(io.StringIO(text)))


async def reserved(app: RunningApp, account_id: str) -> str:
    """What the account's view shows reserved."""
    return str((await account(app, account_id))["reserved"])


async def test_a_card_is_never_dealt_a_pin_that_is_an_account_s_id(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_plan(app.services, max_lines=2)
    status, body = await app.post("/v1/accounts", {"id": PHONE, "plan": "retail", "balance": "5"})
    assert status == 201, body
    # The first PIN drawn is the account's id: it is taken, and drawn again.
    draws_first(monkeypatch, PHONE)
    [card] = await card_batch(app, "clash")
    assert card["pin"] != PHONE and len(card["pin"]) == 12
    response = await app.client.post("/v1/pins/lookup", json={"pin": PHONE, "caller": CALLER})
    assert response.status == 404, await response.text()
    response = await app.client.post("/v1/pins/lookup", json={"pin": card["pin"]})
    assert response.status == 200, await response.text()
    assert (await response.json())["account"] == card["account"]

    async with card_nas(app) as nas:
        # The card's PIN charges the card, and the account's id the account, each alone.
        reply = await auth(nas, ivr_call(card["pin"], "CLASH-CARD"), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
        assert await reserved(app, card["account"]) == "2.000000"
        assert await reserved(app, PHONE) == "0.000000"
        reply = await auth(nas, ivr_call(PHONE, "CLASH-PLAIN"), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
        assert await reserved(app, card["account"]) == "2.000000"
        assert await reserved(app, PHONE) != "0.000000"


async def test_an_account_whose_id_is_a_live_card_s_pin_is_refused(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    await add_plan(app.services, max_lines=2)
    draws_first(monkeypatch, PHONE)
    [card] = await card_batch(app, "first")
    assert card["pin"] == PHONE
    status, body = await app.post("/v1/accounts", {"id": PHONE, "plan": "retail", "balance": "5"})
    assert status == 409, body
    assert (body["error"]["reason"], body["error"]["field"]) == ("account_exists", "id"), body
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM accounts WHERE id = $1", PHONE) == 0
    assert await app.services.store.get_account(PHONE) is None
    # Nor by the command line, which loads the pepper to look such an id up.
    settings, cli = app.services.settings, ("accounts", "create", PHONE, "--plan", "retail")
    code, _, err = await ocs_cli(settings, tmp_path, *cli)
    assert code == 1 and f"account {PHONE!r} exists already" in err, err
    assert await app.services.store.get_account(PHONE) is None
    # Another id of a PIN's form, and one of the card's digits but not a PIN's length,
    # are accounts as before.
    for other in (PHONE[:-1] + "8", PHONE[:5]):
        status, body = await app.post("/v1/accounts", {"id": other, "plan": "retail"})
        assert status == 201, body
    code, _, err = await ocs_cli(settings, tmp_path, *cli[:2], PHONE[:-1] + "9", *cli[3:])
    assert code == 0, err

    # The PIN still opens the card, and only the card.
    async with card_nas(app) as nas:
        reply = await auth(nas, ivr_call(PHONE, "REVERSE-1"), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
    assert await reserved(app, card["account"]) == "2.000000"


async def test_an_account_and_a_batch_made_at_once_never_share_a_number(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_plan(app.services, max_lines=2)
    # The account's creation pauses between its look-up of the PINs and its insert,
    # where a batch whose first PIN drawn is the account's id then runs.
    at_insert, go_on = asyncio.Event(), asyncio.Event()
    real_starting_state = accounts.starting_state

    async def paused(*args: object) -> tuple[str, str]:
        at_insert.set()
        await go_on.wait()
        return await real_starting_state(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(accounts, "starting_state", paused)
    creating = asyncio.create_task(
        app.post("/v1/accounts", {"id": PHONE, "plan": "retail", "balance": "5"})
    )
    await at_insert.wait()
    draws_first(monkeypatch, PHONE)
    batch = asyncio.create_task(card_batch(app, "race"))

    # Until the batch has ended, or waits for the account's creation to end.
    async def batch_over_or_waiting() -> bool:
        waiting = await app.services.pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )
        return batch.done() or waiting > 0

    await eventually(batch_over_or_waiting, what="the batch to end or wait")
    go_on.set()
    status, body = await creating
    assert status == 201, body
    [card] = await batch
    assert card["pin"] != PHONE and len(card["pin"]) == 12
    response = await app.client.post("/v1/pins/lookup", json={"pin": PHONE, "caller": CALLER})
    assert response.status == 404, await response.text()
    async with card_nas(app) as nas:
        reply = await auth(nas, ivr_call(PHONE, "RACE-PLAIN"), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
    assert await reserved(app, card["account"]) == "0.000000"
    assert await reserved(app, PHONE) != "0.000000"


async def test_an_account_waits_for_a_batch_of_its_id_s_length_only_so_long(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_plan(app.services, max_lines=2)
    monkeypatch.setattr(accounts, "PIN_LENGTH_WAIT_MS", 200)
    async with app.services.pool.acquire() as batch, batch.transaction():
        # As a batch of 12-digit PINs holds their length until it commits.
        await cards.check_pin_space(batch, 1, 12)
        status, body = await app.post("/v1/accounts", {"id": PHONE, "plan": "retail"})
        assert (status, body["error"]["reason"], body["error"]["field"]) == (
            503,
            "unavailable",
            "id",
        ), body
        assert "12-digit PINs is being made" in body["error"]["message"], body
        # Ids of another length, or not of a PIN's form, do not wait.
        for other in (PHONE + "1", "alice"):
            status, body = await app.post("/v1/accounts", {"id": other, "plan": "retail"})
            assert status == 201, body
    status, body = await app.post("/v1/accounts", {"id": PHONE, "plan": "retail"})
    assert status == 201, body


async def test_a_pin_as_an_account_id_is_refused_as_an_existing_account_and_counted(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_plan(app.services, max_lines=2)
    draws_first(monkeypatch, PHONE)
    [card] = await card_batch(app, "probed")
    assert card["pin"] == PHONE
    existing = PHONE[:-1] + "0"
    status, body = await app.post("/v1/accounts", {"id": existing, "plan": "retail"})
    assert status == 201, body
    settings = replace(app.services.settings, pin_guess_limit_token=2, pin_guess_limit_nas=100)
    services = replace(
        app.services, settings=settings, pin_guard=PinGuard(app.services.pipeline, settings)
    )
    prober = await api_tokens.create(app.services.pool, "prober", "operator")
    other = await api_tokens.create(app.services.pool, "other-operator", "operator")
    client = TestClient(TestServer(create_app(services), host="127.0.0.1"))
    await client.start_server()
    try:

        async def create(account_id: str, token: str) -> tuple[int, dict]:
            response = await client.post(
                "/v1/accounts", json={"id": account_id, "plan": "retail"}, headers=bearer(token)
            )
            return response.status, await response.json()

        # The card's PIN and an existing account are refused alike, but for the id.
        status, pin_body = await create(PHONE, prober)
        status_existing, existing_body = await create(existing, prober)
        assert status == status_existing == 409, (pin_body, existing_body)
        assert pin_body == {
            "error": {**existing_body["error"], "message": f"account {PHONE!r} exists already"}
        }, pin_body
        # Accounts made, and ids that exist, count nothing; PINs found do.
        for n in range(3):
            status, body = await create(f"49170000000{n}", prober)
            assert status == 201, body
        status, body = await create(PHONE, prober)
        assert status == 409, body
        status, body = await create("491700000009", prober)
        assert (status, body["error"]["reason"]) == (403, "pin_blocked"), body
        # Another token still creates such accounts.
        status, body = await create("491700000009", other)
        assert status == 201, body
    finally:
        await client.close()


@pytest.mark.parametrize("batch_id", ["café", "ＢＡＴＣＨ", "b٣"])
async def test_a_batch_id_that_is_not_ascii_is_refused_making_no_card(
    app: RunningApp, batch_id: str
) -> None:
    await add_plan(app.services)
    with pytest.raises(OcsError) as refused:
        await app.services.cards.generate(
            batch_id=batch_id, plan_id="retail", count=1, length=12, value=1_000_000
        )
    assert (refused.value.reason.http_status, refused.value.field) == (400, "batch")
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 0
        assert await conn.fetchval("SELECT count(*) FROM pin_batches") == 0


async def test_ocs_pins_generate_refuses_a_batch_id_with_accented_letters(
    app: RunningApp, tmp_path: Path
) -> None:
    await add_plan(app.services)
    code, out, err = await ocs_cli(
        app.services.settings, tmp_path, "pins", "generate", "--batch", "café", "--plan",
        "retail", "--count", "1", "--value", "1.00", "--out", str(tmp_path / "cafe.csv"),
    )  # fmt: skip
    assert code != 0, (out, err)
    assert "batch" in err and "ASCII" in err, err
    assert not (tmp_path / "cafe.csv").exists()
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 0


@pytest.mark.parametrize(
    "expires_at",
    ["1970-01-01T00:00:00Z", "1970-01-01T00:00:00.5Z", "1970-01-01T00:30:00+01:00"],
)
async def test_an_expiry_not_after_the_epoch_is_refused_naming_the_field(
    app: RunningApp, expires_at: str
) -> None:
    await add_plan(app.services)
    card = {"batch": "old", "plan": "retail", "count": 1, "value": "1", "expires_at": expires_at}
    plain = {"id": "a-1", "plan": "retail", "expires_at": expires_at}
    for path, body in (("/v1/pin-batches", card), ("/v1/accounts", plain)):
        response = await app.client.post(path, json=body)
        error = (await response.json())["error"]
        assert (response.status, error["field"]) == (400, "expires_at"), (path, error)
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 0


async def test_an_expiry_in_the_epoch_s_second_second_is_kept_and_has_passed(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    status, body = await app.post(
        "/v1/accounts", {"id": "a-1", "plan": "retail", "expires_at": "1970-01-01T00:00:01Z"}
    )
    assert status == 201, body
    assert (await app.services.store.get_account("a-1")).expires_at == 1  # type: ignore[union-attr]
