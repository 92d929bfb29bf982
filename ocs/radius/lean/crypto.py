"""The MD5 constructions of RADIUS, done with as few Python steps as the standard library
allows: HMAC-MD5 from cached key pads (RFC 2104) and User-Password hiding (RFC 2865 5.2).

``hmac.digest`` derives the key pads on every call; a NAS's secret never changes between
its packets, so the pads are hashed once per secret and copied per message, which halves
the cost of a Message-Authenticator (measured in benchmarks/radius_codec.py).
"""

import hashlib
import importlib
from collections.abc import Callable
from typing import Any

from pyrad.packet import PacketError


def _md5_constructor() -> Callable[..., Any]:
    """CPython's own MD5 (``_md5``) where the build has it, else hashlib's.

    RADIUS hashes a few hundred bytes at a time, where OpenSSL's per-call overhead (a
    digest context made, copied and freed) is most of the cost: an HMAC from cached
    pads takes 0.70 us with ``_md5`` against 1.98 us with ``hashlib.md5``, one packet's
    MD5 0.46 against 0.74 us (benchmarks/RESULTS.md, session 18). The digests are the
    same; ``_md5`` is a private module, so a build without it falls back.
    """
    try:
        constructor: Callable[..., Any] = importlib.import_module("_md5").md5
    except (ImportError, AttributeError):
        return hashlib.md5
    return constructor


# MD5 for every RADIUS construction on the request path (``md5(data).digest()``).
md5 = _md5_constructor()

_BLOCK = 64  # MD5's block size, the HMAC key length
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
# Secrets seen are few (one per NAS); the bound only keeps reloads from piling up pads.
_MAX_SECRETS = 4096


class Signer:
    """HMAC-MD5 under a RADIUS shared secret, with the key pads hashed once per secret."""

    def __init__(self) -> None:
        self._pads: dict[bytes, tuple[Any, Any]] = {}

    def _pads_of(self, secret: bytes) -> tuple[Any, Any]:
        pads = self._pads.get(secret)
        if pads is None:
            key = secret if len(secret) <= _BLOCK else md5(secret).digest()
            key = key.ljust(_BLOCK, b"\x00")
            pads = (md5(key.translate(_IPAD)), md5(key.translate(_OPAD)))
            if len(self._pads) >= _MAX_SECRETS:
                self._pads.clear()
            self._pads[secret] = pads
        return pads

    def mac(self, secret: bytes, message: bytes) -> bytes:
        """HMAC-MD5(secret, message): equal to ``hmac.digest(secret, message, "md5")``."""
        inner_pad, outer_pad = self._pads_of(secret)
        inner = inner_pad.copy()
        inner.update(message)
        outer = outer_pad.copy()
        outer.update(inner.digest())
        digest: bytes = outer.digest()
        return digest


def decrypt_password(hidden: bytes | str, secret: bytes, authenticator: bytes) -> str:
    """A User-Password in clear (RFC 2865 section 5.2), exactly as pyrad's ``PwDecrypt``:
    trailing NULs dropped, undecodable UTF-8 ignored (a wrong secret yields noise, not an
    error), and ``PacketError`` for a length that is not a multiple of 16."""
    if isinstance(hidden, str):
        # pyrad hands a value that happens to be valid UTF-8 over as str.
        hidden = hidden.encode("utf-8")
    elif isinstance(hidden, bytearray):
        hidden = bytes(hidden)
    if len(hidden) % 16:
        raise PacketError(f"Invalid length of encrypted password ({len(hidden)})")
    keyed = md5(secret)
    clear = bytearray()
    last = authenticator
    for at in range(0, len(hidden), 16):
        block = hidden[at : at + 16]
        pad = keyed.copy()
        pad.update(last)
        mask = int.from_bytes(pad.digest(), "big") ^ int.from_bytes(block, "big")
        clear += mask.to_bytes(16, "big")
        last = block
    return bytes(clear).rstrip(b"\x00").decode("utf-8", errors="ignore")
