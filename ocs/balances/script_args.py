"""The KEYS and ARGV of each balance script, built in one place beside its contract.

Every Lua script ``BalanceStore`` runs has its KEYS/ARGV contract written at
the top of its file in ``lua/``; the builder for that script lives here, with
the contract quoted in its docstring, so a change to the order of arguments is
made once, next to the words that define it. Each builder is a frozen msgspec
Struct (one is made per request; it constructs several times faster than a frozen
dataclass, and holds only immutable values, so it is kept out of the cycle
collector): ``keys()`` and ``argv()`` return the lists ``AutoPipeline.run_script``
sends, exactly as ``BalanceStore`` assembled them by hand before.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from ocs.balances import keys as k


@dataclass(frozen=True, slots=True)
class CounterCandidate:
    """A counter that may pay for a call, as the authorize script weighs it."""

    counter_id: str
    reject_on_threshold: bool
    mandatory_seconds: int | None  # a mandatory counter's cycle, started on first use


@dataclass(frozen=True, slots=True)
class CounterQuote:
    """Counters covering a call's zone, in order, and the one the caller priced with:
    ``counter_id`` (None: none) with ``seconds`` free, at most ``cap`` per call."""

    candidates: tuple[CounterCandidate, ...]
    counter_id: str | None
    seconds: int
    cap: int


@dataclass(frozen=True, slots=True)
class CounterUse:
    """A usage counter as one call uses it: ``held`` seconds reserved, ``used`` of them used."""

    counter_id: str
    held: int
    used: int = 0


class AuthorizeArgs(msgspec.Struct, frozen=True, gc=False):
    """authorize.lua: take a line and reserve funds for a new call.

    KEYS[1] account hash, KEYS[2] live-calls hash, KEYS[3] expiry sorted set,
    KEYS[4] stopped-call key, KEYS[5] the account's IVR override.
    ARGV[1]  call id
    ARGV[2]  plan id the caller rated against; must equal the account's plan
    ARGV[3]  cost of the first block (micro-units): the least a call can cost
    ARGV[4]  minimum available funds the plan requires to start a call
    ARGV[5]  cost of the plan's longest allowed call: the most a reservation holds
    ARGV[6]  live-call record (msgpack, opaque to this script)
    ARGV[7]  expiry (epoch seconds) of the live call
    ARGV[8]  expiry set member ("<account>\\0<call id>")
    ARGV[9]  the password check: "" skips it (trusted channel); else "<digest> <limit>
             <window>", wrong passwords counted per account (decision 0045)
    ARGV[10] now (epoch seconds), for the account's expiry date
    ARGV[11] start time (epoch seconds) of the call, 0 when a Start is still to come,
             "0<second>" for a provisional start (``provisional``)
    ARGV[12] member placing or taking the call ("" none)
    ARGV[13] usage counters covering the destination, comma-separated ("" none)
    ARGV[14] counter seconds the caller priced the reservation with
    ARGV[15] longest call (seconds): the most counter seconds one call may hold
    ARGV[16] per candidate, comma-separated: "1" to refuse once it is used up
    ARGV[17] per candidate, comma-separated: a mandatory counter's cycle seconds, else "0"
    ARGV[18] the counter the caller priced with ("" none)
    KEYS[6] member-lines hash, KEYS[7] counters hash
    ARGV[19] "1": the plan's reservation policy is "share"
    ARGV[12..19] and KEYS[6..7] may be left out, together, for a call with no member,
    no counter and no share (most calls): fewer bytes on the hot path.
    """

    account_id: str
    call_id: str
    plan_id: str
    first_block_cost: int
    min_balance: int
    cap_cost: int
    record: bytes
    expires_at: int
    password_digest: str = ""
    now: int = 0
    # Wrong passwords an account may take within the window, and the window (seconds):
    # sent only with a digest to check.
    password_guess_limit: int = 0
    password_guess_window: int = 0
    started_at: int = 0
    member: str | None = None
    counter: CounterQuote | None = None
    share: bool = False
    # ``started_at`` is a provisional start, the authorization's (an HTTP call, decision
    # 0055): written "0<second>", replaced by the answer.
    provisional: bool = False

    def keys(self) -> list[str]:
        """KEYS[1..5], and KEYS[6..7] when the call has a member, a counter or shares."""
        account_id = self.account_id
        bucket = k.bucket_of(account_id)  # once: every key of the account carries it
        script_keys = [
            k.account_in(bucket, account_id),
            k.live_calls_in(bucket, account_id),
            k.call_expiry(bucket),
            k.stopped_call_in(bucket, account_id, self.call_id),
            k.account_ivr_in(bucket, account_id),
        ]
        if self.member or self.counter is not None or self.share:
            script_keys += [
                k.member_lines_in(bucket, account_id),
                k.counters_in(bucket, account_id),
            ]
        return script_keys

    def argv(self) -> list[object]:
        """ARGV[1..11], and ARGV[12..19] only as far as the call needs them."""
        args: list[object] = [
            self.call_id,
            self.plan_id,
            self.first_block_cost,
            self.min_balance,
            self.cap_cost,
            self.record,
            self.expires_at,
            k.expiry_member(self.account_id, self.call_id),
            # One argument for the whole check, so that ARGV[12..19] stay optional.
            f"{self.password_digest} {self.password_guess_limit} {self.password_guess_window}"
            if self.password_digest
            else "",
            self.now,
            f"0{self.started_at}" if self.provisional else self.started_at,
        ]
        counter = self.counter
        # Member, counter and share arguments only when the call has them: most have none.
        if self.member or counter is not None or self.share:
            args.append(self.member or "")
            if counter is not None:
                args += [
                    ",".join(c.counter_id for c in counter.candidates),
                    counter.seconds,
                    counter.cap,
                    ",".join("1" if c.reject_on_threshold else "0" for c in counter.candidates),
                    ",".join(str(c.mandatory_seconds or 0) for c in counter.candidates),
                    counter.counter_id or "",
                ]
            elif self.share:
                args += ["", 0, 0, "", "", ""]  # no counter
            if self.share:
                args.append("1")
        return args


def call_keys(account_id: str, call_id: str) -> list[str]:
    """KEYS[1..5] of stop.lua and update.lua: account hash, live-calls hash, expiry
    sorted set, stopped-call key, ledger stream."""
    bucket = k.bucket_of(account_id)
    return [
        k.account_in(bucket, account_id),
        k.live_calls_in(bucket, account_id),
        k.call_expiry(bucket),
        k.stopped_call_in(bucket, account_id, call_id),
        k.ledger(bucket),
    ]


class StopArgs(msgspec.Struct, frozen=True, gc=False):
    """stop.lua: charge a live call, release its reservation and line, append its CDR.

    KEYS[1] account hash, KEYS[2] live-calls hash, KEYS[3] expiry sorted set,
    KEYS[4] stopped-call key, KEYS[5] ledger stream.
    ARGV[1]  call id
    ARGV[2]  rated cost of the whole call (micro-units), from the shared rating function
    ARGV[3]  expiry set member
    ARGV[4]  seconds to keep the result for repeated stops
    ARGV[5]  CDR (msgpack, opaque to this script)
    ARGV[6]  time of the stop (epoch milliseconds)
    ARGV[7]  duration (seconds)
    ARGV[8]  account id
    ARGV[9]  termination cause ("normal", "start-timeout", "expired", "nas-reboot", ...)
    ARGV[10] "" for a stop reported by the switch; for the janitor, an epoch second:
             the call is closed only if its expiry is not later than that
    ARGV[11] member of the call ("" none): its line is released
    ARGV[12] usage counter of the call ("" none)
    ARGV[13] counter seconds the call holds
    ARGV[14] counter seconds the call used (<= ARGV[13]): they count as used
    ARGV[15] a late stop's: the duration of the close its CDR was built against
    KEYS[6] member-lines hash, KEYS[7] counters hash
    ARGV[11..15] and KEYS[6..7] may be left out, together, for a call with no member and
    no counter (ARGV[15] alone may be left out). A late stop that took more counter
    seconds as free than the counter has left is answered REPRICE with the seconds it may
    count; one whose CDR was not built against the close's duration, AMEND with it.
    """

    account_id: str
    call_id: str
    rated_cost: int
    duration: int
    cdr: bytes
    result_ttl: int
    now_ms: int
    cause: str = "normal"
    expired_by: int | None = None
    member: str | None = None
    counter: CounterUse | None = None
    # A late stop's: the duration of the close (``Amend``) its CDR was built against.
    amends: int | None = None

    def keys(self) -> list[str]:
        """KEYS[1..5], and KEYS[6..7] for a call with a member or a counter, or a late
        stop's."""
        script_keys = call_keys(self.account_id, self.call_id)
        if self.member or self.counter is not None or self.amends is not None:
            script_keys += [k.member_lines(self.account_id), k.counters(self.account_id)]
        return script_keys

    def argv(self) -> list[object]:
        """ARGV[1..10], ARGV[11..14] for a call with a member or a counter or a late stop,
        and ARGV[15] for a late stop."""
        args: list[object] = [
            self.call_id,
            self.rated_cost,
            k.expiry_member(self.account_id, self.call_id),
            self.result_ttl,
            self.cdr,
            self.now_ms,
            self.duration,
            self.account_id,
            self.cause,
            "" if self.expired_by is None else self.expired_by,
        ]
        counter = self.counter
        if self.member or counter is not None or self.amends is not None:
            args += [
                self.member or "",
                "" if counter is None else counter.counter_id,
                0 if counter is None else counter.held,
                0 if counter is None else counter.used,
            ]
        if self.amends is not None:
            args.append(self.amends)
        return args


