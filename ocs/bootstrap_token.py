"""The bootstrap admin token handed to the operator: in a file only its owner reads.

``ocs serve``'s first start makes an admin token (``api_tokens.ensure_bootstrap_admin_token``)
and must hand it to someone. Not through stderr: under the shipped systemd unit and
compose file stderr is the journal and ``docker logs``, kept and shipped like any log.
So the token goes to ``<data_dir>/bootstrap-admin-token``, mode 0600, written before
the token is stored; what is printed is the file's path. Only a terminal (stderr a
TTY: someone is watching, nothing keeps it) also sees the token itself.
"""

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TextIO

import asyncpg

from ocs import api_tokens
from ocs.config import Settings

log = logging.getLogger("ocs.api_tokens")

TOKEN_FILE = "bootstrap-admin-token"


def token_path(settings: Settings) -> Path:
    """Where ``ocs serve`` writes the bootstrap admin token it made."""
    return settings.data_dir / TOKEN_FILE


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable and writable by this user only (0600) from
    the first byte: made under another name and renamed over any earlier file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a scratch file left by a crash may have kept another mode
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            fd = -1
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(scratch, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            scratch.unlink()
        raise


async def hand_over(pool: asyncpg.Pool, settings: Settings, stderr: TextIO = sys.stderr) -> None:
    """Make the bootstrap admin token when no admin token exists, write it to
    ``token_path`` and say where (on ``stderr``; the token too when it is a terminal).

    A file that cannot be written stores no token: the error is logged with the
    command that makes an admin token instead (``ocs tokens create``).
    """
    path = token_path(settings)
    try:
        made = await api_tokens.ensure_bootstrap_admin_token(
            pool, settings, keep=lambda token: write_private(path, token + "\n")
        )
    except OSError as error:
        log.error(
            "no bootstrap admin token made: its file could not be written; fix the data"
            " directory and restart, or make one with"
            " `ocs tokens create --name NAME --role admin`",
            extra={"path": str(path), "error": str(error)},
        )
        return
    if made is None:
        return
    lines = [f"ocs: bootstrap admin token written to {path} (readable by this user only)"]
    if stderr.isatty():
        lines.append(f"ocs: bootstrap admin token (only its digest is kept): {made}")
    print("\n".join(lines), file=stderr, flush=True)
