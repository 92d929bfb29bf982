"""A bad argument value is a usage error (exit 2, "usage error: ..."), not a configuration one.

"configuration error" stays for settings (--config files, OCS_* variables and the flags
that set them); what a command is given to work on is usage. A backend that is down is
one line naming it, where it is (never its password) and what it answered, exit 1, which
the units restart; one that refuses the URL's credentials or database (no such database
or role, a wrong password, a Redis database out of range) is a configuration error naming
the setting (`database_url`, `redis_url`), exit 2, which no restart mends: never a
traceback.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from ocs.catalog import store as catalog_store
from ocs.catalog.snapshot import Plan
from ocs.errors import OcsError, Reason
from ocs.services import Services
from tests.embedded_helpers import child_env
from tests.ports import free_port


def _ocs(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "ocs", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env(tmp_path / "xdg"),
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("accounts", "topup", "2001", "-5.00"), "amount: must not be negative"),
        (("accounts", "topup", "2001", "five"), "amount: not a decimal amount"),
        (("accounts", "create", "2001", "--plan", "p", "--balance", "1.2.3"), "--balance:"),
        (("plans", "create", "p", "--currency", "EUR", "--credit-limit", "x"), "--credit-limit:"),
        (("plans", "create", "bad id!", "--currency", "EUR"), "id: expected 1 to 64"),
        (("plans", "create", "p", "--currency", "EURO"), "currency: expected an ISO 4217"),
        (("plans", "create", "p", "--currency", "XTS"), "currency: currency 'XTS' has no minor"),
        # The bounds POST /v1/plans keeps: a call granted past a week could not be stopped.
        (
            ("plans", "create", "p", "--currency", "EUR", "--max-call-duration", "604801"),
            "max_call_duration: expected `int` <= 604800",
        ),
        (("plans", "create", "p", "--currency", "EUR", "--max-lines", "0"), "max_lines: expected"),
        (("plans", "create", "p", "--currency", "EUR", "--max-lines", "10001"), "max_lines:"),
        (("rerate", "--plan", "p", "--since", "yesterday"), "--since: not an ISO 8601 time"),
        (("tariffs", "import", "--plan", "p", "missing.csv"), "file: cannot read missing.csv"),
        (("codes", "remove", "--plan", "bad plan"), "--plan: expected 1 to 64"),
    ],
)
def test_a_bad_argument_value_is_a_usage_error(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    code, out, err = _ocs(tmp_path, *args)
    assert code == 2, err
    assert out == ""
    assert err.strip().splitlines()[-1].startswith(f"ocs: usage error: {says}"), err
    assert "configuration error" not in err
    # Refused before any store was opened.
    assert not (tmp_path / "xdg").exists()


def test_an_existing_pin_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "pins.csv").write_text("", encoding="utf-8")
    code, _, err = _ocs(
        tmp_path, "pins", "generate", "--batch", "b", "--plan", "p", "--count", "1",
        "--value", "1.00", "--out", "pins.csv",
    )  # fmt: skip
    assert code == 2
    assert err.strip().startswith("ocs: usage error: --out: pins.csv exists"), err


def test_a_value_the_service_refuses_is_a_usage_error(
    tmp_path: Path, redis_url: str, database_url: str
) -> None:
    code, _, err = _ocs(
        tmp_path, "accounts", "topup", "2001", "0",
        "--redis-url", redis_url, "--database-url", database_url,
    )  # fmt: skip
    assert code == 2, err
    assert (
        err.strip().splitlines()[-1]
        == "ocs: usage error: amount: a top-up must be greater than zero"
    ), err


def test_a_bad_setting_flag_is_still_a_configuration_error(tmp_path: Path) -> None:
    code, _, err = _ocs(tmp_path, "plans", "list", "--log-level", "chatty")
    assert code == 2
    assert err.strip().startswith("ocs: configuration error: --log-level"), err


def _with(url: str, *, netloc: str | None = None, path: str | None = None) -> str:
    """``url`` with another user/host part or path (database)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=netloc or parts.netloc, path=path or parts.path))


