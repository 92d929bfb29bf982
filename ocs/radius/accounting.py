"""Accounting-Request -> start, update, stop; Accounting-On/Off -> close the NAS's calls.

The Accounting-Response is sent only after the change is committed in Redis.
A request for a call ocs does not know (a call authorized elsewhere, by
another NAS client, or already closed by the janitor) is acknowledged and
counted, so the NAS stops retransmitting it; a backend failure sends no
response, so the NAS retries. A call belongs to the NAS client that authorized
it, and an Accounting-On/Off closes the calls of the one NAS that sent it
(decision 0048).
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import NamedTuple

from pyrad.packet import AcctPacket

from ocs import metrics
from ocs.charging.lifecycle import CallService
from ocs.config import Settings
from ocs.errors import OcsError, Reason
from ocs.limits import MAX_CALL_DURATION
from ocs.radius.attributes import first
from ocs.radius.call_identity import (
    GLOBAL_SOURCES,
    id_and_source,
    legacy_call_id,
    nas_names,
    nas_node,
    other_call_ids,
    radius_call_id,
)
from ocs.radius.clients import NasClient
from ocs.radius.disconnect import send_disconnect

log = logging.getLogger("ocs.radius")

# Disconnect-Requests waiting for a sliced call's funds to run out, by client and call id: one
# per call, however many interims report it exhausted. Kept so they are not collected.
_CUTS: dict[tuple[str, str], asyncio.Task[None]] = {}

STATUS_TYPES = {
    1: "start",
    2: "stop",
    3: "interim",
    7: "accounting-on",
    8: "accounting-off",
}


@dataclass(frozen=True, slots=True)
class AccountingOutcome:
    """What an Accounting-Request was: its kind and the result, for metrics and logs."""

    kind: str  # start, stop, interim, accounting-on, accounting-off, other
    result: str  # ok, repeated, unknown_call, already_stopped, no_call_id, ...


class _Accounting(NamedTuple):
    """One accounting request as its steps pass it on: its kind, the packet, the NAS
    client it came from, and the services that apply it. A named tuple: this module may
    be compiled with mypyc (decision 0038)."""

    kind: str
    packet: AcctPacket
    client: NasClient
    calls: CallService
    settings: Settings


def _status_type(packet: AcctPacket) -> int | None:
    try:
        values = packet.get(40)  # Acct-Status-Type, by number: immune to VALUE names
    except (KeyError, ValueError):
        return None
    if not values:
        return None
    value = values[0]
    if isinstance(value, bytes):
        return int.from_bytes(value, "big") if len(value) == 4 else None
    return int(value) if isinstance(value, int) else None


# 2000-01-01 UTC: an earlier Event-Timestamp comes from a NAS whose clock is not set.
_CLOCK_SET = 946_684_800
# An Event-Timestamp further than this (seconds) from when the request says it was sent, by
# ocs's clock, is not the time of day: a NAS without a real-time clock counts from a fixed
# date at each boot, and stamps the Accounting-On of each boot alike. Such a stamp does not
# tell a retransmission from the next boot's, so it is not used to (decision 0059). As long
# as a stamp is kept for the copies of one Accounting-On (a day).
_STAMP_TRUSTED_S = 86_400


def _event_stamp(packet: AcctPacket) -> int | None:
    """Event-Timestamp (epoch seconds) when it is usable: None when absent, not four
    octets, or before 2000 (a NAS without a clock counts from 1970 at boot)."""
    try:
        stamp = packet.get(55)  # Event-Timestamp
        if stamp:
            value = stamp[0]
            if isinstance(value, bytes):
                if len(value) != 4:
                    raise ValueError("an Event-Timestamp is four octets")
                seconds = int.from_bytes(value, "big")
            else:
                seconds = int(value.timestamp() if hasattr(value, "timestamp") else value)
            if seconds >= _CLOCK_SET:
                return seconds
    except (KeyError, ValueError, TypeError, OverflowError):
        pass
    return None


async def _restart_time_ms(request: _Accounting) -> tuple[int, bool]:
    """When the NAS restarted, by ocs's clock: the first copy's receipt less its
    Acct-Delay-Time (decision 0005's addendum); and whether its stamp told which copy it
    is (else a cut-off close to a kept restart's is taken for that restart).

    The calls it closes were authorized by ocs's clock, so the cut-off is taken from it:
    Event-Timestamp is the NAS's clock, and one running 10 minutes slow left every call
    of the 10 minutes before the restart live, its funds and line held. The stamp only
    tells the copies of one Accounting-On apart: a retransmission carries the same stamp
    and closes by the first copy's cut-off, remembered by it, so never the calls the NAS
    authorized since it came back. Without a usable stamp a retransmission updates
    Acct-Delay-Time (RFC 2866 section 5.2), which keeps the time to the second; an
    identical copy is answered from the reply cache. A stamp a day or more away from the
    time is no clock's (a NAS without one repeats it at every boot): not used.
    """
    packet = request.packet
    cutoff_ms = int(time.time() * 1000) - _delay(packet) * 1000
    seconds = _event_stamp(packet)
    if seconds is None or abs(cutoff_ms // 1000 - seconds) > _STAMP_TRUSTED_S:
        # Dated by its own receipt: a retransmission's cut-off, within a second of the
        # first copy's, is taken for that restart (``CallService.nas_restarted``).
        return cutoff_ms, False
    names = nas_names(packet)
    first_ms = await request.calls.nas_restart_cutoff(
        request.client.name, names[0] if names else "", request.kind, seconds, cutoff_ms
    )
    return first_ms, True


def _delay(packet: AcctPacket) -> int:
    """Acct-Delay-Time: how many seconds the NAS has been trying to send this request
    (RFC 2866 section 5.2), 0 when absent or unusable; at most ``MAX_CALL_DURATION``."""
    value = first(packet, "Acct-Delay-Time")
    try:
        seconds = int(value) if value is not None else 0
    except ValueError:
        return 0
    return min(max(seconds, 0), MAX_CALL_DURATION)


def _session_time(packet: AcctPacket) -> int | None:
    """Acct-Session-Time, or None when the NAS did not send a usable one.

    More than ocs grants any call (``MAX_CALL_DURATION``) is no call's length but a NAS's
    -1 (4294967295) or a wrapped counter: unusable, so a Stop is charged the time since
    its Start, as when the NAS sends none, rather than a week."""
    value = first(packet, "Acct-Session-Time")
    try:
        seconds = int(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not 0 <= seconds <= MAX_CALL_DURATION:
        return None
    return seconds


async def handle_accounting(
    packet: AcctPacket, client: NasClient, calls: CallService, settings: Settings
) -> AccountingOutcome:
    """Apply one accounting request; raises only when a backend is unavailable."""
    status = _status_type(packet)
    kind = STATUS_TYPES.get(status or 0, "other")
    if kind in ("accounting-on", "accounting-off"):
        request = _Accounting(kind, packet, client, calls, settings)
        cutoff_ms, stamped = await _restart_time_ms(request)
        # Kept before its calls are closed: the session ids the NAS numbers afresh from
        # now name new calls (decision 0059). A retransmission closes by its first copy's.
        before_ms = await calls.nas_restarted(
            client.name, nas_names(packet), cutoff_ms, near_is_same=not stamped
        )
        await calls.close_calls_of_nas(
            client.name, cause="nas-reboot", before_ms=before_ms, nodes=frozenset(nas_names(packet))
        )
        return AccountingOutcome(kind, "ok")
    if kind == "other":
        return AccountingOutcome(kind, "ignored")
    order = settings.radius_call_id_order
    found = id_and_source(packet, order)
    if found is None or not found[0]:
        return AccountingOutcome(kind, "no_call_id")
    request = _Accounting(kind, packet, client, calls, settings)
    if found[1] in GLOBAL_SOURCES:
        result = await _attempt(request, found[0], _ANY_LIFE)
    else:
        # A NAS's own id: qualified by its client, its NAS and the NAS's life.
        result = await _in_nas_life(request)
    if _not_found(result):
        result = await _attempt_elsewhere(request, result)
    if not isinstance(result, OcsError):
        return result
    if result.reason is Reason.UNAVAILABLE:
        raise result
    if result.reason is Reason.CALL_ALREADY_STOPPED:
        return AccountingOutcome(kind, "already_stopped")
    if result.reason is Reason.CALL_NOT_FOUND:
        return AccountingOutcome(kind, "unknown_call")
    return AccountingOutcome(kind, result.reason.value)


class _Life(NamedTuple):
    """Which life of its NAS (the time between two restarts) a request's call is of: the
    restart that began it (its cut-off, epoch ms; 0: none known, or one from before those
    known), the window its call was authorized in (epoch ms, from and before; None:
    any), whether a call found closed may be settled (a repeat, a late stop): only
    once the NAS's restarts were read from Redis, as another process may have taken the
    latest; and the NAS's restarts known (latest first), whose ids the call may have
    been authorized under too."""

    generation: int
    window: tuple[int, int] | None
    settle: bool
    restarts: tuple[int, ...]


# A global id's call, or one of a NAS not known to have restarted: any, settled as found.
_ANY_LIFE = _Life(0, None, True, ())
_FOREVER_MS = 1 << 62
# The times a request gives are whole seconds, and a NAS may round its session time up:
# a call answered up to this long before a restart's cut-off (ms) is still taken as one
# of the new life. A call of the old life that ended by the restart was answered its
# Acct-Session-Time before: earlier, for any call of more than a second or two.
_SLACK_MS = 2_000


def _life_of(restarts: tuple[int, ...], answered: int, settle: bool) -> _Life:
    """The life a call answered at ``answered`` (epoch s, ocs's clock) is of, given its
    NAS's kept restarts (cut-offs, epoch ms, latest first): every one of them, as a
    graceful reboot (Accounting-Off, then -On) takes two."""
    if not restarts:
        return _Life(0, None, settle, ())
    answered_ms = answered * 1000 + _SLACK_MS
    ends = _FOREVER_MS
    for cutoff in restarts:
        if answered_ms >= cutoff:
            return _Life(cutoff, (cutoff, ends), settle, restarts)
        ends = cutoff
    return _Life(0, (0, ends), settle, restarts)


def _answered_at(request: _Accounting) -> int:
    """When the request's call was answered, as far as the request tells (epoch s, ocs's
    clock): its receipt less Acct-Delay-Time, less Acct-Session-Time but for a Start."""
    packet = request.packet
    used = None if request.kind == "start" else _session_time(packet)
    return int(time.time()) - _delay(packet) - (used or 0)


async def _in_nas_life(request: _Accounting) -> "AccountingOutcome | OcsError":
    """Apply a request whose call id is its NAS's own (an Acct-Session-Id) to the call of
    the NAS's life it is of (decision 0059): a NAS that numbers its sessions afresh
    after a restart names a new call by an old call's session id.

    The life comes from the restarts this process knows of. When the call is not found,
    or found closed, the restarts are read again, once: another process (or this one
    before it restarted) may have taken the NAS's latest Accounting-On and authorized
    the call under its id; and a closed call is taken as a repeat or a late stop only
    once they were read. So only a request that meets no call, or a closed one, reads
    them."""
    packet, client, calls = request.packet, request.client, request.calls
    node = nas_node(packet) or ""
    answered = _answered_at(request)
    known = calls.nas_generation(client.name, node)
    result = await _attempt_life(request, node, _life_of(known, answered, settle=False))
    stopped = isinstance(result, OcsError) and result.reason is Reason.CALL_ALREADY_STOPPED
    if not (stopped or _not_found(result)):
        return result
    latest = await calls.read_nas_generation(client.name, node)
    if not stopped and latest == known:
        return result  # looked under every id those restarts give already
    return await _attempt_life(request, node, _life_of(latest, answered, settle=True))


async def _attempt_life(
    request: _Accounting, node: str, life: _Life
) -> "AccountingOutcome | OcsError":
    """Apply the request under its id in ``life``; when no such call, bare (a call of
    that life authorized by a process that knew of no restart), then under the id of
    each other restart known, latest first (one authorized by a process that knew of
    another: a restart taken twice, by two processes at once or before decision 0059's
    amendment). A stop charges only a call authorized within ``life``'s window."""
    packet, client = request.packet, request.client
    order = request.settings.radius_call_id_order
    call_id = radius_call_id(packet, order, client, node, life.generation) or ""
    result = await _attempt(request, call_id, life)
    if life.generation and _not_found(result):
        result = await _attempt(request, radius_call_id(packet, order, client, node) or "", life)
    for other in life.restarts:
        if not _not_found(result):
            break
        if other != life.generation:
            other_id = radius_call_id(packet, order, client, node, other) or ""
            result = await _attempt(request, other_id, life)
    return result


def _not_found(result: "AccountingOutcome | OcsError") -> bool:
    """Whether an attempt found no such call (to look under the call's other ids)."""
    return isinstance(result, OcsError) and result.reason is Reason.CALL_NOT_FOUND


async def _attempt(
    request: _Accounting, call_id: str, life: _Life = _ANY_LIFE
) -> "AccountingOutcome | OcsError":
    """``_apply``, its refusal returned rather than raised.

    Returned, so that no caller awaits inside an ``except`` block or raises again after
    an await there: code compiled with mypyc (decision 0038) lost such exceptions, or
    crashed re-raising one."""
    try:
        return await _apply(request, call_id, life)
    except OcsError as error:
        return error


async def _attempt_elsewhere(
    request: _Accounting, not_found: "AccountingOutcome | OcsError"
) -> "AccountingOutcome | OcsError":
    """Apply the request to its call under another id it may have been authorized under
    (decision 0048): qualified by another name of its NAS, or its bare session id from
    before ids were qualified; ``not_found`` when under none."""
    packet, client = request.packet, request.client
    order = request.settings.radius_call_id_order
    for other in other_call_ids(packet, order, client):
        result = await _attempt(request, other)
        if not _not_found(result):
            return result
    legacy = legacy_call_id(packet, order)
    if legacy is not None and await _authorized_before_qualified_ids(request.calls, legacy, client):
        return await _attempt(request, legacy)
    return not_found


async def _authorized_before_qualified_ids(
    calls: CallService, call_id: str, client: NasClient
) -> bool:
    """Whether ``call_id`` is a live call this client authorized under its bare session id,
    before decision 0048 (its record names no NAS within the client)."""
    record = await calls.record_of(call_id)
    return record is not None and record.nas == client.name and record.nas_node is None


async def _apply(request: _Accounting, call_id: str, life: _Life) -> AccountingOutcome:
    """Start, report or stop the call; ``OcsError`` when it is not this client's to account.
    A stop charges only a call of ``life``, and a closed one only when ``life`` says."""
    kind, packet, client, calls, settings = request
    if kind == "start":
        await calls.start(call_id, nas=client.name, delay=_delay(packet))
    elif kind == "interim":
        used = _session_time(packet)
        if used is not None:
            progress = await calls.update(call_id, used, nas=client.name)
            cutting = (client.name, call_id) in _CUTS
            if progress.exhausted and client.coa_port is not None and not cutting:
                record = await calls.record_of(call_id, nas=client.name)
                if record is not None and record.nas_address is not None:
                    schedule_cut(
                        record.nas_address,
                        record.nas_session or call_id,
                        client,
                        settings,
                        call_id,
                        progress.granted - used,
                    )
    else:
        charge = await calls.stop(
            call_id,
            _session_time(packet),
            nas=client.name,
            delay=_delay(packet),
            settle_closed=life.settle,
            window=life.window,
        )
        return AccountingOutcome(kind, "repeated" if charge.repeated else "ok")
    return AccountingOutcome(kind, "ok")


def schedule_cut(
    address: str,
    session_id: str,
    client: NasClient,
    settings: Settings,
    call_id: str,
    delay: int,
) -> None:
    """Cut a sliced call when its last slice runs out: a Disconnect-Request to the NAS
    at ``address`` naming the session it knows, in ``delay`` seconds (now when nothing
    is left).

    The funds could not extend the call's hold; the NAS was told the longest the
    funds could pay for at authorize, which concurrent calls have since used. Its
    Stop then charges the call. A NAS without a Disconnect port got no slices.
    """
    coa_port = client.coa_port
    # Per client: two clients' calls may share a global id (decision 0052).
    key = (client.name, call_id)
    if coa_port is None or key in _CUTS:
        return

    async def cut() -> None:
        """Wait ``delay`` seconds, then send the NAS a Disconnect-Request for the call."""
        try:
            await asyncio.sleep(max(delay, 0))
            outcome = await send_disconnect(
                address,
                coa_port,
                client.secret,
                user_name=None,  # for a card it would be the PIN: never sent back out
                session_id=session_id,
                timeout=settings.disconnect_timeout,
            )
            metrics.DISCONNECTS.labels(outcome.reason.partition(":")[0]).inc()
            log.info(
                "cut a call whose funds ran out",
                extra={"call_id": call_id, "nas": client.name, "outcome": outcome.reason},
            )
        except Exception:
            log.exception("could not cut a call whose funds ran out", extra={"call_id": call_id})
        finally:
            _CUTS.pop(key, None)

    _CUTS[key] = asyncio.get_running_loop().create_task(cut())
