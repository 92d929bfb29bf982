"""Charges, plan billing settings and subscriptions as PostgreSQL stores them.

The database holds the rules that must never break (kinds, cadences, the
advance-timing refusal for manual and on-demand plans, subscription state
transitions, currency and timing fixed once a plan is used); this module
checks what it can first, so an operator gets a message naming the field,
and turns the database's refusals into the same kind of error.
"""

import re
from dataclasses import dataclass, fields
from datetime import date

import asyncpg

from ocs.balances.store import BalanceStore
from ocs.billing import sessions
from ocs.billing.currency import CurrencyError, minor_unit_exponent
from ocs.billing.cycles import CYCLES, TAX_ENGINES, TIMINGS, PlanBilling, schedule
from ocs.errors import OcsError, Reason, invalid
from ocs.events.outbox import emit

CHARGE_KINDS = ("recurring", "one_time", "triggered")
# Ids of the charges the plan and counter fees make (migration 0022): kept in step with
# the fees by the database, never created or subscribed to by hand.
FEE_CHARGE_PREFIXES = ("plan-fee.", "counter.")
CADENCES = ("weekly", "monthly", "quarterly", "yearly", "days")
SUBSCRIPTION_STATUSES = ("pending", "active", "suspended", "cancelled")
# The event a status change announces, by (old status, new status); a repeat has none.
STATUS_EVENTS = {
    ("pending", "active"): "subscription.activated",
    ("active", "suspended"): "subscription.suspended",
    ("suspended", "active"): "subscription.resumed",
    ("pending", "cancelled"): "subscription.cancelled",
    ("active", "cancelled"): "subscription.cancelled",
    ("suspended", "cancelled"): "subscription.cancelled",
}
COUNTRY_CODE = re.compile(r"[A-Z]{2}")  # ISO 3166-1 alpha-2, as the database checks it
EMAIL_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+")  # as the database checks it (migration 0037)


@dataclass(frozen=True, slots=True)
class Charge:
    """A product's fee: ``amount`` micro-units of ``currency``, of one kind and timing.

    ``plan_id``: a plan's custom charge, applying to every account subscribed to it.
    """

    id: str
    name: str
    product_code: str
    currency: str
    amount: int
    kind: str
    cadence: str | None = None
    every_days: int | None = None
    timing: str = "arrears"
    tax_code: str = ""
    gl_code: str = ""
    plan_id: str | None = None

    def validate(self) -> None:
        """Refuse (400, naming the field) a charge the database would refuse."""
        if self.id.startswith(FEE_CHARGE_PREFIXES):
            raise invalid("id", "plan-fee.* and counter.* are the plan and counter fees' charges")
        if self.kind not in CHARGE_KINDS:
            raise invalid("kind", f"expected one of {', '.join(CHARGE_KINDS)}")
        if self.kind == "recurring" and self.cadence not in CADENCES:
            raise invalid("cadence", f"a recurring charge needs one of {', '.join(CADENCES)}")
        if self.kind == "one_time" and self.cadence is not None:
            raise invalid("cadence", "a one-time charge has no cadence")
        if self.cadence is not None and self.cadence not in CADENCES:
            raise invalid("cadence", f"expected one of {', '.join(CADENCES)}")
        if (self.cadence == "days") != (self.every_days is not None):
            raise invalid("every_days", "is given with cadence 'days', and only then")
        if self.timing not in ("advance", "arrears"):
            raise invalid("timing", "expected advance or arrears")
        if self.amount < 0:
            raise invalid("amount", "must not be negative")
        try:
            minor_unit_exponent(self.currency)
        except CurrencyError as error:
            raise invalid("currency", str(error)) from None


