"""PIN and password digests are keyed by the server's pepper (decision 0054).

Before, a PIN was stored as SHA-256 of a fixed prefix and the PIN, a password as
HMAC-SHA256 keyed by the account id: a copy of Redis or PostgreSQL (a backup, a
replica) gave every 10 to 12 digit PIN away in minutes. Now the digests are keyed by a
pepper kept in a file (``<data_dir>/pepper`` here), never in either store:

- a card opens by its PIN and password, and neither store holds the digest a copy of
  it could recompute from the PIN (or password) alone;
- a card or account stored the old way still opens, over RADIUS and HTTP, and is
  re-keyed as it is used; ``ocs credentials rekey`` re-keys every one at once;
- another pepper opens nothing, and a process started with one stops at once;
- only the server makes the pepper's file: the commands that need it stop without it.
"""

import asyncio
import contextlib
import contextvars
import logging
import os
import secrets
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvloop
from redis.asyncio import Redis

from ocs.balances import keys
from ocs.balances.accounts import AccountSpec
from ocs.balances.digests import (
    Digests,
    is_peppered,
    legacy_password_digest,
    legacy_pin_digest,
)
from ocs.balances.rekey import RekeyReport, rekey_all
from ocs.charging.lifecycle import CallService
from ocs.config import ConfigError, Settings, with_overrides
from ocs.errors import OcsError
from ocs.pepper import PEPPER_FILE, load_digests, make_pepper, read_pepper
from ocs.runtime import open_runtime
from ocs.services import Services
from tests.conftest import RunningApp, add_plan, reset_state
from tests.helpers import ANSWERED, Pairs, auth, card_nas, ocs_cli, return_code

GERMANY = "4930901820"
PASSWORD = "s3cret-4321"


def call(user: str, conf_id: str, password: str | None) -> Pairs:
    """An Access-Request for a call from ``user`` to Germany."""
    pairs: Pairs = [
        ("NAS-IP-Address", "127.0.0.1"),
        ("User-Name", user),
        ("Called-Station-Id", GERMANY),
        ("Calling-Station-Id", "4930123456"),
        ("h323-conf-id", f"h323-conf-id={conf_id}"),
    ]
    if password is not None:
        pairs.append(("User-Password", password))
    return pairs


def balance_query(user: str, password: str) -> Pairs:
    """An IVR's balance query: no Called-Station-Id."""
    return [("User-Name", user), ("User-Password", password), ("Calling-Station-Id", "4930555")]


async def cards_and_alice(services: Services) -> list[tuple[str, str, str]]:
    """The retail plan, two cards with passwords and "alice", an account with a password:
    (pin, password, account) of each card."""
    await add_plan(services, max_lines=2)
    batch = await services.cards.generate(
        batch_id="b", plan_id="retail", count=2, length=12, value=1_000_000, password_length=6
    )
    await services.accounts.create(
        AccountSpec("alice", plan_id="retail", opening_balance=1_000_000, password=PASSWORD)
    )
    return [(c.pin, c.password or "", c.account_id) for c in batch.cards]


async def store_the_old_way(
    services: Services, account_id: str, *, pin: str | None = None, password: str | None = None
) -> None:
    """Write a card's (or an account's) digests in both stores as ocs stored them before
    decision 0054: the PIN and password digests of the old form."""
    redis, pool = services.redis, services.pool
    if pin is not None:
        old = legacy_pin_digest(pin)
        await redis.delete(keys.pin_ref(services.digests.pin(pin)))
        await redis.set(keys.pin_ref(old), account_id)
        await redis.hset(keys.account(account_id), "pin", old)
        await pool.execute("UPDATE pins SET pin_digest = $2 WHERE account_id = $1", account_id, old)
    if password is not None:
        old = legacy_password_digest(account_id, password)
        await redis.hset(keys.account(account_id), "pw", old)
        await pool.execute(
            "UPDATE accounts SET password_digest = $2 WHERE id = $1", account_id, old
        )


