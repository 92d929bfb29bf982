"""Log lines are text on a terminal and JSON otherwise, unless the setting says which.

The commands run as a user runs them: once with their output on a pseudo-terminal, once
into a pipe (as under systemd or a log shipper). The line every command logs first (which
store it uses) shows the format.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.embedded_helpers import child_env
from tests.ports import free_port

TIMEOUT_S = 120.0


def _on_terminal(
    argv: list[str], env: dict[str, str], cwd: Path, *, stop_when: str | None = None
) -> tuple[int, list[str]]:
    """Run with stdout and stderr on a new pseudo-terminal; (exit code, lines it wrote).

    With ``stop_when``, the process gets SIGTERM once that text has appeared.
    """
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=cwd
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + TIMEOUT_S
    stopped = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{argv[3:]} still running after {TIMEOUT_S:.0f}s:\n{output!r}")
            ready, _, _ = select.select([master], [], [], min(left, 1.0))
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's last writer has gone
                    break
                if not chunk:
                    break
                output += chunk
            if stop_when and not stopped and stop_when.encode() in output:
                proc.send_signal(signal.SIGTERM)
                stopped = True
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
    return code, output.decode(errors="replace").splitlines()


def _in_pipe(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, list[str]]:
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=TIMEOUT_S,
        check=False,
    )
    return done.returncode, done.stderr.splitlines()


def _store_line(lines: list[str]) -> str:
    found = [line for line in lines if "store: " in line]
    assert found, "\n".join(lines)
    return found[0]


def _is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


@pytest.mark.parametrize(
    ("terminal", "setting", "expected"),
    [
        (True, None, "text"),
        (False, None, "json"),
        (True, ("OCS_LOG_FORMAT", "json"), "json"),
        (False, ("--log-format", "text"), "text"),
    ],
    ids=["terminal", "pipe", "terminal-forced-json", "pipe-forced-text"],
)
def test_a_command_logs_text_on_a_terminal_and_json_otherwise(
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    terminal: bool,
    setting: tuple[str, str] | None,
    expected: str,
) -> None:
    env = child_env(tmp_path / "xdg")
    argv = [sys.executable, "-m", "ocs", "plans", "list"]
    argv += ["--redis-url", redis_url, "--database-url", database_url]
    if setting is not None and setting[0].startswith("--"):
        argv += list(setting)
    elif setting is not None:
        env[setting[0]] = setting[1]
    code, lines = (_on_terminal if terminal else _in_pipe)(argv, env, tmp_path)
    assert code == 0, "\n".join(lines)
    line = _store_line(lines)
    if expected == "json":
        record = json.loads(line)
        assert (record["level"], record["logger"]) == ("info", "ocs.runtime")
        assert record["msg"].startswith("store: Redis ")
    else:
        assert line.startswith("INFO    ocs.runtime: store: Redis "), line
        assert not any(_is_json(text) for text in lines), "\n".join(lines)


def test_the_demo_on_a_terminal_logs_text(tmp_path: Path) -> None:
    env = child_env(tmp_path / "xdg")
    argv = [sys.executable, "-m", "ocs", "demo", "--http-host", "127.0.0.1"]
    argv += ["--http-port", str(free_port()), "--radius-host", "127.0.0.1"]
    argv += ["--radius-auth-port", "0", "--radius-acct-port", "0"]
    code, lines = _on_terminal(argv, env, tmp_path, stop_when="Ctrl-C stops it")
    text = "\n".join(lines)
    assert "ocs demo is running" in text, text
    assert code == 0, text
    assert _store_line(lines).startswith("INFO    ocs.runtime: store: embedded Redis"), text
    assert any(line.startswith("INFO    ocs.server: ocs serving") for line in lines), text
    assert not any(_is_json(line) for line in lines), text
