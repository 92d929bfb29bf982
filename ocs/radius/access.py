"""Access-Request -> authorize: who is calling, where to, for how long.

Identity: User-Name is the account, a member of it or a card's PIN (with
User-Password checked when the account has a password; a member named like a PIN
only from its own line, decision 0053), or, when User-Name is absent, the caller
id (Calling-Station-Id) of a "pinless" account or member. A User-Name sent empty
or not as UTF-8 is refused, never taken as absent. Destination: Called-Station-Id;
without one the request is a balance query (an IVR's "your balance is")
and nothing is reserved. The answer carries Session-Timeout and the Cisco
h323 VSAs a prepaid IVR expects; a refusal carries h323-return-code and a
Reply-Message. An inbound call (``Cisco-AVPair = "ocs-direction=inbound"``; not
``h323-call-origin``, whose "answer" a prepaid gateway sends for every call it
authorizes) is the callee's: the account that holds the number called (a DID
of a number set), rated at the plan's inbound tariff, unless User-Name names
the account. An account whose plan (or itself) has IVR settings is also told what
to announce and in which language, and an enabled voicemail server where to forward
an unanswered call (``ivr_attributes``; docs/ivr-attributes.md, decision 0030).
"""

from typing import NamedTuple

import msgspec
from pyrad.packet import AuthPacket, PacketError

from ocs.balances.ivr import Ivr
from ocs.balances.pin_guard import PinAttempt, PinGuard
from ocs.charging.lifecycle import CallService
from ocs.charging.values import AuthorizeRequest, Grant, Identity, Origin
from ocs.config import Settings
from ocs.errors import OcsError, Reason, invalid
from ocs.metrics import PIN_FAILURES, decision
from ocs.money import format_amount
from ocs.radius.attributes import avpair, cisco, first
from ocs.radius.call_identity import nas_node, qualified_source, radius_call_id
from ocs.radius.clients import NasClient

Attribute = tuple[str, str | int]
# Refusals that say a presented PIN (or its password) was wrong: they count as guesses.
_WRONG_PIN = (Reason.ACCOUNT_NOT_FOUND, Reason.INVALID_PASSWORD)


class AccessAnswer(NamedTuple):
    """What an Access-Request is answered: accept or reject, with its attributes.

    A named tuple rather than a msgspec Struct: this module may be compiled with mypyc
    (decision 0038), which drops a class statement's keywords such as ``frozen``."""

    accept: bool
    attributes: list[Attribute]
    reason: str  # "granted", "balance" or the refusal reason code
    return_code: int


def _money(micro: int) -> str:
    # Cisco IVRs read h323-credit-amount as a plain decimal; two places are what they say.
    return format_amount(micro)


def ivr_attributes(settings: Ivr, *, voicemail: bool) -> list[Attribute]:
    """The IVR settings as Cisco attributes: ``Cisco-AVPair ocs-ivr-announce=<none|balance|
    time|both>``, ``h323-preferred-lang`` when a language is set, and (``voicemail``: an
    authorize answer) ``Cisco-AVPair ocs-voicemail=<server>`` when the plan's is enabled.
    None for an account without IVR settings: its answers stay as they were."""
    found: list[Attribute] = []
    if settings.configured:
        found.append(("Cisco-AVPair", f"ocs-ivr-announce={settings.announce}"))
        if settings.language:
            found.append(cisco("h323-preferred-lang", settings.language))
    if voicemail and settings.voicemail_enabled:
        found.append(("Cisco-AVPair", f"ocs-voicemail={settings.voicemail_server}"))
    return found


# An attribute holds at most 253 octets (RFC 2865, section 5). A message cut by characters
# can be longer once encoded (it may echo a User-Name), and a reply that cannot be encoded
# is never sent: the NAS would time out instead of hearing the refusal.
REPLY_MESSAGE_OCTETS = 253


def reply_message(text: str) -> str:
    """``text`` cut to what one Reply-Message holds, never inside a character."""
    return text.encode()[:REPLY_MESSAGE_OCTETS].decode("utf-8", "ignore")


def refusal(error: OcsError) -> AccessAnswer:
    """The Access-Reject for a refused request, with its h323-return-code and message."""
    reason = error.reason
    code = reason.h323_return_code
    if reason is Reason.INVALID_FIELD and error.field == "destination":
        code = Reason.DESTINATION_NOT_ALLOWED.h323_return_code
    return AccessAnswer(
        accept=False,
        attributes=[
            cisco("h323-return-code", code),
            ("Reply-Message", reply_message(error.message)),
        ],
        # A refusal may carry a finer code than its enum member (funds held by live calls).
        reason=getattr(error, "code", reason.value),
        return_code=code,
    )


