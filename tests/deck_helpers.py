"""Rate decks the deck tests share, and helpers to import them, see them served and
compare the parses.

Not a test module. ``DECK_A`` and ``DECK_B`` are the decks of tests/test_deck_import.py
(B replaces A wholly); ``BAD_DECKS`` are refused decks with the lines and a word the
refusal must name; ``plan_with_deck_a`` and ``assert_deck_a_still_serves`` frame a
test that a refused import changes nothing.
"""

import os
from collections.abc import Callable, Iterable

import numpy as np

from ocs.decks.problems import DeckError
from ocs.services import Services
from tests.conftest import RunningApp, eventually

HEADER = "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"

DECK_A = (
    HEADER
    + "44,UK Fixed,0.010,0,60,60\n"
    + "447,UK Mobile,0.060,0.150,30,6\n"
    + "49,Germany,0.012,0,1,1\n"
)
# Replaces DECK_A wholly: 447 and 49 are gone, 44 changes zone and rate, 33 is new.
DECK_B = HEADER + "44,UK All,0.020,0,1,1\n" + "33,France,0.030,0.010,60,1\n"

UK_FIXED = "442071234567"
UK_MOBILE = "447700900123"
GERMANY = "4930123456"
FRANCE = "33123456789"

# Each bad deck also carries good rows (one, 33, not in DECK_A) so that applying any
# part of it would show. Values: (deck, line numbers reported, a word the message has).
BAD_DECKS: dict[str, tuple[str, list[int], str]] = {
    "bad price": (
        HEADER + "33,France,0.030,0.010,60,1\n" + "447,UK Mobile,abc,0.150,30,6\n",
        [3],
        "price_per_minute",
    ),
    "price with 7 decimals": (
        HEADER
        + "33,France,0.030,0.010,60,1\n"
        + "44,UK Fixed,0.010,0,60,60\n"
        + "49,Germany,0.0120001,0,1,1\n",
        [4],
        "decimal places",
    ),
    "negative connect fee": (
        HEADER + "33,France,0.030,-0.010,60,1\n",
        [2],
        "connect_fee",
    ),
    "missing field": (
        HEADER + "33,France,0.030,0.010,60,1\n" + "447,UK Mobile,0.060,0.150,30\n",
        [3],
        "fields",
    ),
    "non-digit prefix": (
        HEADER + "44A,UK Fixed,0.010,0,60,60\n" + "33,France,0.030,0.010,60,1\n",
        [2],
        "prefix",
    ),
    "duplicate prefix": (
        HEADER
        + "33,France,0.030,0.010,60,1\n"
        + "44,UK Fixed,0.010,0,60,60\n"
        + "49,Germany,0.012,0,1,1\n"
        + "44,UK Fixed,0.010,0,60,60\n",
        [5],
        "line 3",
    ),
    "one zone with two rates": (
        HEADER + "33,France,0.030,0.010,60,1\n" + "330,France,0.040,0.010,60,1\n",
        [3],
        "France",
    ),
    "increment of zero": (
        HEADER + "33,France,0.030,0.010,60,0\n",
        [2],
        "increment",
    ),
    "a bad prefix and a bad price on one line": (
        HEADER + "33,France,0.030,0.010,60,1\n" + "44A,UK Fixed,abc,0,60,60\n",
        [3, 3],
        "price_per_minute",
    ),
    "a carriage return in a quoted zone": (
        HEADER + "33,France,0.030,0.010,60,1\n" + '44,"UK\rFixed",0.010,0,60,60\n',
        [3],
        "U+000D",
    ),
    "a carriage return in an unquoted field": (
        HEADER + "33,France,0.030,0.010,60,1\n" + '44,"UK"\rFixed,0.010,0,60,60\n',
        [3],
        "carriage return",
    ),
    "a NUL in a zone": (
        HEADER + "33,France,0.030,0.010,60,1\n" + "44,UK\x00Fixed,0.010,0,60,60\n",
        [3],
        "U+0000",
    ),
    "bad header": (
        "prefix,zone,price,connect_fee,first_block,increment\n" + "33,France,0.030,0.010,60,1\n",
        [1],
        "price_per_minute",
    ),
    "empty file": ("", [1], "header"),
    "header only": (HEADER, [2], "no rows"),
    "line numbers count blank lines": (
        HEADER + "33,France,0.030,0.010,60,1\n\n\n" + "44,UK Fixed,0.01O,0,60,60\n",
        [5],
        "price_per_minute",
    ),
    # "²".isdigit() holds but int refuses it: refused naming the column, like any text.
    "a superscript two for seconds": (
        HEADER + "33,France,0.030,0.010,60,1\n" + "44,UK,0.1,0,\u00b2,60\n",
        [3],
        "first_block: expected whole seconds",
    ),
    "every bad line is reported": (
        HEADER
        + "33,France,0.030,0.010,60,1\n"
        + "x44,UK Fixed,0.010,0,60,60\n"
        + "49,Germany,0.012,0,1,1\n"
        + "447,UK Mobile,0.060,0.150,thirty,6\n",
        [3, 5],
        "first_block",
    ),
}


# -- decks through the admin API -------------------------------------------------


def zone_served(app: RunningApp, plan_id: str, number: str) -> str | None:
    """The zone the running server's catalog snapshot rates ``number`` in, if any."""
    match = app.services.catalog.snapshot.tariff_for(plan_id, number)
    return None if match is None else match[1].zone


async def wait_until_served(app: RunningApp, plan_id: str, number: str, zone: str | None) -> None:
    """Wait until the running server rates ``number`` in ``zone`` on the plan (None: not)."""

    async def visible() -> bool:
        return zone_served(app, plan_id, number) == zone

    await eventually(visible, what=f"{number} to be rated in {zone!r} on plan {plan_id}")


