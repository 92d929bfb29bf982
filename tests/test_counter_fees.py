"""A counter's recurring charge: paid when an optional counter is bought, and at each
new cycle, once per cycle, through the ledger."""

from collections.abc import Awaitable, Callable

import pytest
from redis.exceptions import ResponseError

from ocs.balances import keys
from tests.conftest import RunningApp, add_plan, eventually


async def _ledger_fees(app: RunningApp, account: str) -> list[tuple[int, str]]:
    async with app.services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT amount, reference FROM ledger WHERE account_id = $1 AND kind = 'fee'"
            " ORDER BY occurred_at, reference",
            account,
        )
    return [(r["amount"], r["reference"]) for r in rows]


async def define_counter(app: RunningApp, **fields: object) -> None:
    """Plan retail with a counter of Germany's calls (``fields`` as the API takes them),
    once the catalog has it."""
    await add_plan(app.services)
    status, body = await app.post("/v1/plans/retail/counters", {"zones": ["Germany"], **fields})
    assert status == 201, body

    async def loaded() -> bool:
        return bool(app.services.catalog.snapshot.counters_for("retail"))

    await eventually(loaded, what="the counter in the catalog")


async def test_a_counter_fee_is_paid_on_purchase_and_once_per_cycle(app: RunningApp) -> None:
    await define_counter(app, id="de-100", seconds=6000, mandatory=False, recurring_fee="2.00")
    status, body = await app.post(
        "/v1/accounts", {"id": "ann", "plan": "retail", "balance": "1.00"}
    )
    assert status == 201, body

    # 1.00 cannot pay a 2.00 bundle: refused, and nothing is bought.
    status, body = await app.post("/v1/accounts/ann/counters", {"counter": "de-100"})
    assert (status, body["error"]["reason"]) == (402, "insufficient_funds")
    _, counters = await app.get("/v1/accounts/ann/counters")
    assert counters["counters"] == []
    assert not await app.services.pool.fetchval("SELECT count(*) FROM account_counters")

    await app.post("/v1/accounts/ann/topups", {"amount": "4.00", "topup_id": "t1"})
    status, body = await app.post("/v1/accounts/ann/counters", {"counter": "de-100"})
    assert status == 201, body
    _, account = await app.get("/v1/accounts/ann")
    assert account["balance"] == "3.000000"

    for _ in range(2):  # the same cycle twice charges once
        status, body = await app.post("/v1/counters/reset", {"cycle": "2026-12"})
        assert (status, body["fees"]) == (200, 1)
    _, account = await app.get("/v1/accounts/ann")
    assert account["balance"] == "1.000000"
    # A recurring charge is owed even when the balance cannot cover it.
    await app.post("/v1/counters/reset", {"cycle": "2027-01"})
    _, account = await app.get("/v1/accounts/ann")
    assert account["balance"] == "-1.000000"

    async def recorded() -> bool:
        return len(await _ledger_fees(app, "ann")) == 3

    await eventually(recorded, what="three fee rows in the ledger")
    fees = await _ledger_fees(app, "ann")
    assert [amount for amount, _ in fees] == [-2_000_000] * 3
    assert {ref for _, ref in fees} >= {
        "counter:de-100:cycle:2026-12",
        "counter:de-100:cycle:2027-01",
    }


async def test_a_cycle_label_is_never_read_as_the_reset_scripts_command(
    app: RunningApp,
) -> None:
    # The label "-cancel" went to the reset script as its first argument, its cancel
    # command: every account lost its first counter, half used or not, and was charged
    # a fee "cycle:-cancel".
    await define_counter(app, id="de-10", seconds=600, recurring_fee="1.00")
    await app.post("/v1/accounts", {"id": "cy", "plan": "retail", "balance": "4.00"})
    status, body = await app.post("/v1/counters/reset", {"cycle": "2026-12"})
    assert status == 200, body
    for label in ("-cancel", "-x", " 2026", "a" * 65):
        status, body = await app.post("/v1/counters/reset", {"cycle": label})
        assert (status, body["error"]["field"]) == (400, "cycle"), (label, body)
    status, body = await app.get("/v1/accounts/cy/counters")
    assert [(c["counter"], c["limit"]) for c in body["counters"]] == [("de-10", 600)]
    _, account = await app.get("/v1/accounts/cy")
    assert account["balance"] == "3.000000"