def _backend_cases(redis_url: str, database_url: str) -> dict[str, tuple[str, str, str]]:
    """Each case: (Redis URL, PostgreSQL URL, what the one line must name)."""
    pg = urlsplit(database_url)
    # A socket's URL (the embedded servers') names its host in the query: kept there.
    at = "" if pg.hostname is None else f"{pg.hostname}:{pg.port or 5432}"
    redis = urlsplit(redis_url)
    if redis.scheme == "unix":
        other_db = redis_url.partition("?")[0] + "?db=999"  # unix:///path: no netloc
    else:
        other_db = _with(redis_url, path="/999")
    redis_at = "" if redis.hostname is None else f"{redis.hostname}:{redis.port or 6379}"
    return {
        "redis down": (f"redis://127.0.0.1:{free_port()}/0", database_url, "Redis at redis://"),
        "no such database": (
            redis_url,
            _with(database_url, netloc=f"postgres:s3cret-pw@{at}", path="/no_such_db"),
            'database "no_such_db" does not exist',
        ),
        "no such role": (
            redis_url,
            _with(database_url, netloc=f"nobody:s3cret-pw@{at}"),
            'role "nobody" does not exist',
        ),
        "postgresql down": (
            redis_url,
            _with(database_url, netloc=f"postgres:s3cret-pw@127.0.0.1:{free_port()}"),
            "PostgreSQL at postgresql://postgres:***@127.0.0.1:",
        ),
        "no such redis database": (other_db, database_url, f"Redis at {redis.scheme}://"),
        "wrong redis password": (
            _with(redis_url, netloc=f"nobody:s3cret-pw@{redis_at}"),
            database_url,
            "AuthenticationError",
        ),
    }


# Down: a later start may find it up (exit 1, restarted by the units).
DOWN = ["redis down", "postgresql down"]
# Refusing the URL (exit 2, not restarted), with the setting the line names.
REFUSING = {
    "no such database": "database_url",
    "no such role": "database_url",
    "no such redis database": "redis_url",
    "wrong redis password": "redis_url",
}


