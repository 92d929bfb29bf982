"""RADIUS latency at fixed rates: p50/p99 and lost Access-Requests of one `ocs serve`.

Starts `ocs serve` (embedded Redis and PostgreSQL in a temporary data dir, or
the servers named by --redis-url/--database-url) with accounts u1..u1000
(password pw) and the NAS 127.0.0.1 (secret testing123), then runs the
fixed-rate client ``benchmarks/peers/rad_latency.py`` at each rate, so the
figures compare with the FreeRADIUS peers' (benchmarks/peers) on the same
packets. Per rate it prints p50/p99/max, the packets lost, and ocs's own
account of them: drops by reason and the kernel's receive-buffer drops
(``ocs_radius_socket_drops``).

    python benchmarks/radius_latency.py --rates 2000,3000,4000 --seconds 10

With ``--ab NAME``, the environment variable NAME is 0 for the "before"
server and 1 for the "after" one; the two alternate for --rounds rounds,
each a fresh server, so that both sides see the same machine in one run:

    python benchmarks/radius_latency.py --ab OCS_GC_FREEZE --rounds 2

``--live N`` first leaves about N calls live (Access-Requests at 2,500/s, not
measured), as a busy switch does, before the rates are measured.

``--set OCS_STALL_REPORT_MS=5`` has each server log its event-loop stalls longer
than 5 ms, naming where the loop was (once a minute per place).
"""

import argparse
import asyncio
import json
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.http_calls import ADMIN, DECK, free_port, start_server, wait_healthy
from benchmarks.machine import describe

SECRET = "testing123"
CLIENT = Path(__file__).resolve().parent / "peers" / "rad_latency.py"


def radius_env(auth_port: int, acct_port: int) -> dict[str, str]:
    """The settings of a benchmark's `ocs serve`: its RADIUS ports, the NAS 127.0.0.1, and
    accepts left unstarted kept live (not released by the janitor while measured)."""
    return {
        "OCS_RADIUS_AUTH_PORT": str(auth_port),
        "OCS_RADIUS_ACCT_PORT": str(acct_port),
        "OCS_RADIUS_CLIENTS": f'[{{"address": "127.0.0.1", "secret": "{SECRET}"}}]',
        "OCS_START_TIMEOUT": "3600",
    }


async def setup(session: aiohttp.ClientSession, base: str, accounts: int) -> None:
    """A plan with the benchmark deck, and accounts u1..uN with password pw."""
    async with session.post(
        f"{base}/v1/plans",
        json={"id": "bench", "currency": "EUR", "max_lines": 1000},
        headers=ADMIN,
    ) as r:
        assert r.status in (201, 409), await r.text()
    async with session.post(f"{base}/v1/plans/bench/tariffs", data=DECK, headers=ADMIN) as r:
        assert r.status == 200, await r.text()

    async def one(n: int) -> None:
        payload = {
            "id": f"u{n}",
            "plan": "bench",
            "balance": "1000000.00",
            "max_lines": 1000,
            "password": "pw",
        }
        async with session.post(f"{base}/v1/accounts", json=payload, headers=ADMIN) as r:
            assert r.status in (201, 409), await r.text()

    for start in range(1, accounts + 1, 50):
        await asyncio.gather(*(one(n) for n in range(start, min(start + 50, accounts + 1))))


def drops(text: str) -> dict[str, float]:
    """ocs's drop counters (by reason) and the kernel's socket drops, from /metrics."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ocs_radius_dropped_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            found[reason] = float(line.rsplit(" ", 1)[1])
        elif line.startswith('ocs_radius_socket_drops{port="auth"}'):
            found["kernel"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("ocs_event_loop_lag_max_seconds "):
            found["loop_lag_max_s"] = float(line.rsplit(" ", 1)[1])
    return found


async def metrics_text(base: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
        return await response.text()


async def run_client(
    args: argparse.Namespace, auth_port: int, rate: int, seconds: float
) -> dict[str, Any]:
    """One run of the fixed-rate client against ``auth_port``: its JSON result."""
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        str(args.client),
        str(auth_port),
        str(rate),
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await client.communicate()
    result: dict[str, Any] = json.loads(stdout)
    return result


async def fill_live_calls(args: argparse.Namespace, auth_port: int) -> None:
    """About ``args.live`` calls left live (every accepted request is a call kept live)."""
    rate = 2500
    result = await run_client(args, auth_port, rate, args.live / rate)
    print(f"live calls: {result['replies']} requests answered before measuring", flush=True)


async def one_server(
    args: argparse.Namespace, rates: list[int], env: dict[str, str]
) -> list[dict[str, object]]:
    """Start a server with ``env``, run every rate against it; a result per rate."""
    http_port, auth_port, acct_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="ocs-bench-", dir="/tmp") as tmp:
        server = start_server(
            str(Path(tmp) / "var"),
            http_port,
            1,
            args.redis_url,
            args.database_url,
            extra_env={**radius_env(auth_port, acct_port), **env},
        )
        try:
            async with aiohttp.ClientSession() as session:
                await wait_healthy(session, base, 120)
                await setup(session, base, args.accounts)
            if args.live:
                await fill_live_calls(args, auth_port)
            for rate in rates:
                before = drops(await metrics_text(base))
                result = await run_client(args, auth_port, rate, args.seconds)
                after = drops(await metrics_text(base))
                result["ocs_drops"] = {
                    k: after[k] - before.get(k, 0.0)
                    for k in after
                    if k != "loop_lag_max_s" and after[k] != before.get(k, 0.0)
                }
                if "loop_lag_max_s" in after:
                    result["loop_lag_max_ms"] = round(after["loop_lag_max_s"] * 1000, 1)
                results.append(result)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    return results


def line(label: str, result: dict[str, object]) -> str:
    extra = f" ocs drops {result['ocs_drops']}" if result["ocs_drops"] else ""
    if "loop_lag_max_ms" in result:
        extra += f" loop lag max {result['loop_lag_max_ms']} ms (since start)"
    return (
        f"{label:>8} {result['rate']:>6}/s  p50 {result['p50_ms']:>6} ms  p99 "
        f"{result['p99_ms']:>7} ms  max {result['max_ms']:>7} ms  lost "
        f"{result['lost']}/{result['sent']}{extra}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="2000,3000,4000", help="comma-separated, per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="per rate")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--live", type=int, default=0, help="calls left live before measuring")
    parser.add_argument("--ab", metavar="NAME", help="alternate NAME=0 (before), NAME=1 (after)")
    parser.add_argument("--rounds", type=int, default=1, help="with --ab: A/B pairs")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OCS_NAME=VALUE",
        help="a setting for every server (e.g. OCS_STALL_REPORT_MS=5: its stalls logged)",
    )
    parser.add_argument("--client", type=Path, default=CLIENT, help="rad_latency.py")
    parser.add_argument("--redis-url")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    settings = dict(item.split("=", 1) for item in args.set)
    if args.ab is None:
        for result in await one_server(args, rates, settings):
            print(line("ocs", result), flush=True)
    else:
        for round_ in range(args.rounds):
            for label, value in (("before", "0"), ("after", "1")):
                for result in await one_server(args, rates, {**settings, args.ab: value}):
                    print(line(f"{label}{round_ + 1}", result), flush=True)
    print(f"machine: {describe()}")


if __name__ == "__main__":
    asyncio.run(main())
