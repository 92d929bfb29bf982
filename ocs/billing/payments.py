"""Payments: money received settles invoices, by hand, from a bank file or a gateway.

A payment is stored once per (source, external id) (migration 0035): the
operator's reference, the bank's transaction id, the gateway's payment intent.
Storing it, in one transaction:

1. the payment row (a repeat finds the row already there and moves nothing);
2. its allocation to the account's open invoices, oldest first (a named
   invoice first, when the bank reference or the gateway named one): an
   invoice asks ``asks`` (below), what is left after every open invoice is
   paid stays on the account as credit (the payment's unallocated part);
3. the ``payment.received`` event (``ocs.events.outbox``).

Then the money: the payment is a ledger credit of the real-time balance
(``BalanceStore.topup``, reference ``pay:<payment id>``), so a postpaid
account's calls can use it at once. The credit comes after the commit (it
needs the payment's id); a crash in between leaves the payment with no
``credited_at``, and the next attempt of the same payment (or
``credit_pending``) makes the credit, once: the script keeps its result under
the reference.

What an invoice asks (``ASKS_SQL``): the part of its balance-forward amount due
that its own charges make, ``max(min(amount_due, new_charges), 0)``. The
statement's ``amount_due`` is what the account owes after posting, earlier
invoices' debt included; counting that debt again on the next invoice would
ask for it twice, so each invoice asks only its own new charges, capped by
what is really owed. A prepaid account whose balance paid its usage and fees
owes nothing (amount due 0): its invoice asks nothing (decision 0027). The
figure is rounded once to the currency's minor unit and stored at posting
(``ocs.billing.owed``): the statement is exact micro-units, money arrives in
minor units, and an invoice asking 12.344871 was never paid by 12.34.

A refund (``refund_payment``) is a debit of the balance (``fee``, reference
``refund:<refund id>``). By hand it may take back only what the payment left
as credit, and only while the account's own money still holds it: the balance
less what live calls hold and what is committed, never the credit limit. The
script decides that with the debit; a refund it refuses is withdrawn (its row
deleted, the payment's credit back) and announced nowhere: ``payment.refunded``
is emitted with the debit. A gateway's refund (the money is already gone) is
debited whatever the balance, takes the credit first, then reopens the
payment's invoices, newest first.
"""

import logging
import re
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from ocs import metrics
from ocs.balances.store import FEE_DEDUPE_TTL, BalanceStore, TopupResult
from ocs.billing import dunning
from ocs.billing.bank_files import BankEntry, BankFile, BankProblem
from ocs.billing.credit import allocate, pay_open_invoices
from ocs.billing.gateway import GatewayEvent
from ocs.billing.owed import asks_sql
from ocs.errors import OcsError, Reason, invalid
from ocs.events.outbox import emit
from ocs.money import format_amount

log = logging.getLogger("ocs.billing.payments")

SOURCES = ("manual", "bank", "stripe")
MANUAL = "manual"  # the source of a payment or refund entered by hand
MAX_EXTERNAL_ID = 200
MAX_REFERENCE = 500
MAX_LIST = 1000
# The ledger kind of a payment's credit: statements count it among payments.
CREDIT_KIND = "topup"


ASKS_SQL = asks_sql()

# An invoice number as posting writes it: ISSUER-YYYY-NNNNNN.
INVOICE_NUMBER = re.compile(r"(?<![A-Za-z0-9])[A-Za-z][A-Za-z0-9]*-\d{4}-\d{6,}(?![0-9])")
# Words of a remittance text that may be an account id.
ACCOUNT_TOKEN = re.compile(r"[A-Za-z0-9._@+-]{1,64}")


def credit_reference(payment_id: int) -> str:
    """The ledger reference of a payment's credit: ``pay:<id>``."""
    return f"pay:{payment_id}"


def refund_reference(refund_id: int) -> str:
    """The ledger reference of a refund's debit: ``refund:<id>``."""
    return f"refund:{refund_id}"


@dataclass(frozen=True, slots=True)
class NewPayment:
    """A payment as received: whose, how much, from where and under which id."""

    account_id: str
    amount: int
    source: str
    external_id: str
    currency: str | None = None  # None: the account's currency
    reference: str = ""
    received_on: date | None = None  # None: today (UTC)
    invoice_number: str | None = None  # an invoice it names: paid first


@dataclass(frozen=True, slots=True)
class Allocation:
    """What a payment paid of one invoice."""

    invoice_id: int
    number: str
    amount: int