class UpdateArgs(msgspec.Struct, frozen=True, gc=False):
    """update.lua: record a live call's progress and, when asked, debit it.

    KEYS[1] account hash, KEYS[2] live-calls hash, KEYS[3] expiry sorted set,
    KEYS[4] stopped-call key, KEYS[5] ledger stream.
    ARGV[1] call id
    ARGV[2] seconds used so far
    ARGV[3] rated cost of those seconds (micro-units), from the shared rating function
    ARGV[4] "1" to debit the used amount now, "0" to only record progress
    ARGV[5] time (epoch milliseconds)
    ARGV[6] account id
    ARGV[7] new expiry (epoch seconds)
    ARGV[8] expiry set member
    ARGV[9] quota mode: the cost the call's funds must cover after this report; ""
            for no new slice
    ARGV[10] "1": a call already started keeps its expiry; "" or "0": ARGV[7] applies.
    ARGV[11] (optional) the stamp of the record the report was priced with
             (``CallRecord.stamp``): a live call of another record is answered
             {"ENTRY", entry}, nothing changed
    """

    account_id: str
    call_id: str
    used: int
    used_cost: int
    debit: bool
    now_ms: int
    expires_at: int
    cover_cost: int | None = None
    keep_expiry: bool = False
    stamp: bytes | None = None

    def keys(self) -> list[str]:
        """KEYS[1..5]."""
        return call_keys(self.account_id, self.call_id)

    def argv(self) -> list[object]:
        """ARGV[1..10], and ARGV[11] when a record's stamp is given."""
        return [
            self.call_id,
            self.used,
            self.used_cost,
            "1" if self.debit else "0",
            self.now_ms,
            self.account_id,
            self.expires_at,
            k.expiry_member(self.account_id, self.call_id),
            "" if self.cover_cost is None else self.cover_cost,
            "1" if self.keep_expiry else "0",
            *(() if self.stamp is None else (self.stamp,)),
        ]