async def create_charge(pool: asyncpg.Pool, charge: Charge) -> Charge:
    """Store a new charge; a plan's custom charge must be in the plan's currency."""
    charge.validate()
    columns = [f.name for f in fields(Charge)]
    async with pool.acquire() as conn, conn.transaction():
        if charge.plan_id is not None:
            currency = await conn.fetchval(
                "SELECT currency FROM plans WHERE id = $1", charge.plan_id
            )
            if currency is None:
                raise OcsError(Reason.PLAN_NOT_FOUND, f"plan {charge.plan_id!r} does not exist")
            if currency != charge.currency:
                raise invalid("currency", f"plan {charge.plan_id} bills in {currency}")
        placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
        try:
            await conn.execute(
                f"INSERT INTO charges ({', '.join(columns)}) VALUES ({placeholders})",
                *(getattr(charge, c) for c in columns),
            )
        except asyncpg.UniqueViolationError:
            raise invalid("id", f"charge {charge.id!r} exists already") from None
        except asyncpg.CheckViolationError as error:
            raise invalid("charge", str(error)) from None
    return charge


async def set_plan_billing(
    pool: asyncpg.Pool, store: BalanceStore, billing: PlanBilling
) -> PlanBilling:
    """Set a plan's billing settings (insert or replace).

    Refused by the database: start-of-cycle timing on a manual or on-demand
    plan, a timing change once an account uses the plan, and a change of the cycle
    (cycle, day, weekday, days, time zone, effective date) once the plan has invoices.
    The plan's accounts follow its cycle (``sessions.follow_cycle``): billed on demand,
    those with no session open are locked until one opens; billed otherwise, they lose
    that lock. Leaving on_demand while a session of the plan is open is refused (409
    ``account_state``, naming ``cycle`` and how many are open).
    """
    if billing.cycle not in CYCLES:
        raise invalid("cycle", f"expected one of {', '.join(CYCLES)}")
    if billing.tax_engine not in TAX_ENGINES:
        raise invalid("tax_engine", f"expected one of {', '.join(TAX_ENGINES)}")
    if billing.invoice_timing not in TIMINGS:
        raise invalid("invoice_timing", f"expected one of {', '.join(TIMINGS)}")
    if billing.invoice_timing == "start_of_cycle" and billing.cycle in ("manual", "on_demand"):
        raise invalid("invoice_timing", f"a {billing.cycle} plan is invoiced at the end of cycle")
    if billing.cycle not in ("manual", "on_demand"):
        try:
            schedule(billing)
        except ValueError as error:
            raise invalid("cycle", str(error)) from None
    columns = [f.name for f in fields(PlanBilling)]
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != "plan_id")
    async with pool.acquire() as conn, conn.transaction():
        # Account creation holds the plan row (FOR SHARE) while it reads the cycle: an
        # account made meanwhile is either waited for, and moved below, or made after,
        # reading this cycle.
        if (
            await conn.fetchval(
                "SELECT 1 FROM plans WHERE id = $1 FOR NO KEY UPDATE", billing.plan_id
            )
            is None
        ):
            raise OcsError(Reason.PLAN_NOT_FOUND, f"plan {billing.plan_id!r} does not exist")
        try:
            await conn.execute(
                f"INSERT INTO plan_billing ({', '.join(columns)}) VALUES ({placeholders})"
                f" ON CONFLICT (plan_id) DO UPDATE SET {updates}",
                *(getattr(billing, c) for c in columns),
            )
        except asyncpg.CheckViolationError as error:
            # The cycle's columns are fixed once the plan is invoiced (migration 0045).
            field = "cycle" if "billing cycle" in str(error) else "invoice_timing"
            raise invalid(field, str(error)) from None
        await sessions.follow_cycle(conn, store, billing.plan_id, billing.cycle == "on_demand")
    return billing


async def plan_billing(pool: asyncpg.Pool, plan_id: str) -> PlanBilling | None:
    """A plan's billing settings; None when it has none."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM plan_billing WHERE plan_id = $1", plan_id)
    return None if row is None else PlanBilling.from_row(row)


@dataclass(frozen=True, slots=True)
class Subscription:
    """An account's subscription to its plan, with what it records about the service."""

    account_id: str
    plan_id: str
    start_date: date
    end_date: date | None = None
    status: str = "active"
    category: str = ""
    service: str = ""
    billing_address: str = ""  # the street lines, as printed
    salesperson: str = ""
    # The billing address's parts, which an external tax engine sources taxes by.
    billing_city: str = ""
    billing_county: str = ""
    billing_region: str = ""  # state or province: "TX"
    billing_postal_code: str = ""
    billing_country: str = ""  # ISO 3166-1 alpha-2: "US"
    billing_email: str = ""  # where invoices and dunning notices are emailed (none: not)