@dataclass(frozen=True, slots=True)
class Payment:
    """A stored payment; ``credit`` is what it left on the account (neither allocated
    nor refunded)."""

    id: int
    account_id: str
    source: str
    external_id: str
    amount: int
    currency: str
    reference: str
    received_on: date
    allocated: int
    refunded: int
    credited: bool
    ledger_entry: str | None
    created_at: datetime
    allocations: tuple[Allocation, ...] = ()

    @property
    def credit(self) -> int:
        """The part of the payment left on the account as credit."""
        return self.amount - self.allocated - self.refunded


@dataclass(frozen=True, slots=True)
class PaymentApplied:
    """The outcome of a payment: the payment, whether it was new, the account's
    balance after the credit, and the accounts that now owe nothing on any posted
    invoice (what dunning reactivates)."""

    payment: Payment
    created: bool
    balance: int | None
    settled_accounts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Refund:
    """A refund of a payment: ``reopened`` is what it took back from invoices."""

    id: int
    payment_id: int
    source: str
    external_id: str
    amount: int
    reopened: int
    debited: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RefundApplied:
    """The outcome of a refund: the refund, whether it was new, the payment after it
    and the account's balance after the debit."""

    refund: Refund
    created: bool
    payment: Payment
    balance: int | None


@dataclass(frozen=True, slots=True)
class ImportedEntry:
    """A file entry applied: where it was and the payment it made (or had made)."""

    position: str
    applied: PaymentApplied


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did: entries applied (new or already there) and entries
    reported, not applied, each with its place in the file."""

    applied: tuple[ImportedEntry, ...]
    unmatched: tuple[BankProblem, ...]
    settled_accounts: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class GatewayOutcome:
    """What a gateway event did: "payment", "refund", "duplicate" (its id was seen:
    nothing again) or "ignored"; with the payment or refund it applied."""

    outcome: str
    event_id: str
    payment: PaymentApplied | None = None
    refund: RefundApplied | None = None


# --- checks --------------------------------------------------------------------------------


def check_external_id(value: str, name: str) -> str:
    """An external id: 1 to 200 printable characters; 400 naming ``name`` otherwise."""
    if not 1 <= len(value) <= MAX_EXTERNAL_ID or not value.isprintable():
        raise invalid(name, f"expected 1 to {MAX_EXTERNAL_ID} printable characters")
    return value


def check_new(new: NewPayment) -> None:
    """400 naming the field of a payment that cannot be stored."""
    if new.source not in SOURCES:
        raise invalid("source", f"expected one of {', '.join(SOURCES)}")
    if new.amount <= 0:
        raise invalid("amount", "a payment must be greater than zero")
    check_external_id(new.external_id, "reference" if new.source == "manual" else "external_id")
    if len(new.reference) > MAX_REFERENCE or not new.reference.isprintable():
        raise invalid("reference", f"expected at most {MAX_REFERENCE} printable characters")


# --- reading -----------------------------------------------------------------------------

_PAYMENT_COLUMNS = (
    "id, account_id, source, external_id, amount, currency, reference, received_on,"
    " allocated, refunded, credited_at IS NOT NULL AS credited, ledger_entry, created_at"
)


async def _allocations(
    conn: asyncpg.Connection, payment_ids: list[int]
) -> dict[int, list[Allocation]]:
    """The allocations of these payments, each in invoice order."""
    rows = await conn.fetch(
        "SELECT a.payment_id, a.invoice_id, i.number, a.amount FROM payment_allocations a"
        " JOIN invoices i ON i.id = a.invoice_id"
        " WHERE a.payment_id = ANY($1::bigint[]) ORDER BY a.payment_id, i.period_start, i.id",
        payment_ids,
    )
    found: dict[int, list[Allocation]] = {}
    for r in rows:
        found.setdefault(r["payment_id"], []).append(
            Allocation(r["invoice_id"], r["number"] or "", r["amount"])
        )
    return found


def _payment(row: asyncpg.Record, allocations: list[Allocation]) -> Payment:
    """A payment row as a ``Payment``."""
    return Payment(
        id=row["id"],
        account_id=row["account_id"],
        source=row["source"],
        external_id=row["external_id"],
        amount=row["amount"],
        currency=row["currency"],
        reference=row["reference"],
        received_on=row["received_on"],
        allocated=row["allocated"],
        refunded=row["refunded"],
        credited=row["credited"],
        ledger_entry=row["ledger_entry"],
        created_at=row["created_at"],
        allocations=tuple(allocations),
    )


async def _read_payment(conn: asyncpg.Connection, payment_id: int) -> Payment | None:
    """One payment with its allocations; None when there is none of that id."""
    row = await conn.fetchrow(f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE id = $1", payment_id)
    if row is None:
        return None
    return _payment(row, (await _allocations(conn, [payment_id])).get(payment_id, []))


async def get_payment(pool: asyncpg.Pool, payment_id: int) -> Payment:
    """A payment by id; 404 when there is none."""
    async with pool.acquire() as conn:
        found = await _read_payment(conn, payment_id)
    if found is None:
        raise OcsError(Reason.NOT_FOUND, f"no payment {payment_id}", field="payment_id")
    return found


async def list_payments(
    pool: asyncpg.Pool, account_id: str | None = None, limit: int = 100
) -> list[Payment]:
    """Payments, newest first, of one account or all."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments"
            " WHERE $1::text IS NULL OR account_id = $1 ORDER BY id DESC LIMIT $2",
            account_id,
            min(limit, MAX_LIST),
        )
        allocations = await _allocations(conn, [r["id"] for r in rows])
    return [_payment(r, allocations.get(r["id"], [])) for r in rows]