class StartArgs(msgspec.Struct, frozen=True, gc=False):
    """start.lua: bind an authorized call to its Accounting-Start; idempotent.

    KEYS[1] live-calls hash, KEYS[2] expiry sorted set, KEYS[3] stopped-call key.
    ARGV[1] call id
    ARGV[2] start time (epoch seconds)
    ARGV[3] new expiry (epoch seconds): the grant plus grace, from the start
    ARGV[4] expiry set member
    ARGV[5] (optional) the entry's "<held>|<started>|<used>|<debited>" the expiry was
            computed from; another entry is answered {"ENTRY", entry}, nothing changed
    ARGV[6] (optional) the stamp of the record the expiry was computed with
            (``CallRecord.stamp``): a live call of another record is answered
            {"ENTRY", entry}, nothing changed
    """

    account_id: str
    call_id: str
    started_at: int
    expires_at: int
    expected: str | None = None
    stamp: bytes | None = None

    def keys(self) -> list[str]:
        """KEYS[1..3]."""
        return [
            k.live_calls(self.account_id),
            k.call_expiry(k.bucket_of(self.account_id)),
            k.stopped_call(self.account_id, self.call_id),
        ]

    def argv(self) -> list[object]:
        """ARGV[1..4], ARGV[5] when an entry is expected or a stamp given ("": no entry),
        and ARGV[6] when a stamp is."""
        if self.stamp is None:
            return [
                self.call_id,
                self.started_at,
                self.expires_at,
                k.expiry_member(self.account_id, self.call_id),
                *(() if self.expected is None else (self.expected,)),
            ]
        return [
            self.call_id,
            self.started_at,
            self.expires_at,
            k.expiry_member(self.account_id, self.call_id),
            "" if self.expected is None else self.expected,
            self.stamp,
        ]


