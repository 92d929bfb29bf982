"""The listening sockets of `ocs serve`: bound once, never shared by accident, handed to workers.

A port is bound exactly once, by the process that owns it: `ocs serve` itself,
or the parent of `ocs serve --workers N`, which passes the bound sockets to its
workers as inherited file descriptors (as gunicorn and uvicorn do). No socket
sets SO_REUSEPORT, so a second server on a taken port fails at start with
"address in use" (``AddressInUse``, a ``ConfigError``: the CLI exits with code 2)
instead of silently splitting the traffic between two sets of balances. A host
that has no such address yet, or a name the DNS did not answer for, is
``AddressNotReady`` instead (exit 1, which the systemd units restart): at boot the
address or the DNS may come a little after ocs. A host no restart can make usable
is a ``ConfigError`` (exit 2, one line naming the setting and the value): one that is
neither an IP address nor a host name (``0.0.0.O``), or a name the resolver answered
does not exist.

A worker also inherits the read end of a pipe whose write end only the parent
holds: when the parent dies, even by SIGKILL, the pipe reads end-of-file and the
worker stops (staged shutdown). On Linux the worker also asks the kernel for a
SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``).
"""

import asyncio
import contextlib
import ctypes
import errno
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from ocs.config import ConfigError, Settings

log = logging.getLogger("ocs.listen")

# Names the inherited descriptors of a worker: "http=3,auth=4,acct=5,parent=6,ppid=1234".
HANDOFF_ENV = "OCS_LISTEN_FDS"
# Connections the kernel queues before a worker accepts them (aiohttp's default).
BACKLOG = 128
_PR_SET_PDEATHSIG = 1


class AddressInUse(ConfigError):
    """Another process already listens on a configured address and port."""


class AddressNotReady(OSError):
    """The configured listen host is not usable *yet*: its address is not on this host
    (EADDRNOTAVAIL) or its name does not resolve (a ``gaierror``).

    Not a ``ConfigError``: at boot an address comes late (DHCP or NetworkManager, an
    IPv6 address still tentative during duplicate address detection, a keepalived
    VIP), and so does DNS; a later start binds it. The CLI prints it in one line and
    exits 1, which the systemd units restart. A host that is no address at all, a name
    the resolver says does not exist, a port in use or a port not allowed (EACCES) are
    ``ConfigError``s instead: exit 2.
    """


# getaddrinfo's answers that a name does not exist (the resolver was asked and said
# so: NXDOMAIN, or a name with no address), as opposed to EAI_AGAIN (the DNS did not
# answer: not up yet at boot) and the other failures, which a later start may not meet.
_NO_SUCH_NAME = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)


@dataclass(slots=True)
class ListenSockets:
    """The bound HTTP (TCP) socket and, when RADIUS is on, the two RADIUS (UDP) sockets."""

    http: socket.socket
    radius_auth: socket.socket | None = None
    radius_acct: socket.socket | None = None

    def all(self) -> list[socket.socket]:
        """Every socket held, HTTP first."""
        return [s for s in (self.http, self.radius_auth, self.radius_acct) if s is not None]

    def close(self) -> None:
        """Close this process's copies (a listener that took a socket over closes its own)."""
        for sock in self.all():
            sock.close()

    def ports(self) -> dict[str, int | None]:
        """The bound ports (the real ones, also where port 0 was asked for)."""

        def port(sock: socket.socket | None) -> int | None:
            """The bound port of ``sock``; None for a socket not held."""
            return None if sock is None else int(sock.getsockname()[1])

        return {
            "http_port": port(self.http),
            "radius_auth_port": port(self.radius_auth),
            "radius_acct_port": port(self.radius_acct),
        }


