"""RADIUS under overload: the socket buffer, shedding by rule, and no silent loss.

The server runs on the test's own event loop, so a test that sends datagrams
without awaiting holds the server back exactly as a loop stall would: what
the kernel holds then is read in one burst, and what it could not hold is
dropped by the kernel and must show in ``ocs_radius_socket_drops``.
"""

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from ocs import loop_lag
from ocs.radius.server import size_receive_buffer
from tests.conftest import RADIUS_SECRET, RunningRadius, eventually
from tests.radius_udp import (
    UdpClient,
    access_request,
    arrival_timestamps,
    sample,
    total_drops,
    wire,
)

DROPS = "ocs_radius_dropped_total"
ANSWERED = "ocs_radius_packets_total"


@pytest.fixture(autouse=True)
def stamped_on_arrival() -> Iterator[None]:
    """Datagrams stamped when they arrive, not when read: the tests of how long a
    request waited depend on it (``arrival_timestamps``)."""
    with arrival_timestamps():
        yield


def requests(count: int) -> list[bytes]:
    """``count`` distinct, valid Access-Requests (unknown users: each gets an answer)."""
    return [
        wire(access_request(RADIUS_SECRET, [("User-Name", f"nobody-{time.time_ns()}-{n}")]))
        for n in range(count)
    ]


def stall(seconds: float) -> None:
    """Hold the event loop busy, as a GC pass or a large synchronous batch would."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def answered() -> float:
    return sample(ANSWERED, type="access", result="reject") + sample(
        ANSWERED, type="access", result="accept"
    )


def test_the_receive_buffer_is_what_was_asked_or_what_the_kernel_granted() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        granted = size_receive_buffer(sock, 1024 * 1024)
        reported = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    assert granted == reported // 2
    # rmem_max caps it unless the process may force it (CAP_NET_ADMIN).
    with open("/proc/sys/net/core/rmem_max") as limit:
        assert granted >= min(1024 * 1024, int(limit.read()))


async def test_the_listening_sockets_get_a_large_receive_buffer(radius: RunningRadius) -> None:
    for listener in radius.server.listeners:
        buffer = listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        assert buffer > 1024 * 1024  # the Linux default is 208 KiB


async def test_above_the_in_flight_cap_requests_are_shed_and_counted(
    radius: RunningRadius, udp: UdpClient
) -> None:
    radius.server.max_in_flight = 4
    burst = requests(30)
    overload, before = sample(DROPS, reason="overload"), answered()
    for data in burst:  # no await: all 30 wait in the socket buffer, read in one wake-up
        udp.send(data, radius.auth_port)

    async def settled() -> bool:
        return answered() - before == 4 and sample(DROPS, reason="overload") - overload == 26

    await eventually(settled, what="4 answered, 26 shed as overload")


async def test_a_request_that_waited_past_the_budget_is_dropped_as_late(
    radius: RunningRadius, udp: UdpClient
) -> None:
    radius.server.queue_delay.budget = 0.05
    burst = requests(10)
    late, before = sample(DROPS, reason="late"), answered()
    for data in burst:
        udp.send(data, radius.auth_port)
    stall(0.1)  # longer than the budget

    async def shed() -> bool:
        return sample(DROPS, reason="late") - late == 10

    await eventually(shed, what="10 requests dropped as late")
    assert answered() == before
    assert udp.unread_count() == 0


async def test_a_queue_that_stays_above_the_target_is_cut_back_and_counted_as_late(
    radius: RunningRadius, udp: UdpClient
) -> None:
    delay = radius.server.queue_delay
    # The quiet gap that makes the rule forget is widened: between the bursts the test
    # waits for answers, for however long a slow machine takes.
    delay.target, delay.interval, delay.quiet = 0.01, 0.02, 60.0
    late, before = sample(DROPS, reason="late"), answered()
    first, second = requests(5), requests(5)
    for data in first:
        udp.send(data, radius.auth_port)
    stall(0.03)  # each waits past the target: a delay, not yet a standing queue

    async def first_answered() -> bool:
        return answered() - before == 5

    await eventually(first_answered, what="the first burst answered")
    for data in second:
        udp.send(data, radius.auth_port)
    # Read 30 ms or more after the first burst, with no request between that waited
    # less than the target: the queue has stood above it for longer than the interval.
    stall(0.03)

    async def second_shed() -> bool:
        return sample(DROPS, reason="late") - late == 5

    await eventually(second_shed, what="the second burst shed as late")
    assert answered() - before == 5
    assert udp.unread_count() == 5


async def test_kernel_drops_on_a_full_buffer_are_counted_so_nothing_is_lost_silently(
    radius: RunningRadius, udp: UdpClient
) -> None:
    auth = radius.server.listeners[0]
    size_receive_buffer(auth.sock, 4096)
    sent = 400
    for _ in range(sent):  # garbage: counted as malformed when read, by the kernel if not
        udp.send(b"\x01" * 20, radius.auth_port)
    counted_before = total_drops()
    kernel_before = sample("ocs_radius_socket_drops", port="auth")
    assert kernel_before == 0
    probes = 0

    async def all_counted() -> bool:
        # Drops are reported with the next datagram read: a probe after each look.
        nonlocal probes
        counted = total_drops() - counted_before
        kernel = sample("ocs_radius_socket_drops", port="auth")
        if counted + kernel == sent + probes and kernel > 0:
            return True
        udp.send(b"\x01" * 20, radius.auth_port)
        probes += 1
        return False

    await eventually(all_counted, what="every datagram counted by ocs or the kernel")


async def test_loop_lag_measures_a_stall() -> None:
    lag = loop_lag.LoopLag(interval=0.005)
    lag.start()
    try:

        async def ticking() -> bool:
            return lag.samples > 0

        await eventually(ticking, what="a first lag sample")
        stall(0.05)

        async def seen() -> bool:
            return lag.max_lag >= 0.04

        await eventually(seen, what="the stall measured")
    finally:
        lag.stop()
    assert lag.take_max() >= 0.04
    assert lag.max_lag == 0.0


def busy_settling_accounts(seconds: float) -> None:
    """Stand-in for a long synchronous step on the loop (a big batch, a reload)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_a_stall_is_logged_once_naming_where_the_loop_was(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = loop_lag.StallWatch(threshold=0.02)

    def ours() -> list[tuple[float, str]]:
        # A slow machine may stall the loop elsewhere too (the GC, the scheduler): only
        # the stalls this test causes are counted.
        return [(s, where) for s, where in watch.stalls if "busy_settling_accounts" in where]

    watch.start()
    try:
        busy_settling_accounts(0.1)

        async def reported() -> bool:
            return bool(ours())

        with caplog.at_level(logging.WARNING, logger="ocs.loop"):
            await eventually(reported, what="the stall reported")
            busy_settling_accounts(0.1)  # the same place again: counted, not logged

            async def twice() -> bool:
                return len(ours()) == 2

            await eventually(twice, what="the second stall reported")
    finally:
        watch.stop()
    seconds, _ = ours()[0]
    assert seconds >= 0.05
    lines = [
        r
        for r in caplog.records
        if r.getMessage() == "event loop stalled"
        and "busy_settling_accounts" in getattr(r, "at", "")
    ]
    assert len(lines) == 1
