"""Operators' commands as they are run by hand: `ocs db migrate` says what it applied,
an id past PostgreSQL's BIGINT is a usage error naming its argument (never a traceback),
and ocs's own build and benchmark variables do not stop every command."""

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

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
