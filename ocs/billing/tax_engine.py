"""The external tax engine: one invoice's lines out over HTTP, their tax lines back.

For operators whose taxes are computed by a third party (the North America
case: state, county, city and federal taxes sourced by where a call starts and
ends). Per invoice, ``engine_taxes`` POSTs every line as a transaction, with its
caller, called, service and billing locations and its type (``subscription``
or ``usage``), to ``tax_engine_url``, and answers the engine's tax lines, any
number per transaction. The JSON contract is ``docs/tax-engine.md``.

- **Money is exact.** Amounts go out as decimal strings of six places
  (``"49.990000"``) and come back as decimal strings parsed by
  ``ocs.money.parse_amount`` (Decimal from the text, then micro-units); a JSON
  number where an amount belongs is refused, a float has lost the value.
  ``TaxLine.amount`` is the engine's exact amount: the caller rounds each tax
  line once (``currency.round_line``, decision 0019).
- **Strict on types, lenient on extra fields.** An answer whose fields have the
  wrong type, a required field missing, a level outside the five, an amount
  with more than six places, a transaction never asked about or one left out,
  is a ``TaxEngineBadAnswer``. Fields the contract does not name are ignored,
  so an engine may add its own (audit ids, breakdowns) without breaking ocs.
- **Exemptions go out with the request.** An exempt account's request names its
  certificate and the levels it covers (``TaxExemption``), so the engine answers, and
  records for its filings, an exempt sale; a tax of a covered level may come back as
  0 with its rate. (What ocs charges of a covered level is nothing, whatever the
  engine answers: ``taxes.engine_lines``.)
- **Figures that add up (decision 0022).** A tax is refused as a
  ``TaxEngineBadAnswer`` unless its ``basis`` is exactly the amount sent for
  its transaction, its ``amount`` is not of the opposite sign to the basis (no
  negative tax on a charge, no positive tax on a credit), and, when it has a
  rate, ``|amount - basis x rate|`` is at most one minor unit of the currency
  (the most an engine's rounding to cents, in any direction, can move it): an
  amount in cents read as units, a rate off by a factor, a basis of another
  line are never posted and never move money.
- **Retries.** A timeout, a refused connection, a 5xx or a 429 is tried again,
  ``tax_engine_retries`` times at most, after ``tax_engine_backoff`` seconds,
  doubled each time and capped at ``MAX_BACKOFF``; each attempt has
  ``tax_engine_timeout`` seconds in all (connect, send, answer). Any other
  status and a malformed answer are not retried: the same request would get
  the same answer.
- **Idempotency.** Every attempt carries the same ``Idempotency-Key``: the
  invoice id and a digest of the request body. The same invoice asked twice
  (a retry, a rerun of the draft) sends the same key, so an engine that
  records transactions for filing records them once; a draft whose lines
  changed sends a new key, so the engine never replays a stale answer.
- **Failures are typed.** Every failure is a ``TaxEngineError`` with a short
  ``reason`` code and a message an operator can act on; the caller keeps the
  invoice a draft with that reason and never posts it untaxed. The bearer
  token (``tax_engine_token``) is sent in the ``Authorization`` header only:
  never logged, never in an error message.
"""

import asyncio
import hashlib
import logging
import re
from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

import aiohttp
import msgspec

from ocs.billing.currency import minor_unit_micro, round_half_away
from ocs.config import Settings
from ocs.money import MICRO, MoneyError, format_amount, parse_amount

log = logging.getLogger("ocs.billing.tax_engine")

# The longest wait between two attempts, whatever the backoff and retry count.
MAX_BACKOFF = 30.0
# An answer larger than this is refused unread: no invoice has that many tax lines.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
# The longest part of an engine's error text quoted in an exception.
_QUOTE_LIMIT = 300
# A rate is millionths of a percent: basis x rate / RATE_SCALE is the tax.
_RATE_SCALE = 100 * MICRO

Level = Literal["federal", "state", "county", "city", "other"]
TransactionType = Literal["subscription", "usage"]

