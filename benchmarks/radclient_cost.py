"""What radclient itself spends per Access-Request, by the shape of the replies it gets.

On a 2-core machine radclient shares the cores with the server it measures, so
its own CPU per request is part of every throughput figure: against the
FreeRADIUS + Redis peer it spent about 92 us a request and against ocs about
131 us (`/usr/bin/time` around each run of benchmarks/radius_peers.py). This
separates the two things that differ between the servers' answers, with one
responder that answers every Access-Request at once and does nothing else:

- the reply's attributes: ``small`` is Session-Timeout alone (the peer's
  answer), ``ocs`` is ocs's Access-Accept (Session-Timeout and five Cisco h323
  VSAs); both signed with a Message-Authenticator;
- how the replies come: ``--bursts 1,64`` answers each request as it comes
  (1), or holds the replies until 64 are ready and sends them together (64),
  as a server that answers a whole socket read after one Redis round trip does
  (held replies also go out after 2 ms without a request, so a run ends).

For each combination, radclient -p 128 sends --requests distinct Access-Requests
(the ones benchmarks/radius_peers.py sends) and its user + system CPU per request
is printed. The responder runs in a child process, so its CPU is not counted.

    python benchmarks/radclient_cost.py --requests 20000 --rounds 2
"""

import argparse
import os
import select
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import describe
from benchmarks.radius_peers import write_requests

SECRET = b"testing123"
FLUSH_AFTER_S = 0.002


def respond(port: int, shape: str, burst: int) -> None:
    """Answer every Access-Request on ``port`` until killed (run in a child process)."""
    from ocs.radius.attributes import cisco
    from ocs.radius.dictionary import radius_dictionary
    from ocs.radius.lean.request import LeanCodec

    codec = LeanCodec(radius_dictionary())
    attributes: list[tuple[str, str | int]] = [("Session-Timeout", 3600)]
    if shape == "ocs":
        attributes += [
            cisco("h323-credit-time", 3600),
            cisco("h323-credit-amount", "10.00"),
            cisco("h323-return-code", 0),
            cisco("h323-billing-model", 1),
            cisco("h323-currency", "EUR"),
        ]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    print("ready", flush=True)
    held: list[tuple[bytes, tuple[str, int]]] = []
    while True:
        ready, _, _ = select.select([sock], [], [], FLUSH_AFTER_S if held else None)
        if ready:
            data, addr = sock.recvfrom(4096)
            request = codec.decode(data, SECRET, require_message_authenticator=False)
            if request is None:
                continue
            reply = request.CreateReply()
            for name, value in attributes:
                reply.AddAttribute(name, value)
            reply.add_message_authenticator()
            held.append((reply.ReplyPacket(), addr))
        if len(held) >= burst or (held and not ready):
            for wire, to in held:
                sock.sendto(wire, to)
            held = []


def radclient_cpu(path: Path, port: int, requests: int) -> tuple[float, int]:
    """radclient's CPU (user + system) per request in microseconds, and the accepts."""
    argv = ["radclient", "-q", "-s", "-p", "128", "-r", "1", "-t", "5", "-f", str(path)]
    argv += [f"127.0.0.1:{port}", "auth", SECRET.decode()]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None
    out = child.stdout.read()
    _, _, usage = os.wait4(child.pid, 0)
    accepted = sum(
        int(line.split(":")[1]) for line in out.splitlines() if line.strip().startswith("Accepted")
    )
    return (usage.ru_utime + usage.ru_stime) / requests * 1e6, accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shapes", default="small,ocs")
    parser.add_argument("--bursts", default="1,64")
    parser.add_argument("--port", type=int, default=18998)
    parser.add_argument("--respond", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.respond:
        respond(args.port, args.respond[0], int(args.respond[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "requests.txt"
        write_requests(path, args.requests, "cost")
        for round_ in range(1, args.rounds + 1):
            for shape in args.shapes.split(","):
                for burst in args.bursts.split(","):
                    responder = subprocess.Popen(
                        [
                            sys.executable,
                            __file__,
                            "--port",
                            str(args.port),
                            "--respond",
                            shape,
                            burst,
                        ],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    try:
                        assert responder.stdout is not None
                        if responder.stdout.readline().strip() != "ready":
                            raise SystemExit("the responder did not start")
                        cpu, accepted = radclient_cpu(path, args.port, args.requests)
                    finally:
                        responder.kill()
                        responder.wait()
                    print(
                        f"round {round_} replies {shape:5s} in bursts of {burst:>2}:"
                        f" radclient {cpu:6.1f} us CPU a request ({accepted} accepted)",
                        flush=True,
                    )
    print(f"machine: {describe()}")


if __name__ == "__main__":
    main()
