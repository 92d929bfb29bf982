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
"""

import contextlib
import logging
import os
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("ocs.systemd")

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
READY = "READY=1"
STOPPING = "STOPPING=1"


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
    """The ``$NOTIFY_SOCKET`` a ``--workers`` parent gives its workers, counting their
    ``READY=1``: the parent is ready once ``expected`` of them are.

    Workers run ``ocs serve`` unchanged; their messages come here instead of to systemd,
    which would refuse them (not the main process). A restarted worker's ``READY=1``
    counts again, but the parent says ``READY=1`` once.
    """

    def __init__(self, expected: int) -> None:
        """A socket in a new private directory, waiting for ``expected`` workers."""
        self._expected = expected
        self._ready = 0
        self._directory = Path(tempfile.mkdtemp(prefix="ocs-notify-"))
        self.address = str(self._directory / "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.bind(self.address)
        self._sock.setblocking(False)

    def all_ready(self) -> bool:
        """Read what the workers sent so far (without waiting): all of them ready yet?"""
        while True:
            try:
                message = self._sock.recv(4096)
            except BlockingIOError:
                break
            if READY.encode() in message.split(b"\n"):
                self._ready += 1
        return self._ready >= self._expected

    def close(self) -> None:
        """Close the socket and remove its directory."""
        self._sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.address)
        with contextlib.suppress(OSError):
            self._directory.rmdir()
