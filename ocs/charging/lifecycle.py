"""The call lifecycle, independent of protocol: authorize, then stop.

RADIUS and HTTP are thin adapters over ``CallService``. Authorization rates
the destination from the catalog snapshot, reserves funds and a line in one
Redis round trip, and turns the reservation into the longest duration it pays
for; stop rates the real duration with the same function, at the rate that
was authorized (kept in the live-call record), and charges it once.
"""

import logging
import time
import uuid
from collections.abc import Callable
from typing import Literal, NamedTuple

import msgpack

from ocs import backend_health, metrics
from ocs.balances.card_ids import is_card_account
from ocs.balances.digests import Digests, legacy_password_digest
from ocs.balances.ivr import Ivr, effective
from ocs.balances.old_forms import OldForms
from ocs.balances.rekey import open_by_legacy_pin
from ocs.balances.results import PROVISIONAL, UsageResult
from ocs.balances.script_args import (
    IMPORTED_EVENT_PREFIX,
    AuthorizeArgs,
    CheckPasswordArgs,
    CounterCandidate,
    CounterQuote,
    CounterUse,
    ReleaseArgs,
    StopArgs,
)
from ocs.balances.store import (
    AlreadyLive,
    AlreadyStopped,
    Amend,
    AuthorizeOutcome,
    BalanceStore,
    CounterChanged,
    CounterShort,
    IdHeld,
    LiveEntry,
    NotLive,
    OldPasswordForm,
    PlanMismatch,
    Refused,
    Reserved,
    StopResult,
    UpdateResult,
    now_ms,
)
from ocs.catalog.routes import REFERENCE_SECONDS
from ocs.catalog.snapshot import ON_NET, CatalogHolder, CatalogSnapshot, Plan, Tariff
from ocs.charging.values import (
    ANY_NAS,
    TRUSTED,
    AuthorizeRequest,
    BalanceAnswer,
    CallCharge,
    CallProgress,
    CallRecord,
    Grant,
    Identity,
    NasScope,
    Origin,
    Priced,
    Quote,
    UsageCharge,
)
from ocs.config import Settings
from ocs.decks.cells import DIRECTIONS
from ocs.errors import OcsError, Reason, account_not_found, invalid
from ocs.limits import MAX_CALL_DURATION
from ocs.numbers.prefixes import normalize_number
from ocs.rating.answer_window import least_grant, worst_cost
from ocs.rating.bands import bands_from
from ocs.rating.counter_rules import CounterDef, counter_to_draw
from ocs.rating.rates import (
    MAX_QUANTITY,
    CounterSplit,
    Rate,
    Segments,
    billed_seconds,
    cost,
    cost_with_counter,
    counter_seconds_used,
    max_duration_with_counter,
)
from ocs.rating.translation import TranslationSet

log = logging.getLogger("ocs.charging.lifecycle")

MAX_CALL_ID = 128
_PLAN_CACHE_LIMIT = 200_000
_LIVE_CACHE_LIMIT = 500_000
# A NAS with no restart known (decision 0059).
_NO_RESTARTS: tuple[int, ...] = ()
# A start whose expected entry changed under it computes its expiry again this often.
_START_TRIES = 3
# A start, report or stop whose record turned out not to be the live call's (a record
# this process kept of an earlier call of the id) finds the current one at most this often.
_CHECK_TRIES = 4

_REFUSAL_MESSAGES = {
    "account_not_found": "account does not exist",
    "account_locked": "account is locked",
    "no_open_session": "no billing session is open on the account (on-demand plan)",
    "account_suspended": "account is suspended",
    "no_free_line": "all lines of the account are in use",
    "zero_balance": "no funds available",
    "below_minimum_balance": "available funds are below the plan's minimum balance to call",
    "insufficient_funds": "available funds do not cover the first block of this destination",
    "invalid_password": "wrong password",
    "password_blocked": "too many wrong passwords for this account; try again later",
    "account_expired": "the account (card) has expired",
    "credit_limit_reached": "the account has reached its credit limit",
    "counter_exhausted": "the plan's bundle for this destination is used up for this cycle",
}

# The reason code of a refusal for want of funds that live calls hold. Until the
# Reason enum has it, the refusal travels as zero_balance (same HTTP and SIP status)
# and its JSON names this code.
FUNDS_HELD = "funds_held_by_live_calls"
_FUNDS_HELD_REASON: Reason = getattr(Reason, "FUNDS_HELD_BY_LIVE_CALLS", Reason.ZERO_BALANCE)


class FundsHeldByLiveCalls(OcsError):
    """Refused: the account's available funds are held by its live calls; without
    their holds the call would have been granted. Says how many calls hold them."""

    code = FUNDS_HELD

    def __init__(self, live_calls: int) -> None:
        super().__init__(
            _FUNDS_HELD_REASON,
            f"the account's funds are held by its {live_calls} live call(s); retry when one"
            " ends, or top up",
        )
        self.live_calls = live_calls

    def to_json(self) -> dict[str, object]:
        """The error body, with the finer reason code and how many live calls hold the funds."""
        body = super().to_json()
        error = body["error"]
        assert isinstance(error, dict)
        error["reason"] = FUNDS_HELD
        error["live_calls"] = self.live_calls
        return body


# The cause counted (ocs_stale_calls_closed_total) for the grant of an authorization
# answered with an error, given back free at once (decision 0055).
UNCONFIRMED = "unconfirmed"

# Causes of the closes made without the switch's stop: a stop that comes after one of
# them was lost (or late), not repeated (ocs_late_stops_total).
_CLOSED_WITHOUT_STOP = frozenset(("expired", "start-timeout", "nas-reboot"))

# An inbound call with no inbound tariff for it costs nothing, yet takes a line.
FREE_INBOUND = Rate(0, 0, 1, 0)


def call_bands(plan: Plan | None, rate: Rate, start: int, length: int) -> Segments | None:
    """The time bands from ``start`` (epoch s) for a rate priced by band, else None; no
    bands (``()``, priced unbanded) where the plan has no schedule, so that a call's
    record keeps that, and a schedule added during the call does not reprice it."""
    if not rate.band_prices:
        return None
    if plan is None or plan.bands is None:
        return ()
    # Rounding may bill past the last second: cover the largest step too.
    slack = max([rate.first_block, rate.increment, *(t.increment for t in rate.tiers)])
    return plan.bands.segments(start, length + slack + 60)


def _grant(
    rate: Rate,
    funds: int,
    cap: int,
    split: CounterSplit | None,
    bands: Segments | None,
    window: int,
) -> int:
    """The longest a call may be granted: what ``funds`` pay for, the least over the
    ``window`` seconds it may still be answered in when its price depends on the answer
    (banded, RADIUS before its Start); else, most calls, as ``max_duration_with_counter``."""
    if window and bands:
        return least_grant(rate, funds, cap, split, bands, window)
    return max_duration_with_counter(rate, funds, cap, split, bands)


def _cost_of(
    rate: Rate, duration: int, split: CounterSplit | None, bands: Segments | None, window: int
) -> int:
    """What a call of ``duration`` costs: the most over the ``window`` seconds it may still
    be answered in where that matters (see ``_grant``)."""
    if window and bands:
        return worst_cost(rate, duration, split, bands, window)
    return cost_with_counter(rate, duration, split, bands)


class TariffMatch(NamedTuple):
    """A destination's tariff: the normalised digits, the plan whose deck rated it (an
    access number's plan, or the account's), the prefix matched and the tariff."""

    digits: str
    rating_plan: str
    prefix: str
    tariff: Tariff


def tariff_of(
    snapshot: CatalogSnapshot,
    plan_id: str,
    translated: str,
    access_number: str | None,
    direction: str,
) -> TariffMatch:
    """The tariff of a translated destination (``TariffMatch``).

    A call through one of the plan's access numbers is rated by that number's plan;
    an inbound call with no inbound tariff is free; an outbound one is refused.
    """
    digits = normalize_number(translated, "destination")
    rating_plan = snapshot.rating_plan(plan_id, access_number)
    match = snapshot.tariff_for(rating_plan, digits, direction)
    if match is None:
        if direction == "inbound":
            return TariffMatch(digits, rating_plan, "", Tariff("inbound", FREE_INBOUND))
        raise OcsError(
            Reason.DESTINATION_NOT_ALLOWED,
            f"no tariff for destination {digits} in plan {rating_plan!r}",
            field="destination",
        )
    return TariffMatch(digits, rating_plan, match[0], match[1])


class CounterChoice(NamedTuple):
    """The usage counter a call draws on: the counter (None: none applies), the part of
    the call it pays for as the rating function takes it, the call's cap in seconds, and
    the quote the authorize script checks the counter's seconds against."""

    counter: CounterDef | None
    split: CounterSplit | None
    cap: int
    quote: CounterQuote | None


def choose_counter(
    candidates: tuple[CounterDef, ...], plan_cap: int, guess: tuple[str | None, int] | None
) -> CounterChoice:
    """The counter of a call whose zone ``candidates`` cover (``CounterChoice``).

    ``guess`` is the counter and its free seconds as last known: None before anyone
    has said (the first mandatory counter, in a fresh cycle), then what the authorize
    script answered or, for a quote, what the account's counters hold now. A counter
    that refuses past its bundle caps the call at the bundle's free seconds.
    """
    if not candidates:
        return CounterChoice(None, None, plan_cap, None)
    if guess is None:
        counter = next((c for c in candidates if c.mandatory), None)
        held = 0 if counter is None else min(counter.seconds, plan_cap)
    else:
        guess_id, held = guess
        counter = next((c for c in candidates if c.id == guess_id), None)
    counter_quote = CounterQuote(
        candidates=tuple(
            CounterCandidate(c.id, c.reject_on_threshold, c.seconds if c.mandatory else None)
            for c in candidates
        ),
        counter_id=None if counter is None else counter.id,
        seconds=held,
        cap=plan_cap,
    )
    cap = plan_cap
    split = None
    if counter is not None and held > 0:
        split = CounterSplit(counter.rate, held)
        if counter.reject_on_threshold:
            cap = held  # the bundle is all the call may use
    return CounterChoice(counter, split, cap, counter_quote)