class ReleaseArgs(msgspec.Struct, frozen=True, gc=False):
    """release_unconfirmed.lua: give back, free, the line and funds of a grant whose
    authorization was answered with an error, unless it is no longer provisional.

    KEYS[1] account hash, KEYS[2] live-calls hash, KEYS[3] expiry sorted set,
    KEYS[4] member-lines hash, KEYS[5] counters hash.
    ARGV[1] call id
    ARGV[2] the stamp of the grant's record (``CallRecord.stamp``)
    ARGV[3] expiry set member
    ARGV[4] member of the call ("" none)
    ARGV[5] usage counter of the call ("" none)
    ARGV[6] counter seconds the call holds
    """

    account_id: str
    call_id: str
    stamp: bytes
    member: str | None = None
    counter: CounterUse | None = None

    def keys(self) -> list[str]:
        """KEYS[1..5]."""
        account_id = self.account_id
        bucket = k.bucket_of(account_id)
        return [
            k.account_in(bucket, account_id),
            k.live_calls_in(bucket, account_id),
            k.call_expiry(bucket),
            k.member_lines_in(bucket, account_id),
            k.counters_in(bucket, account_id),
        ]

    def argv(self) -> list[object]:
        """ARGV[1..6]."""
        counter = self.counter
        return [
            self.call_id,
            self.stamp,
            k.expiry_member(self.account_id, self.call_id),
            self.member or "",
            "" if counter is None else counter.counter_id,
            0 if counter is None else counter.held,
        ]


class ChargeArgs(msgspec.Struct, frozen=True, gc=False):
    """charge.lua: rate-and-debit a usage event at once, once per event id.

    KEYS[1] account hash, KEYS[2] event result key, KEYS[3] ledger stream, KEYS[4] the
    key earlier versions kept the result under (a stopped call's).
    ARGV[1] event id              ARGV[2] cost (micro-units, from the shared rating function)
    ARGV[3] seconds to keep the result for a repeated event
    ARGV[4] CDR (msgpack, opaque)  ARGV[5] time (epoch milliseconds)
    ARGV[6] quantity               ARGV[7] account id
    ARGV[8] service                ARGV[9] billed quantity
    ARGV[10] currency              ARGV[11] zone (kept in the result, to answer a retry)
    """

    account_id: str
    event_id: str
    rated_cost: int
    quantity: int
    cdr: bytes
    result_ttl: int
    now_ms: int
    service: str
    billed: int
    currency: str
    zone: str

    def keys(self) -> list[str]:
        """KEYS[1..4]."""
        return [
            k.account(self.account_id),
            k.usage_done(self.account_id, self.event_id),
            k.ledger(k.bucket_of(self.account_id)),
            k.stopped_call(self.account_id, self.event_id),
        ]

    def argv(self) -> list[object]:
        """ARGV[1..11]."""
        return [
            self.event_id,
            self.rated_cost,
            self.result_ttl,
            self.cdr,
            self.now_ms,
            self.quantity,
            self.account_id,
            self.service,
            self.billed,
            self.currency,
            self.zone,
        ]


