"""The values a call's lifecycle passes around: the live-call record kept in Redis, the
grant, the charge and progress of a call, and the requests.

msgspec Structs, defined apart from ``ocs.charging.lifecycle`` so that a build which
compiles the lifecycle with mypyc (decision 0038) keeps their class options: mypyc drops
a class statement's keywords (``frozen``, ``gc``, ``rename``), and the record's short
keys in Redis must not change with the build.
"""

import enum
from dataclasses import dataclass
from typing import NamedTuple

import msgspec

from ocs.balances.ivr import NO_IVR, Ivr
from ocs.balances.script_args import CounterQuote, CounterUse
from ocs.catalog.snapshot import Plan, Tariff
from ocs.rating.counter_rules import CounterDef
from ocs.rating.rates import CounterSplit, Rate, Segments
from ocs.rating.translation import TranslationSet


class CallRecord(
    msgspec.Struct,
    frozen=True,
    gc=False,
    omit_defaults=True,
    # The short keys the record has had in Redis since the first release: a record
    # written before this became a Struct reads the same.
    rename={
        "account_id": "a",
        "call_id": "c",
        "plan_id": "p",
        "zone": "z",
        "prefix": "x",
        "destination": "d",
        "caller": "o",
        "currency": "cur",
        "rate": "r",
        "authorized_at_ms": "t",
        "nas": "n",
        "member": "m",
        "direction": "dir",
        "counter_id": "ci",
        "counter_seconds": "cs",
        "counter_rate": "cr",
        "quota": "q",
        "carriers": "rt",
        "nas_address": "na",
        "nas_session": "ns",
        "rating_plan": "rp",
        "bands": "b",
        "nas_node": "nn",
    },
):
    """What a live call was authorized with; stop charges by exactly this.

    A msgspec Struct, kept in Redis as msgpack (``pack``/``unpack``): about four times
    faster than building the map by hand (benchmarks/call_record.py).
    """

    account_id: str
    call_id: str
    plan_id: str
    zone: str
    prefix: str
    destination: str
    caller: str | None
    currency: str
    rate: Rate
    cap: int
    authorized_at_ms: int
    nas: str | None = None
    member: str | None = None
    direction: str = "outbound"
    # The usage counter the call holds seconds of, and its rate (price, increment).
    counter_id: str | None = None
    counter_seconds: int = 0
    counter_rate: tuple[int, int] = (0, 1)
    quota: int = 0  # quota mode: seconds per slice; 0 grants the whole call at once
    carriers: tuple[str, ...] = ()
    nas_address: str | None = None  # where a Disconnect-Request for the call goes
    nas_session: str | None = None  # the NAS's own Acct-Session-Id, which it knows the call by
    # The NAS within the client ``nas`` (decision 0048): its Accounting-On closes the call.
    nas_node: str | None = None
    rating_plan: str | None = None  # the plan whose deck rated it (an access number's)
    # A rate priced by time band: the bands from authorization over the call's cap, as
    # the plan's schedule placed them then. Stop charges by these, not by the schedule
    # it finds: an operator's edit during the call does not reprice it.
    bands: Segments | None = None

    @property
    def split(self) -> CounterSplit | None:
        """The part of the call its counter pays for, as the rating function takes it."""
        if self.counter_id is None or self.counter_seconds <= 0:
            return None
        price, step = self.counter_rate
        return CounterSplit(Rate(0, 0, step, price), self.counter_seconds)

    def counter_use(self, duration: int) -> CounterUse | None:
        """The counter seconds a call of ``duration`` held and used, None without a counter."""
        if self.counter_id is None or self.counter_seconds <= 0:
            return None
        return CounterUse(
            self.counter_id, self.counter_seconds, min(duration, self.counter_seconds)
        )

    def pack(self) -> bytes:
        """The record as msgpack, as the live-call entry and the call reference keep it."""
        return _RECORD_ENCODER.encode(self)

    def stamp(self) -> bytes:
        """The bytes of ``pack`` that tell this call from another call of the same
        account that reuses its id: its authorization time, key and value as msgpack
        writes them. A script finds them in the live entry (a plain search) to check
        that a record kept from before is still the live call's. Found nowhere else in
        a record: the time's eight bytes begin with NUL bytes, which no text holds."""
        return _STAMP_KEY + _RECORD_ENCODER.encode(self.authorized_at_ms)

    @classmethod
    def unpack(cls, data: bytes) -> "CallRecord":
        """The record ``pack`` made."""
        record: CallRecord = _RECORD_DECODER.decode(data)
        return record