async def import_over_http(app: RunningApp, plan_id: str, deck: str | bytes) -> tuple[int, dict]:
    """POST ``deck`` as CSV to the plan's tariffs: (status, the JSON answer)."""
    response = await app.client.post(
        f"/v1/plans/{plan_id}/tariffs", data=deck, headers={"Content-Type": "text/csv"}
    )
    return response.status, await response.json()


async def call(app: RunningApp, account: str, number: str, seconds: int) -> dict:
    """Authorize and stop one call; the stop answer (cost, zone, ...)."""
    status, grant = await app.post("/v1/calls", {"account": account, "destination": number})
    assert status == 201, grant
    status, stopped = await app.post(f"/v1/calls/{grant['call_id']}/stop", {"duration": seconds})
    assert status == 200, stopped
    return stopped


async def refusal(app: RunningApp, account: str, number: str) -> tuple[int, str]:
    """Authorize a call that must be refused: (status, reason)."""
    status, body = await app.post("/v1/calls", {"account": account, "destination": number})
    assert status >= 400, body
    return status, body["error"]["reason"]


async def deck_rows(app: RunningApp, plan_id: str) -> list[tuple[str, str, int, int, int, int]]:
    """The plan's deck as PostgreSQL holds it: (prefix, zone, price, fee, block, increment)."""
    async with app.services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT p.prefix, z.name, t.price_per_minute, t.connect_fee, t.first_block,"
            " t.increment FROM prefixes p JOIN zones z ON z.id = p.zone_id"
            " JOIN tariffs t ON t.plan_id = p.plan_id AND t.zone_id = p.zone_id"
            " WHERE p.plan_id = $1 ORDER BY p.prefix",
            plan_id,
        )
    return [tuple(r.values()) for r in rows]  # type: ignore[misc]


DECK_A_ROWS = [
    ("44", "UK Fixed", 10_000, 0, 60, 60),
    ("447", "UK Mobile", 60_000, 150_000, 30, 6),
    ("49", "Germany", 12_000, 0, 1, 1),
]


async def plan_with_deck_a(app: RunningApp, plan_id: str = "retail") -> None:
    """A plan created over HTTP, DECK_A imported over HTTP, account 'a-<plan>' with 10.00."""
    status, body = await app.post("/v1/plans", {"id": plan_id, "currency": "EUR"})
    assert status == 201, body
    status, body = await import_over_http(app, plan_id, DECK_A)
    assert status == 200, body
    status, body = await app.post(
        "/v1/accounts", {"id": f"a-{plan_id}", "plan": plan_id, "balance": "10.00"}
    )
    assert status == 201, body
    await wait_until_served(app, plan_id, UK_MOBILE, "UK Mobile")


async def assert_deck_a_still_serves(app: RunningApp, plan_id: str = "retail") -> None:
    """The plan still holds DECK_A, and the server still rates by it (after refused imports)."""
    # A catalog change made after the refused imports: once the server has loaded it,
    # it has also loaded anything those imports might wrongly have committed.
    barrier = f"barrier-{os.urandom(4).hex()}"
    status, body = await app.post("/v1/plans", {"id": barrier, "currency": "EUR"})
    assert status == 201, body

    async def barrier_loaded() -> bool:
        return app.services.catalog.snapshot.plan(barrier) is not None

    await eventually(barrier_loaded, what="the catalog to reload")
    assert await deck_rows(app, plan_id) == DECK_A_ROWS
    account = f"a-{plan_id}"
    assert (await call(app, account, UK_MOBILE, 45))["cost"] == "0.198000"
    assert await refusal(app, account, FRANCE) == (403, "destination_not_allowed")


# -- large decks, stored and served ------------------------------------------------


def deck_text(prefixes: list[str], zone_of: dict[str, str]) -> str:
    """A deck of ``prefixes``, each in its zone of ``zone_of`` (Fixed, Mobile or Other)."""
    rates = {"Fixed": "0.010,0,60,60", "Mobile": "0.060,0.150,30,6", "Other": "0.5,0,1,1"}
    return HEADER + "".join(f"{p},{zone_of[p]},{rates[zone_of[p]]}\n" for p in prefixes)


async def stored(services: Services, plan_id: str) -> dict[str, str]:
    """The plan's deck as PostgreSQL holds it: prefix -> zone name."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT p.prefix, z.name FROM prefixes p JOIN zones z ON z.id = p.zone_id"
            " WHERE p.plan_id = $1",
            plan_id,
        )
    return {r["prefix"]: r["name"] for r in rows}


async def served(services: Services, plan_id: str, number: str, zone: str | None) -> None:
    """Wait until the catalog snapshot rates ``number`` in ``zone`` on the plan (None: not)."""

    async def check() -> bool:
        match = services.catalog.snapshot.tariff_for(plan_id, number)
        return (None if match is None else match[1].zone) == zone

    await eventually(check, what=f"{number} rated in {zone!r} on {plan_id}")


def a_deck(size: int, seed: int) -> tuple[list[str], dict[str, str]]:
    """About ``size`` random prefixes (sorted, seeded) and the zone of each."""
    rng = np.random.default_rng(seed)
    prefixes = sorted({str(p) for p in rng.integers(10**5, 10**8, size)})
    return prefixes, {p: ("Mobile" if p[2] in "789" else "Fixed") for p in prefixes}


# -- the parses compared -----------------------------------------------------------


def outcome(parse: Callable[[str], Iterable[object]], text: str) -> tuple[str, object]:
    """Rows, or the problems listed and the count of the rest; a csv.Error fails the test."""
    try:
        return "rows", list(parse(text))
    except DeckError as exc:
        return "refused", (exc.problems, exc.more)
