"""Requests for FreeRADIUS's ``radclient``: its input text and a shell command line.

``ocs demo`` prints :func:`radclient_command` so that a person can send a RADIUS
request to ocs by pasting one line; the tests feed :func:`radclient_input` to a
real radclient. radclient reads one attribute per line (or comma separated on
one line) in the form ``Name = "value"``; inside double quotes ``\\"``,
``\\\\``, ``\\n``, ``\\r``, ``\\t`` and octal ``\\ooo`` are escapes. A quoted
value also works for integer, enumerated (``"Start"``), IP address and
``"0x..."`` octets attributes, so every value is quoted.

radclient 3.2.1 adds a Message-Authenticator only when asked:
``Message-Authenticator = 0x00`` in the input makes it compute the real HMAC-MD5
when it signs the packet (newer radclients add one to every Access-Request).
"""

import re
import shlex
from collections.abc import Iterable, Mapping

KINDS = frozenset({"auth", "acct", "status", "coa", "disconnect"})

MESSAGE_AUTHENTICATOR = "Message-Authenticator"

AttributeValue = str | int | bytes
Attributes = Mapping[str, AttributeValue] | Iterable[tuple[str, AttributeValue]]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote_value(value: AttributeValue) -> str:
    """Write one value as radclient reads it: a quoted string, or ``0x...`` for bytes."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, bool):
        raise TypeError("a RADIUS attribute value cannot be a bool")
    out = []
    for char in str(value):
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def attribute_lines(attributes: Attributes, *, message_authenticator: bool = True) -> list[str]:
    """``Name = "value"`` lines for radclient, Message-Authenticator first if asked for.

    A Message-Authenticator already in ``attributes`` is kept where it is.
    """
    pairs = list(attributes.items() if isinstance(attributes, Mapping) else attributes)
    lines = []
    for name, value in pairs:
        if not _NAME_RE.match(name):
            raise ValueError(f"not a RADIUS attribute name: {name!r}")
        lines.append(f"{name} = {quote_value(value)}")
    if message_authenticator and not any(name == MESSAGE_AUTHENTICATOR for name, _ in pairs):
        lines.insert(0, f"{MESSAGE_AUTHENTICATOR} = 0x00")
    return lines


def radclient_input(attributes: Attributes, *, message_authenticator: bool = True) -> str:
    """radclient's standard input for one request: one attribute per line."""
    return (
        "\n".join(attribute_lines(attributes, message_authenticator=message_authenticator)) + "\n"
    )


def radclient_command(
    kind: str,
    port: int,
    secret: str,
    attributes: Attributes,
    *,
    server: str = "127.0.0.1",
    message_authenticator: bool = True,
) -> str:
    """A copy-pasteable shell command that sends one request with radclient.

    For example ``echo 'Message-Authenticator = 0x00, User-Name = "alice"' |
    radclient -x 127.0.0.1:1812 auth testing123``. ``-x`` makes radclient print
    the reply's attributes. Text with a backslash is written with ``printf '%s\\n'``
    instead of ``echo``, which some shells (dash) let rewrite escapes.
    """
    if kind not in KINDS:
        raise ValueError(f"radclient request kind must be one of {sorted(KINDS)}, not {kind!r}")
    text = ", ".join(attribute_lines(attributes, message_authenticator=message_authenticator))
    feed = f"printf '%s\\n' {shlex.quote(text)}" if "\\" in text else f"echo {shlex.quote(text)}"
    target = shlex.quote(f"{server}:{port}")
    return f"{feed} | radclient -x {target} {kind} {shlex.quote(secret)}"