async def stored(services: Services, account_id: str) -> dict[str, Any]:
    """What both stores hold of an account's digests."""
    pw, pin = await services.redis.hmget(keys.account(account_id), ["pw", "pin"])
    row = await services.pool.fetchrow(
        "SELECT a.password_digest, p.pin_digest FROM accounts a"
        " LEFT JOIN pins p ON p.account_id = a.id WHERE a.id = $1",
        account_id,
    )
    assert row is not None
    return {
        "redis_pw": pw and pw.decode(),
        "redis_pin": pin and pin.decode(),
        "pg_pw": row["password_digest"],
        "pg_pin": row["pin_digest"],
    }


async def pin_opens(services: Services, digest: str) -> str | None:
    """The card a PIN digest's Redis reference opens, if any."""
    found = await services.redis.get(keys.pin_ref(digest))
    return None if found is None else found.decode()


async def accepted(nas: Any, pairs: Pairs) -> None:
    reply = await auth(nas, pairs, expect=ANSWERED)
    assert reply.code == "Access-Accept", reply.output


async def rejected(nas: Any, pairs: Pairs, code: int) -> None:
    reply = await auth(nas, pairs, expect=ANSWERED)
    assert reply.code == "Access-Reject", reply.output
    assert return_code(reply) == f"h323-return-code={code}", reply.output


# -- a copy of the stores does not give PINs away -------------------------------------


async def test_a_copy_of_the_stores_cannot_recompute_a_digest_from_its_pin(
    app: RunningApp, caplog: pytest.LogCaptureFixture
) -> None:
    services = app.services
    (pin, password, card), _ = await cards_and_alice(services)
    held = await stored(services, card)
    alice = await stored(services, "alice")
    # Nothing either store holds is what the PIN or password alone gives.
    assert held["pg_pin"] == held["redis_pin"] == services.digests.pin(pin)
    assert held["pg_pin"] != legacy_pin_digest(pin)
    assert await pin_opens(services, legacy_pin_digest(pin)) is None
    assert await pin_opens(services, services.digests.pin(pin)) == card
    assert held["pg_pw"] == held["redis_pw"] == services.digests.password(card, password)
    assert held["pg_pw"] != legacy_password_digest(card, password)
    assert alice["pg_pw"] == alice["redis_pw"] != legacy_password_digest("alice", PASSWORD)
    assert all(is_peppered(d) for d in (*held.values(), alice["pg_pw"]))

    # The pepper is in neither store nor the logs.
    assert services.settings.pepper_file is not None
    pepper = services.settings.pepper_file.read_text().strip()
    check = await services.pool.fetchval("SELECT fingerprint FROM pepper_check")
    assert check == services.digests.fingerprint() and pepper not in check
    redis_keys = [key.decode() async for key in services.redis.scan_iter(count=1_000)]
    assert not [key for key in redis_keys if pepper in key]
    assert pepper not in caplog.text

    # The PIN and the password still open the card, and alice's her account.
    async with card_nas(app) as nas:
        await accepted(nas, call(pin, "C-1", password))
        await rejected(nas, call(pin, "C-2", "wrong"), 2)
        await accepted(nas, call("alice", "A-1", PASSWORD))
        await rejected(nas, call("alice", "A-2", "wrong"), 2)
    status, info = await app.get(f"/v1/pins/{pin}")
    assert (status, info["account"]) == (200, card)


# -- stored the old way: still opens, and is re-keyed --------------------------------------