async def answer_access_request(
    packet: AuthPacket,
    client: NasClient,
    calls: CallService,
    settings: Settings,
    pin_guard: PinGuard | None = None,
) -> AccessAnswer:
    """Answer an Access-Request: a balance query (no Called-Station-Id) or a call to
    authorize."""
    user = first(packet, "User-Name")
    caller = first(packet, "Calling-Station-Id")
    destination = first(packet, "Called-Station-Id")
    # A balance query sends no Called-Station-Id at all. One sent empty, or not as text,
    # is a call to a number ocs cannot read: refused, never a query that reserves nothing
    # while the switch connects the call with no limit.
    calling = destination is not None or "Called-Station-Id" in packet
    password: str | None = None
    if "User-Password" in packet:
        try:
            password = packet.PwDecrypt(packet["User-Password"][0])
        except (UnicodeDecodeError, ValueError, PacketError):
            # Undecodable or of a size RFC 2865 does not allow: it can match no stored
            # password, so an account with one refuses it (code 2).
            password = "\x00"
    identity: Identity | None = None
    # A PIN's attempt is counted before the PIN is judged; only a wrong one stays counted.
    attempt: PinAttempt | None = None
    wrong_pin = False
    disconnectable = client.coa_port is not None
    # The switch says a call comes in to one of its numbers (docs/ivr-attributes.md).
    inbound = (avpair(packet, "ocs-direction") or "").strip().lower() == "inbound"
    try:
        if user is not None and user.strip():
            identity = await calls.identify(user, caller)
            if identity.pin and pin_guard is not None:
                attempt = await pin_guard.attempt(caller, client.name)
        elif "User-Name" in packet:
            # Sent, but empty or not UTF-8: a name ocs cannot read. Taken as absent, it
            # would open the caller id's account, past its password and the PIN guard.
            raise invalid("User-Name", "expected a user name as UTF-8 text")
        elif inbound and destination:
            held = await calls.account_for_number(destination)
            if held is None:
                raise OcsError(Reason.ACCOUNT_NOT_FOUND, "no account holds the called number")
            identity = Identity(held, check_password=False)
        else:
            found = await calls.identify_caller(caller) if caller else None
            if found is None:
                raise OcsError(Reason.ACCOUNT_NOT_FOUND, "no User-Name and no known caller id")
            identity = found
        account_id, check_password = identity.account_id, identity.check_password
        if not calling:
            return await _balance_answer(calls, identity, password)
        node = nas_node(packet)  # the NAS within its client (decision 0048)
        order = settings.radius_call_id_order
        # Qualified by the NAS's latest restart this process knows of (decision 0059).
        generation = calls.latest_nas_restart(client.name, node or "")
        request = AuthorizeRequest(
            account_id,
            destination or "",
            caller,
            radius_call_id(packet, order, client, node, generation),
            member=identity.member,
            direction="inbound" if inbound else "outbound",
            # The access number (DNIS) a card holder dialled in on, when the IVR says.
            access_number=(
                (avpair(packet, "access-number") or "").strip().lstrip("+") or None
                if calls.access_numbers_in_use
                else None
            ),
            password=password,
        )
        origin = Origin(
            nas=client.name,
            nas_node=node,
            # Only a NAS that takes Disconnect-Requests needs to be found again: where
            # the request came from, and the session id it knows the call by.
            nas_address=getattr(packet, "source", (None,))[0] if disconnectable else None,
            nas_session=first(packet, "Acct-Session-Id") if disconnectable else None,
            translation=client.translation,
            check_password=check_password,
            wait_for_start=True,
            # A plan granting slices needs a NAS ocs can cut when the funds run out.
            slices=disconnectable,
        )
        stopped: OcsError | None = None
        try:
            grant = await calls.authorize(request, origin)
        except OcsError as error:
            if error.reason is not Reason.CALL_ALREADY_STOPPED:
                raise
            stopped = error
        if stopped is not None:
            # Built only now: the common request pays nothing for the NAS's restarts.
            renaming = _Renaming(packet, client, order, node, generation)
            grant = await _authorize_renamed(calls, request, origin, stopped, renaming)
    except OcsError as error:
        if error.reason is Reason.UNAVAILABLE:
            raise
        if identity is not None and identity.pin and error.reason in _WRONG_PIN:
            PIN_FAILURES.labels("radius").inc()
            wrong_pin = True
        refused = refusal(error)
        if calling:  # a call refused (not a balance query)
            decision("radius", refused.reason)
        return refused
    finally:
        if attempt is not None and not wrong_pin:
            await attempt.take_back()
    decision("radius", None)
    return granted(grant)


