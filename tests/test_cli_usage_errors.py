"""A bad argument value is a usage error (exit 2, "usage error: ..."), not a configuration one.

"configuration error" stays for settings (--config files, OCS_* variables and the flags
that set them); what a command is given to work on is usage. A backend that is down or
refuses (no such database or role, a wrong password) is one line naming it, where it is
(never its password) and what it answered, exit 1: never a traceback.
"""

from __future__ import annotations

import subprocess
import sys
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
    }


CASES = ["redis down", "no such database", "no such role", "postgresql down"]


@pytest.mark.parametrize("case", [*CASES, "no such redis database"])
def test_a_backend_down_or_refusing_is_one_line_not_a_traceback(
    tmp_path: Path, redis_url: str, database_url: str, case: str
) -> None:
    redis, postgres, says = _backend_cases(redis_url, database_url)[case]
    code, out, err = _ocs(
        tmp_path, "plans", "list", "--redis-url", redis, "--database-url", postgres,
        "--log-level", "warning",
    )  # fmt: skip
    assert code == 1, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ocs: cannot use "), err
    assert says in lines[0], err
    assert "s3cret-pw" not in err


@pytest.mark.parametrize("case", ["redis down", "no such database"])
def test_serve_with_workers_and_a_backend_down_says_so_once_and_exits(
    tmp_path: Path, redis_url: str, database_url: str, case: str
) -> None:
    """The parent checks the backends before it starts a worker: no worker is started,
    fails, is restarted and fails again, each with a traceback."""
    redis, postgres, says = _backend_cases(redis_url, database_url)[case]
    code, out, err = _ocs(
        tmp_path, "serve", "--workers", "2", "--redis-url", redis, "--database-url", postgres,
        "--http-host", "127.0.0.1", "--http-port", "0", "--radius-host", "127.0.0.1",
        "--radius-auth-port", "0", "--radius-acct-port", "0", "--log-level", "warning",
    )  # fmt: skip
    assert code == 1, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ocs: cannot use ") and says in lines[0], err


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