async def settled(conn: asyncpg.Connection, account_ids: list[str]) -> tuple[str, ...]:
    """Of these accounts, those that owe nothing on any posted invoice (sorted)."""
    rows = await conn.fetch(
        "SELECT a FROM unnest($1::text[]) AS a WHERE NOT EXISTS ("
        " SELECT 1 FROM invoices i WHERE i.account_id = a AND i.state = 'posted'"
        f" AND i.kind = 'invoice' AND i.amount_paid < {asks_sql('i')})",
        sorted(set(account_ids)),
    )
    return tuple(r["a"] for r in rows)


async def open_amount(conn: asyncpg.Connection, account_id: str) -> int:
    """What an account still owes on its posted invoices (micro-units)."""
    owed = await conn.fetchval(
        f"SELECT COALESCE(sum({ASKS_SQL} - amount_paid), 0)::bigint FROM invoices"
        f" WHERE account_id = $1 AND state = 'posted' AND kind = 'invoice'"
        f" AND amount_paid < {ASKS_SQL}",
        account_id,
    )
    return int(owed)


# --- storing -----------------------------------------------------------------------------


async def _insert_payment(conn: asyncpg.Connection, new: NewPayment) -> tuple[int, bool]:
    """Store a payment, allocate it and emit its event, in the caller's transaction:
    (payment id, whether it is new). A known (source, external id) moves nothing; one
    reused for another account or amount is refused (400)."""
    check_new(new)
    account = await conn.fetchrow("SELECT currency FROM accounts WHERE id = $1", new.account_id)
    if account is None:
        raise OcsError(
            Reason.ACCOUNT_NOT_FOUND, f"account {new.account_id!r} does not exist", field="account"
        )
    currency = account["currency"].strip()
    if new.currency is not None and new.currency != currency:
        raise invalid("currency", f"the account is billed in {currency}, not {new.currency}")
    received_on = new.received_on or datetime.now(UTC).date()
    payment_id = await conn.fetchval(
        "INSERT INTO payments (account_id, source, external_id, amount, currency, reference,"
        " received_on) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (source, external_id) DO NOTHING RETURNING id",
        new.account_id,
        new.source,
        new.external_id,
        new.amount,
        currency,
        new.reference,
        received_on,
    )
    if payment_id is None:
        known = await conn.fetchrow(
            "SELECT id, account_id, amount FROM payments WHERE source = $1 AND external_id = $2",
            new.source,
            new.external_id,
        )
        assert known is not None  # the conflict's row; payments are never deleted
        if (known["account_id"], known["amount"]) != (new.account_id, new.amount):
            name = "reference" if new.source == "manual" else "external_id"
            raise invalid(
                name,
                f"{new.external_id!r} is payment {known['id']} already, of"
                f" {format_amount(known['amount'])} to account {known['account_id']!r}",
            )
        return int(known["id"]), False
    allocated = await allocate(
        conn, payment_id, new.account_id, currency, new.amount, new.invoice_number
    )
    await emit(
        conn,
        "payment.received",
        new.account_id,
        {
            "payment_id": payment_id,
            "account_id": new.account_id,
            "source": new.source,
            "amount": new.amount,
            "currency": currency,
            "allocated": allocated,
            "received_on": received_on.isoformat(),
        },
    )
    return int(payment_id), True


