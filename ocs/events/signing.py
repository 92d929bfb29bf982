"""Webhook signatures, the Standard Webhooks way (https://www.standardwebhooks.com).

A webhook's secret is ``whsec_<base64 of random bytes>``; the key is those
bytes. A delivery carries three headers:

* ``webhook-id``: the message's id, the same on every retry of one event to one
  endpoint, so that a receiver can drop a repeat (the idempotency key);
* ``webhook-timestamp``: Unix seconds when this attempt was signed;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``.

``verify`` is what a receiver does (the tests' receiver uses it).
"""

import base64
import binascii
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24  # 192 bits, as Standard Webhooks' libraries make them
DEFAULT_TOLERANCE = 300  # seconds a signed timestamp stays acceptable


class SignatureError(ValueError):
    """A delivery whose headers do not prove it came from the holder of the secret."""


def new_secret() -> str:
    """A fresh random secret, ``whsec_<base64>``."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret: its base64-decoded bytes."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    try:
        return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ and base64") from None


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``<id>.<timestamp>.<body>`` under the secret's key."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of one signed attempt (and the JSON content type)."""
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, message_id, timestamp, body),
    }


def verify(
    secret: str,
    received: dict[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: int = DEFAULT_TOLERANCE,
) -> str:
    """Check a received delivery's headers (lower-case names) against the secret; its
    ``webhook-id``. A timestamp further than ``tolerance`` seconds from ``now`` is
    refused (a replayed capture), as is any signature that does not match."""
    try:
        message_id = received["webhook-id"]
        timestamp = int(received["webhook-timestamp"])
        offered = received["webhook-signature"]
    except (KeyError, ValueError):
        raise SignatureError("missing or malformed webhook headers") from None
    if abs(now - timestamp) > tolerance:
        raise SignatureError("timestamp outside the tolerance")
    expected = signature(secret, message_id, timestamp, body)
    # Several signatures may be sent, space-separated (while a secret is rotated).
    if not any(hmac.compare_digest(expected, one) for one in offered.split()):
        raise SignatureError("no signature matches")
    return message_id
