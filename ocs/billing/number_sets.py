"""Number sets: pools of DIDs and toll-free numbers that plans hand out (decision 0030).

A set is imported from CSV (``number[,on_net]``) and assigned to plans with a
priority; an account takes the next free number of the highest-priority set of its
plan, or one it names. The number's row is the lock: a number is the primary key of
``number_set_numbers`` and a free one is claimed with ``FOR UPDATE SKIP LOCKED``, so
two accounts never take the same number and concurrent takers do not queue.

A taken number triggers the plan's triggered charge for the set's kind (its
"Number Recurring Charge" or "Toll-Free Number Recurring Charge", unless the
assignment names another) through ``ocs.billing.store.assign_number``, so it lands
on the next invoice; and it identifies its account in Redis (``BalanceStore.set_did``),
so an inbound call to it is the account's. An on-net number is one of ocs's own: a call
to exactly that number (not to a longer one starting with it) rates in the plan's
On-net zone; only an admin may import one.
"""

import asyncio
import contextlib
import csv
import io
import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

import asyncpg

from ocs.balances.store import BalanceStore
from ocs.billing import number_refs
from ocs.billing.store import assign_number, release_number
from ocs.catalog.snapshot import CATALOG_CHANNEL
from ocs.decks.problems import DeckError
from ocs.errors import OcsError, Reason, account_not_found, invalid
from ocs.events.outbox import emit

KINDS = ("did", "toll_free")
# The plan's triggered charge a set's numbers trigger when its assignment names none.
KIND_CHARGES = {"did": "Number Recurring Charge", "toll_free": "Toll-Free Number Recurring Charge"}
MAX_NUMBERS = 100_000  # numbers in one import
MAX_PRIORITY = 1_000_000
_TRUE = ("1", "true", "yes", "y")
_FALSE = ("", "0", "false", "no", "n")

log = logging.getLogger("ocs.billing.number_sets")


