"""Readiness notifications as systemd receives them: a real unix datagram socket is the
``$NOTIFY_SOCKET`` of `ocs serve` and `ocs billing-worker` run as child processes.

The socket asks for the sender's credentials (SO_PASSCRED), as systemd's does: under the
units' ``NotifyAccess=main`` only the main process's messages count, so each test checks
who sent what.
"""

import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocs import systemd_notify
from ocs.config import Settings
from ocs.systemd_notify import WorkerReadiness
from tests.serve_process import ServeProcess, free_port, serve_env

READY_TIMEOUT_S = 120.0  # a first start may compile the prefix matcher (numba)
EXIT_TIMEOUT_S = 60.0
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


class NotifySocket:
    """A service manager's notification socket: datagrams in, each with its sender's pid."""

    def __init__(self, path: Path) -> None:
        """Bind at ``path`` (a file system socket), taking the senders' credentials."""
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))

    def receive(self, within: float) -> tuple[int, list[str]] | None:
        """The next message within ``within`` seconds: (sender pid, its lines); None if none."""
        self.sock.settimeout(within)
        try:
            data, ancillary, _flags, _address = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        pid = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(payload[: _UCRED.size])[0]
        return pid, data.decode().split("\n")

    def wait_for(self, line: str, proc: "subprocess.Popen[bytes]", log: Path) -> int:
        """Wait for a message holding ``line``; the pid that sent it. Fails if ``proc``
        exits first, or after ``READY_TIMEOUT_S``."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            message = self.receive(within=0.5)
            if message is not None and line in message[1]:
                return message[0]
            if message is None and proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode} before {line}:\n{log.read_text()}")
        raise AssertionError(f"no {line} within {READY_TIMEOUT_S} s:\n{log.read_text()}")

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    """A notification socket under the test's directory."""
    receiver = NotifySocket(tmp_path / "notify")
    yield receiver
    receiver.close()


def test_a_message_is_one_datagram_of_lines_to_the_socket_named(
    notify_socket: NotifySocket,
) -> None:
    environ = {"NOTIFY_SOCKET": str(notify_socket.path)}
    assert systemd_notify.notify("READY=1", "STATUS=up", environ=environ) is True
    assert notify_socket.receive(within=5) == (os.getpid(), ["READY=1", "STATUS=up"])


def test_an_abstract_socket_is_written_with_a_leading_at_sign() -> None:
    name = f"ocs-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(5)
        assert systemd_notify.notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert receiver.recv(4096) == b"STOPPING=1"


def test_without_a_service_manager_nothing_is_sent_and_nothing_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert systemd_notify.notify("READY=1", environ={}) is False
    assert systemd_notify.enabled({}) is False
    # A socket that went away: logged, never raised into the service.
    with caplog.at_level(logging.WARNING, logger="ocs.systemd"):
        gone = {"NOTIFY_SOCKET": str(tmp_path / "gone")}
        assert systemd_notify.notify("READY=1", environ=gone) is False
    assert "cannot notify the service manager" in caplog.text


def test_a_workers_parent_knows_which_of_its_processes_said_ready() -> None:
    readiness = WorkerReadiness()
    try:
        relay = {"NOTIFY_SOCKET": readiness.address}
        assert readiness.ready_pids() == set()
        assert systemd_notify.notify("STOPPING=1", environ=relay)  # not a readiness
        assert readiness.ready_pids() == set()
        assert systemd_notify.notify("READY=1", "STATUS=serving", environ=relay)
        # The kernel names the sender: this process (a worker, for the parent).
        assert readiness.ready_pids() == {os.getpid()}
        assert readiness.ready_pids() == set()  # each message is read once
        child = subprocess.Popen(
            [sys.executable, "-c", "from ocs import systemd_notify; systemd_notify.ready('up')"],
            env={**os.environ, **relay},
        )
        assert child.wait(timeout=EXIT_TIMEOUT_S) == 0
        assert readiness.ready_pids() == {child.pid}
    finally:
        readiness.close()
    assert not Path(readiness.address).exists()


def test_serve_says_ready_once_listening_and_stopping_on_sigterm(
    settings: Settings, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    server = ServeProcess(
        http_port=free_port(),
        auth_port=free_port(socket.SOCK_DGRAM),
        acct_port=free_port(socket.SOCK_DGRAM),
        env=serve_env(settings, {"NOTIFY_SOCKET": str(notify_socket.path)}),
        data_dir=tmp_path / "var",
        log=log,
    )
    try:
        sender = notify_socket.wait_for("READY=1", server.proc, log)
        # Sent by the main process itself, after the catalog and the listeners.
        assert sender == server.pid
        said = log.read_text()
        assert "catalog loaded" in said and "ocs serving" in said
        assert server.wait_ready(within=10)["status"] == "ok"
        server.proc.send_signal(signal.SIGTERM)
        assert notify_socket.wait_for("STOPPING=1", server.proc, log) == server.pid
        assert server.wait_exit() == 0
    finally:
        server.stop()


def test_the_billing_worker_says_ready_and_stopping(
    settings: Settings, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    env = serve_env(settings, {"NOTIFY_SOCKET": str(notify_socket.path)})
    env["OCS_DATA_DIR"] = str(tmp_path / "var")
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "ocs", "billing-worker", "--log-format", "text"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert notify_socket.wait_for("READY=1", worker, log) == worker.pid
        worker.send_signal(signal.SIGTERM)
        assert notify_socket.wait_for("STOPPING=1", worker, log) == worker.pid
        assert worker.wait(timeout=EXIT_TIMEOUT_S) == 0, log.read_text()
        assert "billing worker stopped" in log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_a_workers_parent_says_ready_once_its_workers_are_and_stopping_on_sigterm(
    settings: Settings, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    server = ServeProcess(
        http_port=free_port(),
        auth_port=free_port(socket.SOCK_DGRAM),
        acct_port=free_port(socket.SOCK_DGRAM),
        env=serve_env(settings, {"NOTIFY_SOCKET": str(notify_socket.path)}),
        data_dir=tmp_path / "var",
        log=log,
        extra_args=["--workers", "2"],
    )
    try:
        # From the parent (systemd's main process), never from a worker, and only once
        # both workers serve.
        assert notify_socket.wait_for("READY=1", server.proc, log) == server.pid
        assert log.read_text().count("ocs serving") == 2
        server.proc.send_signal(signal.SIGTERM)
        assert notify_socket.wait_for("STOPPING=1", server.proc, log) == server.pid
        assert server.wait_exit() == 0
    finally:
        server.stop()
