"""A plan's tariffs as one stored document (``tariff_sets``, migration 0041): write, read.

A tariff is a zone's rate in one direction. A plan has one for every zone and
direction of its deck: a real numbering deck has some 41,000. They are stored
like the deck's prefixes (decision 0009): one value a plan, written whole by the
import in its transaction (ocs.catalog.store) and read whole by every serving
process's reload (ocs.catalog.snapshot), so neither writes nor reads a row per
zone. The value is JSON: an array of ``[zone_id, zone, direction, rate]`` sorted
by zone id, then direction, the rate in ``Rate``'s own array form (its fields in
order; a reader takes fields missing at the end as their defaults). msgspec writes
and reads it without a Python step per field: ~3.5 MB and a few hundredths of a
second each way for 41,000 tariffs, with no object the garbage collector tracks.
The ``tariffs`` view of the migration reads the same document as rows, for
reports and ad-hoc SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import asyncpg
import msgspec

from ocs.rating.rates import Rate

Direction = Literal["outbound", "inbound"]


class StoredTariff(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One tariff of a plan as its document holds it: ``[zone_id, zone, direction, rate]``."""

    zone_id: int
    zone: str
    direction: Direction
    rate: Rate


class _Unread(msgspec.Struct, array_like=True, gc=False):
    """A tariff with its rate left as JSON text, read only when needed."""

    zone_id: int
    zone: str
    direction: Direction
    rate: msgspec.Raw


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(list[StoredTariff])
_UNREAD = msgspec.json.Decoder(list[_Unread])
_RATE = msgspec.json.Decoder(Rate)
_PLAIN = Rate(0, 0, 1, 0)
# How a rate with the default shape ends as this module writes it: its base fields,
# then every shape field at its default.
_PLAIN_END = _ENCODER.encode(_PLAIN)[len(b"[0,0,1,0") :]


def tariffs_document(tariffs: Sequence[StoredTariff]) -> bytes:
    """The document of ``tariffs``, given sorted by zone id, then direction."""
    return _ENCODER.encode(tariffs)


def read_tariffs(document: bytes) -> list[StoredTariff]:
    """The tariffs of a document (``tariffs_document``), in its order.

    Raises msgspec.ValidationError on a document that is not one (a hand edit):
    each rate is checked as ``Rate`` checks it.
    """
    return _DECODER.decode(document)


def is_plain(rate: Rate) -> bool:
    """True when every field of the rate's shape (all but the four base ones) is the default."""
    return rate == Rate(rate.connect_fee, rate.first_block, rate.increment, rate.price_per_minute)


def stored_zones(document: bytes) -> tuple[dict[str, int], dict[tuple[int, str], Rate]]:
    """What an import needs of a plan's stored tariffs: the id of each zone they name,
    and the rates whose shape is not the default (set through the shape API or by a
    deck's shape column) by (zone id, direction). Plain rates are not read at all."""
    ids: dict[str, int] = {}
    shaped: dict[tuple[int, str], Rate] = {}
    for tariff in _UNREAD.decode(document):
        ids[tariff.zone] = tariff.zone_id
        text = bytes(tariff.rate)
        if not text.endswith(_PLAIN_END):  # written otherwise (the migration): read it
            rate = _RATE.decode(text)
            if not is_plain(rate):
                shaped[tariff.zone_id, tariff.direction] = rate
    return ids, shaped


async def read_tariff_sets(
    conn: asyncpg.Connection, plan_ids: Sequence[str] | None = None
) -> dict[str, bytes]:
    """Stored tariff documents by plan: every plan's, or those of ``plan_ids``. A plan
    without tariffs has none."""
    if plan_ids is None:
        rows = await conn.fetch("SELECT plan_id, document FROM tariff_sets")
    elif not plan_ids:
        return {}
    else:
        rows = await conn.fetch(
            "SELECT plan_id, document FROM tariff_sets WHERE plan_id = ANY($1::text[])",
            list(plan_ids),
        )
    return {r["plan_id"]: bytes(r["document"]) for r in rows}
