"""The stored forms of PINs and passwords (decision 0054), byte for byte.

The old form, made before the pepper and still found until re-keyed: a password's is
HMAC-SHA256 keyed by the account id (``legacy_password_digest`` writes RFC 2104 out over
``hashlib.sha256`` for speed; the digests stored were made with ``hmac.digest``), a
PIN's SHA-256 of ``ocs-pin``, a zero byte and the PIN.

The new form is ``p1:`` and HMAC-SHA256 keyed by the pepper over a label and the old
form: ``Digests`` precomputes the pepper's padded keys, and must agree with ``hmac``
for any pepper (longer than SHA-256's block included).
"""

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocs.balances.digests import (
    Digests,
    NoPepper,
    PepperNotLoaded,
    is_peppered,
    legacy_password_digest,
    legacy_pin_digest,
)

PEPPER = b"0123456789abcdef0123456789abcdef"


@given(account_id=st.text(min_size=1, max_size=200), password=st.text(max_size=100))
def test_the_old_form_is_hmac_sha256_keyed_by_the_account(account_id: str, password: str) -> None:
    expected = hmac.digest(account_id.encode(), password.encode(), "sha256").hex()
    assert legacy_password_digest(account_id, password) == expected


def test_old_form_keys_at_and_around_the_block_size() -> None:
    for length in (63, 64, 65, 128):
        account_id = "a" * length
        expected = hmac.digest(account_id.encode(), b"pw", "sha256").hex()
        assert legacy_password_digest(account_id, "pw") == expected
    # Known answers, so that both sides cannot drift together.
    assert legacy_password_digest("u1", "pw") == (
        "9234adb24850b5aaaa0236540f7c9edb87d76f346409f2105f7a43e2eaa300d9"
    )
    expected_pin = hashlib.sha256(b"ocs-pin\x00123456789012").hexdigest()
    assert legacy_pin_digest("123456789012") == expected_pin


@given(
    pepper=st.binary(min_size=32, max_size=200),
    account_id=st.text(min_size=1, max_size=80),
    secret=st.text(max_size=40),
)
def test_the_new_form_is_hmac_sha256_keyed_by_the_pepper(
    pepper: bytes, account_id: str, secret: str
) -> None:
    digests = Digests(pepper)
    old_password = legacy_password_digest(account_id, secret)
    old_pin = legacy_pin_digest(secret)
    assert (
        digests.password(account_id, secret)
        == "p1:" + hmac.digest(pepper, b"password\x00" + old_password.encode(), "sha256").hex()
    )
    assert (
        digests.pin(secret)
        == "p1:" + hmac.digest(pepper, b"pin\x00" + old_pin.encode(), "sha256").hex()
    )
    # Built on the old form: a stored old digest is re-keyed without its PIN or password.
    assert digests.password_from_legacy(old_password) == digests.password(account_id, secret)
    assert digests.pin_from_legacy(old_pin) == digests.pin(secret)


def test_the_new_form_is_marked_and_depends_on_the_pepper() -> None:
    digests, other = Digests(PEPPER), Digests(PEPPER[::-1])
    assert is_peppered(digests.pin("123456789012"))
    assert not is_peppered(legacy_pin_digest("123456789012"))
    assert not is_peppered(legacy_password_digest("u1", "pw"))
    assert digests.pin("123456789012") != other.pin("123456789012")
    assert digests.password("u1", "pw") != other.password("u1", "pw")
    # A PIN's digest and a password's never meet, whatever the text.
    assert digests.pin_from_legacy("x" * 64) != digests.password_from_legacy("x" * 64)
    assert digests.fingerprint() != other.fingerprint()
    assert "0123" not in repr(digests)


def test_a_process_opened_without_the_pepper_makes_no_digest() -> None:
    with pytest.raises(PepperNotLoaded):
        NoPepper().pin("123456789012")
    with pytest.raises(PepperNotLoaded):
        NoPepper().password("u1", "pw")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Digests(b"short")
