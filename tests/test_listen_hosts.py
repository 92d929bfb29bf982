"""A listen host `ocs serve` cannot use: refused for good (exit 2) or tried again (exit 1).

A host that is no address and no host name (``0.0.0.O``), or a name the resolver
answered does not exist, is a configuration error: exit 2, which the units do not
restart, one line naming the setting and the value. A name the DNS did not answer
for (not up yet at boot) stays exit 1, which they restart until it resolves. What the
resolver answers is faked here: the machine running the tests may have no DNS.
"""

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ocs.cli import main
from ocs.config import ConfigError
from ocs.listen_sockets import bind_tcp, bind_udp
from tests.ports import free_port

FAKE_NAME = "ocs-listen.example"


def _resolver_answering(code: int, says: str) -> Callable[..., Any]:
    """getaddrinfo failing with ``code`` for ``FAKE_NAME``, the real one for anything else."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == FAKE_NAME:
            raise socket.gaierror(code, says)
        return real(host, *args, **kwargs)

    return getaddrinfo


def _serve(tmp_path: Path, *flags: str) -> int:
    """``ocs serve`` in this process on backends that are not there: the ports are
    bound before either is asked, so a listen host it cannot use ends it."""
    return main(
        [
            "serve",
            "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
            "--database-url", f"postgresql://ocs@127.0.0.1:{free_port()}/ocs",
            "--data-dir", str(tmp_path),
            "--http-host", "127.0.0.1", "--http-port", "0",
            "--radius-host", "127.0.0.1", "--radius-auth-port", "0", "--radius-acct-port", "0",
            *flags,
        ]
    )  # fmt: skip


def test_a_name_the_resolver_says_does_not_exist_exits_2_naming_setting_and_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to exit 1 ("cannot resolve (yet)"), restarted every few seconds for ever."""
    monkeypatch.setattr(
        socket, "getaddrinfo", _resolver_answering(socket.EAI_NONAME, "Name or service not known")
    )
    code = _serve(tmp_path, "--radius-host", FAKE_NAME)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines()[-1] == (
        f"ocs: configuration error: radius_host: {FAKE_NAME!r} does not resolve: Name or"
        " service not known (mistyped? the resolver says no such name exists)"
    )


def test_a_name_the_dns_does_not_answer_for_yet_still_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """At boot the DNS may come after ocs: the unit restarts it until the name resolves."""
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        _resolver_answering(socket.EAI_AGAIN, "Temporary failure in name resolution"),
    )
    code = _serve(tmp_path, "--http-host", FAKE_NAME)
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.strip().splitlines()[-1] == (
        f"ocs: refused by the system: http_host: cannot resolve {FAKE_NAME!r} (yet):"
        " Temporary failure in name resolution"
    )


@pytest.mark.parametrize(
    "host", ["0.0.0.O", "10.0.O.1", "192.168.1.1O", "300.1.1.1", "1.2.3.4.5", "::g", "host:80"]
)
def test_a_host_no_host_name_can_be_is_refused_without_asking_the_resolver(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused whatever the DNS would say: with the DNS not up at boot, these were
    "cannot resolve (yet)" too, and restarted for ever."""

    def no_resolver(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_resolver)
    with pytest.raises(ConfigError) as refused:
        bind_udp(host, 0, "radius_auth_port")
    assert str(refused.value) == (
        f"radius_host: {host!r} is neither an IP address nor a host name (mistyped?)"
    )
    with pytest.raises(ConfigError, match=f"^http_host: {host!r} is neither"):
        bind_tcp(host, 0)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1", "localhost", ""])
def test_addresses_and_names_that_resolve_still_bind(host: str) -> None:
    bind_tcp(host, 0).close()