class CallRecordSummary(
    msgspec.Struct, frozen=True, gc=False, rename={"zone": "z", "currency": "cur"}
):
    """The two fields of a packed ``CallRecord`` the NOC's gauges count by: read without
    decoding the rest (its rate, counter, carriers), a third of a whole record's cost."""

    zone: str
    currency: str

    @classmethod
    def unpack(cls, data: bytes) -> "CallRecordSummary":
        """The zone and currency of the record ``CallRecord.pack`` made."""
        summary: CallRecordSummary = _SUMMARY_DECODER.decode(data)
        return summary


_RECORD_ENCODER = msgspec.msgpack.Encoder()
# The key of ``authorized_at_ms`` in a packed record ("t", as ``rename`` names it).
_STAMP_KEY = _RECORD_ENCODER.encode("t")
_RECORD_DECODER = msgspec.msgpack.Decoder(CallRecord)
_SUMMARY_DECODER = msgspec.msgpack.Decoder(CallRecordSummary)


class Grant(msgspec.Struct, frozen=True, gc=False):
    """An authorized call: it may last ``max_duration`` seconds; ``reserved`` is held."""

    call_id: str
    account_id: str
    zone: str
    destination: str
    max_duration: int
    reserved: int
    currency: str
    rate: Rate
    repeated: bool
    # Funds available before this call's reservation (for a repeated request: now,
    # plus what this call holds), and the account's credit limit (0: prepaid).
    available: int = 0
    credit_limit: int = 0
    # Carriers to route the call through, best first (the plan's route set, margin kept).
    carriers: tuple[str, ...] = ()
    counter_seconds: int = 0  # seconds of the grant a usage counter pays for
    final: bool = True  # quota mode: False while more slices may follow
    direction: str = "outbound"
    # Slices: the longest the funds available at authorize could pay for (at most the
    # plan's longest call), what a switch that cannot follow slices may be told; 0
    # for a call granted whole.
    ceiling: int = 0
    slice_seconds: int = 0  # the slice (quota) the call is granted by; 0: whole
    # What the account's IVR is told (its plan's default under its override).
    ivr: Ivr = NO_IVR

    @classmethod
    def of(
        cls,
        call_id: str,
        account_id: str,
        record: CallRecord,
        *,
        granted: int,
        reserved: int,
        repeated: bool,
        available: int,
        credit_limit: int,
        final: bool,
        ivr: Ivr,
        ceiling: int = 0,
        slice_seconds: int = 0,
    ) -> "Grant":
        """The grant of a call authorized with ``record``: the one place a Grant is built,
        for a new call and for a repeated request of a live one alike."""
        return cls(
            call_id=call_id,
            account_id=account_id,
            zone=record.zone,
            destination=record.destination,
            max_duration=granted,
            reserved=reserved,
            currency=record.currency,
            rate=record.rate,
            repeated=repeated,
            available=available,
            credit_limit=credit_limit,
            carriers=record.carriers,
            counter_seconds=min(granted, record.counter_seconds),
            final=final,
            direction=record.direction,
            ceiling=ceiling,
            slice_seconds=slice_seconds,
            ivr=ivr,
        )


class CallCharge(msgspec.Struct, frozen=True, gc=False):
    """A stopped call: ``charged`` left the balance; ``rated`` is what the tariff asked."""

    call_id: str
    account_id: str
    zone: str
    duration: int
    billed_seconds: int
    rated: int
    charged: int
    balance: int
    currency: str
    cause: str
    repeated: bool


class UsageCharge(msgspec.Struct, frozen=True, gc=False):
    """A charged usage event. A repeat carries what the first charge was charged as
    (its service, quantity, cost), whatever the retry says; ``quantity_differs``: the
    retry reported another quantity, which was not charged."""

    event_id: str
    account_id: str
    service: str
    zone: str
    quantity: int
    billed: int
    charged: int
    balance: int
    currency: str
    repeated: bool
    quantity_differs: bool


class CallProgress(msgspec.Struct, frozen=True, gc=False):
    """A live call's state after a Start or an Interim-Update."""

    call_id: str
    account_id: str
    started_at: int
    used: int
    debited: int
    granted: int = 0  # quota mode: the call may run to this many seconds in all
    final: bool = True
    # Quota mode: the funds could not cover the next slice, or the account may not
    # extend the call (suspended, locked other than by its critical balance, expired);
    # the call must end at ``granted`` (a RADIUS NAS is sent a Disconnect-Request then).
    exhausted: bool = False