def _address(
    host: str, port: int, kind: socket.SocketKind, setting: str
) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    """(family, sockaddr) of the first address ``host`` resolves to, for listening.

    ``ConfigError`` for a host no later start can use (not an address and not a host
    name, or a name that does not exist); ``AddressNotReady`` for a name the DNS did
    not answer for (yet).
    """
    name = _host_setting(setting)
    if host and not _could_be_a_host(host):
        raise ConfigError(f"{name}: {host!r} is neither an IP address nor a host name (mistyped?)")
    try:
        found = socket.getaddrinfo(host or None, port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        if exc.errno in _NO_SUCH_NAME and "%" not in host:
            # The resolver answered: no such name. A restart asks the same question and
            # gets the same answer (an IPv6 scope names an interface, which may come late).
            raise ConfigError(
                f"{name}: {host!r} does not resolve: {exc.strerror} (mistyped? the"
                " resolver says no such name exists)"
            ) from None
        # The DNS not answering (EAI_AGAIN): not up yet at boot; a later start resolves it.
        raise AddressNotReady(f"{name}: cannot resolve {host!r} (yet): {exc.strerror}") from None
    family, _, _, _, sockaddr = found[0]
    return family, sockaddr


def _could_be_a_host(host: str) -> bool:
    """Whether ``host`` may be an IP address or a host name at all, asking no resolver.

    Refused: a colon outside an IPv6 address (no host name has one), and a dotted form
    the system does not take as an IPv4 address but no host name can have either: an
    all-numeric last label (``300.1.1.1``, ``10.0.O.1``; RFC 3696 section 2), or four
    labels of which three are numbers (``0.0.0.O``, ``192.168.1.1O``).
    """
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if ":" in host:
        return False
    try:
        socket.inet_aton(host)  # the forms getaddrinfo takes too: 127.1, 0x7f.0.0.1
        return True
    except OSError:
        pass
    labels = host.removesuffix(".").split(".")
    numeric = [label.isascii() and label.isdigit() for label in labels]
    return not (numeric[-1] or (len(labels) == 4 and sum(numeric) >= 3))


def _host_setting(setting: str) -> str:
    """The host setting beside a port setting: ``http_port`` -> ``http_host``,
    ``radius_auth_port`` -> ``radius_host``."""
    return f"{setting.split('_', 1)[0]}_host"


def _refuse(
    exc: OSError, setting: str, host: str, port: int, what: str
) -> ConfigError | AddressNotReady:
    """The error for a failed bind, naming the setting: ``AddressInUse`` for a taken
    port, ``AddressNotReady`` for an address not (yet) on this host, else ``ConfigError``."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return AddressInUse(
            f"{setting}: address in use: {where} ({what}); another ocs serve or another"
            " program listens there"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return AddressNotReady(
            f"{_host_setting(setting)}: cannot listen on {where} ({what}): {host} is not"
            f" an address of this host (yet): {exc.strerror}"
        )
    return ConfigError(f"{setting}: cannot listen on {where} ({what}): {exc.strerror}")


def bind_tcp(host: str, port: int, setting: str = "http_port") -> socket.socket:
    """A listening TCP socket; ``AddressInUse`` when another socket listens there."""
    family, sockaddr = _address(host, port, socket.SOCK_STREAM, setting)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR only lets a restarted server bind past connections left in
        # TIME_WAIT; on Linux it never admits a second listener (SO_REUSEPORT would).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        # Listening now, not when the server is ready: an unlistened bound socket would
        # not yet keep a second server out.
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise _refuse(exc, setting, host, port, "HTTP") from None
    sock.setblocking(False)
    return sock


def bind_udp(host: str, port: int, setting: str) -> socket.socket:
    """A bound UDP socket, with no reuse option: a taken port raises ``AddressInUse``."""
    family, sockaddr = _address(host, port, socket.SOCK_DGRAM, setting)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise _refuse(exc, setting, host, port, "RADIUS") from None
    sock.setblocking(False)
    return sock


def bind_all(settings: Settings) -> ListenSockets:
    """Bind every port ``settings`` asks for, or none: a failure closes what was bound."""
    bound = ListenSockets(http=bind_tcp(settings.http_host, settings.http_port))
    try:
        if settings.radius_enabled:
            bound.radius_auth = bind_udp(
                settings.radius_host, settings.radius_auth_port, "radius_auth_port"
            )
            bound.radius_acct = bind_udp(
                settings.radius_host, settings.radius_acct_port, "radius_acct_port"
            )
    except BaseException:
        bound.close()
        raise
    return bound


# -- handing the sockets to workers ---------------------------------------------------


def handoff(sockets: ListenSockets, parent_fd: int) -> tuple[str, list[int]]:
    """(value of ``HANDOFF_ENV``, descriptors to pass) for a worker of this process."""
    parts = [f"http={sockets.http.fileno()}"]
    if sockets.radius_auth is not None:
        parts.append(f"auth={sockets.radius_auth.fileno()}")
    if sockets.radius_acct is not None:
        parts.append(f"acct={sockets.radius_acct.fileno()}")
    parent, parent_fds = parent_handoff(parent_fd)
    parts.append(parent)
    return ",".join(parts), [s.fileno() for s in sockets.all()] + parent_fds


def parent_handoff(parent_fd: int) -> tuple[str, list[int]]:
    """(value of ``HANDOFF_ENV``, descriptors to pass) for a child that listens on
    nothing (the background process): only the parent's pipe and pid."""
    return f"parent={parent_fd},ppid={os.getpid()}", [parent_fd]


@dataclass(frozen=True, slots=True)
class Parent:
    """The parent a child watches: the read end of its pipe, and its pid."""

    fd: int
    pid: int


@dataclass(slots=True)
class Inherited:
    """What a worker received from its parent."""

    sockets: ListenSockets
    parent: Parent


def take_inherited(environ: MutableMapping[str, str] | None = None) -> Inherited | None:
    """The sockets a parent handed to this process, or None when it was not started so.

    The variable is removed, so that nothing this process starts inherits it.
    """
    taken = _take_handoff(environ)
    if taken is None:
        return None
    value, fields = taken
    try:
        http = socket.socket(fileno=fields["http"])
        auth = socket.socket(fileno=fields["auth"]) if "auth" in fields else None
        acct = socket.socket(fileno=fields["acct"]) if "acct" in fields else None
        parent = Parent(fields["parent"], fields["ppid"])
    except (KeyError, OSError) as exc:
        raise ConfigError(f"{HANDOFF_ENV}: unusable inherited sockets {value!r}: {exc}") from None
    for sock in (http, auth, acct):
        if sock is not None:
            sock.setblocking(False)
    return Inherited(ListenSockets(http, auth, acct), parent)


def take_parent(environ: MutableMapping[str, str] | None = None) -> Parent | None:
    """The parent that handed this process only its pipe (``parent_handoff``), or None
    when it was not started so. The variable is removed, as ``take_inherited`` does."""
    taken = _take_handoff(environ)
    if taken is None:
        return None
    value, fields = taken
    try:
        return Parent(fields["parent"], fields["ppid"])
    except KeyError as exc:
        raise ConfigError(f"{HANDOFF_ENV}: no parent pipe in {value!r}: {exc}") from None


def _take_handoff(
    environ: MutableMapping[str, str] | None,
) -> tuple[str, Mapping[str, int]] | None:
    """``HANDOFF_ENV``, removed from the environment, and its fields; None when unset."""
    env = os.environ if environ is None else environ
    value = env.pop(HANDOFF_ENV, None)
    if not value:
        return None
    return value, _parse(value)


def _parse(value: str) -> Mapping[str, int]:
    """The name=descriptor pairs of ``HANDOFF_ENV``."""
    fields: dict[str, int] = {}
    for part in value.split(","):
        name, _, number = part.partition("=")
        try:
            fields[name.strip()] = int(number)
        except ValueError:
            raise ConfigError(f"{HANDOFF_ENV}: not a descriptor list: {value!r}") from None
    return fields


# -- dying with the parent ------------------------------------------------------------


def ask_sigterm_on_parent_death() -> None:
    """Linux: the kernel sends this process SIGTERM when its parent dies (a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def watch_parent(parent: Parent, stopping: asyncio.Event) -> Callable[[], None]:
    """Set ``stopping`` when the parent is gone: its pipe reads end-of-file.

    The pipe covers what the death signal cannot: a parent already dead before this
    process asked for the signal, and systems without prctl. Returns the stop of the
    watch: it stops reading the pipe and closes it (nothing when the pipe already ended).
    """
    loop = asyncio.get_running_loop()
    fd = parent.fd
    os.set_blocking(fd, False)
    watching = True

    def unwatch() -> None:
        """Stop reading the pipe and close it, once."""
        nonlocal watching
        if watching:
            watching = False
            loop.remove_reader(fd)
            os.close(fd)

    def readable() -> None:
        """End-of-file on the pipe: the parent is gone, so stop."""
        try:
            data = os.read(fd, 512)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return  # the parent never writes; nothing to do
        unwatch()
        log.warning("parent process gone; stopping this worker", extra={"parent_pid": parent.pid})
        stopping.set()

    loop.add_reader(fd, readable)
    if os.getppid() != parent.pid:
        # Died before the death signal was asked for; the pipe says so too, but at once is
        # better than after the first loop turn.
        readable()
    return unwatch