async def _credit(pool: asyncpg.Pool, store: BalanceStore, payment_id: int) -> int | None:
    """Make a payment's balance credit if it is not made yet; the balance after it
    (None when the real-time store has no such account)."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT account_id, amount, credited_at FROM payments WHERE id = $1", payment_id
        )
    assert row is not None
    if row["credited_at"] is not None:
        state = await store.get_account(row["account_id"])
        return None if state is None else state.balance
    result: TopupResult | None = await store.topup(
        row["account_id"],
        row["amount"],
        credit_reference(payment_id),
        FEE_DEDUPE_TTL,
        CREDIT_KIND,
    )
    if result is None:
        raise OcsError(
            Reason.ACCOUNT_NOT_FOUND,
            f"account {row['account_id']!r} has no real-time balance to credit",
            field="account",
        )
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE payments SET ledger_entry = $2, credited_at = now()"
            " WHERE id = $1 AND credited_at IS NULL",
            payment_id,
            result.ledger_entry,
        )
    return result.balance


async def _finish(
    pool: asyncpg.Pool, store: BalanceStore, payment_id: int, created: bool
) -> PaymentApplied:
    """Credit a stored payment (once) and say what it did."""
    balance = await _credit(pool, store, payment_id)
    async with pool.acquire() as conn:
        stored = await _read_payment(conn, payment_id)
        assert stored is not None
        async with conn.transaction():
            # An invoice posted while this payment was stored is paid now (credit.py).
            await pay_open_invoices(conn, stored.account_id)
        payment = await _read_payment(conn, payment_id)
        assert payment is not None
        accounts = await settled(conn, [payment.account_id])
    metrics.PAYMENTS.labels(payment.source, "recorded" if created else "repeated").inc()
    # Paid up: an account dunning suspended is active again at once (dunning checks that
    # nothing is overdue any more; an operator's suspension stays).
    await dunning.reactivate_paid(pool, store, [payment.account_id], datetime.now(UTC))
    return PaymentApplied(payment, created, balance, accounts)


async def record_payment(
    pool: asyncpg.Pool, store: BalanceStore, new: NewPayment
) -> PaymentApplied:
    """Store, allocate and credit a payment, once per (source, external id)."""
    check_new(new)
    async with pool.acquire() as conn, conn.transaction():
        payment_id, created = await _insert_payment(conn, new)
    return await _finish(pool, store, payment_id, created)


@dataclass(frozen=True, slots=True)
class PendingMoves:
    """What ``finish_pending`` did: balance moves made now, and those it could not make
    (the account has no real-time balance: it was closed there)."""

    made: int
    stuck: int


async def finish_pending(
    pool: asyncpg.Pool, store: BalanceStore, older_than: float = 0.0
) -> PendingMoves:
    """Make the balance credits of stored payments and the debits of stored refunds
    that were left unmade, stored more than ``older_than`` seconds ago.

    Both are made after their row commits (the reference needs its id): a crash, or a
    Redis call that failed, in between leaves ``credited_at`` or ``debited_at`` NULL,
    and a gateway redelivers an event it got an answer for only when the answer was an
    error. The billing worker calls this every pass; each move is made once whoever
    else makes it (its reference), so a payment being credited right now is harmless
    to finish too."""
    async with pool.acquire() as conn:
        credits = await conn.fetch(
            "SELECT id FROM payments WHERE credited_at IS NULL"
            " AND created_at < now() - make_interval(secs => $1) ORDER BY id",
            older_than,
        )
        debits = await conn.fetch(
            "SELECT id FROM payment_refunds WHERE debited_at IS NULL"
            " AND created_at < now() - make_interval(secs => $1) ORDER BY id",
            older_than,
        )
    made = stuck = 0
    for row in credits:
        if await _moved(_credit(pool, store, row["id"])):
            made += 1
        else:
            stuck += 1
    for row in debits:
        moved = await _moved(_debit(pool, store, row["id"]))
        if moved:
            made += 1
        elif moved is not None:
            stuck += 1
    return PendingMoves(made, stuck)


async def _moved(move: Awaitable[object]) -> bool | None:
    """Whether ``move`` was made: False when its account has no real-time balance, None
    for a refund by hand its account's own money no longer covers (withdrawn)."""
    try:
        await move
    except OcsError as error:
        if error.reason is Reason.INSUFFICIENT_FUNDS:
            return None
        if error.reason is not Reason.ACCOUNT_NOT_FOUND:
            raise
        return False
    return True


