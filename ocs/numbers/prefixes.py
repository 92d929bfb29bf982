"""Longest-prefix match of a dialled number over a table of digit prefixes.

``PrefixTable`` is the table the rest of ocs uses: prefix -> value, answering
"the longest prefix of this number and its value". It keeps each distinct
value once and the prefixes in a compiled ``PrefixIndex`` (ocs.numbers.matcher),
so a million-prefix deck is a few numpy arrays and a short list of tariffs.
Plan decks are tables today; the standard area-code table, per-carrier cost
decks and access numbers are further tables of the same type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Generic, TypeVar

import numpy as np

from ocs.errors import invalid
from ocs.numbers.matcher import (
    INVALID,
    KEY_DIGITS,
    LENGTH_BITS,
    LENGTH_MASK,
    NO_MATCH,
    PrefixIndex,
)

T = TypeVar("T")

MAX_NUMBER_DIGITS = 32
# A dialled number as a switch sends it, before its digits are taken (a '+', a
# translation rule's prefix): what POST /v1/calls accepts, and an imported record's
# called number (which a CDR may keep as given, and whose column is indexed).
MAX_DESTINATION_CHARS = 64
# A caller id as a switch sends it: what POST /v1/calls accepts and a CDR keeps of a
# live call's (ocs.charging.lifecycle.clean_caller), and so an imported record's.
MAX_CALLER_CHARS = 64


def normalize_number(number: str, field: str = "destination") -> str:
    """Digits of a dialled number; a leading ``+`` is dropped, anything else refused."""
    text = number.strip()
    if text.startswith("+"):
        text = text[1:]
    if not text or not text.isascii() or not text.isdigit():
        raise invalid(field, f"must be digits, optionally with a leading '+': {number!r}")
    if len(text) > MAX_NUMBER_DIGITS:
        raise invalid(field, "longer than 32 digits")
    return text


class PrefixTable(Generic[T]):
    """An immutable prefix -> value table answering longest-prefix matches."""

    __slots__ = ("_has_long", "_index", "_lookup", "_packed", "_values")

    def __init__(self, entries: Mapping[str, T] | Iterable[tuple[str, T]] = ()) -> None:
        """A table of ``entries``; a prefix given twice keeps its last value (as a dict)."""
        items = dict(entries.items() if isinstance(entries, Mapping) else entries)
        values: list[T] = []
        slots: list[int] = []
        seen: dict[object, int] = {}
        for value in items.values():
            try:
                slot = seen.setdefault(value, len(values))
            except TypeError:  # unhashable: a slot of its own
                slot = len(values)
            if slot == len(values):
                values.append(value)
            slots.append(slot)
        self._set(PrefixIndex.from_strings(list(items), slots), values)

    @classmethod
    def from_index(cls, index: PrefixIndex, values: Sequence[T]) -> PrefixTable[T]:
        """A table over a built index whose slots are positions in ``values``."""
        table = cls.__new__(cls)
        table._set(index, list(values))
        return table

    def _set(self, index: PrefixIndex, values: list[T]) -> None:
        self._index = index
        self._values = values
        # Bound once: match() is on the authorization path.
        self._packed = index.packed
        self._lookup = index._lookup
        self._has_long = index._long is not None

    def __len__(self) -> int:
        return len(self._index)

    @property
    def index(self) -> PrefixIndex:
        """The prefix index behind the table."""
        return self._index

    @property
    def values(self) -> Sequence[T]:
        """The values, by slot: what a matched prefix stands for."""
        return self._values

    @property
    def nbytes(self) -> int:
        """Bytes of the index arrays (the values list is shared and small)."""
        return self._index.nbytes

    def match(self, digits: str) -> tuple[str, T] | None:
        """The longest prefix of ``digits`` in the table and its value, or None.

        ``digits`` is normalised (``normalize_number``): ASCII digits only.
        Raises ValueError for anything else.
        """
        if self._has_long and len(digits) > KEY_DIGITS:
            code = self._index.lookup(digits)
        else:
            code = self._lookup(self._packed, digits.encode())
        if code < 0:
            if code == INVALID:
                raise ValueError(f"not a normalised number (1 to 32 digits): {digits!r}")
            return None
        return digits[: code & LENGTH_MASK], self._values[code >> LENGTH_BITS]

    def match_many(self, numbers: np.ndarray | Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """(slots, lengths) for a batch of numbers: positions in ``values`` (-1: no match)
        and matched prefix lengths (0: no match).

        ``numbers`` as ``PrefixIndex.lookup_many`` takes them (a leading '+' is
        allowed); raises ValueError naming the first one that is not 1 to 32 digits.
        """
        if not isinstance(numbers, np.ndarray):
            numbers = list(numbers)
        codes = self._index.lookup_many(numbers)
        bad = np.flatnonzero(codes == INVALID)
        if len(bad):
            at = int(bad[0])
            raise ValueError(f"number {at}: not 1 to 32 digits: {numbers[at]!r}")
        found = codes != NO_MATCH
        slots = np.where(found, codes >> LENGTH_BITS, -1)
        lengths = np.where(found, codes & LENGTH_MASK, 0)
        return slots, lengths
