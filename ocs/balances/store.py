"""Typed calls into the balance scripts: the only code that changes real-time account state.

``BalanceStore`` turns each Lua script's reply into a small result object; it
knows nothing of rating or protocols. Amounts are micro-units.
"""

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
from redis.exceptions import ResponseError

from ocs.balances import keys, scripts
from ocs.balances.autopipeline import AutoPipeline
from ocs.balances.results import (
    Amend,
    CounterShort,
    Created,
    LiveEntry,
    NotLive,
    RecordClient,
    Reserved,
    StopResult,
    UpdateResult,
    UsageResult,
    parse_live_entry,
)
from ocs.balances.script_args import (
    AuthorizeArgs,
    ChargeArgs,
    ChargeBatchArgs,
    CheckPasswordArgs,
    CounterCandidate,
    CounterQuote,
    CounterResetArgs,
    CounterUse,
    CreateAccountArgs,
    FeeArgs,
    LiftPasswordBlockArgs,
    ReleaseArgs,
    SetPolicyArgs,
    StartArgs,
    StopArgs,
    TopupArgs,
    UpdateArgs,
    UsageEvent,
)
from ocs.errors import OcsError, Reason, invalid


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry_id(value: Any) -> tuple[int, int]:
    """A stream entry id (``ms-seq``) as numbers, to compare."""
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq)


def _text_or_none(value: Any) -> str | None:
    return None if value is None else _text(value)


async def _all_or_first_error(futures: Sequence[asyncio.Future[Any]]) -> list[Any]:
    """Every future's answer, or the first error once all have settled.

    Every outcome is retrieved, also after the first error: one left unretrieved
    when Redis is down is logged by asyncio when collected, a thousand tracebacks a
    sweep. Awaited in turn rather than gathered: the futures of one pipeline settle
    together, so after the first the rest are done, and a gather cost more than the
    reads did.
    """
    answers: list[Any] = []
    error: BaseException | None = None
    for future in futures:
        try:
            answers.append(await future)
        except Exception as exc:
            error = error or exc
    if error is not None:
        raise error
    return answers


async def _each_or_error(
    futures: Sequence[asyncio.Future[Any]],
) -> tuple[list[Any], Exception | None, int]:
    """Each future's answer (None where it failed), the first error, and how many failed.

    For reads that span every bucket: on Redis Cluster one master may fail (down, a
    replica that does not confirm, a failover under way) while the others answer, and
    what they answered is still of use. Every outcome is retrieved, as in
    ``_all_or_first_error``.
    """
    answers: list[Any] = []
    error: Exception | None = None
    failed = 0
    for future in futures:
        try:
            answers.append(await future)
        except Exception as exc:
            error = error or exc
            failed += 1
            answers.append(None)
    return answers, error, failed


def now_ms() -> int:
    """The time now in epoch milliseconds, as the ledger stamps entries."""
    return int(time.time() * 1000)


# Buckets the janitor's look for expired calls asks about at a time.
SWEEP_BUCKETS = 128

# charge_batch's word for an event whose counter no longer holds the seconds it was
# priced with: nothing was charged, and the importer prices it again.
COUNTER_CHANGED = "counter_changed"


@dataclass(slots=True)
class ExpiredCalls:
    """What a look for expired calls found: (account, call id) of each, from the buckets
    that answered, and ``error``, the first failure of those that did not (None: every
    bucket answered)."""

    calls: list[tuple[str, str]]
    error: Exception | None = None


@dataclass(slots=True)
class CounterCycle:
    """One usage counter of an account this cycle: its seconds, those used and those live
    calls hold, whether it was cancelled (it applies no more), and what is left of the
    seconds the last cycle left free (all a record made before this cycle may draw):
    ``carried`` with carryover (None: the counter keeps none, it carries nothing over),
    ``closed`` without. ``started`` is False for a counter of which only ``closed`` is
    left (cancelled since its cycle closed, counter_reset.lua): it applies to no record of
    this cycle (a mandatory one starts on first use, as if absent)."""

    limit: int
    used: int
    held: int
    gone: bool
    carried: int | None = None
    closed: int = 0
    started: bool = True

    @property
    def free(self) -> int:
        """Seconds a call or record may still draw, as authorize.lua counts them."""
        return max(self.limit - self.used - self.held, 0)

    def free_for(self, made_ms: int, began: int | None) -> int:
        """Seconds a usage record made at ``made_ms`` may draw, the current cycle having
        begun at ``began`` (epoch ms; None: no reset yet): one made before draws only on
        what the closed cycle it belongs to left free, as charge_batch.lua counts them:
        the seconds carried over (no more than the new cycle has free: they are in its
        limit), or without carryover those kept aside (whatever the new cycle has)."""
        if began is None or made_ms >= began:
            return self.free
        if self.carried is not None:
            return min(self.free, self.carried)
        return max(self.closed, 0)

    def draw(self, seconds: int, made_ms: int, began: int | None) -> None:
        """Count ``seconds`` a record made at ``made_ms`` used, as charge_batch.lua does:
        a record of the closed cycle without carryover takes them off ``closed`` only."""
        if began is None or made_ms >= began:
            self.used += seconds
        elif self.carried is not None:
            self.used += seconds
            self.carried -= seconds
        else:
            self.closed -= seconds


@dataclass(slots=True)
class AccountCycle:
    """An account's usage counters as its counters hash holds them: when its current
    cycle began (epoch ms, the cycle's reset; None before its first reset), each
    counter, cancelled ones too, and when the closed cycle began (None: no reset before
    it, it began with the counters). Only that closed cycle is kept: a record made before
    ``closed_from`` draws on no counter (counter_reset.lua)."""

    began: int | None
    counters: dict[str, CounterCycle]
    closed_from: int | None = None

    def kept(self, made_ms: int) -> bool:
        """Whether what the cycle of a record made at ``made_ms`` left is still kept: the
        current cycle's or the last closed one's, not one before them."""
        return self.closed_from is None or made_ms >= self.closed_from


@dataclass(frozen=True, slots=True)
class AccountState:
    """An account's real-time state as Redis holds it."""

    account_id: str
    plan_id: str
    currency: str
    status: str
    balance: int
    credit_limit: int
    reserved: int
    max_lines: int
    lines_in_use: int
    min_balance: int = 0
    critical_balance: int | None = None
    committed: int = 0
    lock: str = ""  # "critical": locked by its critical balance; a top-up back unlocks it
    member_lines: int = 0
    expires_at: int = 0  # epoch seconds; 0 = never
    expire_days: int = 0

    @property
    def available(self) -> int:
        """Funds a new call may use: balance + credit limit - reservations - committed."""
        return self.balance + self.credit_limit - self.reserved - self.committed


@dataclass(frozen=True, slots=True)
class AlreadyLive:
    """The call id is live already; this is its existing grant."""

    entry: LiveEntry
    available: int  # the account's available funds now
    credit_limit: int
    ivr_override: str | None = None  # the account's packed IVR override