def validate_set_id(value: object, field: str = "id") -> str:
    """1 to 64 letters, digits, '.', '_' or '-'; 400 naming ``field`` otherwise."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 64
        or not all(c.isascii() and (c.isalnum() or c in "._-") for c in value)
    ):
        raise invalid(field, "expected 1 to 64 letters, digits, '.', '_' or '-'")
    return value


def validate_number(value: object, field: str = "number") -> str:
    """1 to 32 digits, an optional leading + dropped; 400 naming ``field`` otherwise."""
    digits = value.strip().removeprefix("+") if isinstance(value, str) else ""
    if not digits.isascii() or not digits.isdigit() or len(digits) > 32:
        raise invalid(field, "expected 1 to 32 digits, optionally with a leading '+'")
    return digits


@dataclass(frozen=True, slots=True)
class SetPlan:
    """A plan a set serves, its priority (highest first) and the charge it names."""

    plan_id: str
    priority: int
    charge_id: str | None


@dataclass(frozen=True, slots=True)
class NumberSet:
    """A number set: its kind, how many numbers it holds and how many are free."""

    id: str
    kind: str
    name: str
    numbers: int = 0
    free: int = 0
    plans: list[SetPlan] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TakenNumber:
    """A number an account holds: from which set, since when, the charge it triggers."""

    account_id: str
    number: str
    number_set_id: str
    kind: str
    on_net: bool
    assigned_on: date
    charge_id: str | None
    # True: a repeat of a take that stood (the same take id, or the named number the
    # account holds already); nothing was taken or charged again.
    repeated: bool = False


def validate_take_id(value: object, field: str = "take_id") -> str:
    """1 to 128 printable characters; 400 naming ``field`` otherwise."""
    if not isinstance(value, str) or not 1 <= len(value) <= 128 or not value.isprintable():
        raise invalid(field, "expected 1 to 128 printable characters")
    return value


def parse_numbers(text: str) -> list[tuple[str, bool]]:
    """(number, on_net) of each line of a CSV with a ``number`` column (and optionally
    ``on_net``: true/false); every bad line is reported by its line number."""
    problems: list[tuple[int, str]] = []
    found: list[tuple[str, bool]] = []
    seen: dict[str, int] = {}
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as error:
        raise invalid("numbers", f"not valid CSV: {error}") from None
    if not rows or "number" not in [c.strip().lower() for c in rows[0]]:
        raise DeckError(
            [(1, "number: the header needs a number column")], what="number list", field="numbers"
        )
    header = [c.strip().lower() for c in rows[0]]
    at_number = header.index("number")
    at_on_net = header.index("on_net") if "on_net" in header else None
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            problems.append((line, f"expected {len(header)} columns, found {len(row)}"))
            continue
        try:
            number = validate_number(row[at_number])
        except OcsError:
            problems.append((line, f"number: {row[at_number]!r} is not 1 to 32 digits"))
            continue
        flag = "" if at_on_net is None else row[at_on_net].strip().lower()
        if flag not in _TRUE + _FALSE:
            problems.append((line, f"on_net: expected true or false, got {flag!r}"))
            continue
        if number in seen:
            problems.append((line, f"number: {number} is on line {seen[number]} already"))
            continue
        seen[number] = line
        found.append((number, flag in _TRUE))
    if len(found) > MAX_NUMBERS:
        problems.append((len(rows), f"number: at most {MAX_NUMBERS} numbers at once"))
    if problems:
        raise DeckError(
            problems[:100], more=max(len(problems) - 100, 0), what="number list", field="numbers"
        )
    return found


async def create_set(pool: asyncpg.Pool, set_id: str, kind: str, name: str = "") -> NumberSet:
    """Create an empty number set of ``kind`` (did or toll_free)."""
    validate_set_id(set_id)
    if kind not in KINDS:
        raise invalid("kind", f"expected one of {', '.join(KINDS)}")
    if len(name) > 200:
        raise invalid("name", "at most 200 characters")
    async with pool.acquire() as conn:
        try:
            await conn.execute(
                "INSERT INTO number_sets (id, kind, name) VALUES ($1, $2, $3)", set_id, kind, name
            )
        except asyncpg.UniqueViolationError:
            raise invalid("id", f"number set {set_id!r} exists already") from None
    return NumberSet(set_id, kind, name)


async def list_sets(pool: asyncpg.Pool) -> list[NumberSet]:
    """Every number set with its counts and the plans it serves, by id."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT s.id, s.kind, s.name,"
            " (SELECT count(*) FROM number_set_numbers n WHERE n.number_set_id = s.id) AS total,"
            " (SELECT count(*) FROM number_set_numbers n WHERE n.number_set_id = s.id"
            "   AND n.account_id IS NULL) AS free"
            " FROM number_sets s ORDER BY s.id"
        )
        plans = await conn.fetch(
            "SELECT number_set_id, plan_id, priority, charge_id FROM number_set_plans"
            " ORDER BY priority DESC, plan_id"
        )
    by_set: dict[str, list[SetPlan]] = {}
    for p in plans:
        by_set.setdefault(p["number_set_id"], []).append(
            SetPlan(p["plan_id"], p["priority"], p["charge_id"])
        )
    return [
        NumberSet(r["id"], r["kind"], r["name"], r["total"], r["free"], by_set.get(r["id"], []))
        for r in rows
    ]