# --- refunds -----------------------------------------------------------------------------


async def _reopen(conn: asyncpg.Connection, payment_id: int, amount: int) -> None:
    """Take ``amount`` back from the payment's invoices, newest first."""
    # Locked oldest first, the order a payment or a void locks an account's invoices in
    # (``credit.allocate``): locked newest first, a refund and a payment of the same
    # invoices could each hold one the other waits for.
    rows = await conn.fetch(
        "SELECT a.invoice_id, a.amount FROM payment_allocations a"
        " JOIN invoices i ON i.id = a.invoice_id"
        " WHERE a.payment_id = $1 AND a.amount > 0"
        " ORDER BY i.period_start, i.id FOR UPDATE OF i, a",
        payment_id,
    )
    left = amount
    for row in reversed(rows):
        if left == 0:
            break
        take = min(left, row["amount"])
        left -= take
        await conn.execute(
            "UPDATE payment_allocations SET amount = amount - $3"
            " WHERE payment_id = $1 AND invoice_id = $2",
            payment_id,
            row["invoice_id"],
            take,
        )
        # Paid in full before and not now: dunned again from its first notice, in a round
        # of its own (the steps of the round it was paid in are done).
        await conn.execute(
            "UPDATE invoices SET amount_paid = amount_paid - $2,"
            f" paid_at = CASE WHEN amount_paid - $2 >= {ASKS_SQL} THEN paid_at END,"
            " dunning_round = dunning_round"
            f" + CASE WHEN paid_at IS NOT NULL AND amount_paid - $2 < {ASKS_SQL} THEN 1"
            " ELSE 0 END"
            " WHERE id = $1",
            row["invoice_id"],
            take,
        )


async def _insert_refund(
    conn: asyncpg.Connection,
    payment_id: int,
    amount: int,
    source: str,
    external_id: str,
    *,
    reopen: bool,
) -> tuple[int, bool]:
    """Store a refund in the caller's transaction: (refund id, whether it is new).

    A gateway's refund is announced (``payment.refunded``) here; one by hand when its
    debit is made (``_debit``), since the debit may still refuse it."""
    if amount <= 0:
        raise invalid("amount", "a refund must be greater than zero")
    payment = await conn.fetchrow(
        "SELECT account_id, currency, amount, allocated, refunded FROM payments"
        " WHERE id = $1 FOR UPDATE",
        payment_id,
    )
    if payment is None:
        raise OcsError(Reason.NOT_FOUND, f"no payment {payment_id}", field="payment_id")
    known = await conn.fetchrow(
        "SELECT id, payment_id, amount FROM payment_refunds WHERE source = $1 AND external_id = $2",
        source,
        external_id,
    )
    if known is not None:
        if (known["payment_id"], known["amount"]) != (payment_id, amount):
            raise invalid("reference", f"{external_id!r} is refund {known['id']} already")
        return int(known["id"]), False
    credit = payment["amount"] - payment["allocated"] - payment["refunded"]
    if reopen:
        most = payment["amount"] - payment["refunded"]
        if amount > most:
            raise invalid("amount", f"at most {format_amount(most)} of the payment is left")
    elif amount > credit:
        raise invalid(
            "amount",
            f"at most {format_amount(credit)} can be refunded: the rest of the payment paid"
            " invoices",
        )
    reopened = max(amount - credit, 0)
    if reopened:
        await _reopen(conn, payment_id, reopened)
    refund_id = await conn.fetchval(
        "INSERT INTO payment_refunds (payment_id, source, external_id, amount, reopened)"
        " VALUES ($1, $2, $3, $4, $5) RETURNING id",
        payment_id,
        source,
        external_id,
        amount,
        reopened,
    )
    await conn.execute(
        "UPDATE payments SET refunded = refunded + $2, allocated = allocated - $3 WHERE id = $1",
        payment_id,
        amount,
        reopened,
    )
    if source != MANUAL:
        await _announce_refund(conn, int(refund_id), payment_id, payment, source, amount, reopened)
    return int(refund_id), True


async def _announce_refund(
    conn: asyncpg.Connection,
    refund_id: int,
    payment_id: int,
    payment: Any,
    source: str,
    amount: int,
    reopened: int,
) -> None:
    """Emit ``payment.refunded`` in the caller's transaction (``payment``: a row with
    the payment's ``account_id`` and ``currency``)."""
    await emit(
        conn,
        "payment.refunded",
        payment["account_id"],
        {
            "refund_id": refund_id,
            "payment_id": payment_id,
            "account_id": payment["account_id"],
            "source": source,
            "amount": amount,
            "currency": payment["currency"].strip(),
            "reopened": reopened,
        },
    )


