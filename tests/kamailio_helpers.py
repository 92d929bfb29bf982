"""Kamailio and sipp as child processes for tests: the shipped switch config, callers, a callee.

Not a test module. tests/test_kamailio_switch.py runs deploy/kamailio/ocs.cfg
unchanged (its defines given with -A, as a deployer may) in front of a real
`ocs serve`, with sipp as the callers and the callee, using the scenarios shipped
under deploy/kamailio/sipp/. Everything runs on 127.0.0.1, on free ports, in the
test's own directory, and needs no privilege. The switch trusts the callers' source,
127.0.0.1, through its own trusted list (OCS_TRUSTED_FILE); a caller placed from
another loopback address (127.0.0.2: all of 127.0.0.0/8 is the loopback) is an
untrusted source.

The binaries are required, never optional: a machine without them fails the
tests (CI installs the Debian packages named in ``REQUIRED``).
"""

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.serve_process import listening_inodes

REPO = Path(__file__).resolve().parent.parent
KAMAILIO_CFG = REPO / "deploy" / "kamailio" / "ocs.cfg"
SIPP_DIR = REPO / "deploy" / "kamailio" / "sipp"

# binary -> the Debian package that ships it (kamailio-utils-modules: http_client;
# kamailio-extra-modules: jansson; sip-tester: sipp).
REQUIRED = {"kamailio": "kamailio", "kamcmd": "kamailio", "sipp": "sip-tester"}
PACKAGES = "kamailio kamailio-utils-modules kamailio-extra-modules sip-tester"

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def binary(name: str) -> str:
    """The path of a required binary; the test fails (never skips) without it."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail(
            f"{name} is not installed: these tests run a real switch."
            f" Install it with: apt-get install -y {PACKAGES}"
        )
    return found


def sip_options(port: int, timeout: float = 0.5) -> int | None:
    """The status a SIP server on 127.0.0.1:``port`` answers to an OPTIONS; None if silent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()[1]
        branch = "z9hG4bK" + uuid.uuid4().hex
        request = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch}\r\n"
            f"From: <sip:probe@127.0.0.1:{local}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:127.0.0.1:{port}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}@127.0.0.1\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        sock.settimeout(timeout)
        sock.sendto(request.encode(), ("127.0.0.1", port))
        try:
            answer, _ = sock.recvfrom(65535)
        except OSError:
            return None
    first = answer.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) >= 2 and first[1].isdigit() else None


