"""Usage counters as the admin API and ``ocs counters`` see them: define, buy, cancel, reset.

PostgreSQL holds the definitions and who bought an optional counter; Redis
holds each account's seconds of the current cycle (limit, used, held), which
the authorize and stop scripts change atomically with the money.
"""

import asyncio
import re
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg

from ocs.balances.store import BalanceStore
from ocs.catalog.snapshot import CATALOG_CHANNEL
from ocs.errors import OcsError, Reason, account_not_found, invalid
from ocs.rating.counter_rules import CounterDef, counter_from_row

MAX_SECONDS = 10_000_000
_RESET_CHUNK = 1_000
# A purchase's id: the time it was bought, in microseconds. PostgreSQL keeps timestamps
# to the microsecond, so a counter given up and bought again is another purchase.
_PURCHASE_ID = "(extract(epoch FROM bought_at) * 1000000)::bigint"
# How long a purchase cut short (its fee taken, its cycle not started) waits to be
# finished by the next request to buy the counter: a customer retries within minutes.
_FINISHING = timedelta(days=1)

# A cycle's label (``reset``'s ``cycle_label``): never one the reset script reads as a
# command ("-cancel").
CYCLE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")


@dataclass(frozen=True, slots=True)
class ResetReport:
    """The outcome of a cycle reset: accounts and counters reset, fees charged, and the
    label of the cycle each plan's accounts were reset to."""

    accounts: int
    counters: int
    fees: int = 0  # recurring fees charged for the new cycle
    cycles: dict[str, str] = field(default_factory=dict)  # plan id -> cycle label

    def __add__(self, other: "ResetReport") -> "ResetReport":
        """Two resets' outcomes together (a reset of several plans, one at a time)."""
        return ResetReport(
            self.accounts + other.accounts,
            self.counters + other.counters,
            self.fees + other.fees,
            {**self.cycles, **other.cycles},
        )


def validate_counter(counter: CounterDef) -> CounterDef:
    """The counter itself when every field is usable; else the error names the field."""
    if not counter.id or len(counter.id) > 64 or not counter.id.isascii():
        raise invalid("id", "expected 1 to 64 ASCII characters")
    if ":" in counter.id or "," in counter.id or not counter.id.isprintable():
        raise invalid("id", "must be printable and must not contain ':' or ','")
    if not 1 <= counter.seconds <= MAX_SECONDS:
        raise invalid("seconds", f"expected 1 to {MAX_SECONDS}")
    if not counter.zones:
        raise invalid("zones", "expected at least one zone")
    if counter.price_per_minute < 0:
        raise invalid("price_per_minute", "must not be negative")
    if not 1 <= counter.increment <= 3600:
        raise invalid("increment", "expected 1 to 3600 seconds")
    if counter.recurring_fee < 0:
        raise invalid("recurring_fee", "must not be negative")
    return counter


