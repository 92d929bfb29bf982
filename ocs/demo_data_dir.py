"""Whether a data dir's embedded stores are ``ocs demo``'s own (decision 0014, addendum
2026-12-07: the demo's data dir).

Counting what is not the demo's (``ocs.demo.other_data``, ``ocs.demo_stores``) cannot
tell a store ``ocs serve`` has just made from one the demo made: both hold a
``bootstrap`` admin token, a pepper and a migrated database, and nothing else yet. So
the demo marks the data dir it makes: the file ``demo-store`` (``MARKER_FILE``), written
when the demo finds the data dir's stores holding nothing at all, before anything else
is written to them. No other command writes it. A data dir without it that holds
anything (a pepper, a bootstrap token file, a table, a Redis key) was made by something
else, and is refused; so is a data dir whose stores a running ocs process uses.

Only the embedded stores under ``data_dir`` are told apart this way: a store named by
``redis_url`` or ``database_url`` is judged by what it holds.
"""

import contextlib
import os
from pathlib import Path
from typing import Any

import asyncpg

from ocs.balances import keys
from ocs.bootstrap_token import TOKEN_FILE
from ocs.config import Settings
from ocs.pepper import PEPPER_FILE

MARKER_FILE = "demo-store"
MARKER_TEXT = (
    "This data dir was made by `ocs demo`: its stores hold demo data (funded accounts"
    " 1001, 1002 and 2001). `ocs demo` runs only on a data dir holding this file, or"
    " nothing.\n"
)
# Redis keys counted up to this many: one is enough to refuse.
_KEYS_UP_TO = 100


def uses_embedded_stores(settings: Settings) -> bool:
    """Whether ``settings`` start an embedded Redis or PostgreSQL under ``data_dir``."""
    return settings.redis_url is None or settings.database_url is None


def has_marker(data_dir: Path) -> bool:
    """Whether the demo made ``data_dir``'s stores."""
    return (Path(data_dir) / MARKER_FILE).is_file()


def write_marker(data_dir: Path) -> None:
    """Mark ``data_dir``'s stores as the demo's (once; an existing marker is kept)."""
    path = Path(data_dir) / MARKER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(MARKER_TEXT)


def _command_of(pid: int | None) -> str:
    """`` (process 123: ocs serve)`` for a live ocs process, as much as can be told."""
    if pid is None:
        return ""
    import psutil  # lazily, as ocs.embedded: only embedded mode needs it

    try:
        argv = psutil.Process(pid).cmdline()
    except (psutil.Error, OSError):
        return f" (process {pid})"
    # `python -m ocs serve ...` or `ocs serve ...`: the word after "ocs" is the command.
    for i, word in enumerate(argv[:-1]):
        if word == "ocs" or word.endswith("/ocs"):
            return f" (process {pid}: ocs {argv[i + 1]})"
    return f" (process {pid})"


def in_use_by(data_dir: Path) -> str | None:
    """How a running ocs process uses ``data_dir``'s embedded stores (``" (process 123:
    ocs serve)"``, possibly empty), None when none does. Reads only: the registry of this
    user's running stores and the lock of the data dir's Redis (any user's)."""
    from ocs import embedded  # lazily: it imports psutil and pgserver's helpers

    wanted = Path(data_dir).resolve()
    running = embedded.running_stores()
    if wanted in running:
        return _command_of(running[wanted])
    if embedded.running_embedded_redis_url(wanted) is not None:
        holder = (wanted / "redis" / "redis.lock").read_text(encoding="utf-8").strip()
        return _command_of(int(holder)) if holder.isdigit() else ""
    return None


async def what_it_holds(
    settings: Settings, redis: Any | None, conn: asyncpg.Connection | None
) -> list[str]:
    """What ``settings.data_dir`` and its embedded stores hold, e.g. ``["pepper",
    "database tables: 60"]``; empty for a data dir that holds nothing yet. ``redis`` and
    ``conn`` are its embedded Redis and PostgreSQL (None for one named by a URL)."""
    data_dir = Path(settings.data_dir)
    found = [name for name in (PEPPER_FILE, TOKEN_FILE) if (data_dir / name).exists()]
    if conn is not None:
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
        )
        if tables:
            found.append(f"database tables: {tables}")
    if redis is not None:
        count = 0
        async for raw in redis.scan_iter(count=_KEYS_UP_TO):
            key = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            # What any process writes for itself (a write probe) says nothing of the store.
            if key in keys.PROCESS_KEYS or keys.key_prefix(key) in keys.TRACE_KEY_PREFIXES:
                continue
            count += 1
            if count >= _KEYS_UP_TO:
                break
        if count:
            found.append(f"Redis keys: {count}" if count < _KEYS_UP_TO else "Redis keys: many")
    return found