async def counters_of(app: RunningApp, account: str) -> dict[str, tuple[int, int]]:
    status, body = await app.get(f"/v1/accounts/{account}/counters")
    assert status == 200, body
    return {c["counter"]: (c["limit"], c["used"]) for c in body["counters"]}


@pytest.mark.parametrize("carryover", [False, True])
async def test_a_reset_run_again_for_its_cycle_gives_no_seconds_twice(
    app: RunningApp, carryover: bool
) -> None:
    await define_counter(app, id="de-10", seconds=600, carryover=carryover)
    await app.post("/v1/accounts", {"id": "bea", "plan": "retail", "balance": "5.00"})
    status, body = await app.post("/v1/counters/reset", {"cycle": "2026-12"})
    assert status == 200, body
    assert await counters_of(app, "bea") == {"de-10": (600, 0)}

    # A 10-minute German call uses the counter up, and is charged nothing.
    status, grant = await app.post(
        "/v1/calls", {"account": "bea", "destination": "4930123456", "call_id": "b-1"}
    )
    assert status == 201, grant
    status, stopped = await app.post("/v1/calls/b-1/stop", {"duration": 600})
    assert (status, stopped["cost"]) == (200, "0.000000"), stopped
    assert await counters_of(app, "bea") == {"de-10": (600, 600)}

    # The same cycle again (a retry after a crash, say): nothing is given twice, with
    # carryover or without.
    for _ in range(2):
        status, body = await app.post("/v1/counters/reset", {"cycle": "2026-12"})
        assert status == 200, body
    assert await counters_of(app, "bea") == {"de-10": (600, 600)}
    status, grant = await app.post(
        "/v1/calls", {"account": "bea", "destination": "4930123456", "call_id": "b-2"}
    )
    assert status == 201, grant
    status, stopped = await app.post("/v1/calls/b-2/stop", {"duration": 600})
    assert (status, stopped["cost"]) == (200, "0.120000"), stopped  # 10 min at 0.012

    # The next cycle starts it again; nothing was left to carry over.
    await app.post("/v1/counters/reset", {"cycle": "2027-01"})
    assert await counters_of(app, "bea") == {"de-10": (600, 0)}


async def test_a_reset_run_again_leaves_a_counter_bought_since_and_charges_it_nothing(
    app: RunningApp,
) -> None:
    # After the 2026-12 reset ann bought the optional Germany counter (2.00) and used its
    # 600 s. Running the reset again for 2026-12 (a retry) gave her the 600 s again and
    # charged the 2.00 again: a counter bought since the first run did not carry its
    # label. (Her plan's mandatory UK Mobile counter, 1.00 a cycle, is charged once.)
    await define_counter(app, id="de-o", seconds=600, mandatory=False, recurring_fee="2.00")
    status, body = await app.post(
        "/v1/plans/retail/counters",
        {"id": "uk-m", "zones": ["UK Mobile"], "seconds": 600, "recurring_fee": "1.00"},
    )
    assert status == 201, body
    await app.post("/v1/accounts", {"id": "ann", "plan": "retail", "balance": "10.00"})
    status, body = await app.post("/v1/counters/reset", {"cycle": "2026-12"})
    assert (status, body["fees"]) == (200, 1), body
    status, body = await app.post("/v1/accounts/ann/counters", {"counter": "de-o"})
    assert status == 201, body
    status, grant = await app.post(
        "/v1/calls", {"account": "ann", "destination": "4930123456", "call_id": "a-1"}
    )
    assert (status, grant["counter_seconds"]) == (201, 600), grant
    status, stopped = await app.post("/v1/calls/a-1/stop", {"duration": 600})
    assert (status, stopped["cost"]) == (200, "0.000000"), stopped
    assert await counters_of(app, "ann") == {"uk-m": (600, 0), "de-o": (600, 600)}
    _, account = await app.get("/v1/accounts/ann")
    assert account["balance"] == "7.000000"

    status, body = await app.post("/v1/counters/reset", {"cycle": "2026-12"})

    assert (status, body["fees"]) == (200, 1), body  # uk-m's, a repeat: charged once
    assert await counters_of(app, "ann") == {"uk-m": (600, 0), "de-o": (600, 600)}
    _, account = await app.get("/v1/accounts/ann")
    assert account["balance"] == "7.000000"
    # The next cycle starts both again, each fee charged.
    status, body = await app.post("/v1/counters/reset", {"cycle": "2027-01"})
    assert (status, body["fees"]) == (200, 2), body
    assert await counters_of(app, "ann") == {"uk-m": (600, 0), "de-o": (600, 0)}
    _, account = await app.get("/v1/accounts/ann")
    assert account["balance"] == "4.000000"