async def test_a_card_and_an_account_stored_the_old_way_open_and_are_rekeyed(
    app: RunningApp,
) -> None:
    services = app.services
    (pin1, password1, card1), (pin2, password2, card2) = await cards_and_alice(services)
    await store_the_old_way(services, card1, pin=pin1, password=password1)
    await store_the_old_way(services, card2, pin=pin2, password=password2)
    await store_the_old_way(services, "alice", password=PASSWORD)

    async with card_nas(app) as nas:
        # Over RADIUS: the card's PIN and password, both of the old form.
        await accepted(nas, call(pin1, "C1-1", password1))
        assert await pin_opens(services, legacy_pin_digest(pin1)) is None
        assert await pin_opens(services, services.digests.pin(pin1)) == card1
        held = await stored(services, card1)
        assert held["redis_pin"] == services.digests.pin(pin1)
        assert held["redis_pw"] == services.digests.password(card1, password1)
        # Re-keyed, it opens by the new form alone, and still checks its password.
        await rejected(nas, call(pin1, "C1-2", "x"), 2)
        await accepted(nas, balance_query(pin1, password1))

        # A wrong password for an account stored the old way is refused and counted,
        # and leaves the old digest as it is; the right one then re-keys it.
        await rejected(nas, call("alice", "A-1", "wrong"), 2)
        assert (await stored(services, "alice"))["redis_pw"] == legacy_password_digest(
            "alice", PASSWORD
        )
        assert await services.redis.hget(keys.account("alice"), "pwfails") == b"1"
        await accepted(nas, call("alice", "A-2", PASSWORD))
        alice = await stored(services, "alice")
        assert alice["redis_pw"] == services.digests.password("alice", PASSWORD)
        assert await services.redis.hget(keys.account("alice"), "pwfails") is None

        # Over HTTP: an IVR's lookup by PIN.
        status, info = await app.get(f"/v1/pins/{pin2}")
        assert (status, info["account"]) == (200, card2)
        assert await pin_opens(services, legacy_pin_digest(pin2)) is None
        assert await pin_opens(services, services.digests.pin(pin2)) == card2
        status, quote = await app.get(f"/v1/pins/{pin2}/time?destination={GERMANY}")
        assert status == 200, quote
        # A balance query checks the card's password the old way once, and re-keys it.
        await accepted(nas, balance_query(pin2, password2))
        assert (await stored(services, card2))["redis_pw"] == services.digests.password(
            card2, password2
        )


# -- another pepper -------------------------------------------------------------------------


async def test_another_pepper_opens_no_card_and_stops_a_process_at_its_start(
    app: RunningApp, tmp_path: Path
) -> None:
    services = app.services
    (pin, password, card), _ = await cards_and_alice(services)
    other = Digests(secrets.token_hex(32).encode())
    elsewhere = CallService(services.catalog, services.store, services.settings, other)
    async with card_nas(app, elsewhere) as nas:
        await rejected(nas, call(pin, "O-1", password), 1)
        await rejected(nas, call("alice", "O-2", PASSWORD), 2)
    assert (await app.get(f"/v1/accounts/{card}"))[1]["lines_in_use"] == 0

    # A process given another pepper file stops before it makes or looks up a digest.
    another = tmp_path / "another-pepper"
    another.write_text(secrets.token_hex(32))
    settings: Settings = services.settings
    with pytest.raises(ConfigError, match=r"pepper_file: .* is not the pepper"):
        async with open_runtime(with_overrides(settings, pepper_file=another)):
            pass
    with pytest.raises(ConfigError, match="pepper_file: file not found"):
        async with open_runtime(with_overrides(settings, pepper_file=tmp_path / "none")):
            pass
    short = tmp_path / "short"
    short.write_text("too short")
    with pytest.raises(ConfigError, match=r"pepper_file: .* a pepper needs at least 32"):
        async with open_runtime(with_overrides(settings, pepper_file=short)):
            pass
    # Another data dir (another user's shell) makes no pepper of its own beside the
    # stores' digests: it is told to use the deployment's file.
    elsewhere_dir = tmp_path / "elsewhere"
    unset = with_overrides(settings, pepper_file=None, data_dir=elsewhere_dir)
    with pytest.raises(ConfigError, match="set pepper_file to the file"):
        async with open_runtime(unset):
            pass
    assert not (elsewhere_dir / PEPPER_FILE).exists()
    # The deployment's own file is the same pepper.
    async with open_runtime(settings) as reopened:
        assert await reopened.cards.account_for_pin(pin) == card