# The event ids of a usage import's records, ``usage:<supplier>:<record id>``: one
# result key space per account holds them and the live API's usage events
# (``usage_done``), so the live API refuses ids in it; a live event named so would make
# the supplier's record a repeat, never charged.
IMPORTED_EVENT_PREFIX = "usage:"


def imported_event_id(supplier: str, record_id: str) -> str:
    """The event id of a supplier's record in a usage import."""
    return f"{IMPORTED_EVENT_PREFIX}{supplier}:{record_id}"


class UsageEvent(msgspec.Struct, frozen=True, gc=False):
    """One rated usage event of a batch (charge_batch.lua): who pays, what, once by id.

    ``counter_id``: the usage counter the event draws on ("" none), priced with the
    counter holding ``counter_free`` seconds; ``counter_start``: the seconds a mandatory
    counter starts its first cycle with when the account has not used it yet (0 for an
    optional counter). ``start_ms``: when the usage took place (epoch ms): an account
    that had expired by then refuses it.
    """

    account_id: str
    event_id: str
    rated_cost: int
    quantity: int
    cdr: bytes
    start_ms: int
    counter_id: str = ""
    counter_free: int = 0
    counter_start: int = 0


class ChargeBatchArgs(msgspec.Struct, frozen=True, gc=False):
    """charge_batch.lua: a usage import's events of one bucket, each charged as charge.lua.

    KEYS[1] ledger stream, KEYS[2] the import's refused accounts of the bucket, then for
    each event its account hash, result key and the key earlier versions kept the result
    under, then the counters hash of each event that names a counter. ARGV[1] time
    (epoch ms), ARGV[2] seconds to keep each result, ARGV[3] seconds to keep the refused
    accounts, then seven an event: event id, cost, quantity, account id, CDR, "" or
    "<free seconds priced with>|<start seconds>|<counter id>", and when it took place.
    """

    bucket: int
    import_id: int
    events: list[UsageEvent]
    result_ttl: int
    now_ms: int

    def keys(self) -> list[str]:
        """KEYS[1..2 + 3n], then a counters hash for each event that names a counter."""
        bucket = self.bucket
        out = [k.ledger(bucket), k.import_refused(bucket, self.import_id)]
        for event in self.events:
            out.append(k.account_in(bucket, event.account_id))
            out.append(k.usage_done_in(bucket, event.account_id, event.event_id))
            out.append(k.stopped_call_in(bucket, event.account_id, event.event_id))
        out += (k.counters_in(bucket, e.account_id) for e in self.events if e.counter_id)
        return out

    def argv(self) -> list[object]:
        """ARGV[1..3 + 7n]."""
        out: list[object] = [self.now_ms, self.result_ttl, self.result_ttl]
        for event in self.events:
            counter = event.counter_id
            if counter:
                counter = f"{event.counter_free}|{event.counter_start}|{counter}"
            out += (event.event_id, event.rated_cost, event.quantity, event.account_id, event.cdr)
            out += (counter, event.start_ms)
        return out