async def optional_counter(app: RunningApp) -> None:
    """Plan retail with an optional counter de-10 at 2.00 a cycle, and ann with 10.00."""
    await define_counter(app, id="de-10", seconds=600, mandatory=False, recurring_fee="2.00")
    await app.post("/v1/accounts", {"id": "ann", "plan": "retail", "balance": "10.00"})


async def test_a_counter_given_up_and_bought_again_is_paid_again(app: RunningApp) -> None:
    await optional_counter(app)
    status, body = await app.post("/v1/accounts/ann/counters", {"counter": "de-10"})
    assert status == 201, body
    response = await app.client.delete("/v1/accounts/ann/counters/de-10")
    assert response.status == 200, await response.text()
    # At once, within the same second: a new purchase all the same, with its own cycle.
    status, body = await app.post("/v1/accounts/ann/counters", {"counter": "de-10"})
    assert status == 201, body
    assert await counters_of(app, "ann") == {"de-10": (600, 0)}
    _, account = await app.get("/v1/accounts/ann")
    assert account["balance"] == "6.000000"


async def test_a_purchase_cut_short_is_finished_by_the_next_and_paid_once(
    app: RunningApp,
) -> None:
    await optional_counter(app)
    # The fee is taken, then Redis refuses the cycle's start: the account's counters key
    # holds a value of the wrong type (a real Redis error, as a lost connection would be).
    counters_key = keys.counters("ann")
    await app.services.redis.set(counters_key, "not a hash")
    with pytest.raises(ResponseError):
        await app.services.counters.buy("ann", "de-10")
    await app.services.redis.delete(counters_key)
    assert await counters_of(app, "ann") == {}
    # The purchase is on record, paid: the next request finds it rather than paying anew.
    bought = await app.services.pool.fetchval(
        "SELECT count(*) FROM account_counters WHERE account_id = 'ann'"
    )
    assert bought == 1
    _, account = await app.get("/v1/accounts/ann")
    assert account["balance"] == "8.000000"

    # The customer tries again: the purchase is finished, and its fee not taken twice.
    status, body = await app.post("/v1/accounts/ann/counters", {"counter": "de-10"})
    assert status == 201, body
    assert await counters_of(app, "ann") == {"de-10": (600, 0)}
    _, account = await app.get("/v1/accounts/ann")
    assert account["balance"] == "8.000000"
    # And once more: bought already, nothing more happens.
    status, body = await app.post("/v1/accounts/ann/counters", {"counter": "de-10"})
    assert status == 201, body
    _, account = await app.get("/v1/accounts/ann")
    assert account["balance"] == "8.000000"


async def test_a_counter_bought_long_ago_that_redis_lost_starts_again_unpaid(
    app: RunningApp,
) -> None:
    await optional_counter(app)
    status, body = await app.post("/v1/accounts/ann/counters", {"counter": "de-10"})
    assert status == 201, body
    # Bought two days ago, its fee's reference since forgotten (it is kept 400 days);
    # then Redis lost the account's counters (a restore from an older snapshot, say).
    pool, redis = app.services.pool, app.services.redis
    await pool.execute("UPDATE account_counters SET bought_at = bought_at - interval '2 days'")
    await redis.delete(*await redis.keys(keys.fee_done("ann", "*")))
    await redis.delete(keys.counters("ann"))
    status, body = await app.post("/v1/accounts/ann/counters", {"counter": "de-10"})
    assert status == 201, body
    assert await counters_of(app, "ann") == {"de-10": (600, 0)}
    _, account = await app.get("/v1/accounts/ann")
    assert account["balance"] == "8.000000"  # paid once, two days ago