async def _withdraw(pool: asyncpg.Pool, refund_id: int) -> None:
    """Take back a refund by hand its debit refused: the row goes, the payment's credit
    comes back. Nothing was debited nor announced; the script keeps the refusal of its
    reference, so nothing debits it later either."""
    async with pool.acquire() as conn, conn.transaction():
        gone = await conn.fetchrow(
            "DELETE FROM payment_refunds WHERE id = $1 AND debited_at IS NULL"
            " RETURNING payment_id, amount, reopened",
            refund_id,
        )
        if gone is not None:
            await conn.execute(
                "UPDATE payments SET refunded = refunded - $2, allocated = allocated + $3"
                " WHERE id = $1",
                gone["payment_id"],
                gone["amount"],
                gone["reopened"],
            )


async def _debit(pool: asyncpg.Pool, store: BalanceStore, refund_id: int) -> RefundApplied:
    """Make a refund's balance debit if it is not made yet (once); the outcome."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT r.*, p.account_id, p.currency FROM payment_refunds r"
            " JOIN payments p ON p.id = r.payment_id WHERE r.id = $1",
            refund_id,
        )
    if row is None:
        raise _refused_refund()  # withdrawn meanwhile: another try was refused
    balance: int | None
    if row["debited_at"] is None:
        # By hand: the script checks the account's own money with the debit. The
        # gateway's: the money is gone already, the debit never refuses.
        manual = row["source"] == MANUAL
        result = await store.fee(
            row["account_id"],
            row["amount"],
            refund_reference(refund_id),
            require_funds=False,
            own_funds=manual,
        )
        if result is None:
            raise OcsError(
                Reason.ACCOUNT_NOT_FOUND,
                f"account {row['account_id']!r} has no real-time balance to debit",
                field="account",
            )
        if not isinstance(result, TopupResult):
            await _withdraw(pool, refund_id)
            log.info(
                "refund refused: the account's own funds do not cover it",
                extra={"refund_id": refund_id, "account_id": row["account_id"]},
            )
            raise _refused_refund()
        balance = result.balance
        metrics.PAYMENT_REFUNDS.labels(row["source"]).inc()
        async with pool.acquire() as conn, conn.transaction():
            made_now = await conn.fetchval(
                "UPDATE payment_refunds SET ledger_entry = $2, debited_at = now()"
                " WHERE id = $1 AND debited_at IS NULL RETURNING 1",
                refund_id,
                result.ledger_entry,
            )
            if made_now and manual:
                await _announce_refund(
                    conn,
                    refund_id,
                    row["payment_id"],
                    row,
                    MANUAL,
                    row["amount"],
                    row["reopened"],
                )
    else:
        state = await store.get_account(row["account_id"])
        balance = None if state is None else state.balance
    async with pool.acquire() as conn:
        refund = await conn.fetchrow(
            "SELECT id, payment_id, source, external_id, amount, reopened,"
            " debited_at IS NOT NULL AS debited, created_at FROM payment_refunds WHERE id = $1",
            refund_id,
        )
        payment = await _read_payment(conn, row["payment_id"])
    assert refund is not None and payment is not None
    return RefundApplied(Refund(**dict(refund)), True, payment, balance)


def _refused_refund() -> OcsError:
    """The refusal of a refund by hand its account's own money does not cover."""
    return OcsError(
        Reason.INSUFFICIENT_FUNDS,
        "amount: the balance, less what live calls hold, does not cover it; credit"
        " already spent or held cannot be refunded",
        field="amount",
    )


