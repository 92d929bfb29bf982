"""Operators' commands as they are run by hand: `ocs db migrate` says what it applied,
an id past PostgreSQL's BIGINT is a usage error naming its argument (never a traceback),
and ocs's own build and benchmark variables do not stop every command."""

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from ocs.cli import main
from ocs.db.migrate import available_migrations
from tests.conftest import with_database

BIGINT_PAST = "9223372036854775808"  # BIGINT's maximum + 1
HUGE = "99999999999999999999"


@pytest.fixture
def fresh_database(backend_urls: tuple[str, str]) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database (no migration applied), dropped after."""
    admin_url = backend_urls[1]
    name = f"ocs_fresh_{uuid.uuid4().hex[:10]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield with_database(admin_url, name)
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_db_migrate_lists_the_migrations_it_applied_to_a_fresh_database(
    ocs: Any, fresh_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCS_DATABASE_URL", fresh_database)
    code, first, err = ocs("db", "migrate")
    assert code == 0, err
    assert first == {"applied_now": [version for version, _, _ in available_migrations()]}
    # Run again: nothing left to apply.
    code, again, err = ocs("db", "migrate")
    assert (code, again) == (0, {"applied_now": []}), err


@pytest.mark.parametrize(
    ("argv", "argument"),
    [
        (("invoices", "show", HUGE), "id"),
        (("invoices", "void", BIGINT_PAST), "id"),
        (("invoices", "pdf", HUGE), "id"),
        (("invoices", "list", "--run", HUGE), "--run"),
        (("billing", "post", "--invoice", HUGE), "--invoice"),
        (("billing", "post", "--run", HUGE), "--run"),
        (("billing", "resume", HUGE), "RUN"),
        (("subscriptions", "status", HUGE, "active"), "id"),
        (("subscriptions", "add-charge", HUGE, "rent"), "id"),
        (("bundles", "attach", HUGE, "b1"), "subscription"),
        (("events", "replay", HUGE), "event_id"),
        # Past the 4,300 digits int() reads: refused by its length.
        (("payments", "refund", "1" * 4400, "--amount", "1"), "PAYMENT"),
        (("invoices", "show", "0"), "id"),
        (("invoices", "show", "-3"), "id"),
    ],
)
def test_an_id_out_of_bigint_range_is_a_usage_error_naming_the_argument(
    ocs: Any, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], argument: str
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(list(argv))
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    last = err.strip().splitlines()[-1]
    assert f"error: argument {argument}: expected a positive whole number" in last, err
    assert "Traceback" not in err


def test_the_largest_bigint_id_reaches_the_store_and_is_not_found(ocs: Any) -> None:
    code, _, err = ocs("invoices", "show", "9223372036854775807")
    assert code == 1, err
    assert "not_found" in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "variables",
    [
        {"OCS_MYPYC": "1"},
        {"OCS_BENCH_DATABASE_URL": "postgresql://x/y", "OCS_BENCH_REDIS_URL": "redis://x/9"},
    ],
)
def test_the_build_switch_and_benchmark_variables_do_not_stop_a_command(
    ocs: Any, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    code, out, err = ocs("plans", "list")
    assert (code, out) == (0, {"plans": []}), err
    assert "configuration error" not in err
