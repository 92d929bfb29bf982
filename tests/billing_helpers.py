"""Helpers the billing tests share: a billed plan, customers subscribed to it, monthly
charges, invoice runs, the invoices they leave, and CDRs written straight into PostgreSQL.

Not a test module. Amounts are integer micro-units; ``EUR`` is one euro.
"""

from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from ocs.balances.accounts import AccountSpec
from ocs.balances.ledger_writer import LedgerWriter
from ocs.billing import posting, runs
from ocs.billing.cycles import PlanBilling
from ocs.billing.store import (
    Charge,
    Subscription,
    add_charge,
    create_charge,
    set_plan_billing,
    subscribe,
)
from ocs.services import Services
from tests.conftest import add_plan

EUR = 1_000_000

# An invoice line of a charge as a test reads it: (period label, kind, description,
# first day, day after the last, exact amount, rounded amount).
ChargeLine = tuple[str, str, str, date, date, int, int]


async def billed_plan(
    services: Services,
    *,
    plan_id: str = "retail",
    cycle_day: int = 1,
    effective: date = date(2026, 1, 1),
    tz: str = "UTC",
) -> None:
    """The retail plan, invoiced on day ``cycle_day`` of each month, at the end of cycle."""
    await add_plan(services, plan_id)
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling(plan_id, "fixed_date", effective, time_zone=tz, cycle_day=cycle_day),
    )


async def customer(
    services: Services,
    account_id: str,
    charge_id: str | None,
    start: date,
    *,
    plan_id: str = "retail",
    balance: int = 0,
) -> int:
    """An account on the plan, subscribed from ``start``, with ``charge_id`` added."""
    await services.accounts.create(
        AccountSpec(account_id, plan_id=plan_id, opening_balance=balance)
    )
    sub = await subscribe(services.pool, Subscription(account_id, plan_id, start))
    if charge_id is not None:
        await add_charge(services.pool, sub, charge_id)
    return sub


async def monthly(services: Services, charge_id: str, amount: int, timing: str = "arrears") -> None:
    """A monthly charge of ``amount`` micro-EUR."""
    await create_charge(
        services.pool,
        Charge(
            charge_id,
            f"Line rent {charge_id}",
            "LINE",
            "EUR",
            amount,
            "recurring",
            cadence="monthly",
            timing=timing,
            gl_code="4000",
        ),
    )


async def run(services: Services, period: str, **options: Any) -> int:
    """Create and execute a run; its id."""
    options.setdefault("invoice_date", date(2026, 4, 1))
    run_id = await runs.create_run(services.pool, period, **options)
    done = await runs.execute_run(services.pool, run_id)
    assert done.state == "done"
    assert done.accounts_done == done.accounts_total
    return run_id


async def invoices(services: Services) -> list[dict[str, Any]]:
    """Every invoice with its lines, in a comparable form."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM invoices ORDER BY account_id, period_start, kind")
        found = []
        for row in rows:
            lines = await conn.fetch(
                "SELECT kind, description, period_start, period_end, quantity, amount,"
                " exact_amount, zone, calls, seconds, billed_seconds"
                " FROM invoice_lines WHERE invoice_id = $1 ORDER BY position",
                row["id"],
            )
            found.append(
                {
                    "account": row["account_id"],
                    "state": row["state"],
                    "label": row["period_label"],
                    "total": row["total"],
                    "number": row["number"],
                    "lines": [dict(line) for line in lines],
                }
            )
    return found


async def cdr(services: Services, entry: str, account: str, when: datetime, **fields: Any) -> None:
    """One CDR (a call unless ``termination_cause`` says usage) stopped at ``when``."""
    row: dict[str, Any] = {
        "entry_id": entry,
        "call_id": entry,
        "account_id": account,
        "plan_id": "retail",
        "zone": "UK Mobile",
        "destination": "447700900123",
        "caller": None,
        "currency": "EUR",
        "authorized_at": when,
        "stopped_at": when,
        "duration": 45,
        "billed_seconds": 48,
        "connect_fee": 0,
        "first_block": 30,
        "increment": 6,
        "price_per_minute": 60_000,
        "rated_cost": 0,
        "charged": 0,
    }
    row.update(fields)
    columns = ", ".join(row)
    marks = ", ".join(f"${n}" for n in range(1, len(row) + 1))
    async with services.pool.acquire() as conn:
        await conn.execute(f"INSERT INTO cdrs ({columns}) VALUES ({marks})", *row.values())


async def invoice_id(services: Services, account: str, label: str) -> int:
    """The id of the account's invoice of that period."""
    async with services.pool.acquire() as conn:
        found = await conn.fetchval(
            "SELECT id FROM invoices WHERE account_id = $1 AND period_label = $2"
            " AND kind = 'invoice'",
            account,
            label,
        )
    assert found is not None
    return int(found)


