"""The server's pepper: read from its file, made at the server's first start, checked
against the stores (decision 0054).

PIN and password digests are keyed by the pepper (``ocs.balances.digests``), so a copy
of Redis or PostgreSQL alone does not give PINs and passwords away. It lives in a
file: ``pepper_file`` when set (a secret the deployment hands every ocs process: a
Docker or systemd credential), else ``<data_dir>/pepper``, made with 32 random bytes
at the first start, readable by its owner only (mode 0600), like the bootstrap admin
token. It is never logged, printed or stored in Redis or PostgreSQL.

Every process that makes or looks up digests (``ocs serve`` and its workers, its
background process, ``ocs demo``, ``ocs pins generate``, ``ocs credentials rekey``) must
use the same pepper, or the cards one makes open in no other. PostgreSQL keeps one
check value of it (table ``pepper_check``): the first process records it, and one
started with another pepper (another file, another user's data dir) stops at once with
exit code 2, naming ``pepper_file``, before it makes or looks up a digest. Only ``ocs
serve`` and ``ocs demo`` make the file (``create=True``; a ``--workers`` parent makes
it before its workers start): ``ocs pins generate`` and ``ocs credentials rekey`` need
the deployment's file and stop without one, since a pepper they made (before the
server's first start, in a container without the data volume, as root) would key
cards and re-keyed digests that the server never opens. Other commands, and the
billing worker, which touches no PIN or password, load no pepper
(``open_runtime(pepper=False)``): they neither need its file nor make one.
"""

import asyncio
import contextlib
import logging
import os
import secrets
from pathlib import Path

import asyncpg

from ocs.balances.digests import MIN_PEPPER_BYTES, Digests
from ocs.config import ConfigError, Settings, read_setting_file

log = logging.getLogger("ocs.pepper")

PEPPER_FILE = "pepper"
# How an operator makes a pepper file of their own: 32 random bytes, as hex text.
MAKE_ONE = "`openssl rand -hex 32 > FILE; chmod 600 FILE`"


def pepper_path(settings: Settings) -> Path:
    """The pepper's file: ``pepper_file``, else ``pepper`` in the data directory."""
    return settings.pepper_file or settings.data_dir / PEPPER_FILE


def _label(settings: Settings) -> str:
    """How an error names the pepper's file: the setting, or the default path's role."""
    return "pepper_file" if settings.pepper_file is not None else "pepper (pepper_file unset)"


def read_pepper(path: Path, label: str) -> bytes | None:
    """The pepper in ``path`` (its text, surrounding white space left out), None when there
    is no such file; ``ConfigError`` naming ``label`` when it cannot be one."""
    text = read_setting_file(path, label)
    if text is None:
        return None
    pepper = text.strip().encode()
    if len(pepper) < MIN_PEPPER_BYTES:
        raise ConfigError(
            f"{label}: {path} holds {len(pepper)} characters; a pepper needs at least"
            f" {MIN_PEPPER_BYTES}: make one with {MAKE_ONE}"
        )
    return pepper


def make_pepper(path: Path, label: str) -> bytes:
    """Write a new random pepper to ``path`` (mode 0600) unless the file exists already,
    and return the pepper the file holds: several processes starting at once (serve
    workers) all end with the one the first of them wrote."""
    text = secrets.token_hex(MIN_PEPPER_BYTES) + "\n"
    # Its own scratch file for every call, threads of one process included: a shared one
    # was unlinked by whichever call finished first, under the others' feet.
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # never another mode, whatever the umask
            _give_to_directory_owner(fd, path.parent)
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        # A link never replaces a file: whoever links first wrote the pepper, whole.
        with contextlib.suppress(FileExistsError):
            os.link(scratch, path)
    except OSError as exc:
        raise ConfigError(
            f"{label}: cannot write a new pepper to {path}: {exc.strerror}; make the"
            f" directory writable, or set pepper_file to a file made with {MAKE_ONE}"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            scratch.unlink()
    pepper = read_pepper(path, label)
    if pepper is None:  # removed at once by someone else: nothing sane to go on with
        raise ConfigError(f"{label}: {path} vanished as it was made")
    return pepper


def _give_to_directory_owner(fd: int, directory: Path) -> None:
    """Root making the pepper in a data dir another user owns (``ocs serve`` started by
    root on a host whose service runs as ``ocs``) gives the file to that user: a file
    root keeps, mode 0600, would stop every later start of the service."""
    if os.geteuid() != 0:
        return
    owner = directory.stat()
    if owner.st_uid != 0:
        os.fchown(fd, owner.st_uid, owner.st_gid)


async def load_digests(settings: Settings, pool: asyncpg.Pool, *, create: bool = False) -> Digests:
    """The digests of this deployment's pepper; ``ConfigError`` (naming ``pepper_file``)
    when the pepper is not the one PostgreSQL's check value was made with, or when it
    cannot be read or made.

    ``create``: make the file when there is none yet and PostgreSQL records no check
    value (``ocs serve``, ``ocs demo``); other commands need the existing file."""
    path, label = pepper_path(settings), _label(settings)
    async with pool.acquire() as conn:
        # The check value before the file: a process that records it has made its file
        # first, so a check value read here means that file is there to be read below
        # (read the other way round, a process starting beside the first one read "no
        # file", then the check value, and stopped with a false "does not exist").
        recorded: str | None = await conn.fetchval("SELECT fingerprint FROM pepper_check")
        pepper = await asyncio.to_thread(read_pepper, path, label)
        if pepper is None:
            if settings.pepper_file is not None:
                # A named file that is missing is a mistake (a secret not mounted): a new
                # pepper there would open none of the cards made before.
                raise ConfigError(f"pepper_file: file not found: {path}; make one with {MAKE_ONE}")
            if not create:
                raise ConfigError(
                    f"{label}: {path} does not exist, and only `ocs serve` and `ocs demo`"
                    " make one: start `ocs serve` once first, or set pepper_file to the file"
                    " the ocs server uses"
                )
            if recorded is not None:
                raise ConfigError(
                    f"{label}: {path} does not exist, yet the stores hold PIN and password"
                    " digests keyed by a pepper: set pepper_file to the file the other ocs"
                    " processes use (or copy it there, mode 0600)"
                )
            pepper = await asyncio.to_thread(make_pepper, path, label)
            log.info(
                "made a new pepper for PIN and password digests: keep a copy of its file"
                " with the backups, apart from them; every ocs process must use it",
                extra={"path": str(path)},
            )
        digests = Digests(pepper)
        fingerprint = digests.fingerprint()
        if recorded is None:
            # The first process records it; one racing it with another pepper loses here.
            recorded = await conn.fetchval(
                "INSERT INTO pepper_check (fingerprint) VALUES ($1) ON CONFLICT (only_row)"
                " DO UPDATE SET only_row = pepper_check.only_row RETURNING fingerprint",
                fingerprint,
            )
    if recorded != fingerprint:
        raise ConfigError(
            f"{label}: {path} is not the pepper this deployment's PIN and password digests"
            " are keyed by (PostgreSQL's check value differs): every ocs process must use"
            " the same pepper file"
        )
    return digests