async def import_numbers(
    pool: asyncpg.Pool, set_id: str, text: str, *, on_net_allowed: bool = True
) -> int:
    """Add the numbers of a CSV to a set, all or nothing; how many were added.

    A number in any set already is a problem of its line. On-net numbers are on-net
    destinations, each one exactly (the catalog reads them beside the operator's
    ``onnet_prefixes``, which ``PUT /v1/on-net`` replaces) and the catalog reloads
    them. Making a number on-net changes how every plan rates it, as ``PUT
    /v1/on-net`` does: a caller that may not do that (``on_net_allowed`` False: not
    an admin) is refused (403, field ``on_net``) a file with any on-net number.
    """
    validate_set_id(set_id, "number_set_id")
    numbers = parse_numbers(text)
    if not on_net_allowed and any(on_net for _, on_net in numbers):
        raise OcsError(
            Reason.FORBIDDEN,
            "only an admin may mark numbers on-net (they rate in every plan's On-net zone,"
            " as PUT /v1/on-net does); import them with on_net false or ask an admin",
            field="on_net",
        )
    lines = {number: line for line, (number, _) in enumerate(numbers, start=2)}
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT 1 FROM number_sets WHERE id = $1", set_id) is None:
            raise OcsError(Reason.NOT_FOUND, f"no number set {set_id!r}", field="number_set_id")
        taken = await conn.fetch(
            "SELECT number, number_set_id FROM number_set_numbers WHERE number = ANY($1::text[])",
            list(lines),
        )
        if taken:
            problems = sorted(
                (
                    lines[r["number"]],
                    f"number: {r['number']} is in set {r['number_set_id']} already",
                )
                for r in taken
            )
            raise DeckError(
                problems[:100],
                more=max(len(problems) - 100, 0),
                what="number list",
                field="numbers",
            )
        await conn.copy_records_to_table(
            "number_set_numbers",
            columns=["number", "number_set_id", "on_net"],
            records=[(number, set_id, on_net) for number, on_net in numbers],
        )
        if any(on_net for _, on_net in numbers):
            await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, "onnet:")
    return len(numbers)


