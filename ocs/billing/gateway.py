"""A payment gateway's webhook: Stripe's signature scheme and event format (pure).

``verify`` checks the ``Stripe-Signature`` header (``t=<unix>,v1=<hex>``):
some ``v1`` must be the HMAC-SHA256, under the webhook's signing secret, of
``"<t>.<raw body>"`` (compared in constant time), and ``t`` must lie within
the tolerance of now, so a captured request cannot be replayed later.

``parse_event`` reads the events ocs acts on: ``payment_intent.succeeded`` and
``charge.succeeded`` (money received) and ``charge.refunded`` (money given
back). Both success events of one payment name the same payment intent, which
is the payment's key (a charge without one is keyed by its own id): the two
make one payment. Amounts come in the currency's minor unit (cents) and are
turned into micro-units by the ISO 4217 exponent. No card data is read: only
the gateway's ids (decision 0027).
"""

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from ocs.billing.currency import CurrencyError, minor_unit_exponent
from ocs.money import MAX_AMOUNT, MICRO_DIGITS

PAYMENT_EVENTS = ("payment_intent.succeeded", "charge.succeeded")
REFUND_EVENTS = ("charge.refunded",)
SCHEME = "v1"
MAX_ID = 200


class SignatureError(ValueError):
    """A webhook whose signature cannot be trusted; the message says why."""


class EventError(ValueError):
    """A signed event ocs cannot read; ``field`` names the part that is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def signature(secret: str, timestamp: int, payload: bytes) -> str:
    """The ``v1`` signature of a payload sent at ``timestamp`` (hex HMAC-SHA256)."""
    signed = str(timestamp).encode() + b"." + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, payload: bytes) -> str:
    """A ``Stripe-Signature`` header value, as the gateway sends it (tests, tools)."""
    return f"t={timestamp},{SCHEME}={signature(secret, timestamp, payload)}"


def verify(header: str | None, payload: bytes, secret: str, tolerance: float, now: float) -> int:
    """The signed timestamp of a genuine, fresh payload; SignatureError otherwise."""
    if not header:
        raise SignatureError("no Stripe-Signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif key == SCHEME:
            candidates.append(value)
    if timestamp is None:
        raise SignatureError("the Stripe-Signature header has no timestamp t=")
    if not candidates:
        raise SignatureError(f"the Stripe-Signature header has no {SCHEME} signature")
    expected = signature(secret, timestamp, payload)
    # A signature is hex: a candidate with other characters cannot match, and
    # compare_digest refuses non-ASCII text (a TypeError, not a refusal).
    if not any(c.isascii() and hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("the signature does not match the payload")
    # Checked after the signature: only a genuine timestamp is worth judging.
    if abs(now - timestamp) > tolerance:
        raise SignatureError(
            f"the timestamp is {int(now - timestamp)} s from now, outside the"
            f" {tolerance:g} s window (a replay?)"
        )
    return timestamp


@dataclass(frozen=True, slots=True)
class GatewayEvent:
    """A gateway event as ocs acts on it.

    ``action``: "payment" (``amount`` received), "refund" (``amount`` is the charge's
    total refunded so far) or "ignored" (a type ocs does not act on). ``payment_key``
    is the payment intent's id (else the charge's); ``account`` and ``invoice`` come
    from the metadata the merchant set when creating the payment.
    """

    event_id: str
    type: str
    action: str
    created: int
    payment_key: str = ""
    amount: int = 0
    currency: str = ""
    account: str | None = None
    invoice: str | None = None


def _string(value: Any, field: str, *, required: bool = True) -> str | None:
    """A short printable string of the event, or EventError naming ``field``."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID or not value.isprintable():
        raise EventError(field, f"expected a string of 1 to {MAX_ID} printable characters")
    return value


def _minor(value: Any, field: str) -> int:
    """A non-negative whole amount in minor units, or EventError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EventError(field, "expected a whole non-negative amount in the minor unit")
    return value


def to_micro(minor: int, currency: str, field: str) -> int:
    """An amount in the currency's minor unit (cents) as micro-units."""
    try:
        exponent = minor_unit_exponent(currency)
    except CurrencyError as exc:
        raise EventError(field, str(exc)) from None
    amount = minor * int(10 ** (MICRO_DIGITS - exponent))
    if amount > MAX_AMOUNT:
        # Beyond any amount ocs keeps (and a bigint column): refused, not a 500.
        raise EventError(field.rpartition(".")[0] + ".amount", "an amount larger than ocs keeps")
    return amount


def _metadata(obj: dict[str, Any], field: str) -> tuple[str | None, str | None]:
    """(account id, invoice number) from the object's metadata, each optional."""
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise EventError(f"{field}.metadata", "expected an object")
    account = _string(metadata.get("account_id"), f"{field}.metadata.account_id", required=False)
    invoice = _string(
        metadata.get("invoice_number") or metadata.get("invoice"),
        f"{field}.metadata.invoice_number",
        required=False,
    )
    return account, invoice


def parse_event(payload: bytes) -> GatewayEvent:
    """A Stripe event's body as a ``GatewayEvent``; EventError naming the bad field."""
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise EventError("body", f"not valid JSON: {exc}") from None
    if not isinstance(event, dict):
        raise EventError("body", "expected a JSON object")
    event_id = _string(event.get("id"), "id")
    kind = _string(event.get("type"), "type")
    assert event_id is not None and kind is not None  # required
    created = event.get("created", 0)
    if isinstance(created, bool) or not isinstance(created, int):
        raise EventError("created", "expected a Unix time")
    if kind not in PAYMENT_EVENTS + REFUND_EVENTS:
        return GatewayEvent(event_id, kind, "ignored", created)
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise EventError("data.object", "expected an object")
    field = "data.object"
    object_id = _string(obj.get("id"), f"{field}.id")
    currency = _string(obj.get("currency"), f"{field}.currency")
    assert object_id is not None and currency is not None
    currency = currency.upper()
    account, invoice = _metadata(obj, field)
    if kind == "payment_intent.succeeded":
        minor = _minor(obj.get("amount_received", obj.get("amount")), f"{field}.amount_received")
        key = object_id
        action = "payment"
    else:
        intent = _string(obj.get("payment_intent"), f"{field}.payment_intent", required=False)
        key = intent or object_id
        if kind == "charge.succeeded":
            minor = _minor(obj.get("amount_captured", obj.get("amount")), f"{field}.amount")
            action = "payment"
        else:
            minor = _minor(obj.get("amount_refunded"), f"{field}.amount_refunded")
            action = "refund"
    amount = to_micro(minor, currency, f"{field}.currency")
    if action == "payment" and amount <= 0:
        raise EventError(f"{field}.amount", "a payment of nothing")
    return GatewayEvent(event_id, kind, action, created, key, amount, currency, account, invoice)