class TopupArgs(msgspec.Struct, frozen=True, gc=False):
    """topup.lua: credit an account and append the ledger entry, once per top-up id.

    KEYS[1] account hash, KEYS[2] ledger stream, KEYS[3] top-up result key.
    ARGV[1] amount (micro-units, > 0)
    ARGV[2] top-up id (the ledger reference)
    ARGV[3] seconds to keep the result for repeated top-ups
    ARGV[4] time (epoch milliseconds)
    ARGV[5] account id
    ARGV[6] ledger kind ("topup")
    ARGV[7] "1": refuse an expired account (an operator's top-up); "": credit it anyway
    """

    account_id: str
    amount: int
    topup_id: str
    result_ttl: int
    now_ms: int
    kind: str = "topup"
    refuse_expired: bool = False

    def keys(self) -> list[str]:
        """KEYS[1..3]."""
        return [
            k.account(self.account_id),
            k.ledger(k.bucket_of(self.account_id)),
            k.topup_done(self.account_id, self.topup_id),
        ]

    def argv(self) -> list[object]:
        """ARGV[1..7]."""
        return [
            self.amount,
            self.topup_id,
            self.result_ttl,
            self.now_ms,
            self.account_id,
            self.kind,
            "1" if self.refuse_expired else "",
        ]


class FeeArgs(msgspec.Struct, frozen=True, gc=False):
    """fee.lua: debit a fee with its ledger entry, once per reference.

    KEYS[1] account hash, KEYS[2] ledger stream, KEYS[3] fee result key.
    ARGV[1] amount (micro-units, > 0)
    ARGV[2] reference (the ledger reference, e.g. "counter:<id>:<cycle>")
    ARGV[3] seconds to keep the result for a repeated fee
    ARGV[4] time (epoch milliseconds)
    ARGV[5] account id
    ARGV[6] "1": refuse when the available funds do not cover it (a purchase);
            "0": debit it whatever the balance (a recurring charge becomes debt);
            "2": a refund by hand: refuse, for good, unless the account's own money
            (balance less holds and committed, no credit limit) covers it
    """

    account_id: str
    amount: int
    reference: str
    result_ttl: int
    now_ms: int
    require_funds: bool
    own_funds: bool = False

    def keys(self) -> list[str]:
        """KEYS[1..3]."""
        return [
            k.account(self.account_id),
            k.ledger(k.bucket_of(self.account_id)),
            k.fee_done(self.account_id, self.reference),
        ]

    def argv(self) -> list[object]:
        """ARGV[1..6]."""
        return [
            self.amount,
            self.reference,
            self.result_ttl,
            self.now_ms,
            self.account_id,
            "2" if self.own_funds else "1" if self.require_funds else "0",
        ]


class CheckPasswordArgs(msgspec.Struct, frozen=True, gc=False):
    """check_password.lua: judge a password as authorize.lua does, reserving nothing.

    KEYS[1] account hash.
    ARGV[1] password digest to check ("-": none was given, which no digest equals)
    ARGV[2] now (epoch seconds)
    ARGV[3] wrong passwords an account may take within the window
    ARGV[4] the window (seconds), from the first wrong password
    ARGV[5] the password's old-form digest (decision 0054), sent only to check an
            account whose stored digest is still in the old form ("": left out)
    """

    account_id: str
    digest: str
    now: int
    guess_limit: int
    guess_window: int
    legacy_digest: str = ""

    def keys(self) -> list[str]:
        """KEYS[1]."""
        return [k.account(self.account_id)]

    def argv(self) -> list[object]:
        """ARGV[1..4], and ARGV[5] when there is an old-form digest to check."""
        argv: list[object] = [self.digest, self.now, self.guess_limit, self.guess_window]
        if self.legacy_digest:
            argv.append(self.legacy_digest)
        return argv


class LiftPasswordBlockArgs(msgspec.Struct, frozen=True, gc=False):
    """lift_password_block.lua: forget an account's count of wrong passwords.

    KEYS[1] account hash.
    ARGV[1] now (epoch seconds)
    """

    account_id: str
    now: int

    def keys(self) -> list[str]:
        """KEYS[1]."""
        return [k.account(self.account_id)]

    def argv(self) -> list[object]:
        """ARGV[1]."""
        return [self.now]