async def assign_to_plan(
    pool: asyncpg.Pool, set_id: str, plan_id: str, priority: int, charge_id: str | None = None
) -> SetPlan:
    """Let a plan's accounts take the set's numbers, drawn from before sets of lower
    ``priority``; ``charge_id``: the triggered charge they trigger (None: by kind)."""
    validate_set_id(set_id, "number_set_id")
    if isinstance(priority, bool) or not 0 <= priority <= MAX_PRIORITY:
        raise invalid("priority", f"expected 0 to {MAX_PRIORITY}")
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT 1 FROM number_sets WHERE id = $1", set_id) is None:
            raise OcsError(Reason.NOT_FOUND, f"no number set {set_id!r}", field="number_set_id")
        if await conn.fetchval("SELECT 1 FROM plans WHERE id = $1", plan_id) is None:
            raise OcsError(Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan")
        if charge_id is not None:
            kind = await conn.fetchval("SELECT kind FROM charges WHERE id = $1", charge_id)
            if kind is None:
                raise OcsError(Reason.NOT_FOUND, f"no charge {charge_id!r}", field="charge")
            if kind != "triggered":
                raise invalid("charge", f"charge {charge_id} is a {kind} charge, not triggered")
        await conn.execute(
            "INSERT INTO number_set_plans (number_set_id, plan_id, priority, charge_id)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (number_set_id, plan_id) DO UPDATE"
            " SET priority = EXCLUDED.priority, charge_id = EXCLUDED.charge_id",
            set_id,
            plan_id,
            priority,
            charge_id,
        )
    return SetPlan(plan_id, priority, charge_id)


# The next free number of the plan's sets, highest priority first; a number another
# taker holds locked now is skipped, not waited for.
_NEXT_FREE = (
    "SELECT n.number, n.number_set_id, n.on_net, s.kind"
    " FROM number_set_numbers n JOIN number_set_plans p ON p.number_set_id = n.number_set_id"
    " JOIN number_sets s ON s.id = n.number_set_id"
    " WHERE p.plan_id = $1 AND n.account_id IS NULL AND ($2::text IS NULL OR n.number = $2)"
    # Not a number its previous holder still held on the day, charged or free (freed_on,
    # on the row this take locks); nor one still charged to a holder then: two accounts
    # would pay for it at once (a back-dated take, or a number freed with a charge left
    # open).
    " AND (n.freed_on IS NULL OR n.freed_on <= $3)"
    " AND NOT EXISTS (SELECT 1 FROM account_numbers an WHERE an.number = n.number"
    "   AND (an.end_date IS NULL OR an.end_date > $3))"
    " ORDER BY p.priority DESC, n.number_set_id, n.number LIMIT 1"
)


async def today_where_billed(pool: asyncpg.Pool, account_id: str) -> date:
    """Today in the time zone the account's plan bills in (UTC for a plan without billing
    settings, or an unknown account, which the take or release then refuses).

    The day a take or release starts or stops the number's charge, and invoices cut
    their periods at that zone's midnights: a number taken at 20:00 in New York on
    31 March, taken "today" in UTC, started on 1 April; its charge moved to April's
    invoice and 31 March went unbilled.
    """
    async with pool.acquire() as conn:
        zone = await conn.fetchval(
            "SELECT COALESCE(pb.time_zone, 'UTC') FROM accounts a"
            " LEFT JOIN plan_billing pb ON pb.plan_id = a.plan_id WHERE a.id = $1",
            account_id,
        )
    return datetime.now(ZoneInfo(zone or "UTC")).date()


async def take_number(
    pool: asyncpg.Pool,
    store: BalanceStore,
    account_id: str,
    number: str | None = None,
    on: date | None = None,
    take_id: str | None = None,
) -> TakenNumber:
    """Give the account the next free number of its plan's sets (or ``number``) from
    day ``on`` (default today where its plan bills, ``today_where_billed``); it triggers
    its charge and identifies the account.

    ``on`` is no later than today (the number identifies the account for inbound calls
    at once), no earlier than the account's first day (``_claim``) nor than the day its
    previous holder gave it back (``freed_on``, a hold free of charge too) or the
    number's charge to a previous holder ended. A repeat is answered with the
    assignment that stands (``repeated``), nothing taken or charged again: a take of a
    named number the account holds already (from the same day, when ``on`` is given), or
    a take with a ``take_id`` an earlier take of the account carried.

    404 when the plan's sets have no free number (or no such number), 409 for a
    number another account holds.
    """
    if number is not None:
        number = validate_number(number)
    if take_id is not None:
        validate_take_id(take_id)
    today = await today_where_billed(pool, account_id)
    day = on or today
    if day > today:
        raise invalid(
            "on",
            f"a take may not be dated after today ({today} where the plan bills): the"
            " number would reach the account at once, its charge only from that day",
        )
    # The number Redis was told of, once it was: put back if the take does not commit.
    told: str | None = None
    try:
        async with pool.acquire() as conn, conn.transaction():
            repeat = await _repeat_of(conn, account_id, number, on, take_id)
            if repeat is not None:
                return repeat
            row, charge = await _claim(conn, account_id, number, day, take_id)
            told = row["number"]
            # Redis last, inside the transaction: a failure rolls the claim and its charge
            # back together, and leaves the number free to take again.
            await store.set_did(row["number"], account_id)
    except BaseException as exc:
        if told is None or not await _stands_after_failure(
            exc, pool, store, told, account_id, releasing=False
        ):
            raise
    return TakenNumber(
        account_id, row["number"], row["number_set_id"], row["kind"], row["on_net"], day, charge
    )


async def _repeat_of(
    conn: asyncpg.Connection,
    account_id: str,
    number: str | None,
    on: date | None,
    take_id: str | None,
) -> TakenNumber | None:
    """In the take's transaction: the assignment that stands when this take repeats one
    (``take_number``), else None. A take id is locked for the transaction (an advisory
    lock), so two concurrent takes with one id take one number; the number an earlier
    take with it took is read from its ``number.assigned`` event (events are kept)."""
    if take_id is not None:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            f"ocs-number-take:{account_id}:{take_id}",
        )
        took = await conn.fetchval(
            "SELECT data ->> 'number' FROM events WHERE subject = $1"
            " AND kind = 'number.assigned' AND data ->> 'take_id' = $2 ORDER BY id DESC LIMIT 1",
            account_id,
            take_id,
        )
        if took is not None:
            if number is not None and number != took:
                raise invalid("take_id", f"take {take_id!r} took number {took}, not {number}")
            held = await _held(conn, account_id, took)
            if held is None:
                raise invalid(
                    "take_id",
                    f"take {take_id!r} took number {took}, which the account gave back"
                    " since; a new take needs a new take_id",
                )
            if on is not None and on != held.assigned_on:
                raise invalid("on", f"take {take_id!r} took number {took} from {held.assigned_on}")
            return held
    if number is None:
        return None
    held = await _held(conn, account_id, number)
    if held is not None and on is not None and on != held.assigned_on:
        raise OcsError(
            Reason.ACCOUNT_EXISTS,
            f"the account holds number {number} already, from {held.assigned_on}",
            field="on",
        )
    return held


