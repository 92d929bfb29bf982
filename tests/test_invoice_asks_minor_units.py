"""What an invoice asks is rounded to its currency's minor unit (decision 0027, addendum
2026-12-07): calls cost exact micro-units, money arrives in minor units.

A postpaid account whose March calls cost 12.344871 EUR is invoiced 12.34 (half away
from zero, like a line): a bank payment of 12.34 pays it (paid, out of dunning, its
suspension lifted) and one of 12.33 leaves it unpaid. The same in yen (0 decimals) and
Kuwaiti dinars (3), paid through the gateway in minor units. Ledger rows and CDRs are
written into PostgreSQL at chosen instants; payments and dunning go through the API.
"""

import json
import uuid
from datetime import UTC, date, datetime

import asyncpg
import pytest

from ocs.balances.accounts import AccountSpec
from ocs.billing import bank_files, payments
from ocs.billing.cycles import PlanBilling
from ocs.billing.document_data import load_facts
from ocs.billing.document_layout import Issuer, layout
from ocs.billing.gateway import parse_event
from ocs.billing.owed import asked
from ocs.billing.store import Subscription, set_plan_billing, subscribe
from ocs.db import migrate as migrate_module
from ocs.db.migrate import available_migrations, migrate
from ocs.services import Services
from tests.billing_helpers import cdr, invoice_id, post_on_time, run
from tests.conftest import RunningApp, add_plan, with_database


def at(month: int, day: int, hour: int = 0) -> datetime:
    """An instant of 2026, UTC."""
    return datetime(2026, month, day, hour, tzinfo=UTC)


async def called(services: Services, account: str, plan: str, currency: str, cost: int) -> None:
    """A postpaid account (credit limit 1,000,000 units) on ``plan`` from 1 March whose
    one March call cost ``cost`` micro-units: its ledger row and its CDR."""
    await services.accounts.create(AccountSpec(account, plan_id=plan, credit_limit=10**12))
    await subscribe(services.pool, Subscription(account, plan, date(2026, 3, 1)))
    async with services.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO ledger (entry_id, account_id, kind, amount, balance_after, reference,"
            " occurred_at) VALUES ($1, $2, 'call', $3, $3, NULL, $4)",
            f"1-{account}",
            account,
            -cost,
            at(3, 10, 12),
        )
    await cdr(
        services, f"1-{account}", account, at(3, 10, 12), plan_id=plan, currency=currency,
        charged=cost, rated_cost=cost,
    )  # fmt: skip


async def dunned_plan(app: RunningApp, plan: str, currency: str) -> None:
    """``plan`` in ``currency``, invoiced monthly on day 1, no grace, and dunning that
    suspends at the first overdue day (no notices)."""
    await add_plan(app.services, plan, currency=currency)
    await set_plan_billing(
        app.services.pool,
        app.services.store,
        PlanBilling(plan, "fixed_date", date(2026, 1, 1), cycle_day=1, grace_days=0),
    )
    status, body = await app.put(
        f"/v1/plans/{plan}/dunning", {"max_notices": 0, "notice_interval_days": 1}
    )
    assert status == 200, body


async def march_posted(app: RunningApp) -> None:
    """March invoiced on 1 April and posted."""
    run_id = await run(app.services, "2026-03", invoice_date=date(2026, 4, 1))
    await post_on_time(app.services, run_id)


async def dun(app: RunningApp, when: datetime) -> dict:
    """A dunning run over the API on the clock ``when``: its report."""
    status, body = await app.post("/v1/dunning/run", {"at": when.isoformat()})
    assert status == 200, body
    return body


async def account_status(app: RunningApp, account: str) -> tuple[str, str]:
    """(PostgreSQL status, Redis status) of an account."""
    async with app.services.pool.acquire() as conn:
        stored = await conn.fetchval("SELECT status FROM accounts WHERE id = $1", account)
    live = await app.services.store.get_account(account)
    assert live is not None
    return stored, live.status


async def shown(app: RunningApp, invoice: int) -> tuple[str, str, bool]:
    """(amount_asked, amount_paid, paid) of an invoice as GET /v1/invoices/{id} shows it."""
    status, body = await app.get(f"/v1/invoices/{invoice}")
    assert status == 200, body
    return body["amount_asked"], body["amount_paid"], body["paid_at"] is not None


async def dunning_outstanding(app: RunningApp, account: str) -> list[str]:
    """What the account's dunning state says is outstanding, per unpaid invoice."""
    status, body = await app.get(f"/v1/accounts/{account}/dunning?at=2026-04-03T00:00:00Z")
    assert status == 200, body
    return [i["outstanding"] for i in body["invoices"]]


def bank_csv(*rows: tuple[str, str, str]) -> bank_files.BankFile:
    """A bank statement CSV of (transaction id, account, amount) credits in EUR."""
    lines = ["date,amount,currency,transaction_id,account"]
    lines += [f"2026-04-02,{amount},EUR,{tx},{account}" for tx, account, amount in rows]
    return bank_files.parse("\n".join(lines).encode(), "csv")