class CounterService:
    """Defines counters, and buys, cancels, shows and resets them for accounts."""

    def __init__(self, pool: asyncpg.Pool, store: BalanceStore) -> None:
        self._pool = pool
        self._store = store

    async def create(self, counter: CounterDef) -> CounterDef:
        """Define (or redefine) a counter of a plan; serving processes reload it."""
        validate_counter(counter)
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT 1 FROM plans WHERE id = $1", counter.plan_id) is None:
                raise OcsError(
                    Reason.PLAN_NOT_FOUND, f"plan {counter.plan_id!r} does not exist", field="plan"
                )
            row = await conn.fetchrow(
                "INSERT INTO counters (id, plan_id, seconds, zones, price_per_minute, increment,"
                " reject_on_threshold, carryover, mandatory, recurring_fee, active,"
                " taxes_follow_counter) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                " ON CONFLICT (id) DO UPDATE SET seconds = EXCLUDED.seconds,"
                " zones = EXCLUDED.zones, price_per_minute = EXCLUDED.price_per_minute,"
                " increment = EXCLUDED.increment,"
                " reject_on_threshold = EXCLUDED.reject_on_threshold,"
                " carryover = EXCLUDED.carryover, mandatory = EXCLUDED.mandatory,"
                " recurring_fee = EXCLUDED.recurring_fee, active = EXCLUDED.active,"
                " taxes_follow_counter = EXCLUDED.taxes_follow_counter"
                " WHERE counters.plan_id = EXCLUDED.plan_id RETURNING *",
                counter.id,
                counter.plan_id,
                counter.seconds,
                sorted(counter.zones),
                counter.price_per_minute,
                counter.increment,
                counter.reject_on_threshold,
                counter.carryover,
                counter.mandatory,
                counter.recurring_fee,
                counter.active,
                counter.taxes_follow_counter,
            )
            if row is None:
                raise OcsError(
                    Reason.PLAN_EXISTS,
                    f"counter {counter.id!r} belongs to another plan",
                    field="id",
                )
            await conn.execute(
                "SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"plan:{counter.plan_id}"
            )
        return counter_from_row(row)

    async def _definition(self, conn: asyncpg.Connection, counter_id: str) -> CounterDef:
        row = await conn.fetchrow("SELECT * FROM counters WHERE id = $1", counter_id)
        if row is None:
            raise OcsError(
                Reason.NOT_FOUND, f"counter {counter_id!r} does not exist", field="counter"
            )
        return counter_from_row(row)

    async def buy(self, account_id: str, counter_id: str) -> CounterDef:
        """An account takes an optional counter of its plan; its first cycle starts now.

        The purchase is recorded before any money moves, and its fee's reference names
        that purchase (its time, to the microsecond). So a purchase cut short (Redis
        lost between the fee and the cycle's start) is finished by the next request to
        buy the counter, which finds it and charges nothing twice; and a counter given
        up and bought again is a new purchase, paid again.
        """
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                counter = await self._definition(conn, counter_id)
                plan_id = await conn.fetchval(
                    "SELECT plan_id FROM accounts WHERE id = $1", account_id
                )
                if plan_id is None:
                    raise account_not_found(account_id)
                if plan_id != counter.plan_id:
                    raise invalid("counter", f"counter {counter_id!r} is not of plan {plan_id!r}")
                new = await conn.fetchval(
                    "INSERT INTO account_counters (account_id, counter_id) VALUES ($1, $2)"
                    f" ON CONFLICT DO NOTHING RETURNING {_PURCHASE_ID}",
                    account_id,
                    counter_id,
                )
                purchase, unfinished = new, True
                if purchase is None:
                    found = await conn.fetchrow(
                        f"SELECT {_PURCHASE_ID} AS id, bought_at > now() - $3::interval"
                        " AS recent FROM account_counters WHERE account_id = $1"
                        " AND counter_id = $2",
                        account_id,
                        counter_id,
                        _FINISHING,
                    )
                    if found is None:  # given up meanwhile: a purchase of its own
                        return await self.buy(account_id, counter_id)
                    purchase, unfinished = found["id"], found["recent"]
            if new is None and counter_id in await self._store.counter_state(account_id):
                return counter  # bought, paid and started already
            if not unfinished:
                # Bought long ago and paid then (its fee's reference may be forgotten by
                # now): only its cycle, which Redis lost, starts again.
                await self._store.start_counter(account_id, counter_id, counter.seconds)
                return counter
            if counter.recurring_fee > 0:
                try:
                    # The purchase pays the first cycle; refused, nothing is bought.
                    await self._charge_fee(
                        account_id, counter, f"counter:{counter.id}:bought:{purchase}", True
                    )
                except OcsError:
                    await conn.execute(
                        "DELETE FROM account_counters WHERE account_id = $1"
                        f" AND counter_id = $2 AND {_PURCHASE_ID} = $3",
                        account_id,
                        counter_id,
                        purchase,
                    )
                    raise
            await self._store.start_counter(account_id, counter_id, counter.seconds)
        return counter

    async def _charge_fee(
        self, account_id: str, counter: CounterDef, reference: str, require_funds: bool
    ) -> None:
        result = await self._store.fee(
            account_id, counter.recurring_fee, reference, require_funds=require_funds
        )
        if isinstance(result, str):
            raise OcsError(
                Reason(result),
                f"the account cannot pay counter {counter.id!r}'s fee",
                field="counter",
            )

    async def cancel(self, account_id: str, counter_id: str) -> None:
        """An account gives an optional counter up; it stops applying at once."""
        async with self._pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(
                "DELETE FROM account_counters WHERE account_id = $1 AND counter_id = $2"
                " RETURNING 1",
                account_id,
                counter_id,
            )
            if deleted is None:
                raise OcsError(
                    Reason.NOT_FOUND,
                    f"account {account_id!r} has not bought counter {counter_id!r}",
                    field="counter",
                )
            await self._store.cancel_counter(account_id, counter_id)

    async def state(self, account_id: str) -> dict[str, dict[str, int]]:
        """An account's counters this cycle: counter id -> {limit, used, held} seconds."""
        return await self._store.counter_state(account_id)

    async def reset(
        self, plan_id: str | None, account_id: str | None, cycle_label: str
    ) -> ResetReport:
        """Start the cycle ``cycle_label`` for every account (of a plan, or one account).

        Unused seconds move on where the counter carries over; cancelled and
        inactive counters are dropped; each counter with a recurring fee charges
        it for the new cycle, once per ``cycle_label``, so running the reset again
        for the same cycle charges nothing more. The label a reset opens when an
        operator names none, and the billing worker's reset at each period start,
        are ``ocs.billing.counter_cycles``'s (the plan's billing period).
        """
        label = cycle_label
        if not CYCLE_LABEL.fullmatch(label):
            # The label goes to the reset script as its first argument, where "-cancel"
            # is a command: a label must never read as one.
            raise invalid(
                "cycle",
                "expected 1 to 64 letters, digits and . _ : / - starting with a letter or"
                " digit, such as 2027-01",
            )
        # Taken before the accounts' counters are read: a purchase or cancel after it may
        # be missing from what is read (or, for a run again, from the first run's), and
        # the reset script leaves those counters as the purchase or cancel left them.
        since = await self._store.counter_cycle_began(label, plan_id, account_id)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT a.id, a.plan_id, c.id AS counter, c.seconds, c.carryover, c.mandatory,"
                " c.recurring_fee"
                " FROM accounts a"
                " LEFT JOIN counters c ON c.plan_id = a.plan_id AND c.active AND (c.mandatory"
                "   OR EXISTS (SELECT 1 FROM account_counters ac"
                "              WHERE ac.account_id = a.id AND ac.counter_id = c.id))"
                " WHERE ($1::text IS NULL OR a.plan_id = $1)"
                "   AND ($2::text IS NULL OR a.id = $2)"
                " ORDER BY a.id",
                plan_id,
                account_id,
            )
        cycles: dict[str, list[tuple[str, int, bool, bool]]] = {}
        fee_of: dict[tuple[str, str], int] = {}
        plans: dict[str, str] = {}
        for r in rows:
            plans[r["plan_id"]] = label
            cycle = cycles.setdefault(r["id"], [])
            if r["counter"] is not None:
                cycle.append((r["counter"], r["seconds"], r["carryover"], r["mandatory"]))
                if r["recurring_fee"]:
                    fee_of[(r["id"], r["counter"])] = r["recurring_fee"]
        # Accounts are independent: a chunk at a time shares the round trips.
        counters = 0
        fees: list[tuple[str, str, int]] = []
        accounts = list(cycles.items())
        for start in range(0, len(accounts), _RESET_CHUNK):
            chunk = accounts[start : start + _RESET_CHUNK]
            done = await asyncio.gather(
                *(
                    self._store.reset_counters(account, cycle, label, since)
                    for account, cycle in chunk
                )
            )
            for (account, _), (count, owed) in zip(chunk, done, strict=True):
                counters += count
                # A counter bought in this cycle after its reset owes no cycle fee: its
                # purchase paid the cycle (a retry of the reset must not charge it again).
                fees += [(account, c, fee_of[(account, c)]) for c in owed if (account, c) in fee_of]
        for start in range(0, len(fees), _RESET_CHUNK):
            # A recurring charge is owed whatever the balance: it may go negative.
            await asyncio.gather(
                *(
                    self._store.fee(
                        account, fee, f"counter:{counter_id}:cycle:{label}", require_funds=False
                    )
                    for account, counter_id, fee in fees[start : start + _RESET_CHUNK]
                )
            )
        return ResetReport(accounts=len(cycles), counters=counters, fees=len(fees), cycles=plans)