async def _held(conn: asyncpg.Connection, account_id: str, number: str) -> TakenNumber | None:
    """The account's assignment of ``number`` (its row locked), as a repeat; None when
    the account does not hold it."""
    row = await conn.fetchrow(
        "SELECT n.number_set_id, n.on_net, n.assigned_on, s.kind,"
        " (SELECT an.charge_id FROM account_numbers an WHERE an.number = n.number"
        "   AND an.account_id = n.account_id AND an.end_date IS NULL"
        "   ORDER BY an.id LIMIT 1) AS charge"
        " FROM number_set_numbers n JOIN number_sets s ON s.id = n.number_set_id"
        " WHERE n.number = $1 AND n.account_id = $2 FOR UPDATE OF n",
        number,
        account_id,
    )
    if row is None:
        return None
    return TakenNumber(
        account_id,
        number,
        row["number_set_id"],
        row["kind"],
        row["on_net"],
        row["assigned_on"],
        row["charge"],
        repeated=True,
    )


async def _claim(
    conn: asyncpg.Connection,
    account_id: str,
    number: str | None,
    day: date,
    take_id: str | None = None,
) -> tuple[asyncpg.Record, str | None]:
    """In the caller's transaction: claim the account's next free number (or
    ``number``), write the charge it triggers and its event; (its row, its charge).

    ``day`` is not before the account's first day: its creation's day where its plan
    bills, or its first subscription's start where that is earlier (an account billed
    from before it was loaded into ocs). Before, any day was taken: a number taken "on
    1970-01-01" billed 56 years of its charge on the next invoice."""
    account = await conn.fetchrow(
        "SELECT a.plan_id, LEAST("
        "   (a.created_at AT TIME ZONE COALESCE(pb.time_zone, 'UTC'))::date,"
        "   (SELECT min(s.start_date) FROM subscriptions s WHERE s.account_id = a.id)) AS since"
        " FROM accounts a LEFT JOIN plan_billing pb ON pb.plan_id = a.plan_id WHERE a.id = $1",
        account_id,
    )
    if account is None:
        raise account_not_found(account_id)
    plan_id = account["plan_id"]
    if day < account["since"]:
        raise invalid(
            "on", f"account {account_id} began on {account['since']}: take the number from then"
        )
    # A named number is waited for (its holder may release it); the next free one
    # skips any other taker's row.
    lock = " FOR UPDATE OF n" if number is not None else " FOR UPDATE OF n SKIP LOCKED"
    row = await conn.fetchrow(_NEXT_FREE + lock, plan_id, number, day)
    if row is None:
        raise await _why_none(conn, plan_id, number, day)
    charge = await _kind_charge(conn, plan_id, row["number_set_id"], row["kind"])
    await conn.execute(
        "UPDATE number_set_numbers SET account_id = $2, assigned_on = $3 WHERE number = $1",
        row["number"],
        account_id,
        day,
    )
    if charge is not None:
        # On this transaction: refused (400) when the charge is not in the account's
        # currency, rolling the claim back too; and rolled back with the claim when
        # a later step fails, never left charging for a number nobody holds.
        await assign_number(conn, account_id, row["number"], charge, day)
    data = {
        "account_id": account_id,
        "number": row["number"],
        "number_set": row["number_set_id"],
        "kind": row["kind"],
        "on_net": row["on_net"],
        "on": day.isoformat(),
        "charge_id": charge,
    }
    if take_id is not None:
        # What a repeat of this take is known by (``_repeat_of``).
        data["take_id"] = take_id
    await emit(conn, "number.assigned", account_id, data)
    return row, charge