async def test_an_invoice_of_calls_costing_12_344871_asks_12_34_and_a_bank_payment_of_it_pays(
    app: RunningApp,
) -> None:
    services = app.services
    await dunned_plan(app, "retail", "EUR")
    await called(services, "exact", "retail", "EUR", 12_344_871)
    await called(services, "short", "retail", "EUR", 12_344_871)
    await march_posted(app)
    paid_up, short = (
        await invoice_id(services, "exact", "2026-03"),
        await invoice_id(services, "short", "2026-03"),
    )
    # What it asks, in cents: 12.344871 rounded half away from zero.
    assert await shown(app, paid_up) == ("12.340000", "0.000000", False)
    _, body = await app.get(f"/v1/invoices/{paid_up}")
    assert body["statement"]["amount_due"] == "12.344871"  # the ledger's exact figure
    # Fixed at posting, like the statement it comes from.
    async with services.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError, match="asks is final"):
            await conn.execute("UPDATE invoices SET amount_asked = 0 WHERE id = $1", paid_up)
    # Its document says what to pay: the amount asked, in cents.
    async with services.pool.acquire() as conn:
        facts = await load_facts(conn, paid_up)
    assert layout(facts, Issuer("Example Telecom"), "en_GB")["due"] == [
        "Amount due",
        "€12.34",
    ]
    report = await dun(app, at(4, 2))
    assert sorted(report["suspended"]) == ["exact", "short"]
    assert await dunning_outstanding(app, "exact") == ["12.340000"]

    outcome = await payments.import_bank_file(
        services.pool,
        services.store,
        bank_csv(("T1", "exact", "12.34"), ("T2", "short", "12.33")),
    )

    assert outcome.unmatched == ()
    assert outcome.settled_accounts == ("exact",)
    # Paid to the cent: paid, dunning has nothing of it, the suspension is lifted.
    assert await shown(app, paid_up) == ("12.340000", "12.340000", True)
    assert await dunning_outstanding(app, "exact") == []
    assert await account_status(app, "exact") == ("active", "active")
    # One cent short: still unpaid, still dunned, still suspended.
    assert await shown(app, short) == ("12.340000", "12.330000", False)
    assert await dunning_outstanding(app, "short") == ["0.010000"]
    assert await account_status(app, "short") == ("suspended", "suspended")
    report = await dun(app, at(4, 3))
    assert (report["reactivated"], report["suspended"]) == ([], [])


def stripe(event_id: str, intent: str, account: str, minor: int, currency: str) -> bytes:
    """A Stripe ``payment_intent.succeeded`` body: ``minor`` units of ``currency``."""
    return json.dumps(
        {
            "id": event_id,
            "type": "payment_intent.succeeded",
            "created": 1775100000,
            "data": {
                "object": {
                    "id": intent,
                    "amount_received": minor,
                    "currency": currency.lower(),
                    "metadata": {"account_id": account},
                }
            },
        }
    ).encode()


async def test_yen_and_dinar_invoices_ask_whole_minor_units_and_the_gateway_pays_them(
    app: RunningApp,
) -> None:
    services = app.services
    await dunned_plan(app, "yen", "JPY")
    await dunned_plan(app, "dinar", "KWD")
    await called(services, "jp", "yen", "JPY", 1_234_500_000)  # 1234.5 JPY
    await called(services, "kw", "dinar", "KWD", 12_344_500)  # 12.3445 KWD
    await march_posted(app)
    yen, dinar = (
        await invoice_id(services, "jp", "2026-03"),
        await invoice_id(services, "kw", "2026-03"),
    )
    # Halves away from zero: 1235 yen, 12.345 dinars.
    assert await shown(app, yen) == ("1235.000000", "0.000000", False)
    assert await shown(app, dinar) == ("12.345000", "0.000000", False)
    async with services.pool.acquire() as conn:
        facts = await load_facts(conn, dinar)
    due = layout(facts, Issuer("Example Telecom"), "en_GB")["due"]
    assert due == ["Amount due", "KWD12.345"]
    assert sorted((await dun(app, at(4, 2)))["suspended"]) == ["jp", "kw"]

    async def pay(event_id: str, account: str, minor: int, currency: str) -> None:
        event = parse_event(stripe(event_id, f"pi_{event_id}", account, minor, currency))
        await payments.apply_gateway_event(services.pool, services.store, event)

    await pay("e1", "jp", 1235, "JPY")
    await pay("e2", "kw", 12344, "KWD")  # one fils short

    assert await shown(app, yen) == ("1235.000000", "1235.000000", True)
    assert await account_status(app, "jp") == ("active", "active")
    assert await shown(app, dinar) == ("12.345000", "12.344000", False)
    assert await dunning_outstanding(app, "kw") == ["0.001000"]
    assert await account_status(app, "kw") == ("suspended", "suspended")

    await pay("e3", "kw", 1, "KWD")

    assert await shown(app, dinar) == ("12.345000", "12.345000", True)
    assert await account_status(app, "kw") == ("active", "active")


