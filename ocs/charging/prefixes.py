"""Longest-prefix match of a dialled number over a table of digit prefixes.

A plain, correct matcher: a dict per table, probed from the longest possible
prefix down. The numba matcher for million-prefix carrier decks replaces it
behind the same interface.
"""

from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

from ocs.errors import invalid

T = TypeVar("T")


def normalize_number(number: str, field: str = "destination") -> str:
    """Digits of a dialled number; a leading ``+`` is dropped, anything else refused."""
    text = number.strip()
    if text.startswith("+"):
        text = text[1:]
    if not text or not text.isascii() or not text.isdigit():
        raise invalid(field, f"must be digits, optionally with a leading '+': {number!r}")
    if len(text) > 32:
        raise invalid(field, "longer than 32 digits")
    return text


class PrefixTable(Generic[T]):
    """An immutable prefix -> value table answering longest-prefix matches."""

    __slots__ = ("_entries", "_lengths")

    def __init__(self, entries: Mapping[str, T] | Iterable[tuple[str, T]]) -> None:
        items = entries.items() if isinstance(entries, Mapping) else entries
        self._entries: dict[str, T] = dict(items)
        # Probe only lengths that exist, longest first.
        self._lengths = sorted({len(p) for p in self._entries}, reverse=True)

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, digits: str) -> tuple[str, T] | None:
        """The longest prefix of ``digits`` in the table and its value, or None."""
        entries = self._entries
        for length in self._lengths:
            if length <= len(digits):
                value = entries.get(digits[:length])
                if value is not None:
                    return digits[:length], value
        return None
