"""`ocs serve` as a child process for tests: free ports, its environment, readiness, /proc.

Not a test module. Used by the tests that need a real server process: port
sharing, workers dying with their parent, and the SIGKILL chaos test. The child
talks to the test session's Redis and PostgreSQL (never embedded servers) and
keeps its log in a file the test shows when it fails.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ocs.config import Settings

# Re-exported: the tests that start ``ocs serve`` take their ports from here.
from tests.ports import free_port as free_port

READY_TIMEOUT_S = 120.0  # a first start may compile the prefix matcher (numba)
EXIT_TIMEOUT_S = 60.0

# No proxy may sit between the tests and 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def serve_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the session's backends, nothing else of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCS_")}
    env.update(
        {
            "OCS_REDIS_URL": settings.redis_url or "",
            "OCS_DATABASE_URL": settings.database_url or "",
            "OCS_ADMIN_TOKEN_REQUIRED": "false",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if settings.pepper_file is not None:
        # The session's one pepper (decision 0054), whatever the child's data dir.
        env["OCS_PEPPER_FILE"] = str(settings.pepper_file)
    env.update(extra or {})
    return env


def health(port: int, timeout: float = 2.0) -> dict[str, Any] | None:
    """The /healthz answer of whichever process accepts the connection, or None."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as reply:
            return json.loads(reply.read())
    except (OSError, ValueError):
        return None


class ServeProcess:
    """One `python -m ocs serve ...` child with its stderr in a file."""

    def __init__(
        self,
        *,
        http_port: int,
        auth_port: int,
        acct_port: int,
        env: Mapping[str, str],
        data_dir: Path,
        log: Path,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.http_port = http_port
        self.log = log
        args = [
            sys.executable,
            "-m",
            "ocs",
            "serve",
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(http_port),
            "--radius-host",
            "127.0.0.1",
            "--radius-auth-port",
            str(auth_port),
            "--radius-acct-port",
            str(acct_port),
            "--data-dir",
            str(data_dir),
            "--log-format",
            "text",
            *extra_args,
        ]
        with log.open("ab") as err:
            self.proc = subprocess.Popen(args, env=dict(env), stdout=subprocess.DEVNULL, stderr=err)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def log_tail(self, chars: int = 4000) -> str:
        """The last ``chars`` characters of the child's log (empty when unreadable)."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, within: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Poll /healthz until this server answers; fail if it exits first."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"ocs serve exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            answer = health(self.http_port, timeout=1.0)
            if answer is not None:
                return answer
            time.sleep(0.1)
        raise AssertionError(f"ocs serve not ready within {within} s:\n{self.log_tail()}")

    def wait_exit(self, within: float = EXIT_TIMEOUT_S) -> int:
        """Wait for the child to exit: its exit code; fail if it still runs after ``within`` s."""
        try:
            return self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"ocs serve still running after {within} s:\n{self.log_tail()}"
            ) from None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop: for cleanup, also on failure paths."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "zombie" in status.lower()


def kill_if_running(pid: int) -> None:
    """SIGKILL a process a failed test may have left running."""
    if not gone(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def listening_inodes(port: int, proto: str) -> set[int]:
    """Inodes of the sockets bound to ``port``: TCP ones listening, or UDP ones (IPv4 and 6)."""
    found: set[int] = set()
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            listening = proto == "udp" or fields[3] == "0A"  # 0A: TCP LISTEN
            if local_port == port and listening:
                found.add(int(fields[9]))
    return found


def socket_inodes(pid: int) -> set[int]:
    """Inodes of every socket the process holds a descriptor of."""
    found: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[len("socket:[") : -1]))
    return found
