"""Test harness that sends RADIUS requests with FreeRADIUS's real ``radclient``.

Not a test module: tests ``await radclient("auth", port, secret, {...})`` and get
a :class:`RadiusReply`. radclient runs with ``-x``; FreeRADIUS 3.2.1 prints::

    Sent Access-Request Id 134 from 0.0.0.0:36089 to 127.0.0.1:18120 length 104
    \tMessage-Authenticator = 0x00
    \tUser-Name = "alice"
    Received Access-Accept Id 134 from 127.0.0.1:18120 to 127.0.0.1:36089 length 106
    \tMessage-Authenticator = 0x569096a6a005d1c893c70f4ade2fe662
    \tSession-Timeout = 600
    \th323-credit-time = "h323-credit-time=600"

or ``(0) No reply from server for ID 101 socket 3`` (exit status 1) when nothing
came back in time, or when the reply failed verification (a wrong secret: its
reason goes to stderr). An Access-Reject also exits with 1, so the reply code is
read from the output, never from the exit status.
"""

import asyncio
import os
import re
import shutil
from dataclasses import dataclass, field

import pytest

from ocs.radius.radclient_hint import KINDS, Attributes, radclient_command, radclient_input

__all__ = [
    "RADCLIENT",
    "RadiusReply",
    "radclient",
    "radclient_command",
    "unquote",
]

RADCLIENT = os.environ.get("OCS_TEST_RADCLIENT") or shutil.which("radclient")


_RECEIVED_RE = re.compile(r"^Received (\S+) Id \d+ from ")
_ATTRIBUTE_RE = re.compile(r"^\s+([^\s=]+) = (.*)$")
_UNESCAPE_RE = re.compile(rb'\\([0-7]{3}|["\\nrt])')
_SIMPLE_ESCAPES = {b'"': b'"', b"\\": b"\\", b"n": b"\n", b"r": b"\r", b"t": b"\t"}


@dataclass
class RadiusReply:
    """What radclient received: the reply code and its attributes, or code None."""

    code: str | None
    """``"Access-Accept"``, ``"Access-Reject"``, ``"Accounting-Response"``, ...; None:
    no (valid) reply."""
    attributes: dict[str, list[str]] = field(default_factory=dict)
    """Attribute name -> values as radclient printed them, quotes and escapes removed
    (integers and enumerations as printed: ``"600"``, ``"Start"``; octets as
    ``"0x..."``; dates as radclient's text)."""
    output: str = ""
    """radclient's stdout and stderr, for assertion messages."""

    def first(self, name: str) -> str | None:
        """The first value of an attribute, or None if the reply has none."""
        values = self.attributes.get(name)
        return values[0] if values else None


def unquote(text: str) -> str:
    """A value as radclient prints it: ``"..."`` with C-like escapes, else as is."""
    if len(text) < 2 or not (text.startswith('"') and text.endswith('"')):
        return text

    def replace(match: re.Match[bytes]) -> bytes:
        escape = match.group(1)
        if escape in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[escape]
        return bytes([int(escape, 8) & 0xFF])

    raw = _UNESCAPE_RE.sub(replace, text[1:-1].encode("utf-8"))
    return raw.decode("utf-8", errors="replace")


def parse_output(output: str) -> RadiusReply:
    """The reply in radclient ``-x`` output; code None when there is none."""
    code: str | None = None
    attributes: dict[str, list[str]] = {}
    in_reply = False
    for line in output.splitlines():
        match = _RECEIVED_RE.match(line)
        if match:
            code = match.group(1)
            attributes = {}
            in_reply = True
            continue
        if not in_reply:
            continue
        attribute = _ATTRIBUTE_RE.match(line)
        if attribute is None:
            in_reply = False
            continue
        attributes.setdefault(attribute.group(1), []).append(unquote(attribute.group(2)))
    return RadiusReply(code, attributes, output)


async def radclient(
    kind: str,
    port: int,
    secret: str,
    attributes: Attributes,
    *,
    message_authenticator: bool = True,
    timeout: float = 1.0,  # noqa: ASYNC109 - radclient's own -t, not an asyncio deadline
    retries: int = 1,
    server: str = "127.0.0.1",
    dictionary_dir: str | None = None,
) -> RadiusReply:
    """Send one request with radclient and return what it received.

    ``kind`` is ``"auth"`` or ``"acct"`` (or another radclient command).
    ``message_authenticator`` puts ``Message-Authenticator = 0x00`` first in the
    request, which radclient replaces by the real HMAC-MD5. radclient sends
    ``retries`` times in all, waiting ``timeout`` seconds each (radclient rounds
    short waits up, to about a second). ``dictionary_dir`` is radclient's ``-D``
    (default /usr/share/freeradius, which knows the Cisco VSAs).
    """
    if RADCLIENT is None:
        # Never skipped: CI installs it (.ci/run), and so must a developer.
        pytest.fail("FreeRADIUS radclient is not installed: apt-get install freeradius-utils")
    if kind not in KINDS:
        raise ValueError(f"radclient kind must be one of {sorted(KINDS)}, not {kind!r}")
    args = [RADCLIENT, "-x", "-t", f"{timeout:g}", "-r", str(max(1, retries))]
    if dictionary_dir is not None:
        args += ["-D", dictionary_dir]
    args += [f"{server}:{port}", kind, secret]
    text = radclient_input(attributes, message_authenticator=message_authenticator)

    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # radclient bounds itself; this only guards against a hung process.
    deadline = (timeout + 1.5) * max(1, retries) + 5.0
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(text.encode()), deadline)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"radclient did not finish in {deadline:g}s: {args}") from None
    output = stdout.decode(errors="replace") + stderr.decode(errors="replace")
    return parse_output(output)
