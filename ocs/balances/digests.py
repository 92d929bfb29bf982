"""The digests PINs and passwords are stored as, keyed by the server's pepper (decision 0054).

Redis and PostgreSQL never hold a PIN or a password, only a digest. Before decision
0054 both digests had public keys: a PIN's was SHA-256 of a fixed prefix and the PIN,
a password's HMAC-SHA256 keyed by the account id. Whoever had a copy of either store
(a backup, a replica) could try every 10 to 12 digit PIN in minutes and recover it.

Now each is that old digest ("the old form") passed through HMAC-SHA256 keyed by the
pepper, a server secret kept in a file and never in either store (``ocs.pepper``),
and marked ``p1:`` ("the new form"). Built on the old form, a stored old digest can be
turned into its new form without the PIN or password: ``ocs credentials rekey`` does so
for every digest already stored (``ocs.balances.rekey``). The mark tells the two forms
apart wherever a digest is kept, in Lua too.

This module computes; it reads and writes nothing.
"""

import hashlib

# The mark of a new-form digest (version 1 of the pepper's scheme). An old-form digest
# is 64 hexadecimal digits and never starts with it.
PEPPERED = "p1:"

# Domain separation: a PIN's digest and a password's are never equal, whatever the text.
_PIN_LABEL = b"pin\x00"
_PASSWORD_LABEL = b"password\x00"
_FINGERPRINT_LABEL = b"fingerprint\x00"

# HMAC's key pads (RFC 2104) as translation tables: byte b of the key becomes b ^ pad.
_SHA256_BLOCK = 64
_INNER_PAD = bytes(byte ^ 0x36 for byte in range(256))
_OUTER_PAD = bytes(byte ^ 0x5C for byte in range(256))

# Fewer bytes than this and a pepper could be guessed; 32 random bytes is what ocs makes.
MIN_PEPPER_BYTES = 32


def _padded_key(key: bytes) -> bytes:
    """An HMAC-SHA256 key as RFC 2104 uses it: hashed when longer than a block, then
    padded with zeros to one block."""
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    return key.ljust(_SHA256_BLOCK, b"\0")


def legacy_pin_digest(pin: str) -> str:
    """A PIN's digest in the old form (before decision 0054): kept only to find the cards
    stored that way until they are re-keyed, and to turn them into the new form."""
    return hashlib.sha256(b"ocs-pin\x00" + pin.encode()).hexdigest()


def legacy_password_digest(account_id: str, password: str) -> str:
    """A password's digest in the old form (before decision 0054): HMAC-SHA256 keyed by
    the account id, so that equal passwords on two accounts differ."""
    # RFC 2104 written out over hashlib.sha256: byte for byte ``hmac.digest(key,
    # password, "sha256")``, in about half its time (``hmac.digest`` looks the digest up
    # by name on every call, and this runs once per password-checked request).
    key = _padded_key(account_id.encode())
    inner = hashlib.sha256(key.translate(_INNER_PAD) + password.encode()).digest()
    return hashlib.sha256(key.translate(_OUTER_PAD) + inner).hexdigest()


def is_peppered(digest: str) -> bool:
    """Whether a stored digest is in the new form (keyed by the pepper)."""
    return digest.startswith(PEPPERED)


class Digests:
    """The new-form digests of one pepper: what a process stores and looks PINs and
    passwords up by. Every process of a deployment must hold the same pepper
    (``ocs.pepper`` checks it against the stores' check value)."""

    __slots__ = ("_inner_pad", "_outer_pad")

    def __init__(self, pepper: bytes) -> None:
        if len(pepper) < MIN_PEPPER_BYTES:
            raise ValueError(f"a pepper needs at least {MIN_PEPPER_BYTES} bytes")
        # The pepper's two padded keys made once: each digest is then two SHA-256 calls
        # over the old form (about 1 us), where hmac.new or hmac.digest would pad the
        # key again and look SHA-256 up by name on every call (3 to 4 us, measured).
        key = _padded_key(pepper)
        self._inner_pad = key.translate(_INNER_PAD)
        self._outer_pad = key.translate(_OUTER_PAD)

    def __repr__(self) -> str:
        # Nothing of the pepper, should this object ever reach a log line.
        return "Digests(<pepper>)"

    def _mac(self, message: bytes) -> str:
        """HMAC-SHA256 of ``message`` keyed by the pepper (RFC 2104), in hex."""
        inner = hashlib.sha256(self._inner_pad + message).digest()
        return hashlib.sha256(self._outer_pad + inner).hexdigest()

    def pin(self, pin: str) -> str:
        """The digest a PIN is stored and found by."""
        return self.pin_from_legacy(legacy_pin_digest(pin))

    def password(self, account_id: str, password: str) -> str:
        """The digest an account's (or card's) password is stored and checked as."""
        return self.password_from_legacy(legacy_password_digest(account_id, password))

    def pin_from_legacy(self, legacy: str) -> str:
        """The new form of a PIN digest stored in the old form (no PIN needed)."""
        return PEPPERED + self._mac(_PIN_LABEL + legacy.encode())

    def password_from_legacy(self, legacy: str) -> str:
        """The new form of a password digest stored in the old form (no password needed)."""
        return PEPPERED + self._mac(_PASSWORD_LABEL + legacy.encode())

    def fingerprint(self) -> str:
        """A check value of the pepper, kept in PostgreSQL: a process started with another
        pepper sees that it differs. It reveals nothing of a random pepper."""
        return self._mac(_FINGERPRINT_LABEL)


class PepperNotLoaded(RuntimeError):
    """A digest was asked of a process opened without the pepper."""


class NoPepper(Digests):
    """The digests of a process opened without the pepper: a CLI command that makes and
    looks up none (``open_runtime(pepper=False)``), so that it neither needs the pepper's
    file nor makes one. Asked for a digest all the same, it refuses (a bug)."""

    __slots__ = ()

    def __init__(self) -> None:  # no pepper, no padded keys
        pass

    def __repr__(self) -> str:
        return "NoPepper()"

    def _mac(self, message: bytes) -> str:
        raise PepperNotLoaded(
            "this process was opened without the pepper: open_runtime(pepper=True) for a"
            " command that makes or looks up PIN and password digests"
        )
