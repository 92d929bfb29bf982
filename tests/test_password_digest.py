"""The stored form of a password: HMAC-SHA256 keyed by the account id, exactly.

``password_digest`` writes RFC 2104 out over ``hashlib.sha256`` for speed; every digest
already stored in Redis and PostgreSQL was made with ``hmac.digest``, so the two must
agree byte for byte, for any account id (keys longer than SHA-256's block included)
and any password.
"""

import hmac

from hypothesis import given
from hypothesis import strategies as st

from ocs.balances.accounts import password_digest


@given(account_id=st.text(min_size=1, max_size=200), password=st.text(max_size=100))
def test_the_digest_is_hmac_sha256_keyed_by_the_account(account_id: str, password: str) -> None:
    expected = hmac.digest(account_id.encode(), password.encode(), "sha256").hex()
    assert password_digest(account_id, password) == expected


def test_keys_at_and_around_the_block_size() -> None:
    for length in (63, 64, 65, 128):
        account_id = "a" * length
        expected = hmac.digest(account_id.encode(), b"pw", "sha256").hex()
        assert password_digest(account_id, "pw") == expected
    # A known answer, so that both sides cannot drift together.
    assert password_digest("u1", "pw") == (
        "9234adb24850b5aaaa0236540f7c9edb87d76f346409f2105f7a43e2eaa300d9"
    )
