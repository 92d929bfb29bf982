"""Sending an email through the configured SMTP server (aiosmtplib).

Only the transport: what the message says and carries is made by its caller
(``ocs.billing.notify_email`` for invoices and dunning notices). The SMTP
password is a secret setting: it reaches the server's AUTH and nothing else.
"""

import contextlib
import re
from email.message import EmailMessage
from email.utils import parseaddr

import aiosmtplib

from ocs.config import Settings

FALLBACK_DOMAIN = "ocs.invalid"  # RFC 2606: never anyone's real domain
# A dotted host name: what may follow the @ of a Message-ID taken from smtp_from.
_DOMAIN = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def message_domain(settings: Settings) -> str:
    """The domain of our Message-IDs: ``smtp_from``'s (a dotted name), else
    ``ocs.invalid`` (the default ``billing@localhost`` names no domain of ours)."""
    _, address = parseaddr(settings.smtp_from)
    domain = address.rpartition("@")[2]
    return domain.lower() if _DOMAIN.match(domain) else FALLBACK_DOMAIN


def event_message_id(settings: Settings, event_id: int) -> str:
    """The ``Message-ID`` of an event's email: the same on every attempt and replay, so
    that a repeat (an attempt that outlived its lease, or was killed after the server
    took it) can be dropped by the mail systems that dedupe by it."""
    return f"<evt-{event_id}@{message_domain(settings)}>"


class EmailNotConfigured(RuntimeError):
    """``smtp_host`` is not set: ocs sends no email."""


def new_message(settings: Settings, to: str, subject: str, text: str) -> EmailMessage:
    """A plain-text message from ``smtp_from`` to ``to``; attachments are added to it."""
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = to
    message["Subject"] = subject
    message.set_content(text)
    return message


async def send(settings: Settings, message: EmailMessage) -> None:
    """Hand ``message`` to the SMTP server (STARTTLS and login as configured), each
    step within ``webhook_timeout`` seconds. Raises aiosmtplib's errors (retried by the
    caller). Cancelled (the caller's time limit), the connection is dropped at once:
    ``aiosmtplib.send`` would first wait for a QUIT that a server stalled in the
    message's data answers only after it, holding the attempt past its limit."""
    if settings.smtp_host is None:
        raise EmailNotConfigured("smtp_host is not set")
    client = aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username,
        password=settings.smtp_password,
        start_tls=settings.smtp_starttls,
        timeout=settings.webhook_timeout,
    )
    await client.connect()  # closes the connection itself when it fails
    try:
        await client.send_message(message)
        # Taken: a QUIT refused or unanswered changes nothing for the message.
        with contextlib.suppress(aiosmtplib.SMTPException):
            await client.quit()
    finally:
        client.close()
