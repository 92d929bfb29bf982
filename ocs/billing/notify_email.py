"""The emails of events: an invoice posted (its PDF attached), a dunning step's notice.

The email channel's sender for ``ocs.events.delivery`` (which knows nothing of
invoices, being below ``ocs.billing``): the fan-out trigger makes an email
delivery for every ``invoice.posted`` and ``dunning.step`` event, and a
deliverer given ``senders(settings)`` sends it here, retried like a webhook. It goes to
the account's billing email (``subscriptions.billing_email``, migration 0037):

* an invoice posted: the invoice PDF (``documents.invoice_pdf``) attached, and
  the call listing CSV (``documents.calls_csv``) when the invoice has calls;
* a dunning step: a notice naming the step and what is owed; a reactivation
  (the customer paid, or owes nothing overdue any more) is a "Service restored"
  message instead, never a payment reminder; none at all (skipped) when the
  reactivation gave back an operator's lock, the calls still refused.

Skipped (nothing to retry) when the account has no billing email. A deliverer
whose settings have no ``smtp_host`` does not take email deliveries at all
(``senders``): they stay pending for a process that can send them, never
consumed by a second worker or an ``ocs events deliver`` run without SMTP.
"""

import asyncio
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import asyncpg

from ocs.billing import currency as currencies
from ocs.billing import documents, itemised
from ocs.config import Settings
from ocs.events import email
from ocs.events.delivery import (
    EMAIL_LEASE_S,
    NO_SMTP,
    Claimed,
    Context,
    Outcome,
    Sender,
    senders_for,
)
from ocs.money import format_amount

NO_ADDRESS = "the account has no billing email"
STILL_LOCKED = "the account stays locked by an operator: no service restored"
# An attempt (PDF and all) ends within its lease, with a margin to mark it: one that ran
# past it would be claimed again by another deliverer and the email sent twice.
ATTEMPT_LIMIT_S = EMAIL_LEASE_S - 30.0

# The account's billing contact: of its running subscription first, then its latest one.
_ADDRESS_SQL = """
SELECT billing_email FROM subscriptions WHERE account_id = $1 AND billing_email <> ''
ORDER BY status = 'cancelled', status <> 'active', start_date DESC, id DESC LIMIT 1
"""


def amount_text(micro: int, currency: str) -> str:
    """An amount as a customer reads it: in the currency's minor unit ("12.50"), or
    exact when it is not a whole number of them (or the currency is unknown)."""
    try:
        return currencies.format_amount(micro, currency)
    except (ValueError, currencies.CurrencyError):
        return format_amount(micro)


async def billing_email(pool: asyncpg.Pool, account_id: str) -> str | None:
    """Where the account's invoices and notices are emailed; None: nowhere."""
    async with pool.acquire() as conn:
        found: str | None = await conn.fetchval(_ADDRESS_SQL, account_id)
    return found


async def invoice_message(
    pool: asyncpg.Pool, settings: Settings, invoice_id: int
) -> EmailMessage | None:
    """The email of a posted invoice, its PDF (and call listing) attached; None when its
    account has no billing email."""
    async with pool.acquire() as conn:
        invoice = await conn.fetchrow(
            "SELECT account_id, kind, number, currency, total, invoice_date, period_label"
            " FROM invoices WHERE id = $1",
            invoice_id,
        )
    if invoice is None:
        raise LookupError(f"no invoice {invoice_id}")
    to = await billing_email(pool, invoice["account_id"])
    if to is None:
        return None
    title = "Credit note" if invoice["kind"] == "credit_note" else "Invoice"
    number = invoice["number"]
    message = email.new_message(
        settings,
        to,
        f"{title} {number} from {settings.invoice_issuer_name}",
        f"{title} {number} of {invoice['invoice_date'].isoformat()}"
        f" ({invoice['period_label']}) for account {invoice['account_id']}:\n"
        f"total {amount_text(invoice['total'], invoice['currency'])} {invoice['currency']}.\n\n"
        f"The {title.lower()} is attached as a PDF.\n",
    )
    pdf = await documents.invoice_pdf(pool, settings, invoice_id)
    message.add_attachment(pdf, maintype="application", subtype="pdf", filename=f"{number}.pdf")
    if await itemised.call_rows(pool, invoice_id):
        listing = await documents.calls_csv(pool, invoice_id)
        message.add_attachment(
            listing, maintype="text", subtype="csv", filename=f"{number}-calls.csv"
        )
    return message