async def _stands_after_failure(
    exc: BaseException,
    pool: asyncpg.Pool,
    store: BalanceStore,
    number: str,
    account_id: str,
    releasing: bool,
) -> bool:
    """After a take (``releasing`` False) or release (True) by ``account_id`` that told
    Redis and then raised ``exc``: whether it stands all the same, its COMMIT having gone
    through with only its answer lost; Redis then says what PostgreSQL does either way.

    A failure known to have rolled back puts Redis back (``_put_back_did``). One that
    leaves the COMMIT's outcome unknown (the connection lost, the task cancelled) reads
    PostgreSQL back and sets Redis to its holder; 503 ``outcome_unknown`` where it cannot
    be read, Redis left as the change set it (a retry then either redoes the change or
    finds it done). A cancellation is never swallowed: its caller gets it (False).
    """
    if not number_refs.outcome_unknown(exc):
        await _put_back_did(store, number, account_id, taken=releasing)
        return False
    if isinstance(exc, asyncio.CancelledError):
        with contextlib.suppress(Exception):
            await number_refs.settle_reference(pool, store, number)
        return False
    holder = await number_refs.settle_reference(pool, store, number)
    stands = holder != account_id if releasing else holder == account_id
    if stands:
        log.warning(
            "a number change committed though its COMMIT's answer was lost",
            extra={
                "number": number,
                "account": account_id,
                "change": "release" if releasing else "take",
            },
        )
    return stands


async def _put_back_did(store: BalanceStore, number: str, account_id: str, taken: bool) -> None:
    """After a take (``taken`` False) or release (True) by ``account_id`` that did not
    commit: the number identifies that account in Redis again only as PostgreSQL still
    says. Each is conditional and atomic: once the failed transaction rolled back,
    another account's take of the same number may commit and tell Redis before this
    runs, and its reference stays (a take's put-back withdraws the number from this
    account only; a release's sets it only where it identifies nobody). A Redis still
    failing is logged: the step's own failure may have left it unchanged, or changed (a
    reply lost)."""
    try:
        if taken:
            await store.restore_did(number, account_id)
        else:
            await store.drop_did(number, account_id)
    except Exception:
        log.warning(
            "a number's Redis reference could not be put back after a failed change",
            extra={"number": number, "account": account_id},
            exc_info=True,
        )


async def _kind_charge(
    conn: asyncpg.Connection, plan_id: str, set_id: str, kind: str
) -> str | None:
    """The charge a set's numbers trigger on the plan: the one its assignment names,
    else the triggered charge in the plan's currency named after the set's kind (the
    plan's own first, then one of no plan)."""
    found = await conn.fetchval(
        "SELECT COALESCE(sp.charge_id, (SELECT c.id FROM charges c JOIN plans p ON p.id = $1"
        "  WHERE c.kind = 'triggered' AND c.name = $3 AND c.currency = p.currency"
        "  AND (c.plan_id = p.id OR c.plan_id IS NULL)"
        "  ORDER BY c.plan_id IS NULL, c.id LIMIT 1))"
        " FROM number_set_plans sp WHERE sp.plan_id = $1 AND sp.number_set_id = $2",
        plan_id,
        set_id,
        KIND_CHARGES[kind],
    )
    return None if found is None else str(found)


# A number's charge rows still running after a day: whether one is open, and the last
# end. Read by number through account_numbers_number_idx (migration 0068).
CHARGED_AFTER = (
    "SELECT max(end_date) AS until, bool_or(end_date IS NULL) AS open FROM account_numbers"
    " WHERE number = $1 AND (end_date IS NULL OR end_date > $2)"
)


async def _why_none(
    conn: asyncpg.Connection, plan_id: str, number: str | None, day: date
) -> OcsError:
    """The refusal when no number could be taken: exhausted, taken, not the plan's, or
    still charged to its previous holder on ``day``."""
    if number is None:
        return OcsError(
            Reason.NOT_FOUND,
            f"no free number left in the number sets of plan {plan_id!r} on {day}",
            field="number",
        )
    row = await conn.fetchrow(
        "SELECT n.account_id, n.freed_on, EXISTS (SELECT 1 FROM number_set_plans p"
        "  WHERE p.number_set_id = n.number_set_id AND p.plan_id = $2) AS plans"
        " FROM number_set_numbers n WHERE n.number = $1",
        number,
        plan_id,
    )
    if row is None:
        return OcsError(Reason.NOT_FOUND, f"number {number} is in no number set", field="number")
    if row["account_id"] is not None:
        return OcsError(
            Reason.ACCOUNT_EXISTS, f"number {number} belongs to an account already", field="number"
        )
    charged_until = await conn.fetchrow(CHARGED_AFTER, number, day)
    if charged_until["open"]:
        return invalid("on", f"number {number} is still charged to an account that gave it back")
    until = max(d for d in (charged_until["until"], row["freed_on"], day) if d is not None)
    if until > day:
        return invalid(
            "on",
            f"number {number} was its previous holder's until {until}: take it from then",
        )
    return invalid("number", f"number {number} is not in a number set of plan {plan_id}")