async def test_with_no_pepper_file_one_is_made_in_the_data_dir_and_kept(
    settings: Settings,
) -> None:
    await reset_state(settings.redis_url or "", settings.database_url or "")
    embedded_like = with_overrides(settings, pepper_file=None)
    async with open_runtime(embedded_like, make_pepper=True) as services:
        (pin, _, card), _ = await cards_and_alice(services)
    path = settings.data_dir / PEPPER_FILE
    pepper = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(pepper.strip()) == 64
    # A restart keeps it: the card still opens.
    async with open_runtime(embedded_like) as services:
        assert await services.cards.account_for_pin(pin) == card
    assert path.read_text() == pepper
    # A command that makes no digest neither needs the file nor makes one.
    path.unlink()
    async with open_runtime(embedded_like, pepper=False) as services:
        assert await services.accounts.show(card)
    assert not path.exists()


def test_only_the_server_makes_the_pepper_file(
    ocs: Any, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ocs credentials rekey`` and ``ocs pins generate`` run before the server's first
    start (or as another user, or without the data volume) made a pepper of their own:
    rekey then keyed every old digest by it, for good. They stop, making nothing."""
    monkeypatch.delenv("OCS_PEPPER_FILE")  # the default: <data_dir>/pepper
    pepper = tmp_path / "var" / PEPPER_FILE
    cards_csv = tmp_path / "cards.csv"
    one_card = ["--value", "5.00", "--out", str(cards_csv)]
    for argv in (
        ["credentials", "rekey"],
        ["pins", "generate", "--batch", "b", "--plan", "retail", "--count", "1", *one_card],
    ):
        code, out, err = ocs(*argv)
        assert (code, out) == (2, None), err
        assert err.count("\n") == 1 and "start `ocs serve` once first" in err, err
        assert "set pepper_file" in err
        assert not pepper.exists() and not cards_csv.exists()

        async def recorded() -> int:
            conn = await asyncpg.connect(settings.database_url)
            try:
                count: int = await conn.fetchval("SELECT count(*) FROM pepper_check")
                return count
            finally:
                await conn.close()

        assert uvloop.run(recorded()) == 0


# Which of the concurrent loads below reads the pepper's file late (as a process the
# scheduler put aside would).
_LATE: contextvars.ContextVar[bool] = contextvars.ContextVar("late", default=False)


async def test_processes_starting_at_once_on_a_fresh_data_dir_share_one_pepper(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting beside the first one, a process read "no file" just before the first
    made the file and recorded its check value, then read that check value: it stopped,
    saying the pepper did not exist while the stores held digests keyed by one."""
    async with open_runtime(settings, pepper=False):
        pass  # the tables made
    await reset_state(settings.redis_url or "", settings.database_url or "")
    fresh = with_overrides(settings, pepper_file=None, data_dir=tmp_path / "fresh")
    first_done = threading.Event()

    def read_late(path: Path, label: str) -> bytes | None:
        """The file as it was, handed back once the first load has ended."""
        found = read_pepper(path, label)
        if _LATE.get():
            assert first_done.wait(timeout=30), "the first load never ended"
        return found

    monkeypatch.setattr("ocs.pepper.read_pepper", read_late)

    async def load(late: bool) -> bytes:
        _LATE.set(late)  # in this task's context only (asyncio.to_thread carries it)
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
        try:
            digests = await load_digests(fresh, pool, create=True)
            return digests.fingerprint().encode()
        finally:
            await pool.close()

    first = asyncio.create_task(load(False))
    first.add_done_callback(lambda _: first_done.set())
    others = [asyncio.create_task(load(True)) for _ in range(4)]
    results = await asyncio.gather(first, *others)
    assert len(set(results)) == 1
    made = read_pepper(fresh.data_dir / PEPPER_FILE, "pepper")
    assert made is not None and Digests(made).fingerprint().encode() == results[0]


def test_a_pepper_made_by_root_in_another_users_data_dir_is_that_users(tmp_path: Path) -> None:
    """``ocs serve`` started once by root on a host whose service runs as another user
    left /var/lib/ocs/pepper root's, mode 0600: every later start as that user stopped."""
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    if os.geteuid() == 0:
        os.chown(data_dir, 65534, 65534)  # nobody's, as /var/lib/ocs is the service user's
    make_pepper(data_dir / PEPPER_FILE, "pepper")
    made, owner = (data_dir / PEPPER_FILE).stat(), data_dir.stat()
    assert (made.st_uid, made.st_gid) == (owner.st_uid, owner.st_gid)
    assert stat.S_IMODE(made.st_mode) == 0o600


# -- on a Redis Cluster ------------------------------------------------------------------


@pytest.mark.cluster
async def test_the_old_form_is_rekeyed_on_either_backend(backend_services: Services) -> None:
    """A PIN's two references and its card live in three slots: re-keyed by steps that
    each touch one, on a cluster as on one Redis; the command scans every master."""
    services = backend_services
    (pin1, password1, card1), (pin2, password2, card2) = await cards_and_alice(services)
    await store_the_old_way(services, card1, pin=pin1, password=password1)
    await store_the_old_way(services, card2, pin=pin2, password=password2)
    await store_the_old_way(services, "alice", password=PASSWORD)

    # As they are used: a PIN as RADIUS names it, a password by a balance query.
    identity = await services.calls.identify(pin1, "4930555")
    assert (identity.account_id, identity.pin) == (card1, True)
    await services.calls.balance(card1, password=password1, check_password=True)
    held = await stored(services, card1)
    assert held["redis_pin"] == services.digests.pin(pin1)
    assert held["redis_pw"] == services.digests.password(card1, password1)
    assert await pin_opens(services, legacy_pin_digest(pin1)) is None

    # All at once: the others.
    report = await rekey_all(services.pool, services.store, services.redis, services.digests)
    assert (report.redis_pins, report.redis_passwords, report.conflicts) == (1, 2, [])
    refs = [key.decode() async for key in services.redis.scan_iter(match="pin:*")]
    assert sorted(refs) == sorted(keys.pin_ref(services.digests.pin(pin)) for pin in (pin1, pin2))
    assert await services.cards.account_for_pin(pin2) == card2
    await services.calls.balance("alice", password=PASSWORD, check_password=True)
    with pytest.raises(OcsError, match="password"):
        await services.calls.balance(card2, password="wrong", check_password=True)


# -- PINs stay unique across both forms ---------------------------------------------------


async def test_a_new_card_never_gets_a_pin_a_card_stored_the_old_way_has(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = app.services
    (pin, _, card), _ = await cards_and_alice(services)
    await store_the_old_way(services, card, pin=pin)
    # The next batch draws that PIN first, then another.
    draws = [int(pin), 123_456_789_012]
    real = secrets.randbelow
    monkeypatch.setattr(secrets, "randbelow", lambda n: draws.pop(0) if draws else real(n))
    batch = await services.cards.generate(
        batch_id="next", plan_id="retail", count=1, length=12, value=1_000_000
    )
    monkeypatch.undo()
    assert [c.pin for c in batch.cards] == ["123456789012"]
    assert await services.cards.account_for_pin(pin) == card


# -- ocs credentials rekey ----------------------------------------------------------------


def test_the_rekey_command_leaves_no_old_digest_in_either_store(
    ocs: Any, settings: Settings
) -> None:
    async def stored_the_old_way() -> list[tuple[str, str, str]]:
        async with open_runtime(settings) as services:
            cards = await cards_and_alice(services)
            for pin, password, card in cards:
                await store_the_old_way(services, card, pin=pin, password=password)
            await store_the_old_way(services, "alice", password=PASSWORD)
            # A card opened once before the command: already re-keyed in Redis only.
            assert await services.cards.account_for_pin(cards[0][0]) == cards[0][2]
            return cards

    cards = uvloop.run(stored_the_old_way())
    code, report, err = ocs("credentials", "rekey")
    assert (code, err) == (0, "")
    assert report == {
        "postgres_pins": 2,
        "postgres_passwords": 3,
        "redis_pins": 1,
        "redis_passwords": 3,
        "redis_card_pins": 0,  # re-keyed with their references
        "conflicts": [],
        "old_forms_left": False,
    }

    async def checked() -> None:
        async with open_runtime(settings) as services:
            async with services.pool.acquire() as conn:
                digests = [
                    r["d"]
                    for r in await conn.fetch(
                        "SELECT pin_digest AS d FROM pins UNION ALL"
                        " SELECT password_digest FROM accounts WHERE password_digest IS NOT NULL"
                    )
                ]
            assert len(digests) == 5 and all(is_peppered(d) for d in digests)
            refs = [key.decode() async for key in services.redis.scan_iter(match="pin:*")]
            assert len(refs) == 2 and all(is_peppered(k.partition("}:")[2]) for k in refs)
            for pin, password, card in cards:
                held = await stored(services, card)
                assert held["redis_pin"] == held["pg_pin"] == services.digests.pin(pin)
                assert (
                    held["redis_pw"] == held["pg_pw"] == services.digests.password(card, password)
                )
                assert await services.cards.account_for_pin(pin) == card
                await services.calls.balance(card, password=password, check_password=True)
            alice = await stored(services, "alice")
            assert (
                alice["redis_pw"] == alice["pg_pw"] == services.digests.password("alice", PASSWORD)
            )

    uvloop.run(checked())
    # Run again: nothing left to do.
    code, report, err = ocs("credentials", "rekey")
    assert (code, err) == (0, "")
    assert report == dict.fromkeys(report, 0) | {"conflicts": []}


# -- once no old form is left, a wrong PIN is looked up once ------------------------------

WRONG_PIN = "900000000009"


@contextlib.asynccontextmanager
async def pin_lookups(services: Services) -> AsyncIterator[list[str]]:
    """The digests of the PIN references Redis is asked for (in this test's database) while
    the block runs, as Redis's MONITOR shows them, one per command."""
    assert services.settings.redis_url is not None
    watcher = Redis.from_url(services.settings.redis_url)
    database = int(watcher.connection_pool.connection_kwargs.get("db", 0))
    seen: list[str] = []
    end = f"pin-lookups-end-{secrets.token_hex(4)}"
    try:
        async with watcher.monitor() as monitor:
            yield seen
            # Once this marker shows, every command sent before it has shown too.
            await services.redis.get(end)
            async with asyncio.timeout(10):
                while True:
                    command = await monitor.next_command()
                    if command["db"] != database:
                        continue  # another test run's, on the same Redis
                    words = command["command"].split()
                    if end in words:
                        break
                    seen += [w.partition("}:")[2] for w in words[1:] if w.startswith("pin:")]
    finally:
        await watcher.aclose()


async def old_forms_recorded_gone(services: Services) -> bool:
    """Whether PostgreSQL records that no old-form digest is left."""
    return bool(
        await services.pool.fetchval("SELECT old_forms_gone_at IS NOT NULL FROM pepper_check")
    )


async def until_the_process_reads(services: Services, gone: bool) -> None:
    """Send wrong PINs (each may make the process read the mark again) until it has read
    ``gone``."""
    async with asyncio.timeout(10):
        while services.old_forms.gone is not gone:
            assert await services.cards.account_for_pin(WRONG_PIN) is None
            await asyncio.sleep(0.01)


async def test_after_a_full_rekey_a_wrong_pin_costs_one_lookup_not_two(
    app: RunningApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Once `ocs credentials rekey` had left no old-form digest, every wrong PIN (an IVR
    brute-force attempt, a mistyped card) still paid a second look-up, by its old form."""
    caplog.set_level(logging.INFO, logger="ocs.rekey")
    services = app.services
    services.old_forms.refresh_s = 0  # read the mark again on every wrong PIN
    (pin1, password1, card1), (pin2, password2, card2) = await cards_and_alice(services)
    await store_the_old_way(services, card1, pin=pin1, password=password1)
    await store_the_old_way(services, card2, pin=pin2, password=password2)
    await store_the_old_way(services, "alice", password=PASSWORD)
    wrong_forms = [services.digests.pin(WRONG_PIN), legacy_pin_digest(WRONG_PIN)]

    async with card_nas(app) as nas:
        # Before the command: a card stored the old way opens, and a wrong PIN is looked
        # up by both forms.
        async with pin_lookups(services) as looked_up:
            await accepted(nas, call(pin1, "B-1", password1))
        assert legacy_pin_digest(pin1) in looked_up
        async with pin_lookups(services) as looked_up:
            await rejected(nas, call(WRONG_PIN, "B-2", "x"), 1)
        assert looked_up == wrong_forms

        # The command, run beside this process (started before it), leaves none.
        code, out, err = await ocs_cli(services.settings, tmp_path, "credentials", "rekey")
        assert code == 0, err
        assert '"old_forms_left": false' in out
        assert await old_forms_recorded_gone(services)
        # This process learns it from a wrong PIN on, with no restart.
        await until_the_process_reads(services, gone=True)
        assert "a wrong PIN is looked up once" in caplog.text

        # A wrong PIN now costs one look-up, over RADIUS and over HTTP.
        async with pin_lookups(services) as looked_up:
            await rejected(nas, call(WRONG_PIN, "A-1", "x"), 1)
        assert looked_up == wrong_forms[:1]
        async with pin_lookups(services) as looked_up:
            status, _ = await app.get(f"/v1/pins/{WRONG_PIN}")
        assert (status, looked_up) == (404, wrong_forms[:1])

        # The right PINs and passwords still open their cards and accounts.
        async with pin_lookups(services) as looked_up:
            await accepted(nas, call(pin2, "A-2", password2))
        assert looked_up == [services.digests.pin(pin2)]
        await accepted(nas, balance_query(pin1, password1))  # its funds held by B-1
        await accepted(nas, call("alice", "A-4", PASSWORD))
        await rejected(nas, call("alice", "A-5", "wrong"), 2)
        await rejected(nas, call(pin2, "A-6", "wrong"), 2)
    status, info = await app.get(f"/v1/pins/{pin2}")
    assert (status, info["account"]) == (200, card2)


async def test_a_rekey_cut_short_or_leaving_a_conflict_keeps_the_old_form_lookup(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mark is cleared as a re-key begins, and set only by one that ends with no old
    form left: a card that still opens by its old form is never refused."""
    services = app.services
    services.old_forms.refresh_s = 0
    (pin1, _, card1), (pin2, _, card2) = await cards_and_alice(services)

    async def rekey() -> RekeyReport:
        return await rekey_all(services.pool, services.store, services.redis, services.digests)

    assert (await rekey()).old_forms_left is False
    await until_the_process_reads(services, gone=True)

    # A backup from before the re-key restored (a card back in its old form), then a
    # re-key cut short: the old-form look-up is on again, and the card opens.
    await store_the_old_way(services, card1, pin=pin1)

    async def cut_short(*_: object) -> None:
        raise ConnectionError("Redis went away")

    monkeypatch.setattr("ocs.balances.rekey._rekey_redis_pins", cut_short)
    with pytest.raises(ConnectionError):
        await rekey()
    monkeypatch.undo()
    assert not await old_forms_recorded_gone(services)
    await until_the_process_reads(services, gone=False)
    assert await services.cards.account_for_pin(pin1) == card1

    # A PIN whose new form opens another card is left in its old form: the mark stays off.
    await store_the_old_way(services, card1, pin=pin1)
    await services.redis.set(keys.pin_ref(services.digests.pin(pin1)), card2)
    report = await rekey()
    assert (report.conflicts, report.old_forms_left) == ([card1], True)
    assert not await old_forms_recorded_gone(services)
    assert await services.cards.account_for_pin(pin2) == card2