async def refund_payment(
    pool: asyncpg.Pool,
    store: BalanceStore,
    payment_id: int,
    amount: int,
    reference: str | None = None,
) -> RefundApplied:
    """Refund part of a payment by hand, once per ``reference`` (a new one when None).

    Only the payment's credit (what paid no invoice and is not refunded) may go
    back, and only while the account's own money still holds it: the balance less
    what live calls hold and what is committed (402 insufficient_funds). Credit
    spent on calls, or held by a live call, is not the customer's to take back. The
    Redis script decides with the debit, so that no call can reserve in between.
    """
    external_id = check_external_id(reference or uuid.uuid4().hex, "reference")
    if amount <= 0:
        raise invalid("amount", "a refund must be greater than zero")
    payment = await get_payment(pool, payment_id)
    async with pool.acquire() as conn:
        repeat = await conn.fetchval(
            "SELECT id FROM payment_refunds WHERE source = 'manual' AND external_id = $1",
            external_id,
        )
    if repeat is None:
        if amount > payment.credit:
            raise invalid(
                "amount",
                f"at most {format_amount(payment.credit)} can be refunded: the rest of the"
                " payment paid invoices or was refunded",
            )
        # A first look, so that a refund plainly not covered stores no row; the
        # script's check with the debit is the one that counts.
        state = await store.get_account(payment.account_id)
        if state is not None and state.balance - state.reserved - state.committed < amount:
            raise _refused_refund()
    async with pool.acquire() as conn, conn.transaction():
        refund_id, created = await _insert_refund(
            conn, payment_id, amount, MANUAL, external_id, reopen=False
        )
    done = await _debit(pool, store, refund_id)
    return RefundApplied(done.refund, created, done.payment, done.balance)


# --- bank files ----------------------------------------------------------------------------


async def match_entry(conn: asyncpg.Connection, entry: BankEntry) -> tuple[str, str | None] | str:
    """(account id, invoice number) an entry pays, or why it matches none.

    An invoice number (its own column, else found in the references) names the
    account; else an account id (its column, else one word of the references that is
    an account id, exactly one).
    """
    numbers = [entry.invoice] if entry.invoice else []
    for text in entry.references:
        numbers.extend(INVOICE_NUMBER.findall(text))
    if numbers:
        rows = await conn.fetch(
            "SELECT DISTINCT number, account_id FROM invoices"
            " WHERE number = ANY($1::text[]) AND kind = 'invoice' AND state = 'posted'",
            numbers,
        )
        accounts = {r["account_id"] for r in rows}
        if len(accounts) == 1:
            first = next(n for n in numbers if any(r["number"] == n for r in rows))
            return accounts.pop(), first
        if len(accounts) > 1:
            return (
                f"its reference names invoices of several accounts: {', '.join(sorted(accounts))}"
            )
    words = [entry.account] if entry.account else []
    if not words:
        for text in entry.references:
            words.extend(w.strip(".-") for w in ACCOUNT_TOKEN.findall(text))
    if words:
        rows = await conn.fetch(
            "SELECT id FROM accounts WHERE id = ANY($1::text[]) ORDER BY id", words
        )
        if len(rows) == 1:
            return rows[0]["id"], None
        if len(rows) > 1:
            return f"its reference names several accounts: {', '.join(r['id'] for r in rows)}"
    return "no posted invoice number or account id found in its reference"


async def import_bank_file(
    pool: asyncpg.Pool, store: BalanceStore, parsed: BankFile
) -> ImportReport:
    """Apply a statement's credits, each once (its transaction id); entries that match
    no account, or cannot be stored, are reported with their place, not applied."""
    applied: list[ImportedEntry] = []
    unmatched = list(parsed.problems)
    for entry in parsed.entries:
        async with pool.acquire() as conn:
            matched = await match_entry(conn, entry)
        if isinstance(matched, str):
            unmatched.append(BankProblem(entry.position, matched))
            continue
        account_id, invoice = matched
        new = NewPayment(
            account_id=account_id,
            amount=entry.amount,
            source="bank",
            external_id=entry.external_id,
            currency=entry.currency,
            reference=" / ".join(entry.references)[:MAX_REFERENCE],
            received_on=entry.booked_on,
            invoice_number=invoice,
        )
        try:
            done = await record_payment(pool, store, new)
        except OcsError as exc:
            unmatched.append(BankProblem(entry.position, exc.message))
            continue
        applied.append(ImportedEntry(entry.position, done))
    metrics.PAYMENTS.labels("bank", "unmatched").inc(len(unmatched))
    unmatched.sort(key=lambda p: _position_key(p.position))
    settled_now = sorted({a for e in applied for a in e.applied.settled_accounts})
    return ImportReport(tuple(applied), tuple(unmatched), tuple(settled_now))


def _position_key(position: str) -> tuple[int, ...]:
    """Sort "entry 2, transaction 1" / "line 4" by their numbers."""
    return tuple(int(n) for n in re.findall(r"\d+", position))


# --- the gateway -------------------------------------------------------------------------