async def subscribe(pool: asyncpg.Pool, sub: Subscription) -> int:
    """Store a subscription (pending or active); its id.

    The plan must bill in the account's currency (400 naming ``plan``): its fee and
    charges are billed in micro-units of the account's currency. The plan row is held
    until the insert commits, and once subscribed to its currency is fixed (migration
    0059). Announces ``subscription.created`` (and ``subscription.activated`` for one
    created active) in the same transaction.
    """
    if sub.status not in ("pending", "active"):
        raise invalid("status", "a new subscription is pending or active")
    if sub.end_date is not None and sub.end_date < sub.start_date:
        raise invalid("end_date", "must not be before start_date")
    if sub.billing_country and not COUNTRY_CODE.fullmatch(sub.billing_country):
        raise invalid("billing_country", "an ISO 3166-1 alpha-2 code in capitals, e.g. US")
    if sub.billing_email and not EMAIL_ADDRESS.fullmatch(sub.billing_email):
        raise invalid("billing_email", "an email address, e.g. billing@example.com")
    columns = [f.name for f in fields(Subscription)]
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    async with pool.acquire() as conn, conn.transaction():
        currencies = await conn.fetchrow(
            "SELECT a.currency AS account_currency, p.currency AS plan_currency"
            " FROM accounts a, plans p WHERE a.id = $1 AND p.id = $2 FOR SHARE OF p",
            sub.account_id,
            sub.plan_id,
        )
        if currencies is not None and currencies["account_currency"] != currencies["plan_currency"]:
            raise invalid(
                "plan",
                f"plan {sub.plan_id} bills in {currencies['plan_currency'].strip()}, account"
                f" {sub.account_id} in {currencies['account_currency'].strip()}",
            )
        try:
            sub_id = int(
                await conn.fetchval(
                    f"INSERT INTO subscriptions ({', '.join(columns)})"
                    f" VALUES ({placeholders}) RETURNING id",
                    *(getattr(sub, c) for c in columns),
                )
            )
        except asyncpg.ForeignKeyViolationError as error:
            raise OcsError(Reason.NOT_FOUND, str(error)) from None
        data = {
            "subscription_id": sub_id,
            "account_id": sub.account_id,
            "plan_id": sub.plan_id,
            "status": sub.status,
            "start_date": sub.start_date.isoformat(),
        }
        await emit(conn, "subscription.created", sub.account_id, data)
        if sub.status == "active":
            await emit(conn, "subscription.activated", sub.account_id, data)
        return sub_id


async def _changed(
    conn: asyncpg.Connection, subscription_id: int, change: str, **details: object
) -> None:
    """Announce ``subscription.changed`` (a charge added, ended or changed) in the
    caller's transaction."""
    account_id = await conn.fetchval(
        "SELECT account_id FROM subscriptions WHERE id = $1", subscription_id
    )
    data = {"subscription_id": subscription_id, "account_id": account_id, "change": change}
    data.update({k: v.isoformat() if isinstance(v, date) else v for k, v in details.items()})
    await emit(conn, "subscription.changed", str(account_id), data)