@dataclass(frozen=True, slots=True)
class AlreadyStopped:
    """The call id was stopped already: it cannot be authorized again."""

    pass


@dataclass(frozen=True, slots=True)
class PlanMismatch:
    """The account's plan is not the one the caller rated with: rate again."""

    actual_plan: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The script refused the call. ``count`` says more for two reasons: the account's
    live calls whose holds stand in the way (``funds_held_by_live_calls``), or the wrong
    passwords counted in the account's window so far (``invalid_password``,
    ``password_blocked``); else 0."""

    reason: str
    count: int = 0


@dataclass(frozen=True, slots=True)
class OldPasswordForm:
    """The account's password digest is stored in the form made before decision 0054:
    the password is checked by its old-form digest (``check_password`` with it, which
    re-keys it when right), and the call authorized again."""


@dataclass(frozen=True, slots=True)
class IdHeld:
    """An HTTP call's id is held by another account's HTTP call (its reference, granted
    and unexpired). ``record``: that call's packed record, to tell whether it is still
    live (a stopped call's reference outlives it). ``granted``: nothing was reserved when
    False; when True (a cluster, where another grant took the reference between this one's
    read of it and its write), this call was granted and is to be given back."""

    record: bytes
    granted: bool = False


@dataclass(frozen=True, slots=True)
class CounterChanged:
    """Another counter applies, or it holds other free seconds, than the caller priced with."""

    seconds: int
    counter_id: str | None


# Re-exported: the counter values travel in the scripts' arguments (script_args.py).
__all__ = [
    "AccountState",
    "AlreadyLive",
    "AlreadyStopped",
    "Amend",
    "AuthorizeArgs",
    "AuthorizeOutcome",
    "BalanceStore",
    "CounterCandidate",
    "CounterChanged",
    "CounterQuote",
    "CounterShort",
    "CounterUse",
    "IdHeld",
    "LiveEntry",
    "NotLive",
    "OldPasswordForm",
    "PlanMismatch",
    "Refused",
    "Reserved",
    "StopResult",
    "TopupResult",
    "UpdateResult",
]


AuthorizeOutcome = (
    Reserved
    | AlreadyLive
    | AlreadyStopped
    | PlanMismatch
    | Refused
    | CounterChanged
    | OldPasswordForm
    | IdHeld
)


@dataclass(frozen=True, slots=True)
class TopupResult:
    """A top-up or fee as the script recorded it; ``repeated``: a repeat, nothing moved."""

    amount: int
    balance: int
    ledger_entry: str
    repeated: bool


# Fields of a counters hash that are not a cycle's seconds: the cycle's label and when it
# began (and when the closed one did), when the counter was bought and when it was
# cancelled, and the seconds the closed cycle left (carried over or not) that its records
# may still draw (counter_reset.lua).
_NOT_SECONDS = frozenset(
    ("cycle", "cycle_from", "closed_from", "bought_at", "cancelled", "carried", "closed")
)
_CLOSED_CYCLE = frozenset(("carried", "closed"))
# How long the start of a counter cycle's first run is kept for its runs again (seconds).
_CYCLE_RUN_TTL = 400 * 86_400
# How long the cut-off of a NAS's Accounting-On is kept for its retransmissions: longer
# than a NAS goes on retransmitting one (RFC 2866 NASes give up within minutes or hours).
_NAS_RESTART_TTL = 86_400
# How many restarts of a NAS are kept: its ids are qualified by the latest, and a late
# request of a call from before it by the restart its call's life began with (decision
# 0059). A graceful reboot (Accounting-Off, then -On) takes two.
_NAS_GENERATIONS_KEPT = 4
# A restart whose cut-off is this close (ms) to one kept is that restart again: the cut-off
# of a copy without Event-Timestamp is its receipt less Acct-Delay-Time, whole seconds, so
# a retransmission's differs from the first copy's by up to a second (and the network's
# delay); no NAS boots again within a few seconds (decision 0059).
_SAME_RESTART_MS = 5_000

# A refused authorization's call reference lasts this long (seconds): enough for the
# request's retransmissions, and nothing a loop of refused calls could pile up.
REF_WINDOW = 60

# A fee's result is kept this long: a cycle's recurring charges are never taken twice.
FEE_DEDUPE_TTL = 400 * 24 * 3600


def _stop_result(packed: bytes, *, repeated: bool) -> StopResult:
    """The msgpack result the stop and charge scripts keep for repeats."""
    result = msgpack.unpackb(packed)
    return StopResult(
        charged=int(result["charged"]),
        rated=int(result["rated"]),
        balance=int(result["balance"]),
        duration=int(result["duration"]),
        ledger_entry=_text(result["entry"]),
        cause=_text(result["cause"]),
        repeated=repeated,
        added=int(result.get("added", 0)),
    )


def _usage_result(packed: bytes, *, repeated: bool) -> UsageResult:
    """The msgpack result charge.lua keeps for a usage event's repeats."""
    result = msgpack.unpackb(packed)
    billed = result.get("billed")
    return UsageResult(
        charged=int(result["charged"]),
        balance=int(result["balance"]),
        quantity=int(result["duration"]),
        repeated=repeated,
        service=_text_or_none(result.get("service")),
        billed=None if billed is None else int(billed),
        currency=_text_or_none(result.get("currency")),
        zone=_text_or_none(result.get("zone")),
    )


class BalanceStore:
    """Runs the balance scripts through the auto-pipeline and decodes their replies."""

    def __init__(self, pipeline: AutoPipeline) -> None:
        self._pipe = pipeline

    @property
    def cluster(self) -> bool:
        """Whether the balances are on a Redis Cluster, whose masters may fail one at a
        time, rather than on one server."""
        return self._pipe.cluster

    async def create_account(
        self,
        account_id: str,
        *,
        plan_id: str,
        currency: str,
        credit_limit: int,
        max_lines: int,
        status: str,
        opening_balance: int,
        password_digest: str = "",
        expires_at: int = 0,
        min_balance: int = 0,
        critical_balance: int | None = None,
        committed: int = 0,
        member_lines: int = 0,
        expire_days: int = 0,
        token: str = "",
        pin_digest: str = "",
        lock: str = "",
    ) -> Created | None:
        """Create the account's real-time state; None if it exists already, made by a
        request with another ``token`` (or none). One with the same token is answered
        ``adopted``, as it stands: the retry of a creation whose end was lost. ``lock``:
        the lock reason of a ``locked`` account (``session``: on demand, no session open)."""
        args = CreateAccountArgs(
            account_id,
            plan_id,
            currency,
            credit_limit,
            max_lines,
            status,
            opening_balance,
            now_ms(),
            password_digest,
            expires_at,
            min_balance,
            critical_balance,
            committed,
            member_lines,
            expire_days,
            token,
            pin_digest,
            lock,
        )
        reply = await self._pipe.run_script(scripts.CREATE_ACCOUNT, args.keys(), args.argv())
        outcome = _text(reply[0])
        if outcome == "OK":
            return Created(int(reply[1]))
        if outcome == "SAME":
            return Created(int(reply[1]), adopted=True, pin_digest=_text(reply[2]))
        return None

    async def get_account(self, account_id: str) -> AccountState | None:
        """The account's real-time state, None for an unknown account (one round trip)."""
        fields_future = self._pipe.execute("HGETALL", keys.account(account_id))
        lines_future = self._pipe.execute("HLEN", keys.live_calls(account_id))
        raw, lines = await _all_or_first_error([fields_future, lines_future])
        if not raw:
            return None
        # HGETALL arrives as a flat [field, value, ...] list on the lean wire.
        data = {_text(k): _text(v) for k, v in zip(raw[::2], raw[1::2], strict=True)}
        return AccountState(
            account_id=account_id,
            plan_id=data["plan"],
            currency=data["currency"],
            status=data["status"],
            balance=int(data["balance"]),
            credit_limit=int(data["credit_limit"]),
            reserved=int(data["reserved"]),
            max_lines=int(data["max_lines"]),
            lines_in_use=int(lines),
            min_balance=int(data.get("min_balance") or 0),
            critical_balance=int(data["critical"]) if data.get("critical") else None,
            committed=int(data.get("committed") or 0),
            lock=data.get("lock", ""),
            member_lines=int(data.get("member_lines") or 0),
            expires_at=int(data.get("expires") or 0),
            expire_days=int(data.get("expire_days") or 0),
        )

    async def account_plan(self, account_id: str) -> str | None:
        """The plan of an account, None for an unknown account."""
        plan = await self._pipe.execute("HGET", keys.account(account_id), "plan")
        return None if plan is None else _text(plan)

    async def authorize(
        self,
        args: AuthorizeArgs,
        *,
        ref_ttl: int,
        grant_expiry: Callable[[int], int | None] | None = None,
        take_id: bool = False,
    ) -> AuthorizeOutcome:
        """Reserve a line and funds; the call reference is written in the same round trip.

        ``args.expires_at`` is the expiry of a call granted all it asked for;
        ``grant_expiry`` turns the funds actually reserved into the expiry of the
        shorter grant they pay for (None: keep ``expires_at``); ``ref_ttl`` is how
        long a granted call's reference lives. An HTTP call (no NAS client) whose id
        another account's HTTP call's reference holds is answered ``IdHeld``, nothing
        reserved, unless ``take_id`` (the caller found that call over); on a cluster also
        ``IdHeld`` with ``granted`` when that reference was written after this call read
        the id free and before its grant wrote its own: the grant is to be given back.
        """
        account_id, call_id = args.account_id, args.call_id
        expires_at, cap_cost = args.expires_at, args.cap_cost
        # The reference lets a stop that names only the call id find the account. On one
        # Redis the script writes it (decision 0044): the record crosses the wire once,
        # and the grant answers after one command. On a cluster it lives in the call
        # id's slot, not the account's, and is written beside the script.
        ref_key = keys.call_ref(call_id)
        pending: list[asyncio.Future[Any]] = []
        if self._pipe.cluster:
            # An HTTP call reads the reference first, in its slot (one more round trip,
            # HTTP calls on a cluster only): another account's live HTTP call under the
            # id refuses it before anything is reserved, as authorize_with_ref.lua does.
            guard = not take_id and not RecordClient.of(args.record).nas
            if guard:
                _, holder = await self._claim_ref(ref_key, args.record, ref_ttl, guard, write=False)
                if holder is not None:
                    return IdHeld(holder)
            reply, pending, holder = await self._authorize_beside_ref(args, ref_key, ref_ttl, guard)
            if holder is not None:
                return IdHeld(holder, granted=True)
        else:
            # Both lists are the call's own: extended in place, not copied.
            script_keys, script_args = args.keys(), args.argv()
            script_keys.append(ref_key)
            script_args += (ref_ttl, REF_WINDOW, 0 if take_id else 1)
            reply = await self._pipe.run_script(
                scripts.AUTHORIZE_WITH_REF, script_keys, script_args
            )
            if len(reply) > 6 and reply[6]:
                # Another client's call holds the id's reference: this call's goes under
                # the id qualified by its client (decision 0052).
                pending.append(self._client_ref(args, ref_ttl))
        status = _text(reply[0])
        if status == "OK":
            reserved = int(reply[1])
            # Funds that cover the whole grant asked for need no second look.
            expiry = None
            if grant_expiry is not None and reserved < cap_cost:
                expiry = grant_expiry(reserved)
            if expiry is not None and expiry < expires_at:
                # Funds cover less than the grant the script was told of: the call
                # expires at what it was granted. XX: a call stopped meanwhile stays gone.
                pending.append(
                    self._pipe.execute(
                        "ZADD",
                        keys.call_expiry(keys.bucket_of(account_id)),
                        "XX",
                        expiry,
                        keys.expiry_member(account_id, call_id),
                    )
                )
            if pending:
                await _all_or_first_error(pending)
            return Reserved(
                reserved, int(reply[2]), int(reply[3]), int(reply[4]), _text_or_none(reply[5])
            )
        if status == "DUP":
            return AlreadyLive(
                parse_live_entry(reply[1]), int(reply[2]), int(reply[3]), _text_or_none(reply[4])
            )
        if status == "DONE":
            return AlreadyStopped()
        if status == "HELD":
            return IdHeld(reply[1])
        if status == "PLAN":
            return PlanMismatch(_text(reply[1]))
        if status == "CNT":
            return CounterChanged(int(reply[1]), _text(reply[2]) or None)
        if status == "OLDPW":
            return OldPasswordForm()
        return Refused(_text(reply[1]), int(reply[2]) if len(reply) > 2 else 0)

    async def _authorize_beside_ref(
        self, args: AuthorizeArgs, ref_key: str, ref_ttl: int, guard: bool
    ) -> tuple[list[Any], list[asyncio.Future[Any]], bytes | None]:
        """authorize.lua's reply, with the call reference SET in the same round trip (a
        cluster's way: the reference is in another slot than the account's keys), the
        commands still to await with the grant's next round trip, and the record of
        another account's HTTP call that took the id's reference first (``guard``: this
        is an HTTP call that may not take it), None if none did.

        Written NX for a granted call's whole life, so it never replaces the reference
        of another live call; a grant, the common case, then answers after this one
        round trip. A refused attempt's is cut to a short window at once, and a grant's
        replaces one it found (a refused attempt's, a stale one's) by claim_call_ref.lua,
        which leaves another client's granted call's and, ``guard``, another account's
        HTTP call's: the same keys as authorize_with_ref.lua leaves. A repeat of a live
        call that has none (its grant's SET failed) writes the live call's, for its life.
        """
        record = args.record
        outcome = self._pipe.run_script(scripts.AUTHORIZE, args.keys(), args.argv())
        ref = self._pipe.execute("SET", ref_key, record, "EX", ref_ttl, "NX")
        # The error is kept and raised after the handler: compiled with mypyc (decision
        # 0038), an await inside an except block and a re-raise after it crashed.
        failed: ResponseError | None = None
        try:
            reply, ref_written = await _all_or_first_error([outcome, ref])
        except ResponseError as error:
            failed = error
        if failed is not None:
            # The script failed (nothing granted) while the SET may have been written:
            # cut the reference to the window, as after a refusal.
            if not ref.cancelled() and ref.exception() is None and ref.result() is not None:
                await self._pipe.execute("EXPIRE", ref_key, REF_WINDOW)
            raise failed
        status = _text(reply[0])
        if status != "OK":
            if ref_written is not None and status == "DUP":
                # The id's call is live and had no reference: its grant's SET failed (the
                # request was not answered, and this is the NAS asking again). Written
                # from the live call's record for the call's life: cut to the window,
                # its Stop after a minute found no call and the janitor closed it.
                live = parse_live_entry(reply[1]).record
                await self._pipe.execute("SET", ref_key, live, "EX", ref_ttl)
            elif ref_written is not None:
                await self._pipe.execute("EXPIRE", ref_key, REF_WINDOW)
            return list(reply), [], None
        if ref_written is not None:
            return list(reply), [], None
        # A reference was there (a refused attempt's, a stale one's, another client's, or
        # another account's HTTP call's granted since this one read none): replaced
        # unless another client's granted call holds it (decision 0052) or, ``guard``,
        # another account's HTTP call does (its addendum). One script in the reference's
        # slot reads and writes it: of two grants that found the id free, the later sees
        # the earlier's reference.
        status, holder = await self._claim_ref(ref_key, record, ref_ttl, guard, write=True)
        if status == "CLIENT":
            return list(reply), [self._client_ref(args, ref_ttl)], None
        return list(reply), [], holder

    async def _claim_ref(
        self, ref_key: str, record: bytes, ref_ttl: int, guard: bool, *, write: bool
    ) -> tuple[str, bytes | None]:
        """Read call reference ``ref_key`` for a call of ``record``, and ``write`` it for
        the call's life where no other call keeps it (claim_call_ref.lua). Its answer:
        ``HELD`` with the record of another account's HTTP call that holds it (only when
        ``guard``), ``CLIENT`` when another NAS client's granted call does (not written),
        ``OK`` otherwise; None beside the last two."""
        reply = await self._pipe.run_script(
            scripts.CLAIM_CALL_REF,
            [ref_key],
            [record, ref_ttl, REF_WINDOW, 1 if guard else 0, 1 if write else 0],
        )
        status = _text(reply[0])
        held: bytes | None = reply[1] if status == "HELD" else None
        return status, held

    def _client_ref(self, args: AuthorizeArgs, ref_ttl: int) -> "asyncio.Future[Any]":
        """Write a granted call's reference under its id qualified by its NAS client."""
        client = RecordClient.of(args.record).nas
        key = keys.client_call_ref(args.call_id, client)
        return self._pipe.execute("SET", key, args.record, "EX", ref_ttl)

    async def call_reference(self, call_id: str) -> bytes | None:
        """The record of the call ``call_id`` names (msgpack), None if none is known."""
        reference: bytes | None = await self._pipe.execute("GET", keys.call_ref(call_id))
        return reference

    async def client_call_reference(self, call_id: str, client: str | None) -> bytes | None:
        """The record of client ``client``'s call ``call_id`` when another client's call
        held the id's reference as it was granted (decision 0052), None if none."""
        key = keys.client_call_ref(call_id, client)
        reference: bytes | None = await self._pipe.execute("GET", key)
        return reference

    async def stop(
        self, args: StopArgs, stamp: bytes | None = None
    ) -> StopResult | CounterShort | Amend | NotLive | None:
        """Charge and close a live call; None if no such call is live.

        ``args.expired_by`` (the janitor's guard): close only if the call's expiry is
        not later than this epoch second; None is returned if it was extended.
        ``CounterShort``: a late stop's price took more counter seconds as free than
        the counter has left; ``Amend``: a late stop's CDR is to carry what it changes
        from the close (``args.amends``, the close's duration); nothing was done in
        either case (stop.lua). ``stamp``: the stamp of a record kept from before
        (``CallRecord.stamp``), which may be an earlier call's of the id: ``NotLive``
        when the live call is another or the id's call was closed already, nothing done
        (stop_live.lua).
        """
        if stamp is None:
            reply = await self._pipe.run_script(scripts.STOP, args.keys(), args.argv())
        else:
            argv = args.argv()
            argv.append(stamp)
            reply = await self._pipe.run_script(scripts.STOP_LIVE, args.keys(), argv)
        status = _text(reply[0])
        if status in ("NOCALL", "LIVE"):
            return None
        if status == "REPRICE":
            return CounterShort(int(reply[1]))
        if status == "AMEND":
            return Amend(int(reply[1]), int(reply[2]) if len(reply) > 2 else 0)
        if status == "CLOSED":
            return NotLive()
        if status == "ENTRY":
            return NotLive(parse_live_entry(reply[1]))
        return _stop_result(reply[1], repeated=status == "DONE")

    async def release_unconfirmed(self, args: ReleaseArgs) -> bool:
        """Give back, free, the line and funds of a grant whose authorization was answered
        with an error (release_unconfirmed.lua); whether it was released. A grant that is
        no longer provisional, or not ``args.stamp``'s, is left as it is."""
        reply = await self._pipe.run_script(scripts.RELEASE_UNCONFIRMED, args.keys(), args.argv())
        return bool(int(reply))

    async def charge(
        self,
        *,
        account_id: str,
        event_id: str,
        rated_cost: int,
        quantity: int,
        cdr: bytes,
        result_ttl: int,
        service: str,
        billed: int,
        currency: str,
        zone: str,
    ) -> UsageResult | str:
        """Debit a usage event once; its result, or the refusal reason. ``service``,
        ``billed``, ``currency`` and ``zone`` are kept in the result for its repeats."""
        args = ChargeArgs(
            account_id,
            event_id,
            rated_cost,
            quantity,
            cdr,
            result_ttl,
            now_ms(),
            service,
            billed,
            currency,
            zone,
        )
        reply = await self._pipe.run_script(scripts.CHARGE, args.keys(), args.argv())
        status = _text(reply[0])
        if status == "REJ":
            return _text(reply[1])
        return _usage_result(reply[1], repeated=status == "DONE")

    async def usage_result(self, account_id: str, event_id: str) -> UsageResult | None:
        """The result of a usage event charged already (as a repeat), None if none is
        kept: a retry refused at rating (its tariff gone since) is still answered with
        the charge it repeats, not with a refusal a client reads as "not charged"."""
        packed = await self._pipe.execute("GET", keys.usage_done(account_id, event_id))
        return None if packed is None else _usage_result(packed, repeated=True)

    async def charge_batch(
        self, bucket: int, import_id: int, events: list[UsageEvent], result_ttl: int
    ) -> list[str]:
        """Debit a bucket's usage events of an import, in order, each once by event id.

        One word an event: "OK" (charged), "DONE" (a repeat: nothing charged),
        ``COUNTER_CHANGED`` (its counter no longer holds the seconds it was priced with:
        nothing charged, price it again) or the refusal reason; an account refused for
        funds has its later events refused too.
        """
        args = ChargeBatchArgs(bucket, import_id, events, result_ttl, now_ms())
        reply = await self._pipe.run_script(scripts.CHARGE_BATCH, args.keys(), args.argv())
        words = [_text(item) if i % 2 == 0 else item for i, item in enumerate(reply)]
        return [
            _text(words[i + 1])
            if words[i] == "REJ"
            else COUNTER_CHANGED
            if words[i] == "CNT"
            else words[i]
            for i in range(0, len(words), 2)
        ]

    async def live_entry(self, account_id: str, call_id: str) -> LiveEntry | None:
        """A live call's entry, None if it is not live."""
        entry = await self._pipe.execute("HGET", keys.live_calls(account_id), call_id)
        return None if entry is None else parse_live_entry(entry)

    async def start(
        self,
        *,
        account_id: str,
        call_id: str,
        started_at: int,
        expires_at: int,
        expected: LiveEntry | None = None,
        stamp: bytes | None = None,
    ) -> int | Literal[False] | LiveEntry | None:
        """Mark a live call started; its start time, None if not live, False if stopped.

        ``expected``: the entry ``expires_at`` was computed from, unread (as its
        authorize wrote it); ``stamp``: the stamp of the record it was computed with
        (``CallRecord.stamp``). When the call's entry is another, or its record not
        that one, nothing changes and the entry is returned, to compute the expiry from.
        """
        fields = None if expected is None else expected.fields()
        args = StartArgs(account_id, call_id, started_at, expires_at, fields, stamp)
        reply = await self._pipe.run_script(scripts.START, args.keys(), args.argv())
        status = _text(reply[0])
        if status == "OK":
            return int(reply[1])
        if status == "ENTRY":
            return parse_live_entry(reply[1])
        return False if status == "DONE" else None

    async def update(
        self,
        *,
        account_id: str,
        call_id: str,
        used: int,
        used_cost: int,
        debit: bool,
        expires_at: int,
        cover_cost: int | None = None,
        keep_expiry: bool = False,
        stamp: bytes | None = None,
    ) -> UpdateResult | LiveEntry | Literal[False] | None:
        """Record progress (and debit it when asked); None if not live, False if stopped.

        ``keep_expiry``: a started call keeps its expiry; ``expires_at`` applies only
        to a call this report shows started. ``stamp``: the stamp of the record the
        report was priced with (``CallRecord.stamp``); when the live call is another
        record's, nothing changes and its entry is returned.
        """
        args = UpdateArgs(
            account_id,
            call_id,
            used,
            used_cost,
            debit,
            now_ms(),
            expires_at,
            cover_cost,
            keep_expiry,
            stamp,
        )
        reply = await self._pipe.run_script(scripts.UPDATE, args.keys(), args.argv())
        status = _text(reply[0])
        if status == "OK":
            return UpdateResult(
                int(reply[1]),
                int(reply[2]),
                int(reply[3]),
                len(reply) > 4 and int(reply[4]) == 1,
                int(reply[5]) if len(reply) > 5 else 0,
            )
        if status == "ENTRY":
            return parse_live_entry(reply[1])
        return False if status == "DONE" else None

    async def set_expiry(self, account_id: str, call_id: str, expires_at: int) -> None:
        """Move a live call's expiry; a call no longer live is left alone (XX)."""
        await self._pipe.execute(
            "ZADD",
            keys.call_expiry(keys.bucket_of(account_id)),
            "XX",
            expires_at,
            keys.expiry_member(account_id, call_id),
        )

    async def expired_calls(self, now: int, per_bucket: int = 100) -> ExpiredCalls:
        """(account, call id) of live calls whose expiry has passed, across all buckets.

        Asked a slice of buckets at a time, each slice in a pipeline of its own (a
        thousand commands made and answered in one go held the serving loop for
        milliseconds each sweep), every slice sent before any answer is awaited: a
        master that does not answer (stalled, its host gone) costs the look one wait
        of the wire's timeout, not one per slice (two slices met it one after the
        other, ten seconds, while the others' expired calls kept their funds and lines).
        A bucket whose master fails (Redis Cluster: down, stalled, failing over) is
        skipped, and the others' calls are returned all the same, with the first
        failure: one master must not keep every other's expired calls held.
        """
        found = ExpiredCalls([])
        slices: list[list[asyncio.Future[Any]]] = []
        for first in range(0, keys.BUCKETS, SWEEP_BUCKETS):
            if slices:
                # The previous slice's commands are flushed as one pipeline at the end
                # of this tick: the next slice goes in the next one.
                await asyncio.sleep(0)
            slices.append(
                [
                    self._pipe.execute(
                        "ZRANGEBYSCORE", keys.call_expiry(bucket), "-inf", now, "LIMIT", 0,
                        per_bucket,
                    )
                    for bucket in range(first, min(first + SWEEP_BUCKETS, keys.BUCKETS))
                ]
            )  # fmt: skip
        for futures in slices:
            answers, error, _ = await _each_or_error(futures)
            found.calls += (
                keys.split_expiry_member(m) for members in answers if members for m in members
            )
            found.error = found.error or error
        return found

    async def all_live_calls(self) -> list[tuple[str, str, LiveEntry]]:
        """(account, call id, entry) of every live call, from the expiry sets of all buckets."""
        answers = await _all_or_first_error(
            [self._pipe.execute("ZRANGE", keys.call_expiry(b), 0, -1) for b in range(keys.BUCKETS)]
        )
        members = [keys.split_expiry_member(m) for found in answers for m in found]
        entries = await _all_or_first_error(
            [self._pipe.execute("HGET", keys.live_calls(a), c) for a, c in members]
        )
        return [
            (account_id, call_id, parse_live_entry(entry))
            for (account_id, call_id), entry in zip(members, entries, strict=True)
            if entry is not None
        ]

    async def last_ledger_ids(self) -> list[tuple[int, int] | None]:
        """Each bucket's last ledger entry now, as (ms, seq) in bucket order; None for a
        stream that holds none. The entry ids come from the clock of whichever node
        appended them, so they are compared only with ids, never with a clock."""
        lasts = await _all_or_first_error(
            [
                self._pipe.execute("XREVRANGE", stream, "+", "-", "COUNT", 1)
                for stream in keys.all_ledgers()
            ]
        )
        return [_entry_id(found[0][0]) if found else None for found in lasts]

    async def ledger_unwritten_through(self, marks: Sequence[tuple[int, int] | None]) -> int:
        """How many buckets' streams still hold an entry at or before their mark (as
        ``last_ledger_ids`` gave them): 0 once the writer has stored every entry those
        streams held then. The writer deletes what it has written, so a stream's first
        entry is its oldest unwritten one."""
        firsts = await _all_or_first_error(
            [
                self._pipe.execute("XRANGE", stream, "-", "+", "COUNT", 1)
                for stream in keys.all_ledgers()
            ]
        )
        behind = 0
        for mark, found in zip(marks, firsts, strict=True):
            if mark is not None and found and _entry_id(found[0][0]) <= mark:
                behind += 1
        return behind

    async def oldest_unwritten_ms(self) -> int | None:
        """When (epoch milliseconds) the oldest ledger entry the writer has not yet moved
        to PostgreSQL was appended; None when every bucket's stream is empty. The writer
        deletes what it has written, so a stream's first entry is its oldest unwritten
        one, read or not."""
        firsts = await _all_or_first_error(
            [
                self._pipe.execute("XRANGE", stream, "-", "+", "COUNT", 1)
                for stream in keys.all_ledgers()
            ]
        )
        times = [int(_text(found[0][0]).partition("-")[0]) for found in firsts if found]
        return min(times) if times else None

    async def live_calls_of(self, account_id: str) -> dict[str, LiveEntry]:
        """Every live call of an account, by call id."""
        raw = await self._pipe.execute("HGETALL", keys.live_calls(account_id))
        return {_text(k): parse_live_entry(v) for k, v in zip(raw[::2], raw[1::2], strict=True)}

    async def caller_account(self, caller: str) -> str | None:
        """The account a caller id identifies (pinless), if any."""
        account = await self._pipe.execute("GET", keys.caller_ref(caller))
        return None if account is None else _text(account)

    async def set_caller(self, caller: str, account_id: str | None) -> None:
        """Let a caller id identify ``account_id`` (None: identify none)."""
        if account_id is None:
            await self._pipe.execute("DEL", keys.caller_ref(caller))
        else:
            await self._pipe.execute("SET", keys.caller_ref(caller), account_id)

    async def did_account(self, number: str) -> str | None:
        """The account an assigned number (DID) identifies, if any."""
        account = await self._pipe.execute("GET", keys.did_ref(number))
        return None if account is None else _text(account)

    async def set_did(self, number: str, account_id: str | None) -> None:
        """Let an assigned number identify ``account_id`` (None: identify none)."""
        if account_id is None:
            await self._pipe.execute("DEL", keys.did_ref(number))
        else:
            await self._pipe.execute("SET", keys.did_ref(number), account_id)

    async def drop_did(self, number: str, account_id: str) -> bool:
        """Stop an assigned number identifying ``account_id``, and only that account (a
        take that did not commit; another's committed since keeps the number); whether
        it identified that account."""
        reply = await self._pipe.run_script(scripts.DROP_DID, [keys.did_ref(number)], [account_id])
        return int(reply) == 1

    async def restore_did(self, number: str, account_id: str) -> bool:
        """Let a number identify ``account_id`` again unless it identifies an account now
        (a release that did not commit); whether it was set."""
        reply = await self._pipe.execute("SET", keys.did_ref(number), account_id, "NX")
        return reply is not None

    async def account_ivr(self, account_id: str) -> str | None:
        """The account's packed IVR override (``AccountIvr.pack``), None when it has none."""
        return _text_or_none(await self._pipe.execute("GET", keys.account_ivr(account_id)))

    async def set_account_ivr(self, account_id: str, packed: str | None) -> None:
        """Store an account's packed IVR override (None: none)."""
        key = keys.account_ivr(account_id)
        if packed is None:
            await self._pipe.execute("DEL", key)
        else:
            await self._pipe.execute("SET", key, packed)

    async def member_account(self, member: str) -> str | None:
        """The account ``member`` belongs to, if any."""
        account = await self._pipe.execute("GET", keys.member_ref(member))
        return None if account is None else _text(account)

    async def set_member(self, member: str, account_id: str, max_lines: int | None) -> None:
        """Let ``member`` identify the account, with its own line limit (None: the account's)."""
        await self._pipe.execute("SET", keys.member_ref(member), account_id)
        field = f"ml:{member}"
        if max_lines is None:
            await self._pipe.execute("HDEL", keys.account(account_id), field)
        else:
            await self._pipe.execute("HSET", keys.account(account_id), field, max_lines)

    async def remove_member(self, member: str, account_id: str) -> None:
        """Stop ``member`` identifying the account, and drop its line limit."""
        await self._pipe.execute("DEL", keys.member_ref(member))
        await self._pipe.execute("HDEL", keys.account(account_id), f"ml:{member}")

    async def set_policy(self, account_id: str, fields: dict[str, str | int]) -> bool:
        """Change policy fields of an account's real-time state; False for an unknown one."""
        if not fields:
            return bool(await self._pipe.execute("EXISTS", keys.account(account_id)))
        args = SetPolicyArgs(account_id, fields)
        return bool(await self._pipe.run_script(scripts.SET_POLICY, args.keys(), args.argv()))

    async def identities(
        self, name: str, pin_digest: str | None
    ) -> tuple[str | None, str | None, str | None]:
        """(plan of account ``name``, account of member ``name``, account of the PIN
        digest), in one round trip."""
        plan = self._pipe.execute("HGET", keys.account(name), "plan")
        member = self._pipe.execute("GET", keys.member_ref(name))
        pin = None if pin_digest is None else self._pipe.execute("GET", keys.pin_ref(pin_digest))
        found = [await plan, await member, None if pin is None else await pin]
        plan_id, member_account, pin_account = (None if f is None else _text(f) for f in found)
        return plan_id, member_account, pin_account

    async def pin_account(self, pin_digest: str) -> str | None:
        """The account (card) a PIN digest opens, if any."""
        account = await self._pipe.execute("GET", keys.pin_ref(pin_digest))
        return None if account is None else _text(account)

    async def set_pin(self, pin_digest: str, account_id: str) -> None:
        """Let a PIN digest open the card ``account_id``."""
        await self._pipe.execute("SET", keys.pin_ref(pin_digest), account_id)

    async def claim_batch(self, batch_id: str, token: str) -> bool:
        """Mark a PIN batch as begun by the request of ``token``; False when a request
        with another token began it (and never finished: PostgreSQL has no such batch)."""
        key = keys.card_batch(batch_id)
        if await self._pipe.execute("SET", key, token, "NX") is not None:
            return True
        began = await self._pipe.execute("GET", key)
        return began is None or _text(began) == token

    async def drop_batch_claim(self, batch_id: str) -> None:
        """Forget which request began a PIN batch (its unfinished cards discarded)."""
        await self._pipe.execute("DEL", keys.card_batch(batch_id))

    async def discard_card(
        self, account_id: str, created: str, reference: str
    ) -> tuple[Literal["OK", "GONE", "CHANGED", "BUSY"], int]:
        """Remove a card PostgreSQL never recorded, its balance written off in the ledger
        under ``reference`` (discard_card.lua): ("OK", the amount written off); "GONE"
        or "CHANGED" (made anew since ``created`` was read) left as they are; "BUSY"
        while it holds a call or reserved funds."""
        names = [
            keys.account(account_id),
            keys.live_calls(account_id),
            keys.counters(account_id),
            keys.ledger(keys.bucket_of(account_id)),
        ]
        reply = await self._pipe.run_script(
            scripts.DISCARD_CARD, names, [account_id, created, now_ms(), reference]
        )
        outcome = _text(reply[0])
        if outcome == "OK":
            return "OK", int(reply[1])
        if outcome == "GONE":
            return "GONE", 0
        if outcome == "CHANGED":
            return "CHANGED", 0
        if outcome == "BUSY":
            return "BUSY", 0
        raise ValueError(f"discard_card answered {outcome!r}")

    async def release_pin(self, pin_digest: str, account_id: str) -> bool:
        """Stop a PIN digest opening the card ``account_id`` (not another card it may open
        now); whether it opened that card."""
        reply = await self._pipe.run_script(
            scripts.RELEASE_PIN, [keys.pin_ref(pin_digest)], [account_id]
        )
        return int(reply) == 1

    async def counter_state(self, account_id: str) -> dict[str, dict[str, int]]:
        """counter id -> {limit, used, held} seconds of the current cycle."""
        raw = await self._pipe.execute("HGETALL", keys.counters(account_id))
        state: dict[str, dict[str, int]] = {}
        gone: set[str] = set()
        for field, value in zip(raw[::2], raw[1::2], strict=True):
            counter_id, _, part = _text(field).rpartition(":")
            if part == "gone":
                gone.add(counter_id)
                continue
            if part in _NOT_SECONDS:
                continue
            state.setdefault(counter_id, {"used": 0, "held": 0})[part] = int(value)
        return {k: v for k, v in state.items() if "limit" in v and k not in gone}

    async def counter_cycles(self, account_ids: Iterable[str]) -> dict[str, AccountCycle]:
        """Each account's counter cycle as its counters hash holds it: when it began (and
        when the closed one did), and each counter, cancelled ones too."""
        ids = list(account_ids)
        replies = await asyncio.gather(
            *(self._pipe.execute("HGETALL", keys.counters(a)) for a in ids)
        )
        out: dict[str, AccountCycle] = {}
        for account_id, raw in zip(ids, replies, strict=True):
            fields: dict[str, dict[str, int]] = {}
            began: int | None = None
            closed_from: int | None = None
            for field, value in zip(raw[::2], raw[1::2], strict=True):
                counter_id, _, part = _text(field).rpartition(":")
                if part == "cycle_from":
                    began = int(value)
                elif part == "closed_from":
                    closed_from = int(value)
                elif part in _CLOSED_CYCLE or part not in _NOT_SECONDS:
                    fields.setdefault(counter_id, {})[part] = int(value)
            out[account_id] = AccountCycle(
                began,
                {
                    c: CounterCycle(
                        f.get("limit", 0),
                        f.get("used", 0),
                        f.get("held", 0),
                        "gone" in f,
                        f.get("carried"),
                        f.get("closed", 0),
                        "limit" in f or "gone" in f,
                    )
                    for c, f in fields.items()
                    if "limit" in f or "gone" in f or "closed" in f
                },
                closed_from,
            )
        return out

    async def counters_bought_at(
        self, account_ids: Iterable[str]
    ) -> dict[str, dict[str, int | None]]:
        """The counters each account holds (started, not cancelled), each with when it was
        bought or first used (epoch microseconds; None: started by a reset only)."""
        ids = list(account_ids)
        replies = await asyncio.gather(
            *(self._pipe.execute("HGETALL", keys.counters(a)) for a in ids)
        )
        out: dict[str, dict[str, int | None]] = {}
        for account_id, raw in zip(ids, replies, strict=True):
            parts: dict[str, dict[str, str]] = {}
            for field, value in zip(raw[::2], raw[1::2], strict=True):
                counter_id, _, part = _text(field).rpartition(":")
                parts.setdefault(counter_id, {})[part] = _text(value)
            out[account_id] = {
                c: (int(f["bought_at"]) if "bought_at" in f else None)
                for c, f in parts.items()
                if "limit" in f and "gone" not in f
            }
        return out

    async def counter_cycle_labels(self, account_ids: Iterable[str]) -> list[str | None]:
        """The label of each account's current counter cycle (its counters hash's
        ``cycle``: the last reset that reached it; None: none did)."""
        replies = await asyncio.gather(
            *(self._pipe.execute("HGET", keys.counters(a), "cycle") for a in account_ids)
        )
        return [_text_or_none(r) for r in replies]

    async def start_counter(self, account_id: str, counter_id: str, seconds: int) -> bool:
        """Give the account a counter's first cycle; False if it has the counter already.

        A counter cancelled while calls still hold some of it starts a fresh cycle.
        """
        started = await self._pipe.run_script(
            scripts.START_COUNTER, [keys.counters(account_id)], [counter_id, seconds]
        )
        return bool(int(started))

    async def fee(
        self,
        account_id: str,
        amount: int,
        reference: str,
        *,
        require_funds: bool,
        own_funds: bool = False,
    ) -> TopupResult | str | None:
        """Debit a fee once per reference: its result, a refusal reason, None if no account.

        ``own_funds``: a refund by hand, debited only if the balance less what live calls
        hold and what is committed covers it (checked with the debit, in Redis); once
        refused, that reference is refused for good."""
        args = FeeArgs(
            account_id, amount, reference, FEE_DEDUPE_TTL, now_ms(), require_funds, own_funds
        )
        reply = await self._pipe.run_script(scripts.FEE, args.keys(), args.argv())
        status = _text(reply[0])
        if status == "NOACCT":
            return None
        if status == "REJ":
            return _text(reply[1])
        result = msgpack.unpackb(reply[1])
        return TopupResult(
            amount=-int(result["amount"]),
            balance=int(result["balance"]),
            ledger_entry=_text(result["entry"]),
            repeated=status == "DONE",
        )

    async def cancel_counter(self, account_id: str, counter_id: str) -> None:
        """Stop a counter applying; calls holding some of it finish with it."""
        args = CounterResetArgs(account_id, cancel=counter_id)
        await self._pipe.run_script(scripts.COUNTER_RESET, args.keys(), args.argv())

    async def counter_cycle_began(
        self, label: str, plan_id: str | None, account_id: str | None
    ) -> int:
        """When the first counter reset of cycle ``label`` over this scope began (epoch
        microseconds, Redis's clock): now, for a first run."""
        seconds, micros = await self._pipe.execute("TIME")
        now = int(seconds) * 1_000_000 + int(micros)
        key = keys.counter_cycle_run(label, plan_id, account_id)
        await self._pipe.execute("SET", key, now, "NX", "EX", _CYCLE_RUN_TTL)
        return int(await self._pipe.execute("GET", key))

    async def counter_cycle_opened(self, plan_id: str) -> str | None:
        """The label of the latest counter cycle the billing worker opened for the plan
        (None: it has opened none, nor seen the plan)."""
        return _text_or_none(await self._pipe.execute("GET", keys.counter_cycle_opened(plan_id)))

    async def set_counter_cycle_opened(self, plan_id: str, label: str) -> None:
        """Keep ``label`` as the latest counter cycle the billing worker opened for the plan."""
        await self._pipe.execute("SET", keys.counter_cycle_opened(plan_id), label)

    async def nas_restart_cutoff(
        self, client: str, node: str, kind: str, stamp: int, cutoff_ms: int
    ) -> int:
        """The cut-off (epoch ms) the first copy of a NAS's Accounting-On/Off stamped
        ``stamp`` closed calls by: ``cutoff_ms`` when this is the first, kept a day for
        the copies the NAS retransmits."""
        key = keys.nas_restart(client, node, kind, stamp)
        kept = await self._pipe.execute("SET", key, cutoff_ms, "NX", "EX", _NAS_RESTART_TTL)
        if kept is not None:
            return cutoff_ms
        first = await self._pipe.execute("GET", key)
        return cutoff_ms if first is None else int(first)

    async def nas_generations(self, client: str, node: str) -> tuple[int, ...]:
        """The cut-offs (epoch ms) of the kept restarts of NAS ``node`` of client
        ``client`` (at most ``_NAS_GENERATIONS_KEPT``), latest first; () for none
        (decision 0059)."""
        key = keys.nas_generations(client, node)
        found = await self._pipe.execute("ZREVRANGE", key, 0, _NAS_GENERATIONS_KEPT - 1)
        return tuple(int(member) for member in found or ())

    async def add_nas_generation(
        self, client: str, node: str, cutoff: int, near_is_same: bool = True
    ) -> tuple[int, tuple[int, ...]]:
        """Keep a restart of NAS ``node`` of client ``client`` at ``cutoff`` (epoch ms);
        the cut-off it is kept by and ``nas_generations`` after it. With ``near_is_same``
        (no Event-Timestamp told the request's copies apart), a cut-off within
        ``_SAME_RESTART_MS`` of a kept one is that restart again (a retransmission): kept
        by the first, nothing added; a kept one is added once."""
        known = await self.nas_generations(client, node)
        for kept in known:
            if kept == cutoff or (near_is_same and abs(kept - cutoff) <= _SAME_RESTART_MS):
                return kept, known
        key = keys.nas_generations(client, node)
        await self._pipe.execute("ZADD", key, cutoff, cutoff)
        await self._pipe.execute("ZREMRANGEBYRANK", key, 0, -_NAS_GENERATIONS_KEPT - 1)
        return cutoff, await self.nas_generations(client, node)

    async def reset_counters(
        self, account_id: str, cycle: list[tuple[str, int, bool, bool]], label: str, since: int
    ) -> tuple[int, list[str]]:
        """Start the cycle ``label``, whose first run began at ``since`` (epoch us, Redis's
        clock): (counter id, seconds, carryover, mandatory) of each counter that goes on. A counter
        that has started that cycle already is left as it is, and so is one bought since
        (named or not); one cancelled since is not started again. The number of counters
        set, and those whose fee for the cycle is owed: not one bought in the cycle (its
        purchase paid it)."""
        args = CounterResetArgs(account_id, cycle, label=label, since=since)
        reply = await self._pipe.run_script(scripts.COUNTER_RESET, args.keys(), args.argv())
        return int(reply[0]), [_text(counter_id) for counter_id in reply[1]]

    async def lift_password_block(self, account_id: str, now: int) -> int | None:
        """Clear the account's count of wrong passwords (decision 0045): the wrong
        passwords its window still counted (0: none), or None for an unknown account."""
        args = LiftPasswordBlockArgs(account_id, now)
        reply = await self._pipe.run_script(scripts.LIFT_PASSWORD_BLOCK, args.keys(), args.argv())
        if _text(reply[0]) == "NOACCT":
            return None
        return int(reply[1])

    async def check_password(self, args: CheckPasswordArgs) -> Refused | OldPasswordForm | None:
        """Judge a password by the rule the authorize script applies (decision 0045):
        None when it is right or the account has none, else the refusal; for an account
        whose digest is in the old form, ``OldPasswordForm`` unless ``args`` carries the
        old-form digest too, which is then judged (and re-keys it when right)."""
        reply = await self._pipe.run_script(scripts.CHECK_PASSWORD, args.keys(), args.argv())
        status = _text(reply[0])
        if status == "NOACCT":
            return Refused("account_not_found")
        if status == "REJ":
            return Refused(_text(reply[1]), int(reply[2]))
        if status == "OLDPW":
            return OldPasswordForm()
        return None

    async def rekey_field(self, account_id: str, field: str, old: str, new: str) -> bool:
        """Replace the old-form digest ``old`` an account keeps in ``field`` (``pw`` or
        ``pin``) by its new form (decision 0054); False when the field held anything else."""
        reply = await self._pipe.run_script(
            scripts.REKEY_FIELD, [keys.account(account_id)], [field, old, new]
        )
        return int(reply) == 1

    async def rekey_pin(self, old: str, new: str, account_id: str) -> bool:
        """Let the new-form PIN digest ``new`` open the card the old-form ``old`` opens, then
        withdraw ``old`` (decision 0054); False, with nothing changed, when ``new`` opens
        another card. The two references live in different slots: the new one is written
        before the old one goes, so the card opens by one or both at every moment."""
        if await self._pipe.execute("SET", keys.pin_ref(new), account_id, "NX") is None:
            holder = await self._pipe.execute("GET", keys.pin_ref(new))
            if holder is None or _text(holder) != account_id:
                return False
        await _all_or_first_error(
            [
                self._pipe.run_script(
                    scripts.REKEY_FIELD, [keys.account(account_id)], ["pin", old, new]
                ),
                self._pipe.run_script(scripts.RELEASE_PIN, [keys.pin_ref(old)], [account_id]),
            ]
        )
        return True

    async def topup(
        self,
        account_id: str,
        amount: int,
        topup_id: str,
        result_ttl: int,
        kind: str = "topup",
        *,
        refuse_expired: bool = False,
    ) -> TopupResult | None:
        """Credit the account once per ``topup_id``; None for an unknown account.

        ``refuse_expired``: an account past its expiry is refused (403
        ``account_expired``, nothing credited), as an operator's top-up is: it could
        spend none of it. A payment's or invoice's credit leaves it False."""
        args = TopupArgs(account_id, amount, topup_id, result_ttl, now_ms(), kind, refuse_expired)
        reply = await self._pipe.run_script(scripts.TOPUP, args.keys(), args.argv())
        status = _text(reply[0])
        if status == "NOACCT":
            return None
        if status == "LIMIT":
            raise invalid("amount", "the balance would exceed 1000000000.000000")
        if status == "EXPIRED":
            raise OcsError(
                Reason.ACCOUNT_EXPIRED,
                f"account {account_id!r} has expired: it could spend no top-up"
                " (PATCH its expires_at to revive it)",
            )
        result = msgpack.unpackb(reply[1])
        return TopupResult(
            amount=int(result["amount"]),
            balance=int(result["balance"]),
            ledger_entry=_text(result["entry"]),
            repeated=status == "DONE",
        )