def clean_caller(caller: str | None) -> str | None:
    """The caller id as the CDR keeps it: printable, at most 64 characters.

    Switches send what they got from the network; a control character (a NUL
    cannot be stored in PostgreSQL text) must neither refuse the call nor
    reach the ledger.
    """
    if caller is None:
        return None
    if len(caller) <= 64 and caller.isprintable() and caller == caller.strip():
        return caller or None  # the usual caller id: kept as is, not rebuilt
    kept = "".join(c for c in caller if c.isprintable()).strip()[:64]
    return kept or None


def validate_call_id(call_id: object, field: str = "call_id") -> str:
    """A call id as given, or 400 naming ``field``: 1 to 128 printable characters, no '|'."""
    if not isinstance(call_id, str) or not 1 <= len(call_id) <= MAX_CALL_ID:
        raise invalid(field, f"expected a string of 1 to {MAX_CALL_ID} characters")
    if not call_id.isprintable() or "|" in call_id or "\x00" in call_id:
        raise invalid(field, "must be printable and must not contain '|'")
    return call_id


# Whose calls a request may find: a NAS client's name, None for calls authorized with no
# NAS (the HTTP switch's), or ``ANY_NAS`` (decision 0048).
NasOf = str | None | NasScope


def _scoped(record: CallRecord, account_id: str | None, nas: NasOf) -> bool:
    """Whether a call is the one a request scoped to an account or a NAS client may see."""
    return (account_id is None or record.account_id == account_id) and (
        nas is ANY_NAS or record.nas == nas
    )


def _start_of(result: UpdateResult, now: int) -> int:
    """The start an interim answers: the one the call's entry holds (its answer, or this
    report's when it was the first sign of one), the same for every report; else, from an
    earlier version's script, ``now`` less the seconds the call has used."""
    return result.started or now - result.used


def validate_duration(duration: object, field: str = "duration") -> int:
    """Whole seconds from 0 to ``MAX_CALL_DURATION``, or 400 naming ``field``."""
    if isinstance(duration, bool) or not isinstance(duration, int):
        raise invalid(field, "expected whole seconds as an integer")
    if not 0 <= duration <= MAX_CALL_DURATION:
        raise invalid(field, f"expected 0 to {MAX_CALL_DURATION} seconds")
    return duration


def caller_digits(caller: str | None) -> str | None:
    """A caller id's digits (a leading ``+`` dropped), or None for one that is not digits."""
    if caller is None:
        return None
    digits = caller.strip().removeprefix("+")
    if not digits.isascii() or not digits.isdigit():
        return None
    return digits


def _usage_tariff(snapshot: CatalogSnapshot, plan_id: str, service: str, quantity: int) -> Tariff:
    """The per-unit tariff ``service`` names in the plan; refused (404) when there is
    none, and (400, naming ``quantity``) when its CDR could not hold the quantity."""
    tariff = snapshot.tariff_named(plan_id, service)
    if snapshot.plan(plan_id) is None or tariff is None:
        raise OcsError(
            Reason.DESTINATION_NOT_ALLOWED,
            f"plan {plan_id!r} has no tariff for service {service!r}",
            field="service",
        )
    billed = billed_seconds(tariff.rate, quantity)
    if quantity > MAX_QUANTITY or billed > MAX_QUANTITY:
        # Its CDR could not hold it: debited, it would be set aside unwritten.
        raise invalid(
            "quantity",
            f"{quantity} billed as {billed} in the increments of {service!r},"
            f" more than a record holds ({MAX_QUANTITY:,})",
        )
    return tariff


def _usage_charge(
    event_id: str,
    account_id: str,
    stored: UsageResult,
    service: str,
    quantity: int,
    currency: str,
) -> UsageCharge:
    """A repeated usage event answered with what its first charge was charged as (its
    stored service, quantity, billed quantity and cost), not what the retry says; the
    retry's ``service`` and the plan's ``currency`` stand in only for a result kept
    before those were."""
    return UsageCharge(
        event_id=event_id,
        account_id=account_id,
        service=stored.service or service,
        zone=stored.zone or stored.service or service,
        quantity=stored.quantity,
        billed=stored.quantity if stored.billed is None else stored.billed,
        charged=stored.charged,
        balance=stored.balance,
        currency=stored.currency or currency,
        repeated=True,
        quantity_differs=quantity != stored.quantity,
    )


