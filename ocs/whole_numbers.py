"""Whole numbers written as text (an id in a path, a deck's seconds), read safely.

Python's ``int()`` refuses text of more than 4,300 digits with a ValueError (a
server error wherever a caller's text reaches it unchecked), and costs time
quadratic in the length below that. Every number ocs reads this way fits
PostgreSQL's BIGINT, so the length is checked first and no more than 19 digits
are ever converted.
"""

MAX_BIGINT = 2**63 - 1
# BIGINT's maximum has 19 digits: any longer text (but for leading zeros) exceeds it.
MAX_DIGITS = len(str(MAX_BIGINT))


def whole_number(text: str, maximum: int = MAX_BIGINT) -> int | None:
    """``text`` as a whole number from 0 to ``maximum`` (at most BIGINT's), or None when it
    is not one: not only ASCII digits, more than 19 of them, or past ``maximum``."""
    if len(text) > MAX_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= maximum else None


def positive_id(text: str) -> int | None:
    """``text`` as the id of a stored row (1 to BIGINT's maximum), or None."""
    value = whole_number(text)
    return value if value else None