class ActionMidRun:
    """The balance store as a counter reset sees it, running ``action`` (a customer's
    purchase or cancel) once the reset has read who has which counters and before it
    resets the first account: the interleaving a long run over many accounts meets."""

    def __init__(self, store: object, action: Callable[[], Awaitable[None]]) -> None:
        self._store = store
        self._action: Callable[[], Awaitable[None]] | None = action

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def reset_counters(self, *args: object) -> object:
        if self._action is not None:
            action, self._action = self._action, None
            await action()
        return await self._store.reset_counters(*args)  # type: ignore[attr-defined]


async def test_a_counter_bought_while_a_reset_runs_is_kept_and_owes_no_cycle_fee(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reset read that ann had no counter, then she bought de-10 (2.00) before it
    # reached her: it removed the counter she had just paid for.
    await optional_counter(app)

    async def buy() -> None:
        status, body = await app.post("/v1/accounts/ann/counters", {"counter": "de-10"})
        assert status == 201, body

    counters = app.services.counters
    monkeypatch.setattr(counters, "_store", ActionMidRun(app.services.store, buy))
    status, body = await app.post("/v1/counters/reset", {"cycle": "2026-12"})
    assert (status, body["fees"]) == (200, 0), body
    assert await counters_of(app, "ann") == {"de-10": (600, 0)}
    _, account = await app.get("/v1/accounts/ann")
    assert account["balance"] == "8.000000"
    # Run again for the cycle, it still leaves it; the next cycle charges it.
    status, body = await app.post("/v1/counters/reset", {"cycle": "2026-12"})
    assert (status, body["fees"]) == (200, 0), body
    status, body = await app.post("/v1/counters/reset", {"cycle": "2027-01"})
    assert (status, body["fees"]) == (200, 1), body
    _, account = await app.get("/v1/accounts/ann")
    assert account["balance"] == "6.000000"


async def test_a_counter_cancelled_while_a_reset_runs_is_not_started_again_or_charged(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reset read that ann had de-10, then she gave it up before it reached her: it
    # started the counter again and charged its 2.00 cycle fee.
    await optional_counter(app)
    status, body = await app.post("/v1/accounts/ann/counters", {"counter": "de-10"})
    assert status == 201, body

    async def cancel() -> None:
        response = await app.client.delete("/v1/accounts/ann/counters/de-10")
        assert response.status == 200, await response.text()

    counters = app.services.counters
    monkeypatch.setattr(counters, "_store", ActionMidRun(app.services.store, cancel))
    status, body = await app.post("/v1/counters/reset", {"cycle": "2026-12"})
    assert (status, body["fees"]) == (200, 0), body
    assert await counters_of(app, "ann") == {}
    _, account = await app.get("/v1/accounts/ann")
    assert account["balance"] == "8.000000"
    # Bought again later, it is a purchase like any other, paid once.
    monkeypatch.undo()
    status, body = await app.post("/v1/accounts/ann/counters", {"counter": "de-10"})
    assert status == 201, body
    assert await counters_of(app, "ann") == {"de-10": (600, 0)}
    _, account = await app.get("/v1/accounts/ann")
    assert account["balance"] == "6.000000"


async def test_a_reset_run_again_leaves_the_counter_of_an_account_made_since(
    app: RunningApp,
) -> None:
    # bob was created after the 2026-12 reset, bought de-10 (2.00) and used 300 s of it.
    # Running the reset again for 2026-12 gave him the 300 s back and charged 2.00 again:
    # no reset had stamped his counters with the cycle.
    await optional_counter(app)
    status, body = await app.post("/v1/counters/reset", {"cycle": "2026-12"})
    assert status == 200, body
    await app.post("/v1/accounts", {"id": "bob", "plan": "retail", "balance": "10.00"})
    status, body = await app.post("/v1/accounts/bob/counters", {"counter": "de-10"})
    assert status == 201, body
    status, grant = await app.post(
        "/v1/calls", {"account": "bob", "destination": "4930123456", "call_id": "bob-1"}
    )
    assert status == 201, grant
    status, stopped = await app.post("/v1/calls/bob-1/stop", {"duration": 300})
    assert (status, stopped["cost"]) == (200, "0.000000"), stopped

    status, body = await app.post("/v1/counters/reset", {"cycle": "2026-12"})

    assert (status, body["fees"]) == (200, 0), body
    assert await counters_of(app, "bob") == {"de-10": (600, 300)}
    _, account = await app.get("/v1/accounts/bob")
    assert account["balance"] == "8.000000"