async def charge_lines_billed(
    services: Services, account: str, charge_id: str, *, with_void: bool = False
) -> list[ChargeLine]:
    """Every line the account's invoices carry for the charge, by period and position
    (``with_void``: the lines of void invoices too)."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT i.period_label, l.kind, l.description, l.period_start, l.period_end,"
            " l.exact_amount, l.amount FROM invoices i"
            " JOIN invoice_lines l ON l.invoice_id = i.id"
            " WHERE i.account_id = $1 AND l.charge_id = $2 AND i.kind = 'invoice'"
            " AND ($3 OR i.state <> 'void') ORDER BY i.period_start, l.position",
            account,
            charge_id,
            with_void,
        )
    return [
        (
            r["period_label"],
            r["kind"],
            r["description"],
            r["period_start"].date(),
            r["period_end"].date(),
            r["exact_amount"],
            r["amount"],
        )
        for r in rows
    ]


async def run_months(services: Services, *labels: str) -> None:
    """Run the named months ("2026-03") in order, each invoiced on the 1st of the next."""
    for label in labels:
        year, month = int(label[:4]), int(label[5:])
        await run(services, label, invoice_date=date(year + month // 12, month % 12 + 1, 1))


async def renting(services: Services) -> int:
    """Postpaid ``pp`` (credit limit 100.00) paying 10.00 rent a month from January:
    the id of January's run, drafted and not posted."""
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await services.accounts.create(AccountSpec("pp", plan_id="retail", credit_limit=100 * EUR))
    sub = await subscribe(services.pool, Subscription("pp", "retail", date(2026, 1, 1)))
    await add_charge(services.pool, sub, "rent")
    return await run(services, "2026-01")


async def ledger_written(services: Services, reference: str, dated: datetime) -> str:
    """Run the real ledger writer until the entry of ``reference`` is in PostgreSQL; the
    row's ``entry_id`` as the writer stores it (``<bucket>-<stream id>``).

    The entry is stamped with the clock when its money moved, later than the past months
    the tests bill: the row is dated ``dated`` once written, so that a month's statement
    counts it; its id, kind, amount and reference stay the writer's."""
    writer = LedgerWriter(services.redis, services.pool)
    await writer.ensure_groups()
    for _ in range(100):
        await writer.read_new()
        async with services.pool.acquire() as conn:
            entry = await conn.fetchval(
                "UPDATE ledger SET occurred_at = $2 WHERE reference = $1 RETURNING entry_id",
                reference,
                dated,
            )
        if entry is not None:
            return str(entry)
    raise AssertionError(f"the ledger writer did not write the entry {reference!r}")


# Each posted invoice of the run posted the day it is dated, at local midnight where its
# plan bills.
_POSTED_ON_ITS_DATE_SQL = """
UPDATE invoices i SET posted_at = i.invoice_date::timestamp AT TIME ZONE
       COALESCE((SELECT pb.time_zone FROM plan_billing pb WHERE pb.plan_id = i.plan_id), 'UTC')
WHERE i.run_id = $1 AND i.state = 'posted'
"""


async def post_on_time(services: Services, run_id: int) -> None:
    """Post a run as a worker running on time does: each invoice posted on its own date.

    Tests post on today's clock, then run dunning on a clock of 2026; dunning counts an
    invoice's grace from the later of its date and the day it was posted (decision 0028),
    so an invoice posted "today" would not be overdue on that clock.
    """
    await posting.post(services.pool, services.store, run_id=run_id)
    async with services.pool.acquire() as conn:
        await conn.execute(_POSTED_ON_ITS_DATE_SQL, run_id)


# A day inside March's statement window.
MID_MARCH = datetime(2026, 3, 15, 12, tzinfo=UTC)


async def postpaid_with_two_invoices(
    services: Services, account: str = "pp", *, on_time: bool = False
) -> tuple[int, int]:
    """A postpaid account (credit limit 100.00) billed 10.00 rent for January and
    February, both posted (``on_time``: each on its date, 1 April, so that dunning
    finds them overdue today): (January's invoice id, February's)."""
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await services.accounts.create(AccountSpec(account, plan_id="retail", credit_limit=100 * EUR))
    sub = await subscribe(services.pool, Subscription(account, "retail", date(2026, 1, 1)))
    await add_charge(services.pool, sub, "rent")
    for period in ("2026-01", "2026-02"):
        run_id = await run(services, period)
        if on_time:
            await post_on_time(services, run_id)
        else:
            await posting.post(services.pool, services.store, run_id=run_id)
    return await invoice_id(services, account, "2026-01"), await invoice_id(
        services, account, "2026-02"
    )


def zone_off_utcs_day() -> str:
    """A time zone whose date is not UTC's right now: UTC+14 (Kiritimati) from 11:00 UTC,
    UTC-12 before. A test of "today where the plan bills" in it fails on UTC's today."""
    return "Pacific/Kiritimati" if datetime.now(UTC).hour >= 11 else "Etc/GMT+12"


def today_in(zone: str) -> date:
    """Today in ``zone``, checked to differ from UTC's today (else the test proves nothing)."""
    today = datetime.now(ZoneInfo(zone)).date()
    assert today != datetime.now(UTC).date(), zone
    return today