async def add_charge(
    pool: asyncpg.Pool,
    subscription_id: int,
    charge_id: str,
    *,
    quantity: int = 1,
    start_date: date | None = None,
    end_date: date | None = None,
) -> int:
    """Add a charge to a subscription, from ``start_date`` (None: the subscription's)."""
    if quantity < 1:
        raise invalid("quantity", "must be at least 1")
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT a.currency AS account_currency, c.currency AS charge_currency, c.origin"
            " FROM subscriptions s JOIN accounts a ON a.id = s.account_id, charges c"
            " WHERE s.id = $1 AND c.id = $2",
            subscription_id,
            charge_id,
        )
        if row is None:
            raise OcsError(
                Reason.NOT_FOUND, f"no subscription {subscription_id} or charge {charge_id!r}"
            )
        if row["account_currency"] != row["charge_currency"]:
            raise invalid("charge", f"charge {charge_id} is not in {row['account_currency']}")
        if row["origin"] is not None:
            # A plan's fee applies through the plan; a counter's is charged in real time.
            raise invalid("charge", f"charge {charge_id} is a {row['origin']}: not subscribed to")
        item_id = int(
            await conn.fetchval(
                "INSERT INTO subscription_charges (subscription_id, charge_id, quantity,"
                " start_date, end_date) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                subscription_id,
                charge_id,
                quantity,
                start_date,
                end_date,
            )
        )
        await _changed(
            conn,
            subscription_id,
            "charge_added",
            item_id=item_id,
            charge_id=charge_id,
            quantity=quantity,
            start_date=start_date,
            end_date=end_date,
        )
        return item_id


async def set_status(
    pool: asyncpg.Pool, subscription_id: int, status: str, *, on: date | None = None
) -> None:
    """Move a subscription through pending -> active -> suspended -> cancelled.

    Cancelling needs ``on``, the first day without service: recurring charges
    stop that day, prorated.
    The database refuses any other transition. Each change is announced
    (``STATUS_EVENTS``) in its transaction.
    """
    if status not in SUBSCRIPTION_STATUSES:
        raise invalid("status", f"expected one of {', '.join(SUBSCRIPTION_STATUSES)}")
    if (status == "cancelled") != (on is not None):
        raise invalid("on", "a cancellation, and only a cancellation, needs its day")
    async with pool.acquire() as conn, conn.transaction():
        # The status before, under the row's lock: the event names the transition.
        old = await conn.fetchrow(
            "SELECT status, account_id FROM subscriptions WHERE id = $1 FOR UPDATE",
            subscription_id,
        )
        if old is None:
            raise OcsError(Reason.NOT_FOUND, f"no subscription {subscription_id}")
        try:
            await conn.execute(
                "UPDATE subscriptions SET status = $2, cancelled_on = $3 WHERE id = $1",
                subscription_id,
                status,
                on,
            )
        except asyncpg.CheckViolationError as error:
            raise invalid("status", str(error)) from None
        kind = STATUS_EVENTS.get((old["status"], status))
        if kind is not None:
            data: dict[str, object] = {
                "subscription_id": subscription_id,
                "account_id": old["account_id"],
                "from": old["status"],
                "status": status,
            }
            if on is not None:
                data["cancelled_on"] = on.isoformat()
            await emit(conn, kind, old["account_id"], data)


async def end_charge(pool: asyncpg.Pool, item_id: int, on: date) -> None:
    """Remove a subscription's charge from day ``on`` (the first day without it), prorated.

    A charge billed in advance for a period holding ``on`` is credited for
    [on, period end) on the next invoice; one in arrears is billed up to ``on``.
    """
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE subscription_charges SET end_date = $2 WHERE id = $1"
            " AND (start_date IS NULL OR start_date <= $2)"
            " AND (end_date IS NULL OR end_date >= $2) RETURNING subscription_id, charge_id",
            item_id,
            on,
        )
        if row is None:
            raise OcsError(
                Reason.NOT_FOUND, f"no subscription charge {item_id} running on {on}", field="item"
            )
        await _changed(
            conn,
            row["subscription_id"],
            "charge_ended",
            item_id=item_id,
            charge_id=row["charge_id"],
            end_date=on,
        )