def _one_line(err: str) -> str:
    """The one line of ``err``, asserting there is one and that no password is in it."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "s3cret-pw" not in err
    return lines[0]


@pytest.mark.parametrize("case", DOWN)
def test_a_backend_down_is_one_line_not_a_traceback(
    tmp_path: Path, redis_url: str, database_url: str, case: str
) -> None:
    redis, postgres, says = _backend_cases(redis_url, database_url)[case]
    code, out, err = _ocs(
        tmp_path, "plans", "list", "--redis-url", redis, "--database-url", postgres,
        "--log-level", "warning",
    )  # fmt: skip
    assert code == 1, err
    assert out == ""
    line = _one_line(err)
    assert line.startswith("ocs: cannot use "), err
    assert says in line, err


@pytest.mark.parametrize("case", list(REFUSING))
def test_a_backend_refusing_the_url_is_a_configuration_error_naming_the_setting(
    tmp_path: Path, redis_url: str, database_url: str, case: str
) -> None:
    """Exit 1 for a wrong password or database restarted the unit every few seconds for
    ever, the same line each time: the URL is the setting to change."""
    redis, postgres, says = _backend_cases(redis_url, database_url)[case]
    code, out, err = _ocs(
        tmp_path, "plans", "list", "--redis-url", redis, "--database-url", postgres,
        "--log-level", "warning",
    )  # fmt: skip
    assert code == 2, err
    assert out == ""
    line = _one_line(err)
    assert line.startswith(f"ocs: configuration error: {REFUSING[case]}: "), err
    assert " refused it: " in line and says in line, err


def _serve(tmp_path: Path, redis: str, postgres: str, *workers: str) -> tuple[int, str, str]:
    """``ocs serve`` (``workers``: ``--workers N``) on these backends, to its end."""
    return _ocs(
        tmp_path, "serve", *workers, "--redis-url", redis, "--database-url", postgres,
        "--http-host", "127.0.0.1", "--http-port", "0", "--radius-host", "127.0.0.1",
        "--radius-auth-port", "0", "--radius-acct-port", "0", "--log-level", "warning",
    )  # fmt: skip


@pytest.mark.parametrize("case", ["redis down", "no such database"])
def test_serve_with_workers_and_a_backend_down_says_so_once_and_exits(
    tmp_path: Path, redis_url: str, database_url: str, case: str
) -> None:
    """The parent checks the backends before it starts a worker: no worker is started,
    fails, is restarted and fails again, each with a traceback."""
    redis, postgres, says = _backend_cases(redis_url, database_url)[case]
    code, out, err = _serve(tmp_path, redis, postgres, "--workers", "2")
    assert code == (2 if case in REFUSING else 1), err
    assert out == ""
    line = _one_line(err)
    refused = "ocs: configuration error: database_url: "
    assert line.startswith(refused if case in REFUSING else "ocs: cannot use "), err
    assert says in line, err


@pytest.mark.parametrize("case", ["no such role", "no such database", "postgresql down"])
def test_serve_with_a_postgresql_url_it_cannot_use_exits_2_only_when_refused(
    tmp_path: Path, redis_url: str, database_url: str, case: str
) -> None:
    """``ocs serve`` itself, as the unit runs it: a login PostgreSQL refuses stops it for
    good (exit 2) naming ``database_url`` without its password; a PostgreSQL down keeps
    exit 1, which the unit restarts until it is back."""
    redis, postgres, says = _backend_cases(redis_url, database_url)[case]
    code, out, err = _serve(tmp_path, redis, postgres)
    line = _one_line(err)
    assert says in line, err
    if case in REFUSING:
        assert code == 2, err
        assert line.startswith("ocs: configuration error: database_url: PostgreSQL at "), err
    else:
        assert code == 1, err
        assert line.startswith("ocs: cannot use PostgreSQL at "), err
    assert "s3cret-pw" not in out


class _RefusingPostgreSQL:
    """A listener that answers every PostgreSQL start-up with one FATAL error, as a
    server with password authentication does a wrong password (the session's server
    trusts every login): ``code`` is the SQLSTATE, ``says`` the message."""

    def __init__(self, code: str, says: str) -> None:
        self.error = (
            b"".join(
                field + value.encode() + b"\0"
                for field, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", says))
            )
            + b"\0"
        )
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed: the test is over
            with conn:
                # The start-up message: its length (itself included), then the rest.
                size = struct.unpack("!I", conn.recv(4, socket.MSG_WAITALL))[0]
                conn.recv(size - 4, socket.MSG_WAITALL)
                conn.sendall(b"E" + struct.pack("!I", len(self.error) + 4) + self.error)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize(
    ("code", "says", "exits"),
    [
        ("28P01", 'password authentication failed for user "ocs"', 2),
        ("57P03", "the database system is starting up", 1),
    ],
    ids=["wrong password", "starting up"],
)
def test_serve_with_a_wrong_postgresql_password_exits_2_and_never_shows_it(
    tmp_path: Path, redis_url: str, code: str, says: str, exits: int
) -> None:
    """A wrong password is named as ``database_url`` to change, exit 2, without the
    password; a server still starting up keeps exit 1 (restarted until it is up)."""
    server = _RefusingPostgreSQL(code, says)
    try:
        url = f"postgresql://ocs:s3cret-pw@127.0.0.1:{server.port}/ocs?sslmode=disable"
        status, out, err = _serve(tmp_path, redis_url, url)
    finally:
        server.close()
    line = _one_line(err)
    assert "s3cret-pw" not in out
    assert status == exits, err
    at = f"PostgreSQL at postgresql://ocs:***@127.0.0.1:{server.port}/ocs?sslmode=disable"
    if exits == 2:
        assert line == (
            f"ocs: configuration error: database_url: {at} refused it: InvalidPasswordError: {says}"
        ), err
    else:
        assert line == f"ocs: cannot use {at}: CannotConnectNowError: {says}", err


@pytest.mark.parametrize(
    ("limits", "field", "says"),
    [
        ({"max_call_duration": 604_801}, "max_call_duration", "expected `int` <= 604800"),
        ({"max_call_duration": 0}, "max_call_duration", "expected `int` >= 1"),
        ({"max_lines": 10_001}, "max_lines", "expected `int` <= 10000"),
        ({"max_lines": 0}, "max_lines", "expected `int` >= 1"),
    ],
)
async def test_the_store_refuses_plan_limits_the_http_api_refuses(
    services: Services, limits: dict[str, int], field: str, says: str
) -> None:
    """Every path that creates a plan (the CLI, a script) gets the HTTP API's bounds."""
    plan = Plan("p", "p", "EUR", 0, 0, **{"max_lines": 1, "max_call_duration": 14_400, **limits})
    with pytest.raises(OcsError) as refused:
        await catalog_store.create_plan(services.pool, plan)
    assert refused.value.reason is Reason.INVALID_FIELD
    assert (refused.value.field, refused.value.message) == (field, f"{field}: {says}")
    async with services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM plans") == 0
