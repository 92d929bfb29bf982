"""Sending an email through the configured SMTP server (aiosmtplib).

Only the transport: what the message says and carries is made by its caller
(``ocs.billing.notify_email`` for invoices and dunning notices). The SMTP
password is a secret setting: it reaches the server's AUTH and nothing else.
"""

from email.message import EmailMessage

import aiosmtplib

from ocs.config import Settings


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
    """Hand ``message`` to the SMTP server (STARTTLS and login as configured), within
    ``webhook_timeout`` seconds. Raises aiosmtplib's errors (retried by the caller)."""
    if settings.smtp_host is None:
        raise EmailNotConfigured("smtp_host is not set")
    await aiosmtplib.send(
        message,
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username,
        password=settings.smtp_password,
        start_tls=settings.smtp_starttls,
        timeout=settings.webhook_timeout,
    )