async def change_charge(
    pool: asyncpg.Pool, item_id: int, charge_id: str, on: date, *, quantity: int | None = None
) -> int:
    """An upgrade, downgrade or quantity change from day ``on``: the new item's id.

    The old subscription charge ends on ``on`` and a new one starts that day
    (same subscription, its quantity unless given, the old end date). The
    invoices follow from the dates (decision 0020): in arrears, each side is
    billed for its own days; in advance, the next invoice credits the unused
    old part and charges the new part, two lines.
    """
    if quantity is not None and quantity < 1:
        raise invalid("quantity", "must be at least 1")
    async with pool.acquire() as conn, conn.transaction():
        old = await conn.fetchrow(
            "SELECT sc.subscription_id, sc.quantity, sc.end_date, a.currency,"
            " (SELECT currency FROM charges WHERE id = $2) AS charge_currency"
            " FROM subscription_charges sc JOIN subscriptions s ON s.id = sc.subscription_id"
            " JOIN accounts a ON a.id = s.account_id"
            " WHERE sc.id = $1 AND (sc.start_date IS NULL OR sc.start_date <= $3)"
            "   AND COALESCE(sc.start_date, s.start_date) <= $3"
            "   AND (sc.end_date IS NULL OR sc.end_date > $3) FOR UPDATE OF sc",
            item_id,
            charge_id,
            on,
        )
        if old is None:
            raise OcsError(
                Reason.NOT_FOUND, f"no subscription charge {item_id} running on {on}", field="item"
            )
        if old["charge_currency"] is None:
            raise OcsError(Reason.NOT_FOUND, f"no charge {charge_id!r}", field="charge")
        if old["charge_currency"] != old["currency"]:
            raise invalid("charge", f"charge {charge_id} is not in {old['currency']}")
        await conn.execute(
            "UPDATE subscription_charges SET end_date = $2 WHERE id = $1", item_id, on
        )
        new_id = int(
            await conn.fetchval(
                "INSERT INTO subscription_charges (subscription_id, charge_id, quantity,"
                " start_date, end_date) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                old["subscription_id"],
                charge_id,
                quantity or old["quantity"],
                on,
                old["end_date"],
            )
        )
        await _changed(
            conn,
            old["subscription_id"],
            "charge_changed",
            item_id=new_id,
            replaces_item_id=item_id,
            charge_id=charge_id,
            quantity=quantity or old["quantity"],
            start_date=on,
        )
        return new_id


async def assign_number(
    db: asyncpg.Pool | asyncpg.Connection,
    account_id: str,
    number: str,
    charge_id: str,
    start_date: date,
) -> int:
    """Assign ``number`` to an account from ``start_date``; it triggers ``charge_id``.

    The trigger: the charge applies once per number assigned, recurring by its
    cadence (prorated by day like any recurring charge) or once on assignment.
    ``db``: a pool, or the connection of the caller's transaction, so that the
    charge row stands or falls with what the caller writes beside it (number sets
    take a number so). Refused (400) for a number that triggers this charge
    already, or a charge that is not a triggered charge in the account's currency
    (the database checks both).
    """
    try:
        return int(
            await db.fetchval(
                "INSERT INTO account_numbers (account_id, number, charge_id, start_date)"
                " VALUES ($1, $2, $3, $4) RETURNING id",
                account_id,
                number,
                charge_id,
                start_date,
            )
        )
    except asyncpg.UniqueViolationError:
        raise invalid("number", f"{number} triggers {charge_id} already") from None
    except asyncpg.CheckViolationError as error:
        raise invalid("charge", str(error)) from None
    except asyncpg.ForeignKeyViolationError as error:
        raise OcsError(Reason.NOT_FOUND, str(error)) from None


async def release_number(db: asyncpg.Pool | asyncpg.Connection, number: str, on: date) -> None:
    """The number leaves its account on ``on`` (first day without it): its charges stop.
    ``db``: a pool, or the connection of the caller's transaction (``assign_number``)."""
    found = await db.fetchval(
        "WITH r AS (UPDATE account_numbers SET end_date = $2"
        " WHERE number = $1 AND end_date IS NULL AND start_date <= $2 RETURNING id)"
        " SELECT min(id) FROM r",
        number,
        on,
    )
    if found is None:
        raise OcsError(Reason.NOT_FOUND, f"number {number} is not assigned", field="number")
