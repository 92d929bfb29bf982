"""The errors ocs answers with: a stable reason code, an HTTP status and a message.

Every rejection a caller can see has a ``reason`` (machine-readable, stable),
an HTTP status for the JSON API, the SIP final response a switch should give
its caller (``sip_status``, in every JSON error body) and, where RADIUS needs
it, the Cisco ``h323-return-code`` an IVR expects. Protocol adapters translate
these; the core only raises them.

``sip_status``, so that a switch needs no mapping table of its own: the caller's
money 402, what the caller or account may not do 403, what does not exist 404,
no free line 486 (Busy Here), a call already ended 481, a fault that is not the
caller's (ocs or its backends down, the switch's own token refused) 503, a
request the switch built wrong 400, anything else 500.
"""

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class _ReasonInfo:
    http_status: int
    h323_return_code: int
    sip_status: int


class Reason(Enum):
    """Why a request was refused. Values are the wire-level reason codes."""

    INVALID_FIELD = "invalid_field"
    ACCOUNT_NOT_FOUND = "account_not_found"
    ACCOUNT_EXISTS = "account_exists"
    PLAN_NOT_FOUND = "plan_not_found"
    PLAN_EXISTS = "plan_exists"
    CALL_NOT_FOUND = "call_not_found"
    CALL_ALREADY_STOPPED = "call_already_stopped"
    # An HTTP call id another account's live call holds: the switch's ids collided.
    CALL_ID_IN_USE = "call_id_in_use"
    ACCOUNT_LOCKED = "account_locked"
    NO_OPEN_SESSION = "no_open_session"  # on-demand billing: no session open on the account
    INVOICE_STATE = "invoice_state"  # billing: the invoice or run is not in a state that allows it
    # The account's status does not allow it (an on-demand session on a suspended account).
    ACCOUNT_STATE = "account_state"
    ACCOUNT_SUSPENDED = "account_suspended"
    NO_FREE_LINE = "no_free_line"
    INVALID_PASSWORD = "invalid_password"
    ACCOUNT_EXPIRED = "account_expired"
    CREDIT_LIMIT_REACHED = "credit_limit_reached"
    ZERO_BALANCE = "zero_balance"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    # The funds are there but held by the account's live calls: retry when one ends.
    FUNDS_HELD_BY_LIVE_CALLS = "funds_held_by_live_calls"
    BELOW_MINIMUM_BALANCE = "below_minimum_balance"
    DESTINATION_NOT_ALLOWED = "destination_not_allowed"
    INVALID_DECK = "invalid_deck"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    # A change whose COMMIT was sent but whose answer was lost, and PostgreSQL could not
    # be read back: it may or may not stand. Look before retrying (a retry may do it twice).
    OUTCOME_UNKNOWN = "outcome_unknown"
    COUNTER_EXHAUSTED = "counter_exhausted"
    NO_PROFITABLE_ROUTE = "no_profitable_route"
    PIN_BLOCKED = "pin_blocked"
    PASSWORD_BLOCKED = "password_blocked"
    TOO_MANY_MEMBERS = "too_many_members"
    UNAUTHORIZED = "unauthorized"  # the admin API: no token, or not one of ours
    FORBIDDEN = "forbidden"  # the admin API: the token's role may not do this
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # a body in a charset other than UTF-8
    BODY_TOO_LARGE = "body_too_large"  # a body past what ocs reads (1 MiB of JSON)
    # The admin API: what the configuration file declares, which the API may not change.
    SET_IN_CONFIG = "set_in_config"

    @property
    def http_status(self) -> int:
        """The HTTP status an API answer with this reason carries."""
        return _REASONS[self].http_status

    @property
    def h323_return_code(self) -> int:
        """The H.323 return code (the RADIUS h323-return-code) for this reason."""
        return _REASONS[self].h323_return_code

    @property
    def sip_status(self) -> int:
        """The SIP final response a switch should answer its caller with."""
        return _REASONS[self].sip_status