def _stop(proc: "subprocess.Popen[bytes]", group: bool = False) -> None:
    """SIGTERM, then SIGKILL if the process outlives ``STOP_TIMEOUT_S``; ``group`` (a
    process started in a session of its own): then whatever of that session is left (a
    Kamailio worker busy in a stop's retries outlived its creator, re-parented to init,
    and stayed after the suite)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


class Kamailio:
    """deploy/kamailio/ocs.cfg in the foreground, logging to a file, in its own directory."""

    def __init__(
        self,
        *,
        port: int,
        ocs_url: str,
        token: str,
        gateway_port: int,
        workdir: Path,
        trusted: tuple[str, ...] = ("127.0.0.1",),
        defines: dict[str, str] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.workdir = workdir
        self.log = workdir / "kamailio.log"
        # The sources allowed to place calls, in the permissions module's address file
        # format (group 1): the shipped trusted.list trusts nobody.
        self.trusted_file = workdir / "trusted.list"
        self.trusted_file.write_text("".join(f"1 {address}\n" for address in trusted))
        # kamcmd's socket in the test's directory: the shipped default is under /run.
        self.ctl_socket = f"unix:{workdir / 'ctl'}"
        # Other defines of ocs.cfg (a number, or a quoted string), as a deployer gives them.
        extra = [
            arg for name, value in (defines or {}).items() for arg in ("-A", f"{name}={value}")
        ]
        args = [
            binary("kamailio"),
            "-f",
            str(KAMAILIO_CFG),
            "-DD",  # children forked, the creator stays in the foreground: our child
            "-E",  # log to stderr (the file)
            "-l",
            f"udp:127.0.0.1:{port}",
            "-w",
            str(workdir),
            "-Y",
            str(workdir),
            "-P",
            str(workdir / "kamailio.pid"),
            "-m",
            "32",
            "-M",
            "4",
            "-A",
            f'OCS_URL="{ocs_url}"',
            "-A",
            f'OCS_TOKEN="{token}"',
            "-A",
            f'GATEWAY_URI="sip:127.0.0.1:{gateway_port}"',
            "-A",
            f'OCS_TRUSTED_FILE="{self.trusted_file}"',
            "-A",
            f'OCS_CTL_SOCKET="{self.ctl_socket}"',
            *extra,
        ]
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                args,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: _stop reaps the workers too
            )

    def log_tail(self, chars: int = 6000) -> str:
        """The end of Kamailio's log (empty when unreadable)."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, within: float = READY_TIMEOUT_S) -> None:
        """Poll with OPTIONS until a worker answers 200; fail if Kamailio exits first."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"kamailio exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if sip_options(self.port) == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"kamailio did not answer OPTIONS in {within} s:\n{self.log_tail()}")

    def rpc(self, *command: str) -> str:
        """Run ``kamcmd`` on its control socket, as an operator would; what it printed.
        Fails when it could not (no socket: a non-zero exit) or the RPC answered an
        error (kamcmd prints ``error: <code> - <text>`` and exits 0)."""
        done = subprocess.run(
            [binary("kamcmd"), "-s", self.ctl_socket, *command],
            capture_output=True,
            timeout=STOP_TIMEOUT_S,
            check=False,
        )
        output = (done.stdout + done.stderr).decode(errors="replace")
        assert done.returncode == 0, f"kamcmd {' '.join(command)}: {output}"
        assert not output.startswith("error:"), f"kamcmd {' '.join(command)}: {output}"
        return output

    def stop(self) -> None:
        """Stop it and its children (SIGTERM to the creator, then its whole session)."""
        _stop(self.proc, group=True)


class SippCallee:
    """deploy/kamailio/sipp/uas.xml: answers every call, logs each one it answered."""

    def __init__(self, *, port: int, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.log = workdir / "callee.log"
        self.err = workdir / "callee.stderr"
        args = [
            binary("sipp"),
            "-sf",
            str(SIPP_DIR / "uas.xml"),
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-nostdin",
            "-trace_logs",
            "-log_file",
            str(self.log),
        ]
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                args, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )

    def wait_ready(self, within: float = READY_TIMEOUT_S) -> None:
        """Poll until its UDP port is bound; fail if sipp exits first."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"sipp (callee) exited with {self.proc.returncode}:"
                    f" {self.err.read_text(errors='replace')}"
                )
            if listening_inodes(self.port, "udp"):
                return
            time.sleep(0.05)
        raise AssertionError(f"sipp (callee) did not bind port {self.port} in {within} s")

    def answered(self) -> set[str]:
        """The Call-IDs of the calls it answered so far."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return set()
        return {line.split()[0] for line in lines if line.endswith(" answered")}

    def stop(self) -> None:
        """Stop it."""
        _stop(self.proc)


@dataclass
class CallerView:
    """One call as its caller saw it: the final status, and when (sipp's clock, ms) the
    call was answered and cut by the switch's BYE (None: no such event)."""

    final: int | None = None
    answered_at_ms: int | None = None
    cut_at_ms: int | None = None


_LOG_LINE = re.compile(
    r"^(?P<call>\S+) (?P<event>final|cut)(?: (?P<code>\d{3}))?(?: at (?P<at>\d+))?$"
)


def caller_views(log: str) -> dict[str, CallerView]:
    """The callers' log (deploy/kamailio/sipp/uac*.xml, -trace_logs), by Call-ID."""
    views: dict[str, CallerView] = {}
    for line in log.splitlines():
        match = _LOG_LINE.match(line.strip())
        if match is None:
            continue
        view = views.setdefault(match["call"], CallerView())
        at = int(match["at"]) if match["at"] else None
        if match["event"] == "final":
            view.final = int(match["code"])
            view.answered_at_ms = at
        else:
            view.cut_at_ms = at
    return views


def place_calls(
    *,
    scenario: str,
    proxy_port: int,
    caller: str,
    dialled: str,
    workdir: Path,
    calls: int = 1,
    hold_ms: int = 0,
    recv_timeout_ms: int = 15_000,
    source: str = "127.0.0.1",
) -> dict[str, CallerView]:
    """Run sipp as ``calls`` callers at once (``scenario`` from deploy/kamailio/sipp/)
    through the proxy, until every call ended; what each caller saw, by Call-ID.
    The callers send from ``source`` (a loopback address).

    Blocking: a test on the event loop runs it with ``asyncio.to_thread``."""
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{caller}-{uuid.uuid4().hex[:6]}"
    log = workdir / f"{tag}.log"
    err = workdir / f"{tag}.stderr"
    args = [
        binary("sipp"),
        "-sf",
        str(SIPP_DIR / scenario),
        "-s",
        dialled,
        "-set",
        "caller",
        caller,
        "-i",
        source,
        "-m",
        str(calls),
        "-l",
        str(calls),
        # All the calls within a few milliseconds: "at once".
        "-r",
        "1000",
        "-d",
        str(hold_ms),
        "-recv_timeout",
        str(recv_timeout_ms),
        "-timeout",
        f"{recv_timeout_ms // 1000 + 20}s",
        "-nostdin",
        "-trace_logs",
        "-log_file",
        str(log),
        f"127.0.0.1:{proxy_port}",
    ]
    with err.open("wb") as stderr:
        done = subprocess.run(
            args,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            timeout=recv_timeout_ms / 1000 + 30,
            check=False,
        )
    # 0: every call went through its scenario; 1: some call failed (a lost BYE makes
    # the caller give up). Anything else is sipp itself failing.
    if done.returncode not in (0, 1):
        raise AssertionError(
            f"sipp exited with {done.returncode}: {err.read_text(errors='replace')}"
        )
    return caller_views(log.read_text(errors="replace") if log.exists() else "")


@contextlib.asynccontextmanager
async def running_switch(
    *,
    ocs_url: str,
    token: str,
    gateway_port: int,
    workdir: Path,
    trusted: tuple[str, ...] = ("127.0.0.1",),
    defines: dict[str, str] | None = None,
) -> AsyncIterator[Kamailio]:
    """A switch (``Kamailio`` with these settings, in ``workdir``/kamailio) on a free
    port, answering OPTIONS; stopped, with its workers, on the way out."""
    switch = Kamailio(
        port=free_port(socket.SOCK_DGRAM),
        ocs_url=ocs_url,
        token=token,
        gateway_port=gateway_port,
        workdir=workdir / "kamailio",
        trusted=trusted,
        defines=defines,
    )
    try:
        await asyncio.to_thread(switch.wait_ready)
        yield switch
    finally:
        switch.stop()


async def call_through(
    switch: Kamailio,
    *,
    caller: str,
    dialled: str,
    scenario: str = "uac.xml",
    calls: int = 1,
    hold_ms: int = 0,
    recv_timeout_ms: int = 15_000,
    source: str = "127.0.0.1",
) -> dict[str, CallerView]:
    """``place_calls`` through ``switch`` (off the event loop), the callers' files beside
    the switch's directory (in its parent's ``callers``); what each caller saw."""
    return await asyncio.to_thread(
        place_calls,
        scenario=scenario,
        proxy_port=switch.port,
        caller=caller,
        dialled=dialled,
        workdir=switch.workdir.parent / "callers",
        calls=calls,
        hold_ms=hold_ms,
        recv_timeout_ms=recv_timeout_ms,
        source=source,
    )


async def one_call(
    switch: Kamailio,
    *,
    final: int,
    caller: str,
    dialled: str,
    scenario: str = "uac.xml",
    hold_ms: int = 0,
    recv_timeout_ms: int = 15_000,
    source: str = "127.0.0.1",
) -> tuple[str, CallerView]:
    """One call through ``switch`` (``call_through``); asserts its caller was answered
    ``final`` (the switch's log tail otherwise). Its Call-ID and what its caller saw."""
    views = await call_through(
        switch,
        caller=caller,
        dialled=dialled,
        scenario=scenario,
        hold_ms=hold_ms,
        recv_timeout_ms=recv_timeout_ms,
        source=source,
    )
    [(call_id, seen)] = views.items()
    assert seen.final == final, switch.log_tail()
    return call_id, seen