# A signed decimal with up to six places, as text: the only form an amount takes on the wire.
AMOUNT_PATTERN = r"^-?(0|[1-9][0-9]{0,14})(\.[0-9]{1,6})?$"
# A percentage: "6.25" is 6.25 %; up to six places (millionths of a percent).
RATE_PATTERN = r"^(0|[1-9][0-9]{0,4})(\.[0-9]{1,6})?$"
_INVOICE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")

AmountText = Annotated[str, msgspec.Meta(pattern=AMOUNT_PATTERN)]
RateText = Annotated[str, msgspec.Meta(pattern=RATE_PATTERN)]


class TaxEngineError(Exception):
    """The tax engine could not tax an invoice: ``reason`` is a short code, the message says why.

    Reasons: ``not_configured`` (no ``tax_engine_url``), ``timeout``,
    ``unreachable`` (connection refused or reset), ``server_error`` (5xx or 429
    after every retry), ``rejected`` (another non-200 status: the engine refused
    the request), ``bad_answer`` (malformed JSON or a broken contract).
    ``attempts`` is how many requests were sent.
    """

    def __init__(self, reason: str, message: str, *, attempts: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.attempts = attempts


class TaxEngineUnavailable(TaxEngineError):
    """The engine did not answer in time, or answered 5xx/429, after every retry: try later."""


class TaxEngineRejected(TaxEngineError):
    """The engine refused the request (a 4xx, a redirect): fix the data or the settings."""


class TaxEngineBadAnswer(TaxEngineError):
    """The engine answered 200 with something that breaks the contract (malformed JSON too)."""


class Location(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A place taxes are sourced by: an address, a telephone number, or both.

    Every field is optional (absent on the wire when None); an engine refuses
    a location it cannot source (a 4xx, ``TaxEngineRejected``).
    """

    country: str | None = None  # ISO 3166-1 alpha-2: "US"
    region: str | None = None  # state or province: "TX"
    county: str | None = None
    city: str | None = None
    postal_code: str | None = None
    number: str | None = None  # E.164 digits, for caller and called: "15125550100"


class Locations(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """The four places of a transaction; only ``billing`` is required."""

    billing: Location  # the customer's billing address
    service: Location | None = None  # where the service is used (the line's address)
    caller: Location | None = None  # usage: where calls started
    called: Location | None = None  # usage: where calls ended


class TaxTransaction(msgspec.Struct, kw_only=True, frozen=True):
    """One invoice line to tax: ``amount`` in micro-units, net of discounts and bundles.

    ``id`` is unique within the request; the tax lines answered name it, so the
    caller maps them back to its line. ``product`` says what was sold (a charge
    id, a zone, a service); ``quantity`` is units (a subscription's quantity,
    a usage line's calls), ``seconds`` a usage line's billed seconds.
    """

    id: str
    type: TransactionType
    product: str
    description: str
    amount: int
    locations: Locations
    quantity: int = 1
    seconds: int | None = None


class TaxExemption(msgspec.Struct, kw_only=True, frozen=True):
    """The customer's tax exemption, as engines take it (Avalara's ``exemptionNo``, a
    Vertex exemption certificate): the certificate's reference and the jurisdiction
    levels it covers (sorted, so that the same exemption gives the same request)."""

    certificate: str  # the reference ``ocs taxes exempt --reference`` recorded
    levels: tuple[str, ...]  # of "federal", "state", "county", "city", "other"


class TaxRequest(msgspec.Struct, kw_only=True, frozen=True):
    """One invoice's lines, as the engine is asked to tax them; ``exemption``: the
    account's, None when it has none (absent from the request)."""

    invoice_id: str  # letters, digits, '.', '_', '-' (the invoice's id as text)
    account_id: str
    currency: str  # ISO 4217: "USD"
    tax_date: date  # the date the taxes are due for: the invoice date
    transactions: tuple[TaxTransaction, ...]
    exemption: TaxExemption | None = None


class TaxLine(msgspec.Struct, kw_only=True, frozen=True):
    """One tax on one transaction, as the engine computed it; amounts in micro-units.

    ``rate`` is millionths of a percent (6.25 % = 6_250_000), None for a flat
    fee; ``basis`` is the amount the tax was computed from; ``amount`` is exact,
    not yet rounded to the currency's minor unit.
    """

    transaction_id: str
    level: Level
    jurisdiction: str  # "Texas", "Travis County", "Austin", "United States"
    code: str  # the engine's tax type: "TX-SALES"
    name: str  # what the customer reads: "Texas state sales tax"
    rate: int | None
    basis: int
    amount: int


# --- the wire: what goes out and comes back, amounts as decimal strings ---


class _WireTransaction(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    type: TransactionType
    product: str
    description: str
    amount: str
    quantity: int
    locations: Locations
    seconds: int | None = None


class _WireRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    invoice_id: str
    account_id: str
    currency: str
    tax_date: date
    transactions: list[_WireTransaction]
    # Last, and absent when None: a request without one is the bytes it always was (its
    # idempotency key unchanged).
    exemption: TaxExemption | None = None


class _WireTax(msgspec.Struct, kw_only=True):
    level: Level
    jurisdiction: str
    code: str
    name: str
    rate_percent: RateText | None = None
    basis: AmountText
    amount: AmountText


class _WireTransactionTaxes(msgspec.Struct, kw_only=True):
    id: str
    taxes: list[_WireTax]


class _WireAnswer(msgspec.Struct, kw_only=True):
    invoice_id: str
    currency: str
    transactions: list[_WireTransactionTaxes]


class _WireError(msgspec.Struct, kw_only=True):
    code: str = ""
    message: str = ""


class _WireErrorAnswer(msgspec.Struct, kw_only=True):
    error: _WireError


_ENCODER = msgspec.json.Encoder()
_ANSWER_DECODER = msgspec.json.Decoder(_WireAnswer, strict=True)
_ERROR_DECODER = msgspec.json.Decoder(_WireErrorAnswer, strict=False)


def request_body(request: TaxRequest) -> bytes:
    """The JSON body sent for ``request``: the same request always gives the same bytes."""
    wire = _WireRequest(
        invoice_id=request.invoice_id,
        account_id=request.account_id,
        currency=request.currency,
        tax_date=request.tax_date,
        transactions=[
            _WireTransaction(
                id=t.id,
                type=t.type,
                product=t.product,
                description=t.description,
                amount=format_amount(t.amount),
                quantity=t.quantity,
                locations=t.locations,
                seconds=t.seconds,
            )
            for t in request.transactions
        ],
        exemption=request.exemption,
    )
    return _ENCODER.encode(wire)


def idempotency_key(request: TaxRequest) -> str:
    """The ``Idempotency-Key`` of a request: ``ocs-<invoice id>-<digest of the body>``.

    Equal for the same invoice asked twice with the same lines; different as
    soon as a line, a location or the date changes.
    """
    digest = hashlib.sha256(request_body(request)).hexdigest()[:32]
    return f"ocs-{request.invoice_id}-{digest}"


def backoff_delay(retry: int, base: float) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...): ``base`` doubled, capped."""
    return min(base * (1 << (retry - 1)), MAX_BACKOFF)


def rate_from_percent(text: str) -> int:
    """A percentage's text (``"6.25"``) as millionths of a percent (``6_250_000``), exactly."""
    return int(Decimal(text) * MICRO)


def _check_request(request: TaxRequest) -> None:
    """Refuse a request the contract cannot carry (a caller's mistake, not the engine's)."""
    if not _INVOICE_ID.match(request.invoice_id):
        raise ValueError(f"invoice_id {request.invoice_id!r}: letters, digits, '.', '_', '-'")
    ids = [t.id for t in request.transactions]
    if len(set(ids)) != len(ids):
        raise ValueError("transaction ids must be unique within a request")


def _quote(body: bytes) -> str:
    """An engine's error text, short and printable, for an exception message."""
    try:
        error = _ERROR_DECODER.decode(body).error
        text = f"{error.code}: {error.message}" if error.code else error.message
    except msgspec.DecodeError:
        text = body.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text[:_QUOTE_LIMIT]


def _check_figures(
    where: str, sent: int, basis: int, rate: int | None, amount: int, slack: int
) -> None:
    """Refuse a tax whose figures do not add up: a basis other than the amount sent, an
    amount of the other sign, or one more than ``slack`` (a minor unit) from basis x rate.
    All in integers: ``|amount x RATE_SCALE - basis x rate| <= slack x RATE_SCALE``."""
    if basis != sent:
        raise TaxEngineBadAnswer(
            "bad_answer",
            f"{where}: basis {format_amount(basis)} is not the amount sent, {format_amount(sent)}",
        )
    if (amount < 0 < basis) or (basis < 0 < amount):
        raise TaxEngineBadAnswer(
            "bad_answer",
            f"{where}: a tax of {format_amount(amount)} on a basis of {format_amount(basis)}",
        )
    if rate is not None and abs(amount * _RATE_SCALE - basis * rate) > slack * _RATE_SCALE:
        expected = round_half_away(basis * rate, _RATE_SCALE)
        raise TaxEngineBadAnswer(
            "bad_answer",
            f"{where}: amount {format_amount(amount)} is not {format_amount(basis)}"
            f" x {Decimal(rate) / MICRO}% = {format_amount(expected)}",
        )


def parse_answer(request: TaxRequest, body: bytes) -> list[TaxLine]:
    """The tax lines of an engine's 200 answer to ``request``; TaxEngineBadAnswer if broken.

    Lines come in the request's transaction order, each transaction's taxes in
    the engine's order. Every transaction asked about must be answered
    (``"taxes": []`` when none apply), exactly once, and each tax must add up
    (``_check_figures``).
    """
    try:
        answer = _ANSWER_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        # Well-formed JSON of the wrong shape: msgspec's text names the field's path.
        raise TaxEngineBadAnswer(
            "bad_answer", f"tax engine answer breaks the contract: {exc}"
        ) from None
    except msgspec.DecodeError as exc:
        raise TaxEngineBadAnswer(
            "bad_answer", f"tax engine answered malformed JSON: {exc}"
        ) from None
    if answer.invoice_id != request.invoice_id:
        raise TaxEngineBadAnswer(
            "bad_answer",
            f"tax engine answered for invoice {answer.invoice_id!r},"
            f" asked about {request.invoice_id!r}",
        )
    if answer.currency != request.currency:
        raise TaxEngineBadAnswer(
            "bad_answer",
            f"tax engine answered in {answer.currency!r}, asked in {request.currency!r}",
        )
    by_id: dict[str, _WireTransactionTaxes] = {}
    for answered in answer.transactions:
        if answered.id in by_id:
            raise TaxEngineBadAnswer(
                "bad_answer", f"tax engine answered transaction {answered.id!r} twice"
            )
        by_id[answered.id] = answered
    asked = [t.id for t in request.transactions]
    unknown = sorted(set(by_id) - set(asked))
    if unknown:
        raise TaxEngineBadAnswer(
            "bad_answer", f"tax engine answered transaction(s) never asked: {', '.join(unknown)}"
        )
    missing = [i for i in asked if i not in by_id]
    if missing:
        # Never read as "no tax": a transaction left out could be posted untaxed.
        raise TaxEngineBadAnswer(
            "bad_answer", f"tax engine left out transaction(s): {', '.join(missing)}"
        )
    sent = {t.id: t.amount for t in request.transactions}
    slack = minor_unit_micro(request.currency)
    exempt = frozenset(request.exemption.levels if request.exemption else ())
    lines: list[TaxLine] = []
    for transaction_id in asked:
        for n, tax in enumerate(by_id[transaction_id].taxes):
            where = f"transaction {transaction_id!r} tax {n}"
            try:
                basis = parse_amount(tax.basis, allow_negative=True)
                amount = parse_amount(tax.amount, allow_negative=True)
            except MoneyError as exc:
                raise TaxEngineBadAnswer("bad_answer", f"{where}: {exc}") from None
            rate = None if tax.rate_percent is None else rate_from_percent(tax.rate_percent)
            # A level the request's exemption covers may be answered untaxed with the rate
            # it would have applied: that zero is not checked against basis x rate.
            untaxed = amount == 0 and tax.level in exempt
            _check_figures(
                where, sent[transaction_id], basis, None if untaxed else rate, amount, slack
            )
            lines.append(
                TaxLine(
                    transaction_id=transaction_id,
                    level=tax.level,
                    jurisdiction=tax.jurisdiction,
                    code=tax.code,
                    name=tax.name,
                    rate=rate,
                    basis=basis,
                    amount=amount,
                )
            )
    return lines


class _Retry(Exception):
    """One attempt failed in a way worth trying again; ``reason`` and message say how."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The answer's body, refused past MAX_ANSWER_BYTES."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise TaxEngineBadAnswer(
                "bad_answer", f"tax engine answer larger than {MAX_ANSWER_BYTES} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _attempt(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    seconds: float,
) -> bytes:
    """One POST: the 200 answer's body, ``_Retry`` for what is worth retrying, else raises."""
    try:
        async with (
            asyncio.timeout(seconds),
            session.post(url, data=body, headers=headers, allow_redirects=False) as response,
        ):
            answer = await _read_capped(response)
            status = response.status
    except TimeoutError:
        raise _Retry("timeout", f"no answer within {seconds:g} s") from None
    except aiohttp.ClientError as exc:
        # The exception's text names the host and the OS error, never the headers.
        raise _Retry("unreachable", f"{type(exc).__name__}: {exc}") from None
    if status == 200:
        return answer
    if status >= 500 or status == 429:
        raise _Retry("server_error", f"HTTP {status} {_quote(answer)}".rstrip())
    raise TaxEngineRejected(
        "rejected", f"tax engine refused the request: HTTP {status} {_quote(answer)}".rstrip()
    )


async def engine_taxes(
    settings: Settings,
    request: TaxRequest,
    *,
    session: aiohttp.ClientSession | None = None,
) -> list[TaxLine]:
    """Ask the engine at ``settings.tax_engine_url`` for the taxes of one invoice's lines.

    Answers every tax line of every transaction (an empty list: nothing is
    taxed). Raises a ``TaxEngineError``: ``TaxEngineUnavailable`` after every
    retry failed (timeout, unreachable, 5xx, 429), ``TaxEngineRejected`` (any
    other non-200 status), ``TaxEngineBadAnswer`` (malformed answer), or a
    plain ``TaxEngineError`` with reason ``not_configured`` when no URL is
    set. ``session``: a client session to reuse (a worker's); one is opened
    for the call otherwise. ValueError for a request the contract cannot
    carry (an invoice id with other characters, transaction ids repeated).
    """
    url = settings.tax_engine_url
    if not url:
        raise TaxEngineError("not_configured", "no tax engine configured (tax_engine_url)")
    _check_request(request)
    body = request_body(request)
    key = idempotency_key(request)
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Idempotency-Key": key,
    }
    if settings.tax_engine_token:
        headers["Authorization"] = f"Bearer {settings.tax_engine_token}"
    attempts = 1 + settings.tax_engine_retries
    own_session = session is None
    client = aiohttp.ClientSession() if session is None else session
    try:
        for attempt in range(1, attempts + 1):
            try:
                answer = await _attempt(client, url, body, headers, settings.tax_engine_timeout)
            except _Retry as failure:
                log.warning(
                    "tax engine attempt failed",
                    extra={
                        "invoice_id": request.invoice_id,
                        "attempt": attempt,
                        "attempts": attempts,
                        "reason": failure.reason,
                        "detail": failure.message,
                    },
                )
                if attempt == attempts:
                    raise TaxEngineUnavailable(
                        failure.reason,
                        f"tax engine unavailable after {attempts} attempt(s): {failure.message}",
                        attempts=attempts,
                    ) from None
                await asyncio.sleep(backoff_delay(attempt, settings.tax_engine_backoff))
                continue
            except TaxEngineError as exc:
                exc.attempts = attempt
                raise
            try:
                return parse_answer(request, answer)
            except TaxEngineError as exc:
                exc.attempts = attempt
                raise
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover
    finally:
        if own_session:
            await client.close()
