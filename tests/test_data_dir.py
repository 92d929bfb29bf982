"""Which store a command uses: the per-user default data dir, from any folder, said aloud.

A command run from another folder must use the store of the running server, not start a
second, empty one; every command says which store it uses; and a command that would start
a second embedded store under the default data dir while one runs elsewhere is refused,
naming both directories. Each test has its own XDG_DATA_HOME (default data dir and
registry of running stores), never the real ~/.local/share/ocs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ocs import embedded
from ocs.config import Settings
from ocs.runtime import Backends
from tests.embedded_helpers import CLI_TIMEOUT_S, DECK, Launch, child_env, embedded_pids


def _ocs_cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocs", *args, "--log-format", "text"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def _folders(root: Path, *names: str) -> list[Path]:
    made = []
    for name in names:
        (root / name).mkdir()
        made.append(root / name)
    return made


def test_a_command_from_another_folder_uses_the_running_servers_store(
    data_root: Path,
    launch: Launch,
) -> None:
    xdg = data_root / "xdg"
    store = xdg / "ocs"  # the default data dir of this "user"
    env = child_env(xdg)
    server_dir, admin_dir, other_dir = _folders(data_root, "server", "admin", "other")
    serve = launch("serve", store, env=env, pass_data_dir=False, cwd=server_dir)
    serve.wait_healthy()
    assert f"store: embedded Redis and PostgreSQL in {store}" in serve.stderr(), serve.stderr()

    created = _ocs_cli(admin_dir, env, "plans", "create", "p", "--currency", "EUR")
    assert created.returncode == 0, created.stderr
    (other_dir / "deck.csv").write_text(DECK, encoding="utf-8")
    # Run from a third folder: it finds the plan the second one created, in the same store.
    imported = _ocs_cli(other_dir, env, "tariffs", "import", "--plan", "p", "deck.csv")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["prefixes"] == 1
    for cli in (created, imported):
        assert f"store: embedded Redis and PostgreSQL in {store}" in cli.stderr, cli.stderr
        assert "using the embedded Redis another ocs process runs" in cli.stderr, cli.stderr
    # No folder got a store of its own, and the server's store is still running.
    assert not any((folder / "var").exists() for folder in (server_dir, admin_dir, other_dir))
    assert set(embedded_pids(store)) == {"redis", "postgres"}


def test_a_command_that_would_start_a_second_store_is_refused_naming_both(
    data_root: Path,
    launch: Launch,
) -> None:
    xdg = data_root / "xdg"
    env = child_env(xdg)
    running = data_root / "srv-ocs"
    (elsewhere,) = _folders(data_root, "elsewhere")
    serve = launch("serve", running, env=env)
    serve.wait_healthy()

    (elsewhere / "deck.csv").write_text(DECK, encoding="utf-8")
    refused = _ocs_cli(elsewhere, env, "tariffs", "import", "--plan", "p", "deck.csv")
    assert refused.returncode == 2, refused.stderr
    error = refused.stderr.strip().splitlines()[-1]
    assert error.startswith("ocs: embedded store:"), refused.stderr
    assert str(running) in error and str(xdg / "ocs") in error, error
    assert f"--data-dir {running}" in error  # says how to reach the running one
    # Nothing was started or created under the default data dir.
    assert not (xdg / "ocs" / "redis").exists() and not (xdg / "ocs" / "postgres").exists()
    assert refused.stdout == ""

    # Named explicitly, the running store is used from any folder.
    listed = _ocs_cli(elsewhere, env, "plans", "list", "--data-dir", str(running))
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"plans": []}
    assert f"store: embedded Redis and PostgreSQL in {running}" in listed.stderr


def test_a_command_with_external_urls_names_them_without_the_password(
    tmp_path: Path, redis_url: str, database_url: str
) -> None:
    secret = "s3cret-never-logged"
    joiner = "&" if "?" in database_url else "?"
    with_password = f"{database_url}{joiner}password={secret}"
    env = child_env(tmp_path / "xdg")
    done = _ocs_cli(
        tmp_path, env, "plans", "list", "--redis-url", redis_url, "--database-url", with_password
    )
    assert done.returncode == 0, done.stderr
    assert f"store: Redis {redis_url}, PostgreSQL " in done.stderr, done.stderr
    assert "password=***" in done.stderr
    assert secret not in done.stderr + done.stdout
    assert not (tmp_path / "xdg" / "ocs").exists()  # no embedded store, no registry


# --- the registry of running embedded stores ----------------------------------------

_HOLDER = """
import sys
from pathlib import Path
from ocs import embedded
held = embedded.register_store(Path(sys.argv[1]))
print("registered", flush=True)
sys.stdin.read()
"""


def test_the_registry_knows_stores_in_use_and_forgets_those_of_dead_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
    running = tmp_path / "srv"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(running)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, XDG_DATA_HOME=str(xdg)),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "registered\n"
        assert embedded.running_stores() == {running: holder.pid}
        with pytest.raises(embedded.StoreConflictError) as raised:
            embedded.check_no_other_store(xdg / "ocs")
        assert str(running) in str(raised.value) and str(xdg / "ocs") in str(raised.value)
        embedded.check_no_other_store(running)  # the store in use itself: attach, no refusal
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup of its own: the kernel drops the lock
        holder.wait()
    assert embedded.running_stores() == {}
    assert list((xdg / "ocs" / embedded.REGISTRY_DIR_NAME).iterdir()) == []
    embedded.check_no_other_store(xdg / "ocs")


def test_only_a_command_starting_a_store_under_the_default_data_dir_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    other = embedded.register_store(tmp_path / "running")
    try:
        # With both URLs given nothing embedded starts, and the line still says the store.
        backends = Backends(
            Settings(
                data_dir=tmp_path / "chosen",
                redis_url="redis://127.0.0.1:1/0",
                database_url="postgresql://u:pw@db/ocs",
            )
        )
        backends.start()
        assert (
            backends.describe()
            == "Redis redis://127.0.0.1:1/0, PostgreSQL postgresql://u:***@db/ocs"
        )
        # The default data dir while another store runs: refused before anything starts.
        with pytest.raises(embedded.StoreConflictError):
            Backends(Settings(redis_url="redis://127.0.0.1:1/0")).start()
    finally:
        other.release()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("postgresql://ocs:pw@db:5432/ocs", "postgresql://ocs:***@db:5432/ocs"),
        (
            "postgresql://ocs@/ocs?host=/run/pg&password=pw",
            "postgresql://ocs@/ocs?host=/run/pg&password=***",
        ),
        # Passwords a URL parser would cut short at an unescaped '#', '?', '/' or '@'.
        ("postgresql://ocs:pa#ss@db:5432/ocs", "postgresql://ocs:***@db:5432/ocs"),
        ("postgresql://ocs:pa?ss@db/ocs", "postgresql://ocs:***@db/ocs"),
        ("postgresql://ocs:pa/ss@db/ocs", "postgresql://ocs:***@db/ocs"),
        ("redis://:p@ss#w?x/y@cache:6379/0", "redis://:***@cache:6379/0"),
        # Every parameter named like a password, its value to the next parameter.
        (
            "postgresql://ocs@db/ocs?sslpassword=k3y&sslmode=verify-full",
            "postgresql://ocs@db/ocs?sslpassword=***&sslmode=verify-full",
        ),
        (
            "postgresql://ocs:pw@db/ocs?sslpassword=a#b@c",
            "postgresql://ocs:***@db/ocs?sslpassword=***",
        ),
        ("postgresql://ocs@db:5432,db2:5432/ocs", "postgresql://ocs@db:5432,db2:5432/ocs"),
        # Which '@' ends the password cannot be told: nothing past the scheme is shown.
        ("postgresql:///ocs?sslpassword=x@y", "postgresql://***"),
    ],
)
def test_urls_are_described_without_passwords(url: str, shown: str) -> None:
    assert embedded.describe_url(url) == shown