def notice_text(account_id: str, data: Mapping[str, Any]) -> str:
    """The body of a dunning notice: the step, the invoice and what is outstanding
    (the ``dunning.step`` event's fields), then every other thing the event says."""
    step = str(data.get("step", "notice"))
    if step == "suspension":
        lines = [f"Account {account_id}: the service is suspended for non-payment."]
    else:
        which = f" {data['notice']} of {data['of']}" if "notice" in data and "of" in data else ""
        lines = [f"Account {account_id}: payment reminder{which}."]
    outstanding = data.get("amount_outstanding")
    currency = data.get("currency")
    if isinstance(outstanding, int) and isinstance(currency, str) and "invoice_number" in data:
        lines.append(
            f"Invoice {data['invoice_number']}: {amount_text(outstanding, currency)}"
            f" {currency} outstanding, due {data.get('due_date', '')}."
        )
    lines += ["", "Please pay what is owed to keep the service.", ""]
    shown = {"step", "notice", "of", "amount_outstanding", "invoice_number", "currency", "due_date"}
    lines += [f"{key}: {value}" for key, value in sorted(data.items()) if key not in shown]
    return "\n".join(lines) + "\n"


def restored_text(account_id: str) -> str:
    """The body of a reactivation: the service is back, and nothing is asked for."""
    return (
        f"Account {account_id}: the service suspended for non-payment is restored.\n"
        "Nothing is overdue any more: thank you.\n"
    )


def restores_service(data: Mapping[str, Any]) -> bool:
    """Whether a reactivation event gives the customer the service back
    (``service_restored``); one stored before that field by its ``status``, where it has
    one (``locked``: an operator's lock stayed, or the session lock came back)."""
    restored = data.get("service_restored")
    if isinstance(restored, bool):
        return restored
    return bool(data.get("status", "active") == "active")


async def dunning_message(
    pool: asyncpg.Pool, settings: Settings, account_id: str, data: Mapping[str, Any]
) -> EmailMessage | str:
    """A dunning step's email: a reminder or a suspension notice, or for a reactivation
    (``step: "reactivation"``) a "Service restored" message; otherwise why nothing is
    sent: the account has no billing email, or a reactivation left an operator's lock
    (the customer's calls are still refused: no "Service restored", and no reminder)."""
    if data.get("step") == "reactivation" and not restores_service(data):
        return STILL_LOCKED
    to = await billing_email(pool, account_id)
    if to is None:
        return NO_ADDRESS
    issuer = settings.invoice_issuer_name
    if data.get("step") == "reactivation":
        # A customer who has just paid must not read "Payment reminder".
        return email.new_message(
            settings, to, f"Service restored by {issuer}", restored_text(account_id)
        )
    return email.new_message(
        settings, to, f"Payment reminder from {issuer}", notice_text(account_id, data)
    )


async def event_message(delivery: Claimed, context: Context) -> EmailMessage | Outcome:
    """The event's email, its ``Message-ID`` the event's; or the Outcome when there is
    nothing to send (no email for its kind, no billing email)."""
    settings = context.settings
    event = delivery.event
    message: EmailMessage | str | None
    if event.kind == "invoice.posted":
        message = await invoice_message(context.pool, settings, int(event.data["invoice_id"]))
    elif event.kind == "dunning.step":
        account_id = str(event.data.get("account_id") or event.subject)
        message = await dunning_message(context.pool, settings, account_id, event.data)
    else:
        return Outcome.skip(f"no email for {event.kind}")
    if message is None:
        return Outcome.skip(NO_ADDRESS)
    if isinstance(message, str):
        return Outcome.skip(message)
    message["Message-ID"] = email.event_message_id(settings, event.id)
    return message


async def send_event_email(delivery: Claimed, context: Context) -> Outcome:
    """The email channel's sender: build the event's email and hand it to SMTP, all
    within ``ATTEMPT_LIMIT_S`` (past it: a failed attempt, retried later)."""
    settings = context.settings
    if settings.smtp_host is None:
        # Not claimed by ``senders``' deliverers; given anyway, a failed attempt (retried,
        # then dead and replayable), never skipped for good.
        return Outcome.failed(NO_SMTP)
    try:
        async with asyncio.timeout(ATTEMPT_LIMIT_S):
            message = await event_message(delivery, context)
            if isinstance(message, Outcome):
                return message
            await email.send(settings, message)
    except aiosmtplib.SMTPException as exc:  # its timeouts included (a TimeoutError too)
        return Outcome.failed(f"{type(exc).__name__}: {exc}")
    except TimeoutError:  # before OSError, its base: the attempt's own limit
        return Outcome.failed(f"not sent within {ATTEMPT_LIMIT_S:g} s")
    except OSError as exc:
        return Outcome.failed(f"{type(exc).__name__}: {exc}")
    return Outcome.ok()


def senders(settings: Settings) -> Mapping[str, Sender]:
    """What a billing deliverer sends: ``delivery.senders_for`` (the one rule: webhooks,
    and emails only when ``smtp_host`` is set) given this module's email sender."""
    return senders_for(settings, send_event_email)