async def release(
    pool: asyncpg.Pool, store: BalanceStore, account_id: str, number: str, on: date | None = None
) -> None:
    """The account gives the number back on day ``on`` (its first day without it,
    default today where its plan bills, ``today_where_billed``): its charge stops there,
    prorated, and it is free again. ``on`` is not before the day it was taken nor after
    today (400 naming ``on``)."""
    number = validate_number(number)
    today = await today_where_billed(pool, account_id)
    day = on or today
    if day > today:
        # The number is freed (and its Redis reference dropped) at once: its charge
        # ending only on a later day billed it to this account and to its next holder
        # both, until then.
        raise invalid(
            "on",
            f"a release may not be dated after today ({today} where the plan bills): it"
            " frees the number at once; release it on that day",
        )
    told = False  # whether Redis was told: then put back if the release does not commit
    try:
        async with pool.acquire() as conn, conn.transaction():
            await _free(conn, account_id, number, day)
            told = True
            # Redis last, inside the transaction (as a take): a failure leaves the number
            # the account's, its charge running, and its inbound calls the account's.
            await store.set_did(number, None)
    except BaseException as exc:
        if not told or not await _stands_after_failure(
            exc, pool, store, number, account_id, releasing=True
        ):
            raise


async def _free(conn: asyncpg.Connection, account_id: str, number: str, day: date) -> None:
    """In the caller's transaction: the account's ``number`` is free from ``day``, its
    charge ends there (on this transaction too) and its event is written."""
    assigned_on = await conn.fetchval(
        "SELECT assigned_on FROM number_set_numbers WHERE number = $1 AND account_id = $2"
        " FOR UPDATE",
        number,
        account_id,
    )
    if assigned_on is None:
        raise OcsError(
            Reason.NOT_FOUND,
            f"account {account_id!r} holds no number {number}",
            field="number",
        )
    if day < assigned_on:
        raise invalid("on", f"the number was taken on {assigned_on}")
    # Its end, free of charge or not: the next holder's take is not dated before it
    # (a free hold has no charge row to keep it, migration 0068).
    await conn.execute(
        "UPDATE number_set_numbers SET account_id = NULL, assigned_on = NULL,"
        " freed_on = GREATEST(freed_on, $2) WHERE number = $1",
        number,
        day,
    )
    charged = await conn.fetchval(
        "SELECT 1 FROM account_numbers WHERE number = $1 AND account_id = $2 AND end_date IS NULL",
        number,
        account_id,
    )
    if charged:
        await release_number(conn, number, day)
    await emit(
        conn,
        "number.released",
        account_id,
        {"account_id": account_id, "number": number, "on": day.isoformat()},
    )


async def numbers_of(pool: asyncpg.Pool, account_id: str) -> list[TakenNumber]:
    """The numbers an account holds, by number."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT n.number, n.number_set_id, n.on_net, n.assigned_on, s.kind,"
            " (SELECT an.charge_id FROM account_numbers an WHERE an.number = n.number"
            "   AND an.account_id = n.account_id AND an.end_date IS NULL"
            "   ORDER BY an.id LIMIT 1) AS charge"
            " FROM number_set_numbers n JOIN number_sets s ON s.id = n.number_set_id"
            " WHERE n.account_id = $1 ORDER BY n.number",
            account_id,
        )
    return [
        TakenNumber(
            account_id,
            r["number"],
            r["number_set_id"],
            r["kind"],
            r["on_net"],
            r["assigned_on"],
            r["charge"],
        )
        for r in rows
    ]
