"""The RADIUS codec's share of a request, pyrad against the lean codec, A/B in one run.

Per packet, the work ocs.radius.server and ocs.radius.access do with the codec:

* decode: verify and decode a Cisco gateway's Access-Request with a
  Message-Authenticator (the server's ``_decode``: pyrad's packet, the scan for
  attribute 80, ``verify_message_authenticator``), or an Accounting-Request
  (its Request Authenticator too);
* read: the attributes access.py and accounting.py read from it (``first``,
  ``avpair``, ``call_id_of``, Acct-Status-Type by number);
* reply: an Access-Accept with the authorize answer's attributes (Session-Timeout,
  six Cisco h323 VSAs, two route AVPairs), or an Accounting-Response, signed
  with a Message-Authenticator as the server signs every reply.

Both codecs handle the same ``--packets`` distinct requests, in turns
(pyrad, lean, lean, pyrad, ...) for ``--rounds`` rounds; each figure is the
median microseconds per packet. The replies are checked to be the same octets
first. The estimate at the end is what the saving per request would make of a
process answering ``--rate`` Access-Requests/s at full load (4,455-4,666 in
issue 19's measurement): 1 / (1/rate - saved).

    python benchmarks/radius_codec.py
"""

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyrad import packet as rp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import describe
from ocs.radius.attributes import avpair, cisco, first
from ocs.radius.call_identity import call_id_of
from ocs.radius.dictionary import radius_dictionary
from ocs.radius.lean.request import LeanCodec

SECRET = b"bench-secret"
CALL_ID_ORDER = ("h323-conf-id", "Acct-Session-Id", "call-id")  # the default setting
DICTIONARY = radius_dictionary()
LEAN = LeanCodec(DICTIONARY)

GRANT = [
    ("Session-Timeout", 3600),
    cisco("h323-credit-time", 3600),
    cisco("h323-credit-amount", "7.250000"),
    cisco("h323-return-code", 0),
    cisco("h323-billing-model", 1),
    cisco("h323-currency", "EUR"),
    ("Cisco-AVPair", "ocs-route=1:carrier-a"),
    ("Cisco-AVPair", "ocs-route=2:carrier-b"),
]


def access_requests(count: int) -> list[bytes]:
    """Distinct Access-Requests as a Cisco gateway sends them, each with its own call."""
    out = []
    for n in range(count):
        request = rp.AuthPacket(secret=SECRET, dict=DICTIONARY, id=n % 256)
        request.add_message_authenticator()
        for name, value in [
            ("User-Name", f"b{n % 100}"),
            ("NAS-IP-Address", "192.0.2.10"),
            ("Called-Station-Id", "447700900123"),
            ("Calling-Station-Id", "4930123456"),
            ("h323-conf-id", f"h323-conf-id=3F2A11C2 {n:08X} 00000000 0000ABCD"),
            ("h323-call-origin", "h323-call-origin=answer"),
            ("h323-setup-time", "h323-setup-time=*10:15:00.000 UTC Mon Mar 2 2026"),
            ("Cisco-AVPair", f"call-id={n}@gw.example"),
        ]:
            request.AddAttribute(name, value)
        out.append(request.RequestPacket())
    return out


def accounting_requests(count: int) -> list[bytes]:
    """Distinct Accounting-Request Stops, signed as radclient signs them (with a
    Message-Authenticator)."""
    out = []
    for n in range(count):
        request = rp.AcctPacket(secret=SECRET, dict=DICTIONARY, id=n % 256)
        request.add_message_authenticator()
        for name, value in [
            ("Acct-Status-Type", "Stop"),
            ("User-Name", f"b{n % 100}"),
            ("Acct-Session-Id", f"run-{n}"),
            ("h323-conf-id", f"h323-conf-id=run-{n}"),
            ("Acct-Session-Time", 45),
        ]:
            request.AddAttribute(name, value)
        out.append(request.RequestPacket())
    return out


# -- the two paths ---------------------------------------------------------------------------


def _has_message_authenticator(data: bytes) -> bool:
    at = 20
    while at + 2 <= len(data):
        if data[at + 1] < 2:
            return False
        if data[at] == 80:
            return True
        at += data[at + 1]
    return False


def pyrad_decode(data: bytes) -> Any:
    """The server's pyrad path (``RadiusServer._decode``) for an admitted packet."""
    data = data[: int.from_bytes(data[2:4], "big")]
    acct = data[0] == rp.AccountingRequest
    request = (rp.AcctPacket if acct else rp.AuthPacket)(
        packet=data, secret=SECRET, dict=DICTIONARY
    )
    if acct and not request.VerifyAcctRequest():
        raise AssertionError("bad authenticator")
    if _has_message_authenticator(data) and not request.verify_message_authenticator():
        raise AssertionError("bad Message-Authenticator")
    return request


def lean_decode(data: bytes) -> Any:
    """The lean codec, as the server's ``_decode`` would call it."""
    data = data[: int.from_bytes(data[2:4], "big")]
    return LEAN.decode(data, SECRET, require_message_authenticator=True)