class SetPolicyArgs(msgspec.Struct, frozen=True, gc=False):
    """set_policy.lua: change policy fields of an account's real-time state.

    KEYS[1] account hash.
    ARGV[1..2n] field, value pairs (at least one).
    """

    account_id: str
    fields: dict[str, str | int]

    def keys(self) -> list[str]:
        """KEYS[1]."""
        return [k.account(self.account_id)]

    def argv(self) -> list[object]:
        """ARGV[1..2n]."""
        return [x for pair in self.fields.items() for x in pair]


class CreateAccountArgs(msgspec.Struct, frozen=True, gc=False):
    """create_account.lua: the real-time state of a new account, with its opening balance.

    KEYS[1] account hash, KEYS[2] ledger stream.
    ARGV[1] plan id   ARGV[2] currency   ARGV[3] credit limit (micro-units)
    ARGV[4] max lines ARGV[5] status     ARGV[6] opening balance (micro-units, >= 0)
    ARGV[7] time (epoch milliseconds)    ARGV[8] account id
    ARGV[9] password digest ("" = none)  ARGV[10] expiry (epoch seconds, 0 = never)
    ARGV[11] minimum balance to call     ARGV[12] critical balance ("" = none)
    ARGV[13] funds committed to recurring charges
    ARGV[14] lines per member (0 = no limit of its own)
    ARGV[15] days a card lasts after its first use (0 = no such expiry)
    ARGV[16] the creating request's token ("" = none)   ARGV[17] a card's PIN digest
    ARGV[18] the lock reason ("" = none; "session": on demand, no session open)
    """

    account_id: str
    plan_id: str
    currency: str
    credit_limit: int
    max_lines: int
    status: str
    opening_balance: int
    now_ms: int
    password_digest: str = ""
    expires_at: int = 0
    min_balance: int = 0
    critical_balance: int | None = None
    committed: int = 0
    member_lines: int = 0
    expire_days: int = 0
    token: str = ""
    pin_digest: str = ""
    lock: str = ""

    def keys(self) -> list[str]:
        """KEYS[1..2]."""
        return [k.account(self.account_id), k.ledger(k.bucket_of(self.account_id))]

    def argv(self) -> list[object]:
        """ARGV[1..18]."""
        return [
            self.plan_id,
            self.currency,
            self.credit_limit,
            self.max_lines,
            self.status,
            self.opening_balance,
            self.now_ms,
            self.account_id,
            self.password_digest,
            self.expires_at,
            self.min_balance,
            "" if self.critical_balance is None else self.critical_balance,
            self.committed,
            self.member_lines,
            self.expire_days,
            self.token,
            self.pin_digest,
            self.lock,
        ]


class CounterResetArgs(msgspec.Struct, frozen=True, gc=False):
    """counter_reset.lua: start a new cycle of an account's usage counters.

    KEYS[1] counters hash.
    ARGV[1] the cycle's label, ARGV[2] when the cycle's first run began (epoch us, Redis's
          clock), then quadruples of (counter id, seconds per cycle, "1" to carry unused
          seconds over, "1" for a mandatory counter); or "-cancel", <counter id> to cancel
          that one counter only. A counter of the hash that is not named is removed (or
          marked "gone" while calls hold it); one whose cycle already has this label is
          left, and so is one bought since ARGV[2]; a named one cancelled since ARGV[2] is
          not started again.
    """

    account_id: str
    cycle: Sequence[tuple[str, int, bool, bool]] = ()
    cancel: str | None = None  # cancel this one counter instead of starting a cycle
    label: str = ""  # the cycle's label, such as "2026-12"
    since: int = 0  # when the cycle's first run began (epoch microseconds, Redis's clock)

    def keys(self) -> list[str]:
        """KEYS[1]."""
        return [k.counters(self.account_id)]

    def argv(self) -> list[object]:
        """The quadruples of the new cycle, or "-cancel" and the counter to cancel."""
        if self.cancel is not None:
            return ["-cancel", self.cancel]
        args: list[object] = [self.label, self.since]
        for counter_id, seconds, carryover, mandatory in self.cycle:
            args += [counter_id, seconds, "1" if carryover else "0", "1" if mandatory else "0"]
        return args