async def _gateway_account(conn: asyncpg.Connection, event: GatewayEvent) -> str:
    """The account a gateway payment is for: its metadata's account id, else the
    account of the invoice it names, else (a second success event of a payment whose
    metadata it lacks) the account of the payment already stored under its key; 400
    naming the metadata field otherwise."""
    known = await conn.fetchval(
        "SELECT account_id FROM payments WHERE source = 'stripe' AND external_id = $1",
        event.payment_key,
    )
    if known is not None:
        return str(known)
    if event.account is not None:
        return event.account
    if event.invoice is not None:
        found = await conn.fetchval(
            "SELECT account_id FROM invoices WHERE number = $1 AND kind = 'invoice'",
            event.invoice,
        )
        if found is None:
            raise invalid("data.object.metadata.invoice_number", f"no invoice {event.invoice!r}")
        return str(found)
    raise invalid(
        "data.object.metadata.account_id",
        "the payment names no account (metadata account_id or invoice_number)",
    )


async def apply_gateway_event(
    pool: asyncpg.Pool, store: BalanceStore, event: GatewayEvent
) -> GatewayOutcome:
    """Apply a verified gateway event once per event id (and a payment once per payment
    intent, whichever of its events comes first)."""
    if event.action == "ignored":
        return GatewayOutcome("ignored", event.event_id)
    duplicate: asyncpg.Record | None = None
    refund_id: int | None = None
    async with pool.acquire() as conn, conn.transaction():
        fresh = await conn.fetchval(
            "INSERT INTO gateway_events (source, event_id, kind) VALUES ('stripe', $1, $2)"
            " ON CONFLICT DO NOTHING RETURNING event_id",
            event.event_id,
            event.type,
        )
        if fresh is None:
            # Seen before: nothing is stored again. Its money may not have moved (the
            # first delivery failed between the commit and the move, and was answered
            # with an error, which is why it came again): made now, once.
            duplicate = await conn.fetchrow(
                "SELECT e.payment_id, r.id AS refund_id FROM gateway_events e"
                " LEFT JOIN payment_refunds r ON r.source = e.source"
                " AND r.external_id = e.event_id WHERE e.source = 'stripe' AND e.event_id = $1",
                event.event_id,
            )
        elif event.action == "payment":
            account_id = await _gateway_account(conn, event)
            new = NewPayment(
                account_id=account_id,
                amount=event.amount,
                source="stripe",
                external_id=event.payment_key,
                currency=event.currency,
                reference=event.invoice or "",
                received_on=(
                    datetime.fromtimestamp(event.created, UTC).date() if event.created else None
                ),
                invoice_number=event.invoice,
            )
            payment_id, created = await _insert_payment(conn, new)
        else:
            # Locked before the refunded total is read: two refund events at once would
            # otherwise both take the old total, and the later one refund its part again.
            payment_id = await conn.fetchval(
                "SELECT id FROM payments WHERE source = 'stripe' AND external_id = $1 FOR UPDATE",
                event.payment_key,
            )
            if payment_id is None:
                raise OcsError(
                    Reason.NOT_FOUND,
                    f"no payment of {event.payment_key!r} to refund",
                    field="data.object.payment_intent",
                )
            # The event gives the charge's refunded total: what is new is the difference.
            refunded = await conn.fetchval(
                "SELECT COALESCE(sum(amount), 0)::bigint FROM payment_refunds"
                " WHERE payment_id = $1 AND source = 'stripe'",
                payment_id,
            )
            delta = event.amount - int(refunded)
            if delta <= 0:
                return GatewayOutcome("ignored", event.event_id)
            refund_id, created = await _insert_refund(
                conn, payment_id, delta, "stripe", event.event_id, reopen=True
            )
        if fresh is not None:
            await conn.execute(
                "UPDATE gateway_events SET payment_id = $2"
                " WHERE source = 'stripe' AND event_id = $1",
                event.event_id,
                payment_id,
            )
    if duplicate is not None:
        if duplicate["refund_id"] is not None:
            await _debit(pool, store, duplicate["refund_id"])
        elif duplicate["payment_id"] is not None:
            await _finish(pool, store, duplicate["payment_id"], False)
    if fresh is None:
        return GatewayOutcome("duplicate", event.event_id)
    if refund_id is not None:
        return GatewayOutcome("refund", event.event_id, refund=await _debit(pool, store, refund_id))
    return GatewayOutcome(
        "payment", event.event_id, payment=await _finish(pool, store, payment_id, created)
    )