# Invoices posted before migration 0062: (account, currency, state, amount due, new
# charges). The ask is the smaller, at least 0, rounded to the minor unit.
BEFORE_0062 = [
    ("eur", "EUR", "posted", 12_344_871, 12_344_871),  # 12.34
    ("eur-debt", "EUR", "posted", 30_000_000, 12_345_000),  # earlier debt: 12.35
    ("eur-prepaid", "EUR", "posted", 0, 5_000_000),  # its balance paid: 0
    ("jpy", "JPY", "posted", 1_234_500_000, 1_234_500_000),  # 1235
    ("jpy-down", "JPY", "posted", 1_234_499_999, 1_234_499_999),  # 1234
    ("kwd", "KWD", "posted", 12_344_500, 12_344_500),  # 12.345
    ("clf", "CLF", "posted", 1_234_450, 1_234_450),  # 4 decimals: 1.2345
    ("eur-draft", "EUR", "draft", 12_344_871, 12_344_871),  # asks nothing yet
    ("eur-paid-exact", "EUR", "posted", 12_345_000, 12_345_000),  # paid 12.345: stays paid
    ("eur-paid-cents", "EUR", "posted", 12_344_871, 12_344_871),  # paid 12.34: paid now
]
# What the invoices above had been paid before the migration, and whether they were paid.
PAID_BEFORE_0062 = {"eur-paid-exact": (12_345_000, True), "eur-paid-cents": (12_340_000, False)}


async def test_migration_0062_stores_what_invoices_posted_before_it_ask_by_the_same_rule(
    backend_urls: tuple[str, str],
) -> None:
    admin = await asyncpg.connect(backend_urls[1])
    name = f"ocs_m0062_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        pool = await asyncpg.create_pool(
            with_database(backend_urls[1], name), min_size=1, max_size=2
        )
        conn = await pool.acquire()
        try:
            shipped = available_migrations()
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(
                    migrate_module,
                    "available_migrations",
                    lambda: [m for m in shipped if m[0] < 62],
                )
                await migrate(pool)
            for n, (account, currency, state, due, new) in enumerate(BEFORE_0062):
                await conn.execute(
                    "INSERT INTO plans (id, name, currency) VALUES ($1, $1, $2)"
                    " ON CONFLICT DO NOTHING",
                    currency.lower(),
                    currency,
                )
                await conn.execute(
                    "INSERT INTO accounts (id, plan_id, currency, credit_limit, max_lines,"
                    " status) VALUES ($1, $2, $3, 0, 1, 'active')",
                    account,
                    currency.lower(),
                    currency,
                )
                await conn.execute(
                    "INSERT INTO invoices (account_id, plan_id, state, number, period_start,"
                    " period_end, period_label, currency, invoice_date, taxes_calculated,"
                    " previous_balance, debited, new_charges, closing_balance, amount_due)"
                    " VALUES ($1, $2, $3, $4, $5, $6, '2026-03', $7, $8, true,"
                    " $10::bigint + $9::bigint, $9, $9, $10, $11)",
                    account,
                    currency.lower(),
                    state,
                    None if state == "draft" else f"INV-2026-{n:06d}",
                    at(3, 1),
                    at(4, 1),
                    currency,
                    date(2026, 4, 1),
                    new,
                    -due,
                    due,
                )

            for account, (paid, settled) in PAID_BEFORE_0062.items():
                await conn.execute(
                    "UPDATE invoices SET amount_paid = $2,"
                    " paid_at = CASE WHEN $3 THEN timestamptz '2026-04-20Z' END"
                    " WHERE account_id = $1",
                    account,
                    paid,
                    settled,
                )

            await migrate(pool)

            rows = await conn.fetch(
                "SELECT account_id, amount_asked, amount_paid, paid_at FROM invoices ORDER BY id"
            )
        finally:
            await pool.release(conn)
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    found = {r["account_id"]: r["amount_asked"] for r in rows}
    assert found == {
        "eur": 12_340_000,
        "eur-debt": 12_350_000,
        "eur-prepaid": 0,
        "jpy": 1_235_000_000,
        "jpy-down": 1_234_000_000,
        "kwd": 12_345_000,
        "clf": 1_234_500,
        "eur-draft": None,
        # Paid 12.345 under the old rule: it asks what it was paid, not 12.35 (a review
        # found the half cent dunned), and its paid_at stays.
        "eur-paid-exact": 12_345_000,
        # Paid 12.34 on an exact 12.344871: settled by the rounded ask, paid now.
        "eur-paid-cents": 12_340_000,
    }
    paid = {r["account_id"]: r for r in rows if r["account_id"] in PAID_BEFORE_0062}
    assert paid["eur-paid-exact"]["paid_at"] == datetime(2026, 4, 20, tzinfo=UTC)
    assert paid["eur-paid-cents"]["paid_at"] is not None
    assert all(r["amount_paid"] >= r["amount_asked"] for r in paid.values())
    # The figures posting stores from now on, by the one rule in Python.
    for account, currency, state, due, new in BEFORE_0062:
        if state == "posted" and account not in PAID_BEFORE_0062:
            assert found[account] == asked(due, new, currency), account
