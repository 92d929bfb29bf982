"""The errors ocs answers with: a stable reason code, an HTTP status and a message.

Every rejection a caller can see has a ``reason`` (machine-readable, stable),
an HTTP status for the JSON API and, where RADIUS needs it, the Cisco
``h323-return-code`` an IVR expects. Protocol adapters translate these; the
core only raises them.
"""

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class _ReasonInfo:
    http_status: int
    h323_return_code: int


class Reason(Enum):
    """Why a request was refused. Values are the wire-level reason codes."""

    INVALID_FIELD = "invalid_field"
    ACCOUNT_NOT_FOUND = "account_not_found"
    ACCOUNT_EXISTS = "account_exists"
    PLAN_NOT_FOUND = "plan_not_found"
    PLAN_EXISTS = "plan_exists"
    CALL_NOT_FOUND = "call_not_found"
    CALL_ALREADY_STOPPED = "call_already_stopped"
    ACCOUNT_LOCKED = "account_locked"
    ACCOUNT_SUSPENDED = "account_suspended"
    NO_FREE_LINE = "no_free_line"
    INVALID_PASSWORD = "invalid_password"
    ACCOUNT_EXPIRED = "account_expired"
    CREDIT_LIMIT_REACHED = "credit_limit_reached"
    ZERO_BALANCE = "zero_balance"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    BELOW_MINIMUM_BALANCE = "below_minimum_balance"
    DESTINATION_NOT_ALLOWED = "destination_not_allowed"
    INVALID_DECK = "invalid_deck"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    COUNTER_EXHAUSTED = "counter_exhausted"
    NO_PROFITABLE_ROUTE = "no_profitable_route"
    PIN_BLOCKED = "pin_blocked"
    TOO_MANY_MEMBERS = "too_many_members"
    UNAUTHORIZED = "unauthorized"  # the admin API: no token, or not one of ours
    FORBIDDEN = "forbidden"  # the admin API: the token's role may not do this

    @property
    def http_status(self) -> int:
        return _REASONS[self].http_status

    @property
    def h323_return_code(self) -> int:
        return _REASONS[self].h323_return_code


# h323-return-code values follow the Cisco prepaid IVR convention (DESIGN.md).
_REASONS: dict[Reason, _ReasonInfo] = {
    Reason.INVALID_FIELD: _ReasonInfo(400, 1),
    Reason.ACCOUNT_NOT_FOUND: _ReasonInfo(404, 1),
    Reason.ACCOUNT_EXISTS: _ReasonInfo(409, 1),
    Reason.PLAN_NOT_FOUND: _ReasonInfo(404, 1),
    Reason.PLAN_EXISTS: _ReasonInfo(409, 1),
    Reason.CALL_NOT_FOUND: _ReasonInfo(404, 1),
    Reason.CALL_ALREADY_STOPPED: _ReasonInfo(409, 3),
    Reason.ACCOUNT_LOCKED: _ReasonInfo(403, 7),
    Reason.ACCOUNT_SUSPENDED: _ReasonInfo(403, 7),
    Reason.NO_FREE_LINE: _ReasonInfo(409, 3),
    Reason.INVALID_PASSWORD: _ReasonInfo(403, 2),
    Reason.ACCOUNT_EXPIRED: _ReasonInfo(403, 5),
    Reason.CREDIT_LIMIT_REACHED: _ReasonInfo(402, 6),
    Reason.ZERO_BALANCE: _ReasonInfo(402, 4),
    Reason.INSUFFICIENT_FUNDS: _ReasonInfo(402, 12),
    Reason.BELOW_MINIMUM_BALANCE: _ReasonInfo(402, 12),
    Reason.DESTINATION_NOT_ALLOWED: _ReasonInfo(403, 9),
    Reason.INVALID_DECK: _ReasonInfo(400, 1),
    Reason.NOT_FOUND: _ReasonInfo(404, 1),
    Reason.UNAVAILABLE: _ReasonInfo(503, 1),
    Reason.COUNTER_EXHAUSTED: _ReasonInfo(403, 9),
    Reason.NO_PROFITABLE_ROUTE: _ReasonInfo(403, 9),
    Reason.PIN_BLOCKED: _ReasonInfo(403, 10),
    Reason.TOO_MANY_MEMBERS: _ReasonInfo(409, 1),
    Reason.UNAUTHORIZED: _ReasonInfo(401, 1),
    Reason.FORBIDDEN: _ReasonInfo(403, 1),
}


class OcsError(Exception):
    """A refusal with a reason code; the message is safe to show to the caller."""

    def __init__(self, reason: Reason, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "code": self.reason.http_status,
            "reason": self.reason.value,
            "message": self.message,
        }
        if self.field is not None:
            body["field"] = self.field
        return {"error": body}


def invalid(field: str, problem: str) -> OcsError:
    """A bad input field: the message always starts with the field's name."""
    return OcsError(Reason.INVALID_FIELD, f"{field}: {problem}", field=field)