class Quote(NamedTuple):
    """What an IVR announces: the seconds the funds buy, the zone, the normalised
    number, and the area-code table's name of it (None when no table names it)."""

    seconds: int
    zone: str
    destination: str
    destination_name: str | None


class Identity(NamedTuple):
    """Who a request's user name names: a member of an account, a card's PIN, or an account.

    A named tuple: one is made for every RADIUS request, and it is cheaper to make."""

    account_id: str
    member: str | None = None
    check_password: bool = True
    pin: bool = False  # a PIN was presented: a failure counts against guessing limits


# The request values below are frozen msgspec Structs, not frozen dataclasses: a few are
# made for every authorization, and a Struct constructs several times faster (a frozen
# dataclass sets each field through object.__setattr__). They hold only immutable
# values, so they stay out of the cycle collector (gc=False).
class AuthorizeRequest(msgspec.Struct, frozen=True, gc=False):
    """What a caller asks for: a call from ``account_id`` to ``destination``.

    ``caller``: the caller id, kept on the CDR. ``call_id``: the switch's id of the
    call (None: ocs makes one). ``member``: the member placing or taking the call,
    whose own line limit applies too. ``direction``: ``outbound`` or ``inbound``
    (rated by the plan's inbound tariffs, free when it has none). ``quota``: grant
    slices of this many seconds (quota mode) instead of the whole call.
    ``access_number``: the number a card holder dialled in on (its plan rates the
    call). ``password``: what the caller gave, checked when the origin asks.
    """

    account_id: str
    destination: str
    caller: str | None = None
    call_id: str | None = None
    member: str | None = None
    direction: str = "outbound"
    quota: int | None = None
    access_number: str | None = None
    password: str | None = None


class Origin(msgspec.Struct, frozen=True, gc=False):
    """Where an authorization comes from, and what that channel may be trusted with.

    ``nas``: the NAS client's name: only it may account the call. ``nas_node``: the NAS
    within that client (decision 0048): its restart closes the call.
    ``nas_address``, ``nas_session``: where a Disconnect-Request for the call goes, and
    the session id the NAS knows the call by. ``translation``: the NAS's own number
    translation, replacing the plan's. ``check_password``: the identity is untrusted (a
    RADIUS PIN): an account with a password must be given it. ``wait_for_start``: the
    reservation is released unless a Start binds it within ``start_timeout`` seconds.
    ``slices``: the switch can be told to cut a call, so the plan's ``slice`` policy
    applies (else it is granted the whole call).
    """

    nas: str | None = None
    nas_node: str | None = None
    nas_address: str | None = None
    nas_session: str | None = None
    translation: TranslationSet | None = None
    check_password: bool = False
    wait_for_start: bool = False
    slices: bool = True


# A trusted switch or operator (HTTP): no NAS, no password check, granted at once.
TRUSTED = Origin()


class NasScope(enum.Enum):
    """Which calls a start, update or stop may find, beyond a NAS client's name (its
    own calls) or None (calls authorized with no NAS: the HTTP switch's)."""

    ANY = "any"  # every call: the operator's tools and housekeeping


ANY_NAS = NasScope.ANY


class Priced(msgspec.Struct, frozen=True, gc=False):
    """A request priced against one catalog snapshot: what authorize reserves by and
    what quote announces, computed in one place (``CallService.price``).

    ``cap`` is the longest the call may last: the plan's, or the bundle's free seconds
    when its counter refuses past them. ``counter``/``split``: the usage counter the
    call is priced with and the seconds it pays; ``counter_quote``: the candidates and
    that choice as the authorize script checks them (None: no counter covers the zone).
    """

    plan_id: str
    plan: Plan
    digits: str
    rating_plan: str
    prefix: str
    tariff: Tariff
    rate: Rate  # the tariff's: what the call is charged at
    carriers: tuple[str, ...]
    candidates: tuple[CounterDef, ...]
    counter: CounterDef | None
    split: CounterSplit | None
    cap: int
    counter_quote: CounterQuote | None


@dataclass(frozen=True, slots=True)
class BalanceAnswer:
    """An IVR's "your balance is" answer: nothing reserved."""

    account_id: str
    currency: str
    balance: int
    available: int
    credit_limit: int