class CallService:
    """Authorize, start, update and stop calls; the one place protocols come to for money."""

    def __init__(
        self,
        catalog: CatalogHolder,
        store: BalanceStore,
        settings: Settings,
        digests: Digests,
        clock: Callable[[], float] = time.time,
        *,
        old_forms: OldForms | None = None,
    ) -> None:
        # The clock places a call on the time bands; tests pass a fixed one.
        self._clock = clock
        self._catalog = catalog
        self._store = store
        self._settings = settings
        # PINs and passwords are looked up by digests keyed by the pepper (decision 0054).
        self._digests = digests
        # Whether a PIN no new-form digest opens may still open by its old form (the
        # process's, kept up to date; without one, always looked up, as before).
        self._old_forms = OldForms() if old_forms is None else old_forms
        # account -> plan, so authorization needs one Redis round trip; the script
        # checks the plan and answers PLAN when this cache is stale.
        self._plans: dict[str, str] = {}
        # Live calls authorized by this process: their stop needs no extra round trip
        # to fetch the record. A stop arriving at another process reads the call
        # reference from Redis instead; the record is immutable either way.
        self._live: dict[str, CallRecord] = {}
        # The live entry of each call authorized here that is still to be answered (a
        # RADIUS call waiting for its Accounting-Start, an HTTP call with its provisional
        # start), as the authorize wrote it, so that the start computes the expiry without
        # reading it first (start.lua checks the entry is still that one).
        self._unstarted: dict[str, LiveEntry] = {}
        # (NAS client, NAS) -> the cut-offs (epoch ms) of its kept restarts, latest first,
        # as far as this process has learned them: from an Accounting-On it took, or read
        # when a request met a stopped or unknown call (decision 0059). No read on the
        # common path.
        self._generations: dict[tuple[str, str], tuple[int, ...]] = {}

    def _bands(self, plan_id: str, rate: Rate, start: int, length: int) -> Segments | None:
        return call_bands(self._catalog.snapshot.plan(plan_id), rate, start, length)

    def _bands_of(self, record: CallRecord, length: int, started: int = 0) -> Segments | None:
        """The time bands of a call ``length`` seconds long answered at ``started`` (epoch
        s; 0: not known, not yet answered). Those its record kept from its authorization,
        where its quote placed it, seen from its answer (a RADIUS call rings first) as
        far as they reach; else as the plan's schedule places them now, from its answer
        (a call that outran them, a record from before records kept them)."""
        kept = record.bands
        if kept is None and not record.rate.band_prices:
            return None  # most calls: no price by band
        authorized = record.authorized_at_ms // 1000
        ringing = max(started - authorized, 0)
        # The kept bands reach past the cap (``call_bands`` adds the largest rounding
        # step and a minute): a stop a little past it still charges by them.
        if kept is not None and ringing + length <= record.cap + 60:
            return bands_from(kept, ringing) if ringing else kept
        return self._bands(
            record.rating_plan or record.plan_id, record.rate, authorized + ringing, length
        )

    @staticmethod
    def _placed_by_start(record: CallRecord) -> bool:
        """Whether a call's price depends on when it was answered: a rate priced by band,
        under a schedule (its bands are placed from the answer)."""
        return bool(record.rate.band_prices) and record.bands != ()

    def _expiry_of_grant(
        self,
        started: int,
        rate: Rate,
        limit: int,
        split: CounterSplit | None,
        bands: Segments | None,
        window: int = 0,
    ) -> Callable[[int], int]:
        """The expiry of a call started at ``started``, from the funds it holds: the
        longest duration they pay for (at most ``limit``; the least over ``window``
        seconds of answers, as ``_grant``), plus grace."""
        grace = self._settings.call_expiry_grace

        def expiry(funds: int) -> int:
            """The epoch second a call holding ``funds`` expires at."""
            return started + _grant(rate, funds, limit, split, bands, window) + grace

        return expiry

    async def _plan_of(self, account_id: str) -> str:
        plan_id = self._plans.get(account_id)
        if plan_id is None:
            plan_id = await self._store.account_plan(account_id)
            if plan_id is None:
                raise account_not_found(account_id, field="account")
            self._remember_plan(account_id, plan_id)
        return plan_id

    def _remember_plan(self, account_id: str, plan_id: str) -> None:
        if len(self._plans) >= _PLAN_CACHE_LIMIT:
            self._plans.clear()
        self._plans[account_id] = plan_id

    async def identify(
        self, name: str, caller: str | None = None, *, vouched: bool = False
    ) -> Identity:
        """What a user name (RADIUS User-Name) names.

        An account id names the account, its password checked when it has one. A
        member (SIP user, extension) names its account with that account's password
        checked just the same (decision 0053). A card's PIN opens its card, whose
        password (if any) must follow. A card's account id names no account: refused
        ``account_not_found`` as an unknown account is (decision 0042). A member named
        like a PIN (6 to 20 digits, a phone number) opens its account only from its
        own line, ``caller`` (the request's Calling-Station-Id): from any other it is
        a card's PIN if one matches, else a wrong PIN (decision 0053). ``vouched``: the
        switch names a member it vouches for (``POST /v1/calls``), which is found
        whatever line it calls from. A name this process already knows as an account
        costs no round trip.
        """
        name = name.strip()
        # A card opens by its PIN only. Its id (card-<batch>-<serial>) is sequential and
        # no secret, and a card seldom has a password: taken as an account id, it would
        # spend any card for whoever can make an IVR pass free text. Known by its form,
        # so no look-up; checked before the cache, which holds cards a PIN opened.
        card_id = is_card_account(name)
        if name in self._plans and not card_id:
            return Identity(name)
        maybe_pin = name.isascii() and name.isdigit() and 6 <= len(name) <= 20
        plan_id, member_of, card = await self._store.identities(
            name, self._digests.pin(name) if maybe_pin else None
        )
        if plan_id is not None and not card_id:
            self._remember_plan(name, plan_id)
            return Identity(name)
        if member_of is not None and (vouched or not maybe_pin or caller_digits(caller) == name):
            return Identity(member_of, member=name)
        if card is None and maybe_pin and self._old_forms.may_be_left():
            # A card stored before decision 0054, not re-keyed yet: found by the old form
            # of its digest, and re-keyed. Only a PIN no new-form digest opens pays this
            # second round trip, and none once `ocs credentials rekey` has left no old
            # form: a wrong PIN then costs one look-up.
            card = await open_by_legacy_pin(self._store, self._digests, name)
        # A member's phone number typed at a card IVR's PIN prompt, from another line,
        # is a guess at a PIN: it must not charge that member's account.
        if card is not None:
            return Identity(card, pin=True)
        if card_id:
            # The answer an unknown account gets (``_plan_of``, ``balance``): it tells a
            # guesser nothing, not even that the card exists.
            raise OcsError(
                Reason.ACCOUNT_NOT_FOUND, f"account {name!r} does not exist", field="account"
            )
        # No account has this id: refused as an unknown PIN, word for word, whether or
        # not a member has the name, so the answer tells a guesser nothing.
        return Identity(name, pin=maybe_pin)

    @property
    def access_numbers_in_use(self) -> bool:
        """Whether any plan has access numbers (else a request need not look for one)."""
        return bool(self._catalog.snapshot.access_numbers)

    async def identify_caller(self, caller: str) -> Identity | None:
        """Who a caller id identifies (pinless), if anyone: the member named by its
        digits, whose own line limit applies and whose calls are recorded under it, else
        the account that lists the caller id. The NAS vouches for a caller id: no
        password is checked."""
        digits = caller_digits(caller)
        if digits is None:
            return None
        _, member_of, _ = await self._store.identities(digits, None)
        if member_of is not None:
            return Identity(member_of, member=digits, check_password=False)
        account = await self._store.caller_account(digits)
        return None if account is None else Identity(account, check_password=False)

    async def account_for_number(self, number: str) -> str | None:
        """The account an assigned number (DID, toll-free) identifies, if any: the
        callee of an inbound call to it (number sets, decision 0030)."""
        digits = number.strip().removeprefix("+")
        if not digits.isascii() or not digits.isdigit():
            return None
        return await self._store.did_account(digits)

    async def ivr_of(self, account_id: str) -> Ivr:
        """What the IVR is told for the account: its plan's IVR default under its own
        override, and the plan's voicemail server. For answers that grant nothing (a
        balance query, a PIN look-up): a grant carries its own (``Grant.ivr``)."""
        plan_id = await self._plan_of(account_id)
        default = self._catalog.snapshot.ivr_default(plan_id)
        return effective(default, await self._store.account_ivr(account_id))

    def price(
        self,
        request: AuthorizeRequest,
        plan_id: str,
        translation: TranslationSet | None = None,
        counter_guess: tuple[str | None, int] | None = None,
        *,
        routed: bool = True,
    ) -> Priced:
        """Price a request against the current catalog snapshot: its tariff, its
        carriers (``routed``: an outbound call's route set, refused when no carrier
        keeps the margin; none for a call rated in the On-net zone), the usage counter
        that pays first and the longest it may last. Authorize and quote both price
        here, so what an IVR announces is what a call is granted. ``translation``: a
        NAS's own, replacing the plan's.
        """
        snapshot = self._catalog.snapshot
        plan = snapshot.plan(plan_id)
        if plan is None:
            raise OcsError(Reason.UNAVAILABLE, f"plan {plan_id!r} is not in the catalog")
        direction = request.direction
        rules = plan.translation if translation is None else translation
        digits, rating_plan, prefix, tariff = tariff_of(
            snapshot, plan_id, rules.apply(request.destination), request.access_number, direction
        )
        carriers: tuple[str, ...] = ()
        # A call rated in the On-net zone stays in the operator's own network: no
        # carrier takes it, so its (usually free) price meets no carrier's cost: it is
        # neither refused no_profitable_route nor handed to a paid carrier.
        if routed and direction == "outbound" and tariff.zone != ON_NET:
            rate = tariff.rate
            # The margin rule prices the sell side as the call is charged: at the band
            # prices in effect from now, the authorize time.
            bands = (
                self._bands(rating_plan, rate, int(self._clock()), REFERENCE_SECONDS)
                if rate.band_prices
                else None
            )
            routing = snapshot.routes_for(plan_id, digits, rate, bands)
            if routing is not None:
                # A plan that allows negative margin still gets the losing carriers.
                carriers = routing.usable(plan.allow_negative_margin)
                if routing.refused(plan.allow_negative_margin):
                    raise OcsError(
                        Reason.NO_PROFITABLE_ROUTE,
                        f"no carrier reaches {digits} for less than its price",
                        field="destination",
                    )
        candidates = (
            snapshot.counters_for_zone(plan_id, tariff.zone) if direction == "outbound" else ()
        )
        if candidates:
            counter, split, cap, counter_quote = choose_counter(
                candidates, plan.max_call_duration, counter_guess
            )
        else:  # most calls: no counter covers the zone (and no call to choose one)
            counter, split, cap, counter_quote = None, None, plan.max_call_duration, None
        return Priced(
            plan_id,
            plan,
            digits,
            rating_plan,
            prefix,
            tariff,
            tariff.rate,
            carriers,
            candidates,
            counter,
            split,
            cap,
            counter_quote,
        )

    async def authorize(self, request: AuthorizeRequest, origin: Origin = TRUSTED) -> Grant:
        """Reserve a line and funds for a call and grant the longest duration they pay for.

        ``request`` is what the caller asks (see ``AuthorizeRequest``); ``origin`` where
        it comes from and what that channel is trusted with (see ``Origin``); a quota
        grants slices, and ``update`` grants the next.

        The plan's ``reservation_policy`` decides what a call holds: ``whole`` its
        longest call (as far as the funds go), ``slice`` one ``slice_seconds`` slice at
        a time (quota mode; an origin without ``slices``, a switch that cannot be told
        to cut a call, gets the whole instead), ``share`` at most the available funds
        divided by the free lines.
        """
        account_id = request.account_id
        call_id, caller, digest = self._checked(request, origin)
        quota = request.quota
        plan_id = await self._plan_of(account_id)
        # The counter (and its free seconds) the script said applies, once it has said.
        counter_guess: tuple[str | None, int] | None = None
        take_id = False  # another account's HTTP call held the id, and is over
        for _ in range(4):
            priced = self.price(request, plan_id, origin.translation, counter_guess)
            plan, rate, cap = priced.plan, priced.rate, priced.cap
            sliced = quota
            if sliced is None and plan.reservation_policy == "slice" and origin.slices:
                sliced = plan.slice_seconds
            granting = cap if sliced is None else min(cap, sliced)
            now = self._clock()
            wait = origin.wait_for_start
            # A call may be answered until the start timeout after its authorization: a
            # RADIUS call's Start, an HTTP call's /start (its start provisional until then,
            # decision 0055). A banded one is granted the least over those answers, and its
            # bands (kept in its record) reach that far past its cap.
            window = self._settings.start_timeout
            bands = self._bands(priced.rating_plan, rate, int(now), cap + window)
            window = window if bands else 0  # no bands: the answer changes no price
            record = self._record_for(request, origin, priced, call_id, caller, now, sliced, bands)
            outcome = await self._reserve(
                request,
                priced,
                record,
                digest,
                now,
                granting,
                bands,
                wait=wait,
                take_id=take_id,
                window=window,
            )
            match outcome:
                case Reserved():
                    return await self._granted(
                        outcome, priced, record, now, granting, sliced, bands, window, wait=wait
                    )
                case AlreadyLive():
                    return self._repeated(outcome, call_id, account_id, plan_id)
                case AlreadyStopped():
                    raise OcsError(
                        Reason.CALL_ALREADY_STOPPED,
                        f"call {call_id!r} has already been stopped",
                        field="call_id",
                    )
                case PlanMismatch(actual_plan=actual):
                    self._plans[account_id] = actual
                    plan_id = actual
                case CounterChanged(seconds=seconds, counter_id=counter_id):
                    counter_guess = (counter_id, seconds)
                case OldPasswordForm():
                    # Stored before decision 0054: checked by its old form, which re-keys
                    # it when right; then authorized again, by the new form.
                    await self._check_password(account_id, request.password, digest)
                case Refused():
                    raise self._refusal(account_id, outcome)
                # Not ``granted``: that is the grant's seconds (an int, in ``_granted``),
                # and mypyc keeps one type a local (a compiled build raised TypeError
                # when both were bound in one function).
                case IdHeld(record=holder, granted=grant_left):
                    if grant_left:
                        # A cluster: another account's grant took the id's reference
                        # between this one's read of it and its write. This grant is
                        # given back (nothing charged) before the id is judged, as on one
                        # Redis, where the script refuses before granting.
                        await self._release_unconfirmed(record)
                    take_id = await self._id_taken_over(call_id, holder)
        raise OcsError(Reason.UNAVAILABLE, "the account's plan keeps changing; try again")

    async def _granted(
        self,
        outcome: Reserved,
        priced: Priced,
        record: CallRecord,
        now: float,
        granting: int,
        sliced: int | None,
        bands: Segments | None,
        window: int,
        *,
        wait: bool,
    ) -> Grant:
        """The grant of a call the authorize script reserved for (``outcome``), as
        ``authorize`` answers it, its record kept as the live, unstarted call's.

        ``granting``: the most seconds asked for (a slice, or the cap); ``sliced``: the
        slice (None: not sliced); ``bands``/``window``: the time bands and the seconds it
        may still be answered in; ``wait``: its origin waits for a Start (RADIUS). When
        the grant cannot be computed, an HTTP grant is given back before the error is
        raised (``_release_unconfirmed``)."""
        rate, cap, split = priced.rate, priced.cap, priced.split
        call_id = record.call_id
        reserved = outcome.reserved
        available = outcome.available_before
        # The script has reserved: a failure from here on answers an error, so what it
        # reserved is given back at once, not held by a call no switch was told of until
        # the janitor expires it (its line with it). Kept and raised after the handler:
        # compiled with mypyc (decision 0038), an await inside an except block crashed.
        grant: Grant | None = None
        failed: Exception | None = None
        try:
            granted = _grant(rate, reserved, granting, split, bands, window)
            grant = Grant.of(
                call_id,
                record.account_id,
                record,
                granted=granted,
                reserved=reserved,
                repeated=False,
                available=available,
                credit_limit=outcome.credit_limit,
                final=sliced is None or granting >= cap or granted < granting,
                ivr=effective(
                    self._catalog.snapshot.ivr_default(priced.plan_id), outcome.ivr_override
                ),
                ceiling=(
                    max(granted, _grant(rate, available, cap, split, bands, window))
                    if sliced is not None
                    else 0
                ),
                slice_seconds=sliced or 0,
            )
        except Exception as error:
            failed = error
        if failed is not None:
            # An HTTP grant is given back at once: its start is provisional and a repeat
            # marks it (decision 0055). A RADIUS grant waiting for its Start is left to
            # the janitor (start_timeout): a repeat of its Access-Request answered by
            # another process leaves no mark on it, and the NAS may hold that Accept.
            if not wait:
                await self._release_unconfirmed(record)
            raise failed
        assert grant is not None
        if len(self._live) >= _LIVE_CACHE_LIMIT:
            self._live.clear()
            self._unstarted.clear()
        self._live[call_id] = record
        self._unstarted[call_id] = (
            LiveEntry(reserved, 0, 0, 0, b"")
            if wait
            else LiveEntry(reserved, int(now), 0, 0, b"", PROVISIONAL)
        )
        return grant

    async def _reserve(
        self,
        request: AuthorizeRequest,
        priced: Priced,
        record: CallRecord,
        digest: str,
        now: float,
        granting: int,
        bands: Segments | None,
        *,
        wait: bool,
        take_id: bool = False,
        window: int = 0,
    ) -> AuthorizeOutcome:
        """Run the authorize script for a call priced ``priced`` granting at most
        ``granting`` seconds; ``wait``: its origin waits for a Start (RADIUS). An HTTP
        grant whose answer failed after the script may have run is given back before the
        error is raised (``_release_unconfirmed``). ``window``: the seconds it may still be
        answered in (its costs are the most over those answers)."""
        plan, rate, split = priced.plan, priced.rate, priced.split
        grace = self._settings.call_expiry_grace
        # A call that waits for its Start (RADIUS) expires at the start timeout; one that
        # does not (HTTP) starts provisionally now, until its /start reports the answer
        # (decision 0055), and expires at its grant (the least over the answers it may
        # have, as it was told) plus grace from now.
        expires_in = self._settings.start_timeout if wait else granting + grace
        # Kept and raised after the handler: compiled with mypyc (decision 0038), an await
        # inside an except block crashed.
        failed: Exception | None = None
        try:
            outcome = await self._store.authorize(
                AuthorizeArgs(
                    account_id=request.account_id,
                    call_id=record.call_id,
                    plan_id=priced.plan_id,
                    first_block_cost=_cost_of(rate, 1, split, bands, window),
                    min_balance=plan.min_balance,
                    cap_cost=_cost_of(rate, granting, split, bands, window),
                    record=record.pack(),
                    expires_at=int(now) + expires_in,
                    password_digest=digest,
                    now=int(now),
                    password_guess_limit=self._settings.password_guess_limit,
                    password_guess_window=self._settings.password_guess_window,
                    started_at=0 if wait else int(now),
                    member=request.member,
                    counter=priced.counter_quote,
                    share=plan.reservation_policy == "share",
                    provisional=not wait,
                ),
                ref_ttl=plan.max_call_duration
                + grace
                + self._settings.start_timeout
                + self._settings.stop_dedupe_ttl,
                grant_expiry=(
                    None
                    if wait
                    else self._expiry_of_grant(int(now), rate, granting, split, bands, window)
                ),
                take_id=take_id,
            )
        except Exception as error:  # the reply failed: the script may have granted
            failed = error
        if failed is not None:
            if not wait and not isinstance(failed, OcsError):
                await self._release_unconfirmed(record)
            raise failed
        return outcome

    async def _id_taken_over(self, call_id: str, holder: bytes) -> bool:
        """True when the call of another account that holds HTTP call id ``call_id``'s
        reference (``holder``, its record) is over, so a new call may take the id; 409
        ``call_id_in_use`` naming ``call_id`` while it is live (decision 0052, addendum):
        two switches' ids collided, and the second call would take the first's stop."""
        other = CallRecord.unpack(holder)
        entry = await self._store.live_entry(other.account_id, call_id)
        if entry is None or other.stamp() not in entry.record:
            return True
        raise OcsError(
            Reason.CALL_ID_IN_USE,
            f"call id {call_id!r} is in use by another account's live call",
            field="call_id",
        )

    async def _release_unconfirmed(self, record: CallRecord) -> None:
        """Give back, free, the line and funds of the grant of ``record``'s authorization,
        answered with an error after its script may have run (its reply, or a command
        that followed it, or the grant's own computation failed): the switch was told the
        call was refused (decision 0055).

        One script, atomic: only while the live call is ``record``'s (its stamp) and its
        start is still provisional and unrepeated. A retry of the authorization that was
        granted its repeat first keeps the call, for that answer may have reached the
        switch; one that comes after the release is granted afresh (nothing of this grant
        is left: no stopped result, no CDR). A release that fails too (Redis still
        unreachable) leaves the grant to the janitor, which closes a call never answered
        free at the end of its grant plus grace.
        """
        args = ReleaseArgs(
            record.account_id,
            record.call_id,
            record.stamp(),
            record.member,
            record.counter_use(0),
        )
        try:
            released = await self._store.release_unconfirmed(args)
        except Exception as error:
            # An outage is logged once, by the health tracker, as the error answered is.
            if backend_health.backend_of(error, backend_health.REDIS) is None:
                log.warning(
                    "could not release a grant whose authorization failed; the janitor"
                    " closes it free",
                    extra={
                        "account": record.account_id,
                        "call_id": record.call_id,
                        "error": str(error),
                    },
                )
            return
        if released:
            metrics.STALE_CALLS_CLOSED.labels(UNCONFIRMED).inc()
            log.info(
                "released the grant of an authorization answered with an error",
                extra={"account": record.account_id, "call_id": record.call_id},
            )

    def _repeated(self, live: AlreadyLive, call_id: str, account_id: str, plan_id: str) -> Grant:
        """The grant of a call authorized again while live: what it holds and was granted.

        Answered as its first authorization was (a lost Access-Accept is asked again): a
        sliced call's ceiling and slice too, else a RADIUS NAS told one slice as its
        Session-Timeout, and no Acct-Interim-Interval, cut the call after one slice."""
        entry = live.entry
        record = CallRecord.unpack(entry.record)
        granted = self.granted_seconds(record, entry)
        available = live.available + entry.held
        ceiling = 0
        final = True
        if record.quota:
            # As the new grant's: the longest the funds before the call's hold pay for
            # (what it has been debited was in them then), never less than the grant.
            bands = self._bands_of(record, record.cap, entry.started)
            funds = available + entry.debited
            window = self._settings.start_timeout if entry.answered_at == 0 and bands else 0
            ceiling = max(
                granted,
                _grant(record.rate, funds, record.cap, record.split, bands, window),
            )
            # Final as the new grant's (and an update's): the plan's longest call is
            # reached, or the funds pay for less than the slice asked for.
            reach = min(record.cap, entry.used + record.quota)
            final = granted >= record.cap or granted < reach
        return Grant.of(
            call_id,
            account_id,
            record,
            granted=granted,
            reserved=entry.held,
            repeated=True,
            available=available,
            credit_limit=live.credit_limit,
            final=final,
            ivr=effective(self._catalog.snapshot.ivr_default(plan_id), live.ivr_override),
            ceiling=ceiling,
            slice_seconds=record.quota,
        )

    def _checked(self, request: AuthorizeRequest, origin: Origin) -> tuple[str, str | None, str]:
        """The call id (one made when the switch gave none), the cleaned caller id and
        the password digest to check (``""``: the origin checks none); 400 naming the
        field the request got wrong."""
        call_id = uuid.uuid4().hex if request.call_id is None else validate_call_id(request.call_id)
        if request.direction not in DIRECTIONS:
            raise invalid("direction", f"expected one of {', '.join(DIRECTIONS)}")
        quota = request.quota
        if quota is not None and (isinstance(quota, bool) or not isinstance(quota, int)):
            raise invalid("quota", "expected whole seconds as an integer")
        if quota is not None and not 1 <= quota <= MAX_CALL_DURATION:
            raise invalid("quota", f"expected 1 to {MAX_CALL_DURATION} seconds")
        if not origin.check_password:
            digest = ""
        elif request.password is None:
            digest = "-"  # never equals a digest: an account with a password refuses
        else:
            digest = self._digests.password(request.account_id, request.password)
        return call_id, clean_caller(request.caller), digest

    async def _check_password(self, account_id: str, password: str | None, digest: str) -> None:
        """Judge a password by check_password.lua (decision 0045), ``digest`` its new form
        (``"-"``: none given); raises the refusal. An account whose digest is still in the
        old form (decision 0054) is judged by that form, and re-keyed when it is right:
        only such an account pays the second round trip."""
        args = CheckPasswordArgs(
            account_id,
            digest,
            int(self._clock()),
            self._settings.password_guess_limit,
            self._settings.password_guess_window,
        )
        refused = await self._store.check_password(args)
        if isinstance(refused, OldPasswordForm):
            if password is None:
                # Never answered so: a request with no password is judged as "-" is.
                raise self._refusal(account_id, Refused("invalid_password"))
            refused = await self._store.check_password(
                CheckPasswordArgs(
                    args.account_id,
                    args.digest,
                    args.now,
                    args.guess_limit,
                    args.guess_window,
                    legacy_password_digest(account_id, password),
                )
            )
            if refused is None:
                log.info("account password digest re-keyed", extra={"account": account_id})
        if isinstance(refused, Refused):
            raise self._refusal(account_id, refused)
        if refused is not None:  # an old form again: not with its old-form digest given
            raise self._refusal(account_id, Refused("invalid_password"))

    def _refusal(self, account_id: str, refused: Refused) -> OcsError:
        """The error for the authorize script's refusal, with its reason code."""
        if refused.reason == "funds_held_by_live_calls":
            return FundsHeldByLiveCalls(refused.count)
        if refused.reason == "invalid_password" and refused.count == (
            self._settings.password_guess_limit
        ):
            # Logged once, as the account's state changes: the wrong password that
            # reached the limit (the refusals after it are counted by reason).
            log.warning(
                "account blocked for wrong passwords",
                extra={
                    "account": account_id,
                    "wrong_passwords": refused.count,
                    "for_s": self._settings.password_guess_window,
                },
            )
        if refused.reason == "account_not_found":
            self._plans.pop(account_id, None)  # the account may come back on another plan
        return OcsError(
            Reason(refused.reason),
            _REFUSAL_MESSAGES.get(refused.reason, refused.reason),
            field="account" if refused.reason == "account_not_found" else None,
        )

    @staticmethod
    def _record_for(
        request: AuthorizeRequest,
        origin: Origin,
        priced: Priced,
        call_id: str,
        caller: str | None,
        now: float,
        sliced: int | None,
        bands: Segments | None,
    ) -> CallRecord:
        """The live-call record of a call priced now: what its stop charges by, the time
        bands ``bands`` placed it in included."""
        counter, split, rating_plan = priced.counter, priced.split, priced.rating_plan
        return CallRecord(
            account_id=request.account_id,
            call_id=call_id,
            plan_id=priced.plan_id,
            zone=priced.tariff.zone,
            prefix=priced.prefix,
            destination=priced.digits,
            caller=caller,
            currency=priced.plan.currency,
            rate=priced.tariff.rate,
            cap=priced.cap,
            authorized_at_ms=int(now * 1000),
            nas=origin.nas,
            nas_node=origin.nas_node,
            member=request.member,
            direction=request.direction,
            counter_id=None if counter is None else counter.id,
            counter_seconds=0 if split is None else split.seconds,
            counter_rate=(0, 1)
            if counter is None
            else (counter.price_per_minute, counter.increment),
            quota=sliced or 0,
            carriers=priced.carriers,
            nas_address=origin.nas_address,
            nas_session=origin.nas_session,
            rating_plan=None if rating_plan == priced.plan_id else rating_plan,
            bands=bands,
        )

    async def balance(
        self, account_id: str, *, password: str | None = None, check_password: bool = False
    ) -> BalanceAnswer:
        """What an IVR tells a caller before dialling: balance, nothing reserved."""
        state = await self._store.get_account(account_id)
        if state is None:
            raise OcsError(
                Reason.ACCOUNT_NOT_FOUND, f"account {account_id!r} does not exist", field="account"
            )
        if check_password:
            # Judged and counted as authorize judges it (decision 0045): a balance query
            # is no way around the limit on wrong passwords.
            digest = "-" if password is None else self._digests.password(account_id, password)
            await self._check_password(account_id, password, digest)
        expires = state.expires_at
        if state.status != "active":
            reason = Reason(f"account_{state.status}")
            raise OcsError(reason, _REFUSAL_MESSAGES[reason.value])
        if expires and time.time() >= expires:
            raise OcsError(Reason.ACCOUNT_EXPIRED, _REFUSAL_MESSAGES["account_expired"])
        return BalanceAnswer(
            account_id=account_id,
            currency=state.currency,
            balance=state.balance,
            available=state.available,
            credit_limit=state.credit_limit,
        )

    def _area_name(self, record: CallRecord) -> str | None:
        """The name of a call's destination for its CDR, by the account's plan's table.

        A name only describes: nothing about it may keep a call from being charged.
        """
        try:
            return self._catalog.snapshot.destination_name(record.plan_id, record.destination)
        except ValueError:  # not digits: normalize_number lets none through today
            return None

    async def quote(
        self, account_id: str, destination: str, access_number: str | None = None
    ) -> Quote:
        """The seconds the account's funds buy to ``destination``: an IVR's "you have
        N minutes", reserving nothing. Priced as authorize prices (``price``); counters
        count first, with the free seconds the account's counters hold now. Routed as
        authorize routes: a destination no carrier reaches at a margin the plan allows
        is refused ``no_profitable_route``, not quoted time no call would be granted.
        Granted as authorize grants, so never more than a call authorized now: a banded
        call's least over the answers it may have (decision 0040), a ``share`` plan's
        part of the funds for the account's free lines."""
        plan_id = await self._plan_of(account_id)
        request = AuthorizeRequest(account_id, destination, access_number=access_number)
        priced = self.price(request, plan_id)
        digits = priced.digits
        state = await self._store.get_account(account_id)
        if state is None:
            raise OcsError(Reason.ACCOUNT_NOT_FOUND, f"account {account_id!r} does not exist")
        # What authorize would refuse buys no time.
        if state.status != "active":
            reason = Reason(f"account_{state.status}")
            raise OcsError(reason, _REFUSAL_MESSAGES[reason.value])
        if state.expires_at and self._clock() >= state.expires_at:
            raise OcsError(Reason.ACCOUNT_EXPIRED, _REFUSAL_MESSAGES["account_expired"])
        name = self._catalog.snapshot.destination_name(plan_id, digits)
        split, cap = priced.split, priced.cap
        if priced.candidates:
            plan_cap = priced.plan.max_call_duration
            cycles = await self._store.counter_state(account_id)
            # The counter the authorize script would choose (``counter_to_draw``), with
            # the free seconds its cycle holds now (a mandatory one not yet started: all):
            # of those that apply, the first with seconds free.
            applicable: list[tuple[str, int]] = []
            for candidate in priced.candidates:
                cycle = cycles.get(candidate.id)
                if cycle is not None:
                    free = cycle["limit"] - cycle["used"] - cycle["held"]
                elif candidate.mandatory:
                    free = candidate.seconds
                else:
                    continue  # an optional counter the account has not bought
                applicable.append((candidate.id, max(min(free, plan_cap), 0)))
            chosen = counter_to_draw(applicable)
            guess: tuple[str | None, int] = (None, 0) if chosen is None else chosen
            counter, split, cap, _ = choose_counter(priced.candidates, plan_cap, guess)
            if counter is not None and split is None and counter.reject_on_threshold:
                return Quote(0, priced.tariff.zone, digits, name)
        rate = priced.rate
        # Granted as authorize grants: a banded call the least over the answers it may
        # have until the start timeout (it may ring into a dearer band), so the quote is
        # never more than the grant.
        window = self._settings.start_timeout
        bands = self._bands(priced.rating_plan, rate, int(self._clock()), cap + window)
        window = window if bands else 0
        available = state.available
        funds = available if available >= state.min_balance else 0
        if funds > 0 and priced.plan.reservation_policy == "share":
            # As authorize.lua reserves: the account's other free lines keep their part.
            free_lines = max(state.max_lines - state.lines_in_use, 1)
            first_block = _cost_of(rate, 1, split, bands, window)
            funds = min(max(available // free_lines, first_block), funds)
        seconds = _grant(rate, max(funds, 0), cap, split, bands, window)
        return Quote(seconds, priced.tariff.zone, digits, name)

    def granted_seconds(
        self, record: CallRecord, entry: LiveEntry, started: int | None = None
    ) -> int:
        """How long a live call may run: what the funds it holds and has been debited
        pay for, at most the plan's longest call (quota mode: the slice reached), from
        ``started`` (None: its entry's start)."""
        limit = record.cap if not record.quota else min(record.cap, entry.used + record.quota)
        funds = entry.held + entry.debited
        if started is None and entry.answered_at == 0 and record.bands:
            # A call still to be answered (a RADIUS call waiting for its Start, an HTTP
            # call's provisional start): granted as its authorization granted it, the
            # least over the answers it may still have.
            window = self._settings.start_timeout
            return least_grant(record.rate, funds, limit, record.split, record.bands, window)
        return max_duration_with_counter(
            record.rate,
            funds,
            limit,
            record.split,
            self._bands_of(record, record.cap, entry.started if started is None else started),
        )

    async def record_of(self, call_id: str, *, nas: NasOf = ANY_NAS) -> CallRecord | None:
        """What a live call was authorized with (where its NAS is), None if unknown;
        ``nas``: that NAS client's call (see ``start``)."""
        return await self._record_or_none(call_id, None, nas)

    async def _record_or_none(
        self, call_id: str, account_id: str | None, nas: NasOf
    ) -> CallRecord | None:
        """``_record`` (kept), None where it finds no such call."""
        try:
            return await self._record(call_id, account_id, keep=True, nas=nas)
        except OcsError as error:
            if error.reason is Reason.CALL_NOT_FOUND:
                return None
            raise

    async def _record(
        self, call_id: str, account_id: str | None, *, keep: bool, nas: NasOf = ANY_NAS
    ) -> CallRecord:
        record = self._live.get(call_id) if keep else self._live.pop(call_id, None)
        if record is None or not _scoped(record, account_id, nas):
            # Not cached here, or cached as an earlier call of that id (another account's
            # or NAS's, closed elsewhere): the reference names the current one.
            reference = await self._store.call_reference(call_id)
            found = None if reference is None else CallRecord.unpack(reference)
            if nas is not ANY_NAS and (found is None or found.nas != nas):
                # Another client's call holds the id (a global id two clients use), or held
                # it and its reference is gone: this client's is kept under the id
                # qualified by it (decision 0052). Only then is it read.
                own = await self._store.client_call_reference(call_id, nas)
                if own is not None:
                    found = CallRecord.unpack(own)
            if found is None:
                raise OcsError(Reason.CALL_NOT_FOUND, f"no call {call_id!r}")
            record = found
        if account_id is not None and record.account_id != account_id:
            raise OcsError(Reason.CALL_NOT_FOUND, f"no call {call_id!r} on account {account_id!r}")
        if nas is not ANY_NAS and record.nas != nas:
            # Another NAS client's call, or an HTTP switch's request for a NAS's call (or
            # the reverse), decision 0048: as unknown as any.
            raise OcsError(Reason.CALL_NOT_FOUND, f"no call {call_id!r} from this switch")
        return record

    def _cached(self, call_id: str, account_id: str | None, nas: NasOf) -> CallRecord | None:
        """The record this process kept of call ``call_id`` when it authorized it, if a
        request so scoped may see it. It may be an earlier call's of the id, closed
        elsewhere since (another process's stop, the janitor, a cut, a NAS's restart) and
        the id granted again: the scripts are given its stamp to check it is the live
        call's, and a call found closed or gone sends the caller to ``_current``."""
        cached = self._live.get(call_id)
        if cached is None or not _scoped(cached, account_id, nas):
            return None
        return cached

    async def _current(self, call_id: str, account_id: str | None, nas: NasOf) -> CallRecord | None:
        """The record the id's call reference names now, for a request so scoped, None if
        none: the kept record of the id (found closed or gone) is dropped first."""
        self._live.pop(call_id, None)
        self._unstarted.pop(call_id, None)
        return await self._record_or_none(call_id, account_id, nas)

    def _replaced(
        self,
        record: CallRecord,
        entry: LiveEntry,
        call_id: str,
        account_id: str | None,
        nas: NasOf,
    ) -> CallRecord:
        """The record of ``entry``, the live call of ``record``'s account under the id,
        which another call than ``record``'s holds now (``record`` was an earlier one's):
        the call a request so scoped means, else it is not found. The kept record goes."""
        if self._live.get(call_id) is record:
            self._live.pop(call_id, None)
        current = CallRecord.unpack(entry.record)
        if not _scoped(current, account_id, nas):
            raise OcsError(Reason.CALL_NOT_FOUND, f"no call {call_id!r} from this switch")
        return current

    async def start(
        self,
        call_id: str,
        account_id: str | None = None,
        *,
        nas: NasOf = ANY_NAS,
        delay: int = 0,
    ) -> CallProgress:
        """Bind an authorized call to its start (Accounting-Start); idempotent.

        ``account_id``, ``nas``: the call must be that account's, authorized by that NAS
        client (None: by no NAS, over HTTP), else it is not found; as for ``update`` and
        ``stop``. ``delay``: seconds the switch took to report the start (RADIUS
        Acct-Delay-Time): the call started that much earlier, though not before it was
        authorized."""
        validate_call_id(call_id)
        cached = self._cached(call_id, account_id, nas)
        record = cached or await self._record(call_id, account_id, keep=True, nas=nas)
        # The call expires at its grant plus grace from now: the grant is what its
        # funds pay for. Authorized here, its entry is known (what it holds, nothing
        # used); else, or when the script finds another, the entry is read.
        entry = self._unstarted.pop(call_id, None)
        if entry is None:
            entry = await self._store.live_entry(record.account_id, call_id)
            if entry is not None and record.stamp() not in entry.record:
                record = self._replaced(record, entry, call_id, account_id, nas)
        grace = self._settings.call_expiry_grace
        answer: int | Literal[False] | LiveEntry | None = None
        stopped = False
        for attempt in range(_START_TRIES + _CHECK_TRIES):
            now = max(int(time.time()) - delay, record.authorized_at_ms // 1000)
            granted = record.cap if entry is None else self.granted_seconds(record, entry, now)
            answer = await self._store.start(
                account_id=record.account_id,
                call_id=call_id,
                started_at=now,
                expires_at=now + granted + grace,
                # The last tries take the entry as it comes: a call whose entry changes
                # under every try still starts.
                expected=entry if attempt < _START_TRIES - 1 else None,
                stamp=record.stamp(),
            )
            # Told before ``answer`` is narrowed to an int: compiled with mypyc (decision
            # 0038), False held as an int is 0, no longer ``is False`` (a bool is an int).
            stopped = answer is False
            if isinstance(answer, LiveEntry):
                if record.stamp() not in answer.record:
                    # Another call of the account holds the id: the record was an earlier
                    # call's, kept here.
                    record = self._replaced(record, answer, call_id, account_id, nas)
                entry = answer
                continue
            if cached is None or not (stopped or answer is None):
                break
            # The kept record's call is closed or gone: the id may name a later call now
            # (of another account, a NAS that numbers its sessions afresh).
            cached = None
            current = await self._current(call_id, account_id, nas)
            if current is None or current == record:
                break
            record = current
            entry = await self._store.live_entry(record.account_id, call_id)
        if isinstance(answer, LiveEntry):
            raise OcsError(Reason.UNAVAILABLE, f"call {call_id!r} keeps changing; try again")
        if stopped:
            raise OcsError(Reason.CALL_ALREADY_STOPPED, f"call {call_id!r} has already stopped")
        if answer is None:
            raise OcsError(Reason.CALL_NOT_FOUND, f"no live call {call_id!r}")
        return CallProgress(call_id, record.account_id, int(answer), 0, 0)

    async def update(
        self, call_id: str, used: int, account_id: str | None = None, *, nas: NasOf = ANY_NAS
    ) -> CallProgress:
        """Record progress (Interim-Update); debits it when ``debit_on_interim`` is set."""
        validate_call_id(call_id)
        validate_duration(used, "used")
        cached = self._cached(call_id, account_id, nas)
        record = cached or await self._record(call_id, account_id, keep=True, nas=nas)
        self._unstarted.pop(call_id, None)  # its entry moves on: a start must read it
        now = int(time.time())
        grace = self._settings.call_expiry_grace
        # A call priced by band is priced from its answer, as its live entry says (as
        # this report says, before a Start: the script takes it so).
        started = 0
        if self._placed_by_start(record):
            record, started = await self._answer_of(
                record, cached is not None, call_id, account_id, nas
            )
        result: UpdateResult | LiveEntry | Literal[False] | None = None
        for _ in range(_CHECK_TRIES):
            # Quota mode: the report is debited and the next slice reserved, in one step.
            reach = min(record.cap, used + record.quota) if record.quota else 0
            # Priced as its stop will be: the bands of the seconds priced, from its answer.
            bands = self._bands_of(record, reach or used, started or now - used)
            # A started call expires at its grant plus grace. Outside quota mode an interim
            # does not change the grant, so the expiry stays, unless this report is the
            # first sign the call started; in quota mode it moves to the slice reached.
            result = await self._store.update(
                account_id=record.account_id,
                call_id=call_id,
                used=used,
                used_cost=cost_with_counter(record.rate, used, record.split, bands),
                debit=self._settings.debit_on_interim or bool(record.quota),
                expires_at=now + max((reach or record.cap) - used, 0) + grace,
                cover_cost=(
                    cost_with_counter(record.rate, reach, record.split, bands)
                    if record.quota
                    else None
                ),
                keep_expiry=not record.quota,
                stamp=record.stamp(),
            )
            if isinstance(result, LiveEntry):
                # Another call of the account holds the id: the record was an earlier
                # call's, kept here. Priced again by the live one's.
                record = self._replaced(record, result, call_id, account_id, nas)
                started = result.answered_at
                continue
            if cached is None or isinstance(result, UpdateResult):
                break
            # The kept record's call is closed or gone: the id may name a later call now.
            cached = None
            current = await self._current(call_id, account_id, nas)
            if current is None or current == record:
                break
            record, started = current, 0
            if self._placed_by_start(record):
                record, started = await self._answer_of(record, False, call_id, account_id, nas)
        if isinstance(result, LiveEntry):
            raise OcsError(Reason.UNAVAILABLE, f"call {call_id!r} keeps changing; try again")
        if result is None:
            raise OcsError(Reason.CALL_NOT_FOUND, f"no live call {call_id!r}")
        if result is False:
            raise OcsError(Reason.CALL_ALREADY_STOPPED, f"call {call_id!r} has already stopped")
        # ``bands`` and ``reach`` are those the report was priced with, of this record.
        if not record.quota:
            if result.started_now:
                # No Start came: the expiry follows the grant the funds held pay for.
                granted = max_duration_with_counter(
                    record.rate,
                    result.debited + result.held,
                    record.cap,
                    record.split,
                    self._bands_of(record, record.cap, now - used),
                )
                expiry = now + max(granted - used, 0) + grace
                if granted < record.cap:
                    await self._store.set_expiry(record.account_id, call_id, expiry)
            return CallProgress(
                call_id, record.account_id, _start_of(result, now), result.used, result.debited
            )
        granted = max_duration_with_counter(
            record.rate, result.debited + result.held, reach, record.split, bands
        )
        granted = max(granted, result.used)
        exhausted = granted < reach
        if exhausted:
            # The funds reach less than the slice asked for: the call expires there.
            await self._store.set_expiry(
                record.account_id, call_id, now + max(granted - used, 0) + grace
            )
        return CallProgress(
            call_id,
            record.account_id,
            _start_of(result, now),
            result.used,
            result.debited,
            granted=granted,
            final=granted >= record.cap or exhausted,
            exhausted=exhausted,
        )

    async def stop(
        self,
        call_id: str,
        duration: int | None,
        account_id: str | None = None,
        *,
        cause: str = "normal",
        nas: NasOf = ANY_NAS,
        delay: int = 0,
        settle_closed: bool = True,
        window: tuple[int, int] | None = None,
    ) -> CallCharge:
        """Charge a call's real duration at its authorized rate, once.

        ``duration`` None (a switch that did not report it): the time from the call's
        start, as ocs recorded it, to its end, ``delay`` seconds before now (RADIUS
        Acct-Delay-Time); 0 for a call never started. ``settle_closed`` False: a call
        already closed is neither answered as a repeat nor settled as a late stop, but
        refused (``CALL_ALREADY_STOPPED``), nothing changed: the caller first makes sure
        the stop is that call's (decision 0059). ``window``: the call must have been
        authorized in it (epoch ms, from and before), else it is not found.
        """
        validate_call_id(call_id)
        if duration is not None:
            validate_duration(duration)
        cached = self._cached(call_id, account_id, nas)
        record = cached or await self._record(call_id, account_id, keep=True, nas=nas)
        if window is not None and not window[0] <= record.authorized_at_ms < window[1]:
            raise OcsError(Reason.CALL_NOT_FOUND, f"no call {call_id!r} of that NAS's life")
        self._live.pop(call_id, None)
        self._unstarted.pop(call_id, None)
        started = 0
        if duration is None or self._placed_by_start(record):
            # Timed, or placed on the time bands, from the answer of the call the id names
            # now: a kept record may be an earlier call's, whose entry is gone.
            record, entry = await self._live_entry_of(
                record, cached is not None, call_id, account_id, nas
            )
            started = entry.started if entry is not None else 0
        # A duration the switch reported, or measured from a live call's start; else (no
        # duration, no live call) not known: a call ocs closed stays as closed.
        known = duration is not None or started > 0
        if duration is None:
            ended = int(time.time()) - delay
            duration = min(max(ended - started, 0), MAX_CALL_DURATION) if started else 0
        # A kept record is charged only if it is the live call's (the script checks its
        # stamp): else the id's reference says which call the stop is for.
        checking = cached is not None or not settle_closed
        result: StopResult | NotLive | None = None
        for _ in range(_CHECK_TRIES):
            stamp = record.stamp() if checking else None
            result = await self._close(
                record, duration, cause, expired_by=None, stamp=stamp, started=started, known=known
            )
            if isinstance(result, NotLive) and result.entry is not None:
                # Another call of the account holds the id: the record was an earlier
                # call's, kept here.
                record = self._replaced(record, result.entry, call_id, account_id, nas)
                started = result.entry.started
                continue
            if not checking or isinstance(result, StopResult):
                break
            # The kept record's call was closed (by another process, the janitor...) or
            # is gone: this stop is that call's (a repeat, a late stop) or the id's next
            # call's, as the id's reference says.
            checking = not settle_closed
            current = await self._current(call_id, account_id, nas)
            if current is not None and current != record:
                record, started = current, 0
                if self._placed_by_start(record):
                    record, started = await self._answer_of(record, False, call_id, account_id, nas)
            elif not settle_closed:
                if result is None:
                    break
                # Closed: not settled until the caller knows the stop is that call's.
                raise OcsError(Reason.CALL_ALREADY_STOPPED, f"call {call_id!r} has already stopped")
        if isinstance(result, NotLive):
            raise OcsError(Reason.UNAVAILABLE, f"call {call_id!r} keeps changing; try again")
        if result is None:
            raise OcsError(Reason.CALL_NOT_FOUND, f"no live call {call_id!r}")
        if result.cause == "late-stop" and not result.repeated:
            metrics.LATE_STOPS.labels("refunded" if result.added < 0 else "charged").inc()
        elif result.repeated and result.cause in _CLOSED_WITHOUT_STOP:
            metrics.LATE_STOPS.labels("covered").inc()
        return self._charge(record, result)

    async def _live_entry_of(
        self,
        record: CallRecord,
        cached: bool,
        call_id: str,
        account_id: str | None,
        nas: NasOf,
    ) -> tuple[CallRecord, LiveEntry | None]:
        """The record of the call the id names and its live entry (None: not live).
        ``record``, unless another call of its account holds the id now, or ``record``
        was kept from before (``cached``), is no longer live and the id's reference
        names another call."""
        entry = await self._store.live_entry(record.account_id, call_id)
        if entry is not None:
            if record.stamp() not in entry.record:
                record = self._replaced(record, entry, call_id, account_id, nas)
            return record, entry
        if cached:
            current = await self._current(call_id, account_id, nas)
            if current is not None and current != record:
                return current, await self._store.live_entry(current.account_id, call_id)
        return record, None

    async def _answer_of(
        self,
        record: CallRecord,
        cached: bool,
        call_id: str,
        account_id: str | None,
        nas: NasOf,
    ) -> tuple[CallRecord, int]:
        """``_live_entry_of``, with when the call was answered (its entry's start; 0: not
        yet, a provisional start included, or not live) for the entry: what places a call
        priced by band."""
        record, entry = await self._live_entry_of(record, cached, call_id, account_id, nas)
        return record, 0 if entry is None else entry.answered_at

    async def cut(
        self, call_id: str, account_id: str | None = None
    ) -> tuple[CallCharge, CallRecord]:
        """Cut a live call now (an operator's order, dunning's): charge the time since its
        start. ``account_id``: that account's call of the id, read from its live entry
        (two NAS clients' calls may share a global id, decision 0052); None: the call the
        id's reference names.

        The switch still has to end the call (a RADIUS NAS gets a Disconnect-Request);
        if its Stop then reports more, that difference is charged as a late stop.
        """
        validate_call_id(call_id)
        if account_id is None:
            record = await self._record(call_id, None, keep=False)
            entry = await self._store.live_entry(record.account_id, call_id)
        else:
            entry = await self._store.live_entry(account_id, call_id)
            if entry is not None:
                record = CallRecord.unpack(entry.record)
                cached = self._live.get(call_id)
                if cached is not None and cached.account_id == account_id:
                    self._live.pop(call_id, None)
        if entry is None:
            raise OcsError(Reason.CALL_NOT_FOUND, f"no live call {call_id!r}")
        now = int(self._clock())
        duration = min(max(now - entry.started, 0), MAX_CALL_DURATION) if entry.started else 0
        result = await self._close(record, duration, "cut", expired_by=None, started=entry.started)
        if not isinstance(result, StopResult) or result.repeated:
            raise OcsError(Reason.CALL_NOT_FOUND, f"no live call {call_id!r}")
        return self._charge(record, result), record

    async def _close(
        self,
        record: CallRecord,
        duration: int,
        cause: str,
        expired_by: int | None,
        stamp: bytes | None = None,
        result_ttl: int | None = None,
        started: int = 0,
        known: bool = True,
    ) -> StopResult | NotLive | None:
        """Charge a call's ``duration`` (see ``_close_once``); ``stamp``: close it only if
        the live call is ``record``'s (``BalanceStore.stop``); ``result_ttl``: seconds its
        result answers repeated stops (None: ``stop_dedupe_ttl``); ``started``: when it
        was answered (epoch s, 0: not known; a late stop's: the answer its close found,
        ``Amend``), where its time bands begin; ``known``
        False: ``duration`` is a guess (a stop that reported none, for a call no longer
        live), so a call ocs closed is settled at the close's own duration."""
        usable: int | None = None
        amends: int | None = None
        while True:
            outcome = await self._close_once(
                record,
                duration,
                cause,
                expired_by,
                usable=usable,
                amends=amends,
                stamp=stamp,
                result_ttl=result_ttl,
                started=started,
            )
            if isinstance(outcome, Amend):
                # A late stop of a call ocs closed: its CDR carries what it changes from
                # the close's. The close's duration never changes, so this comes once.
                if amends == outcome.duration:
                    raise RuntimeError(f"late stop of {record.call_id!r} not settled")
                amends = outcome.duration
                if not known:
                    duration = outcome.duration
                if not started:
                    # No live entry to read its answer from: priced from the answer the
                    # close found, as the close and any stop are (decision 0040).
                    started = outcome.started
            elif isinstance(outcome, CounterShort):
                # Other calls used some of the counter seconds the close released: priced
                # again with what is left to it. Fewer each time (another stop may take
                # more meanwhile), and a price that counts no more than the close counted
                # is never short: this ends.
                seconds = outcome.seconds
                usable = seconds if usable is None else min(seconds, usable - 1)
            else:
                return outcome

    async def _close_once(
        self,
        record: CallRecord,
        duration: int,
        cause: str,
        expired_by: int | None,
        *,
        usable: int | None,
        amends: int | None,
        stamp: bytes | None = None,
        result_ttl: int | None = None,
        started: int = 0,
    ) -> StopResult | CounterShort | Amend | NotLive | None:
        """Charge a call's ``duration``, its counter paying for at most ``usable`` seconds
        (None: as many as the call holds). ``amends``: a late stop's, the duration of the
        close its CDR states the change from."""
        rate = record.rate
        split = record.split
        counter = record.counter_use(duration)
        if usable is not None and split is not None and counter is not None:
            split = CounterSplit(split.rate, usable)
            counter = CounterUse(counter.counter_id, counter.held, min(duration, usable))
        billed = billed_seconds(rate, duration)
        counter_seconds = counter_seconds_used(split, duration)
        if amends is not None:
            billed -= billed_seconds(rate, amends)
            counter_seconds -= min(amends, record.counter_seconds) if split is not None else 0
        cdr = msgpack.packb(
            {
                "plan": record.plan_id,
                "zone": record.zone,
                "destination": record.destination,
                "caller": record.caller,
                "currency": record.currency,
                "authorized_at_ms": record.authorized_at_ms,
                "billed": billed,
                "rate": [rate.connect_fee, rate.first_block, rate.increment, rate.price_per_minute],
                "nas": record.nas,
                "member": record.member,
                "direction": record.direction,
                "counter": record.counter_id,
                "counter_seconds": counter_seconds,
                # The area-code table's name of the destination (cdrs.destination_name).
                "area": self._area_name(record),
                # The plan whose deck rated it (cdrs.rating_plan): re-rating rates by it.
                "rating_plan": record.rating_plan,
            }
        )
        args = StopArgs(
            record.account_id,
            record.call_id,
            cost_with_counter(rate, duration, split, self._bands_of(record, duration, started)),
            duration,
            cdr,
            self._settings.stop_dedupe_ttl,
            now_ms(),
            cause,
            expired_by,
            record.member,
            counter,
            amends,
        )
        return await self._store.stop(args, stamp)

    @staticmethod
    def _charge(record: CallRecord, result: StopResult) -> CallCharge:
        return CallCharge(
            call_id=record.call_id,
            account_id=record.account_id,
            zone=record.zone,
            duration=result.duration,
            billed_seconds=billed_seconds(record.rate, result.duration),
            rated=result.rated,
            charged=result.charged,
            balance=result.balance,
            currency=record.currency,
            cause=result.cause,
            repeated=result.repeated,
        )

    async def charge_usage(
        self, account_id: str, event_id: str, service: str, quantity: int
    ) -> UsageCharge:
        """Rate and debit a usage event (MB, kWh, messages) at once, once per event id.

        ``service`` names a zone of the account's plan whose tariff is priced per
        unit (its ``per``); the same rating function rates the quantity, and the
        debit and its CDR go through the same ledger as calls. An id in the usage
        imports' space (``IMPORTED_EVENT_PREFIX``) is refused naming ``event_id``.
        A repeat is answered with the first charge (its service, quantity and cost),
        a retry the catalog would now refuse too (its tariff removed since).
        """
        if event_id.startswith(IMPORTED_EVENT_PREFIX):
            raise invalid(
                "event_id",
                f"must not start with {IMPORTED_EVENT_PREFIX!r}: usage imports name their"
                " records so, and such an event would make the record a repeat",
            )
        plan_id = await self._plan_of(account_id)
        snapshot = self._catalog.snapshot
        plan = snapshot.plan(plan_id)
        refusal: OcsError | None = None
        try:
            tariff = _usage_tariff(snapshot, plan_id, service, quantity)
        except OcsError as error:
            refusal = error
        if refusal is not None:
            # The catalog refuses it, but the event may have been charged before (its
            # answer lost, the tariff removed since): a refusal would read as "not
            # charged". Looked up only here, so a first event costs no extra round trip.
            stored = await self._store.usage_result(account_id, event_id)
            if stored is None:
                raise refusal
            currency = "" if plan is None else plan.currency
            return _usage_charge(event_id, account_id, stored, service, quantity, currency)
        rate = tariff.rate
        billed = billed_seconds(rate, quantity)
        now_ms = int(self._clock() * 1000)
        assert plan is not None  # _usage_tariff refuses a plan that is gone
        cdr = msgpack.packb(
            {
                "plan": plan_id,
                "zone": tariff.zone,
                "destination": service,
                "caller": None,
                "currency": plan.currency,
                "authorized_at_ms": now_ms,
                "billed": billed,
                "rate": [rate.connect_fee, rate.first_block, rate.increment, rate.price_per_minute],
                "nas": None,
            }
        )
        result = await self._store.charge(
            account_id=account_id,
            event_id=event_id,
            rated_cost=cost(rate, quantity),
            quantity=quantity,
            cdr=cdr,
            result_ttl=self._settings.stop_dedupe_ttl,
            service=service,
            billed=billed,
            currency=plan.currency,
            zone=tariff.zone,
        )
        if isinstance(result, str):
            field = "account" if result == "account_not_found" else None
            raise OcsError(Reason(result), _REFUSAL_MESSAGES.get(result, result), field=field)
        if result.repeated:
            return _usage_charge(event_id, account_id, result, service, quantity, plan.currency)
        return UsageCharge(
            event_id=event_id,
            account_id=account_id,
            service=service,
            zone=tariff.zone,
            quantity=quantity,
            billed=billed,
            charged=result.charged,
            balance=result.balance,
            currency=plan.currency,
            repeated=False,
            quantity_differs=False,
        )

    async def nas_restart_cutoff(
        self, nas: str, node: str, kind: str, stamp: int, cutoff_ms: int
    ) -> int:
        """The time (epoch ms) before which a NAS's Accounting-On/Off closes its calls: that
        of the first copy of the one stamped ``stamp`` (Event-Timestamp) from ``node`` of
        client ``nas``, ``cutoff_ms`` (its receipt less Acct-Delay-Time, ocs's clock) when
        this is the first: a retransmission received later must not close the calls the
        NAS authorized since it came back."""
        return await self._store.nas_restart_cutoff(nas, node, kind, stamp, cutoff_ms)

    def nas_generation(self, nas: str, node: str) -> tuple[int, ...]:
        """The cut-offs (epoch ms) of the kept restarts of NAS ``node`` of client ``nas``
        this process knows of, latest first; () for none (decision 0059)."""
        return self._generations.get((nas, node), _NO_RESTARTS)

    def latest_nas_restart(self, nas: str, node: str) -> int:
        """The cut-off (epoch ms) of the latest restart of NAS ``node`` of client ``nas``
        this process knows of, 0 for none: what its session ids are qualified by."""
        known = self._generations.get((nas, node), _NO_RESTARTS)
        return known[0] if known else 0

    async def read_nas_generation(self, nas: str, node: str) -> tuple[int, ...]:
        """``nas_generation`` as Redis has it now (another process may have taken the
        NAS's latest Accounting-On), kept for this process's next requests."""
        found = await self._store.nas_generations(nas, node)
        self._keep_generation(nas, node, found)
        return found

    async def nas_restarted(
        self, nas: str, nodes: list[str], cutoff: int, *, near_is_same: bool = True
    ) -> int:
        """Keep a restart of the NAS known as ``nodes`` within client ``nas`` at
        ``cutoff`` (epoch ms): the session ids it numbers afresh since name new calls.
        Returns the cut-off it closes calls by: that of the restart it repeats (with
        ``near_is_same``, a request no stamp tells apart: a retransmission, within a few
        seconds of one kept), else ``cutoff``."""
        closing = cutoff
        for n, node in enumerate(nodes):
            kept, known = await self._store.add_nas_generation(nas, node, cutoff, near_is_same)
            if self._generations.get((nas, node)) != known:
                log.info(
                    "a NAS restarted: the session ids it numbers from now name new calls",
                    extra={"nas": nas, "nas_node": node, "restart_ms": kept},
                )
            self._keep_generation(nas, node, known)
            if n == 0:
                closing = kept  # its first name is the one its calls' ids carry
        return closing

    def _keep_generation(self, nas: str, node: str, found: tuple[int, ...]) -> None:
        """Remember a NAS's restarts for this process's next requests (bounded)."""
        if len(self._generations) >= _PLAN_CACHE_LIMIT:
            self._generations.clear()
        self._generations[(nas, node)] = found

    async def close_calls_of_nas(
        self, nas: str, cause: str, before_ms: int, nodes: frozenset[str] = frozenset()
    ) -> int:
        """Close the live calls a NAS carried when it restarted (Accounting-On/Off).

        ``nas`` is the NAS client, ``nodes`` the names of the NAS within it (decision
        0048; empty: every NAS of the client): the calls of the client's other NASes go
        on. Only calls authorized before ``before_ms`` (the NAS's event time): those
        authorized since belong to the NAS's new life.
        """
        closed = 0
        for account_id, call_id, entry in await self._store.all_live_calls():
            record = CallRecord.unpack(entry.record)
            if record.nas != nas or record.authorized_at_ms >= before_ms:
                continue
            if nodes and record.nas_node is not None and record.nas_node not in nodes:
                continue
            done = await self.close_live_call(
                account_id, call_id, cause, expired_by=None, ended_at=before_ms // 1000
            )
            if done is not None:
                closed += 1
                metrics.STALE_CALLS_CLOSED.labels(done[0].cause).inc()
        return closed

    async def close_live_call(
        self,
        account_id: str,
        call_id: str,
        cause: str,
        *,
        expired_by: int | None,
        ended_at: int | None = None,
    ) -> tuple[CallCharge, CallRecord] | None:
        """Close a call the switch will never stop (expired, NAS rebooted), by policy:
        what it was charged, and the record it was authorized with (where its NAS is).

        A call never answered is released free of charge: a RADIUS call with no
        Accounting-Start, an HTTP call with no /start (its start still the provisional
        one of its authorization, decision 0055) and no interim. An answered one is
        charged for its last reported usage (``stale_call_policy = "last_reported"``) or
        for its grant (``"full_grant"``). ``ended_at`` (epoch seconds) is when the call
        is known to have ended at the latest, a NAS's restart: under ``full_grant``
        it is then charged up to that moment, never more than its grant, never less
        than its last report. None if it is gone or was extended.
        """
        entry = await self._store.live_entry(account_id, call_id)
        if entry is None:
            return None
        record = CallRecord.unpack(entry.record)
        if entry.answered_at == 0:
            duration, cause = 0, "start-timeout" if cause == "expired" else cause
        elif self._settings.stale_call_policy == "full_grant":
            # What the switch was told it may run: it should have cut the call there.
            granted = self.granted_seconds(record, entry)
            if ended_at is not None:
                granted = min(granted, max(ended_at - entry.started, 0))
            duration = max(granted, entry.used)
        else:
            duration = entry.used
        result = await self._close(
            record, duration, cause, expired_by=expired_by, started=entry.started
        )
        self._live.pop(call_id, None)
        self._unstarted.pop(call_id, None)
        if not isinstance(result, StopResult) or result.repeated:
            return None
        return self._charge(record, result), record