def read_access(request: Any) -> object:
    """What answer_access_request reads from every Access-Request."""
    return (
        first(request, "User-Name"),
        first(request, "Calling-Station-Id"),
        first(request, "Called-Station-Id"),
        "User-Password" in request,
        avpair(request, "ocs-direction"),
        call_id_of(request, CALL_ID_ORDER),
    )


def read_accounting(request: Any) -> object:
    """What handle_accounting reads from a Stop."""
    return (
        request.get(40),
        call_id_of(request, CALL_ID_ORDER),
        first(request, "Acct-Session-Time"),
    )


def reply_access(request: Any) -> bytes:
    """The server's Access-Accept (``RadiusServer._answer``)."""
    reply = request.CreateReply()
    reply.code = rp.AccessAccept
    for name, value in GRANT:
        reply.AddAttribute(name, value)
    if 80 not in reply:
        reply.add_message_authenticator()
    wire: bytes = reply.ReplyPacket()
    return wire


def reply_accounting(request: Any) -> bytes:
    """The server's Accounting-Response."""
    reply = request.CreateReply()
    if 80 not in reply:
        reply.add_message_authenticator()
    wire: bytes = reply.ReplyPacket()
    return wire


# -- timing ----------------------------------------------------------------------------------

Steps = dict[str, Callable[[list[Any]], list[Any]]]


def steps(
    decode: Callable[[bytes], Any], read: Callable[[Any], object], reply: Callable[[Any], bytes]
) -> Steps:
    return {
        "decode": lambda packets: [decode(p) for p in packets],
        "read": lambda requests: [read(r) for r in requests],
        "reply": lambda requests: [reply(r) for r in requests],
    }


def time_codec(codec: Steps, packets: list[bytes]) -> dict[str, float]:
    """Seconds each step takes for all packets (decode, then read and reply on its output)."""
    gc.collect()
    seconds = {}
    started = time.perf_counter()
    requests = codec["decode"](packets)
    seconds["decode"] = time.perf_counter() - started
    for step in ("read", "reply"):
        started = time.perf_counter()
        codec[step](requests)
        seconds[step] = time.perf_counter() - started
    return seconds


def compare(
    kind: str, packets: list[bytes], codecs: dict[str, Steps], rounds: int
) -> dict[str, float]:
    """Median µs per packet of each codec's steps; returns the totals by codec."""
    pyrad_replies = codecs["pyrad"]["reply"](codecs["pyrad"]["decode"](packets))
    lean_replies = codecs["lean"]["reply"](codecs["lean"]["decode"](packets))
    if pyrad_replies != lean_replies:
        raise SystemExit(f"{kind}: the lean codec's replies differ from pyrad's")
    per_packet: dict[str, dict[str, list[float]]] = {
        label: {"decode": [], "read": [], "reply": [], "total": []} for label in codecs
    }
    order = list(codecs)
    for n in range(rounds):
        for label in order if n % 2 == 0 else order[::-1]:
            seconds = time_codec(codecs[label], packets)
            for step, value in seconds.items():
                per_packet[label][step].append(value / len(packets) * 1e6)
            per_packet[label]["total"].append(sum(seconds.values()) / len(packets) * 1e6)
    totals = {}
    for label, figures in per_packet.items():
        medians = {step: statistics.median(values) for step, values in figures.items()}
        totals[label] = medians["total"]
        print(
            f"{kind:>10} {label:>5}: decode {medians['decode']:6.1f} µs, read"
            f" {medians['read']:5.1f} µs, reply {medians['reply']:5.1f} µs,"
            f" total {medians['total']:6.1f} µs per packet"
            f" (total best {min(figures['total']):.1f})"
        )
    print(f"{kind:>10}: lean is {totals['pyrad'] / totals['lean']:.1f}x faster")
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--rate", type=float, default=4_500, help="Access-Requests/s of one process now"
    )
    args = parser.parse_args()
    print(f"machine: {describe()}")
    print(f"{args.packets} distinct packets, {args.rounds} rounds alternating, medians")
    access = compare(
        "access",
        access_requests(args.packets),
        {
            "pyrad": steps(pyrad_decode, read_access, reply_access),
            "lean": steps(lean_decode, read_access, reply_access),
        },
        args.rounds,
    )
    compare(
        "accounting",
        accounting_requests(args.packets),
        {
            "pyrad": steps(pyrad_decode, read_accounting, reply_accounting),
            "lean": steps(lean_decode, read_accounting, reply_accounting),
        },
        args.rounds,
    )
    saved = (access["pyrad"] - access["lean"]) / 1e6
    estimate = 1 / (1 / args.rate - saved)
    print(
        f"estimate: {saved * 1e6:.1f} µs saved per Access-Request; a process answering"
        f" {args.rate:,.0f}/s at full load would answer about {estimate:,.0f}/s"
        f" (+{(estimate / args.rate - 1) * 100:.0f}%)"
    )


if __name__ == "__main__":
    main()
