"""The account ids calling cards get: ``card-<batch>-<serial>``, and how to tell one.

A card opens by its PIN only (decision 0042): its id, sequential and printed beside
the PIN, names no account where an end user says who they are. The form is all that
tells a card's id, so the request path needs no look-up, and no account made by hand
may take that form. Kept apart from ``cards`` so that accounts and the call path can
ask without importing the card service.
"""

# A card's account id: CARD_PREFIX, the batch id, "-", the serial in _SERIAL_DIGITS
# digits (MAX_BATCH needs seven).
CARD_PREFIX = "card-"
_SERIAL_DIGITS = 7


def card_account_id(batch_id: str, serial: int) -> str:
    """The account id of card number ``serial`` of batch ``batch_id``."""
    return f"{CARD_PREFIX}{batch_id}-{serial:0{_SERIAL_DIGITS}d}"


def is_card_account(account_id: str) -> bool:
    """Whether ``account_id`` has the form ``card_account_id`` gives a card: such an id
    names no account where an end user says who they are (a RADIUS User-Name), for it
    is no secret; a card opens by its PIN. Judged by the form alone, so that the
    request path needs no look-up; an account made by hand may not take it
    (``AccountSpec.validate``)."""
    # The prefix first: on the request path almost every name fails it, at no cost.
    if not account_id.startswith(CARD_PREFIX):
        return False
    serial = account_id[-_SERIAL_DIGITS:]
    return (
        len(account_id) > len(CARD_PREFIX) + _SERIAL_DIGITS + 1
        and account_id[-_SERIAL_DIGITS - 1] == "-"
        and serial.isascii()
        and serial.isdigit()
    )


def may_be_pin(name: str) -> bool:
    """Whether ``name`` has a PIN's form (6 to 20 ASCII digits, the lengths a batch may
    deal): only such an account id can be a card's PIN too, which a RADIUS User-Name
    would then name twice (decision 0042, 2026-12-07 addendum)."""
    return name.isascii() and name.isdigit() and 6 <= len(name) <= 20
