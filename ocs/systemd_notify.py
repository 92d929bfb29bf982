"""Readiness for systemd's ``Type=notify`` units: the sd_notify protocol, in the standard library.

A service started by systemd with ``Type=notify`` finds ``$NOTIFY_SOCKET`` in its
environment: a unix datagram socket (a path, or an abstract name written with a
leading ``@``). Each datagram is newline-separated ``KEY=value`` lines
(sd_notify(3)). ``ocs serve`` and ``ocs billing-worker`` send ``READY=1`` once
they can do their work (catalog loaded, listening) and ``STOPPING=1`` when their
shutdown begins; without ``$NOTIFY_SOCKET`` (a terminal, a test, another
supervisor) every call here does nothing.

systemd accepts these messages from the unit's main process only (the default
``NotifyAccess=main``). Under ``ocs serve --workers N`` that is the parent, which
serves nothing itself: it gives its workers a socket of its own as their
``$NOTIFY_SOCKET`` (``WorkerReadiness``) and says ``READY=1`` once every worker has.
The parent makes that socket also without systemd, to know which workers came up.
"""

import contextlib
import logging
import os
import socket
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("ocs.systemd")

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
READY = "READY=1"
STOPPING = "STOPPING=1"
# The credentials the kernel attaches to a unix socket message: struct ucred (pid, uid, gid).
_UCRED = struct.Struct("iII")


def _address(name: str) -> str:
    """The socket address a ``$NOTIFY_SOCKET`` value names: ``@x`` is the abstract ``\\0x``."""
    return "\0" + name[1:] if name.startswith("@") else name


def notify(*assignments: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``assignments`` (``READY=1``, ``STATUS=...``) as one datagram to ``$NOTIFY_SOCKET``.

    True when sent; False when there is no such socket, or it cannot be reached (logged:
    a supervisor that went away must not stop the service it supervised).
    """
    name = (os.environ if environ is None else environ).get(NOTIFY_SOCKET_ENV, "")
    if not name.startswith(("/", "@")):
        # Unset, or an address this process cannot use (systemd's vsock: form is for VMs).
        if name:
            log.warning("NOTIFY_SOCKET is not a unix socket; not notifying", extra={"at": name})
        return False
    message = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, _address(name))
    except OSError as exc:
        log.warning("cannot notify the service manager", extra={"at": name, "error": exc.strerror})
        return False
    return True


def ready(status: str) -> bool:
    """Tell the service manager this process is ready, with a one-line ``status``."""
    return notify(READY, f"STATUS={status}")


def stopping(status: str = "stopping") -> bool:
    """Tell the service manager this process has begun its shutdown."""
    return notify(STOPPING, f"STATUS={status}")


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a service manager waits for this process's notifications."""
    return bool((os.environ if environ is None else environ).get(NOTIFY_SOCKET_ENV))


class WorkerReadiness:
    """The ``$NOTIFY_SOCKET`` a ``--workers`` parent gives its processes: which of them said
    ``READY=1``.

    Workers run ``ocs serve`` unchanged; their messages come here instead of to systemd,
    which would refuse them (not the main process). The kernel names each message's
    sender (``SO_PASSCRED``, as systemd's own socket asks), so the parent knows which
    process is ready: it says ``READY=1`` to systemd once every worker has, and it gives
    up on a process that keeps exiting without ever being ready (ocs.workers). The
    parent makes it also without systemd: the workers' readiness is its own concern.
    """

    def __init__(self) -> None:
        """A socket in a new private directory, taking each sender's credentials."""
        self._directory = Path(tempfile.mkdtemp(prefix="ocs-notify-"))
        self.address = str(self._directory / "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(self.address)
        self._sock.setblocking(False)

    def ready_pids(self) -> set[int]:
        """The processes that said ``READY=1`` since the last call (read without waiting)."""
        pids: set[int] = set()
        while True:
            try:
                message, ancillary, _flags, _address = self._sock.recvmsg(
                    4096, socket.CMSG_SPACE(_UCRED.size)
                )
            except BlockingIOError:
                break
            if READY.encode() not in message.split(b"\n"):
                continue
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, _uid, _gid = _UCRED.unpack(data[: _UCRED.size])
                    pids.add(pid)
        return pids

    def close(self) -> None:
        """Close the socket and remove its directory."""
        self._sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.address)
        with contextlib.suppress(OSError):
            self._directory.rmdir()