# h323-return-code values follow the Cisco prepaid IVR convention; sip_status the
# table in the module docstring. A switch token refused (401/403) is the deployment's fault, not
# the caller's: 503, so that the switch fails over or announces "unavailable", never "forbidden".
_REASONS: dict[Reason, _ReasonInfo] = {
    Reason.INVALID_FIELD: _ReasonInfo(400, 1, 400),
    Reason.ACCOUNT_NOT_FOUND: _ReasonInfo(404, 1, 404),
    Reason.ACCOUNT_EXISTS: _ReasonInfo(409, 1, 403),
    Reason.PLAN_NOT_FOUND: _ReasonInfo(404, 1, 404),
    Reason.PLAN_EXISTS: _ReasonInfo(409, 1, 403),
    Reason.CALL_NOT_FOUND: _ReasonInfo(404, 1, 404),
    Reason.CALL_ALREADY_STOPPED: _ReasonInfo(409, 3, 481),
    Reason.CALL_ID_IN_USE: _ReasonInfo(409, 1, 400),
    Reason.ACCOUNT_LOCKED: _ReasonInfo(403, 7, 403),
    Reason.NO_OPEN_SESSION: _ReasonInfo(403, 7, 403),
    Reason.INVOICE_STATE: _ReasonInfo(409, 1, 403),
    Reason.ACCOUNT_STATE: _ReasonInfo(409, 1, 403),
    Reason.ACCOUNT_SUSPENDED: _ReasonInfo(403, 7, 403),
    Reason.NO_FREE_LINE: _ReasonInfo(409, 3, 486),
    Reason.INVALID_PASSWORD: _ReasonInfo(403, 2, 403),
    Reason.ACCOUNT_EXPIRED: _ReasonInfo(403, 5, 403),
    Reason.CREDIT_LIMIT_REACHED: _ReasonInfo(402, 6, 402),
    Reason.ZERO_BALANCE: _ReasonInfo(402, 4, 402),
    Reason.INSUFFICIENT_FUNDS: _ReasonInfo(402, 12, 402),
    Reason.FUNDS_HELD_BY_LIVE_CALLS: _ReasonInfo(402, 4, 402),
    Reason.BELOW_MINIMUM_BALANCE: _ReasonInfo(402, 12, 402),
    Reason.DESTINATION_NOT_ALLOWED: _ReasonInfo(403, 9, 403),
    Reason.INVALID_DECK: _ReasonInfo(400, 1, 400),
    Reason.NOT_FOUND: _ReasonInfo(404, 1, 404),
    Reason.UNAVAILABLE: _ReasonInfo(503, 1, 503),
    Reason.OUTCOME_UNKNOWN: _ReasonInfo(503, 1, 503),
    Reason.COUNTER_EXHAUSTED: _ReasonInfo(403, 9, 402),
    Reason.NO_PROFITABLE_ROUTE: _ReasonInfo(403, 9, 403),
    Reason.PIN_BLOCKED: _ReasonInfo(403, 10, 403),
    Reason.PASSWORD_BLOCKED: _ReasonInfo(403, 10, 403),
    Reason.TOO_MANY_MEMBERS: _ReasonInfo(409, 1, 403),
    Reason.UNAUTHORIZED: _ReasonInfo(401, 1, 503),
    Reason.FORBIDDEN: _ReasonInfo(403, 1, 503),
    Reason.UNSUPPORTED_MEDIA_TYPE: _ReasonInfo(415, 1, 400),
    Reason.BODY_TOO_LARGE: _ReasonInfo(413, 1, 400),
    Reason.SET_IN_CONFIG: _ReasonInfo(409, 1, 403),
}


def sip_status_of_http(status: int) -> int:
    """The ``sip_status`` of an HTTP error no reason code names (an unknown route, a
    method not allowed, an internal error): the switch built a wrong request (400),
    asked for nothing that exists (404), or ocs failed (500, 503)."""
    if status == 404:
        return 404
    if status == 503:
        return 503
    return 400 if 400 <= status < 500 else 500


def sip_status_table() -> dict[str, int]:
    """Every reason code and its ``sip_status``, for the API's documentation."""
    return {reason.value: reason.sip_status for reason in Reason}


class OcsError(Exception):
    """A refusal with a reason code; the message is safe to show to the caller."""

    def __init__(self, reason: Reason, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, object]:
        """The JSON error body: code, reason, message, sip_status and the field, if any."""
        body: dict[str, object] = {
            "code": self.reason.http_status,
            "reason": self.reason.value,
            "message": self.message,
            "sip_status": self.reason.sip_status,
        }
        if self.field is not None:
            body["field"] = self.field
        return {"error": body}


def account_not_found(account_id: str, field: str = "account_id") -> OcsError:
    """No account of that id: 404 naming ``field``, where the request named it."""
    return OcsError(Reason.ACCOUNT_NOT_FOUND, f"account {account_id!r} does not exist", field=field)


def invalid(field: str, problem: str) -> OcsError:
    """A bad input field: the message always starts with the field's name."""
    return OcsError(Reason.INVALID_FIELD, f"{field}: {problem}", field=field)


def body_too_large(problem: str) -> OcsError:
    """A request body past what ocs reads: 413 naming ``body``; ``problem`` says the limit
    (``larger than 1 MiB``)."""
    return OcsError(Reason.BODY_TOO_LARGE, f"body: {problem}", field="body")