async def _balance_answer(
    calls: CallService, identity: Identity, password: str | None
) -> AccessAnswer:
    """The Access-Accept of a balance query (no Called-Station-Id): the funds, currency
    and billing model an IVR announces, and its IVR settings; nothing reserved."""
    account_id = identity.account_id
    answer = await calls.balance(
        account_id, password=password, check_password=identity.check_password
    )
    return AccessAnswer(
        accept=True,
        attributes=[
            cisco("h323-return-code", 0),
            cisco("h323-credit-amount", _money(answer.available)),
            cisco("h323-currency", answer.currency),
            cisco("h323-billing-model", 0 if answer.credit_limit else 1),
            *ivr_attributes(await calls.ivr_of(account_id), voicemail=False),
        ],
        reason="balance",
        return_code=0,
    )


class _Renaming(NamedTuple):
    """What names a RADIUS call afresh after its NAS's restart: the request, its client,
    ``radius_call_id_order``, its NAS and the restart its id was qualified by (0: none)."""

    packet: AuthPacket
    client: NasClient
    order: tuple[str, ...]
    node: str | None
    generation: int


async def _authorize_renamed(
    calls: CallService,
    request: AuthorizeRequest,
    origin: Origin,
    refused: OcsError,
    renaming: _Renaming,
) -> Grant:
    """A call id ``calls.authorize`` found stopped is, once the NAS has restarted since
    (its Accounting-On taken by another process), authorized again under the id of the
    NAS's new life (decision 0059); otherwise the refusal stands. Only such a refusal
    reads the NAS's restarts."""
    packet, client, order, node, generation = renaming
    if not qualified_source(packet, order):
        raise refused
    restarts = await calls.read_nas_generation(client.name, node or "")
    latest = restarts[0] if restarts else 0
    if latest == generation:
        raise refused
    call_id = radius_call_id(packet, order, client, node, latest)
    return await calls.authorize(msgspec.structs.replace(request, call_id=call_id), origin)


# Octets the route AVPairs may take in an Access-Accept. A RADIUS packet is at most
# 4,096 octets (RFC 2865 section 3) and a NAS drops a longer one, so the call would time
# out; the rest of an answer (credit, IVR and slice attributes, Message-Authenticator)
# takes about 400, which leaves room for the Proxy-State a proxy asks echoed.
ROUTE_OCTETS = 3_000


def route_pairs(carriers: tuple[str, ...]) -> list[Attribute]:
    """The carriers as ``ocs-route=<position>:<carrier>`` Cisco-AVPairs, best first, as
    many as ``ROUTE_OCTETS`` holds: a long route set of long ids loses its last routes,
    not the whole answer."""
    pairs: list[Attribute] = []
    octets = 0
    for n, carrier in enumerate(carriers, start=1):
        value = f"ocs-route={n}:{carrier}"
        # A vendor attribute: type, length, vendor id, vendor type and length, the value.
        octets += 8 + len(value.encode())
        if octets > ROUTE_OCTETS:
            break
        pairs.append(("Cisco-AVPair", value))
    return pairs


def granted(grant: Grant) -> AccessAnswer:
    """The Access-Accept of a granted call: how long it may last, the funds, the route
    set's carriers, the slice to report (quota mode) and the IVR settings."""
    available = grant.available
    postpaid = grant.credit_limit > 0
    # A call granted slice by slice: the NAS is told the longest the funds could pay for
    # now and to report every slice; each interim extends the hold, and when the funds
    # cannot, ocs cuts the call by a Disconnect-Request (accounting.py).
    timeout = grant.ceiling if grant.slice_seconds else grant.max_duration
    attributes: list[Attribute] = [
        ("Session-Timeout", timeout),
        cisco("h323-credit-time", timeout),
        cisco("h323-credit-amount", _money(available)),
        cisco("h323-return-code", 0),
        cisco("h323-billing-model", 0 if postpaid else 1),
        cisco("h323-currency", grant.currency),
    ]
    # The route set's carriers, best first, for the switch's LCR: one Cisco-AVPair
    # "ocs-route=<position>:<carrier>" each, as many as fit (route_pairs).
    attributes += route_pairs(grant.carriers)
    if grant.slice_seconds and not grant.final:
        attributes.append(("Acct-Interim-Interval", grant.slice_seconds))
    attributes += ivr_attributes(grant.ivr, voicemail=True)
    return AccessAnswer(accept=True, attributes=attributes, reason="granted", return_code=0)
