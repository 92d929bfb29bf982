"""Rating an imported usage record exactly as a live call or usage event is rated.

The same catalog snapshot, tariff lookup and rating function as the real-time
path (``ocs.charging.lifecycle.tariff_of``, ``call_bands``, ``ocs.rating.rates.cost``):

* a record whose rate type (after the supplier's overrides) has a rate in the
  account's plan is rated by that rate, and its usage line is the rate type's;
* else a record of a service (MB, kWh) by the plan's tariff of that service;
* else a call by its called number, translated by the plan's rules and matched in
  the plan's deck for its direction (an inbound call with no inbound tariff is free,
  an outbound one to an unknown destination is refused).

A record whose billed quantity (its quantity rounded up to the tariff's increments)
is more than a CDR holds (``MAX_QUANTITY``) is refused, naming its ``duration`` or
``quantity``.

Time bands apply at the record's own start, so a call made at 17:59 is priced at
the peak rate whenever it is imported.

An outbound call to a zone a plan's usage counters cover draws on the account's
counter as a live call does (``ocs.charging.lifecycle.choose_counter``): its first
seconds, up to the counter's free seconds, at the counter's rate, the rest at the
zone's tariff (``cost_with_counter``). The importer says which counter applies and
what it holds (``priced_with_counter``).
"""

import msgspec

from ocs.catalog.snapshot import CatalogSnapshot, Plan, Tariff
from ocs.charging.lifecycle import call_bands, tariff_of
from ocs.errors import OcsError, Reason
from ocs.mediation.records import UsageRecord
from ocs.rating.counter_rules import CounterDef
from ocs.rating.rates import (
    MAX_QUANTITY,
    CounterSplit,
    Segments,
    billed_seconds,
    cost,
    cost_with_counter,
    counter_seconds_used,
)


class RatedUsage(msgspec.Struct, frozen=True, gc=False):
    """A record's price: the plan and zone (or rate type) it was rated in, its tariff,
    the destination as rated, the billed quantity and the cost in micro-units with no
    counter; the time bands it was priced in, and the usage counters covering its zone
    (empty: none, and ``cost`` is its price)."""

    plan: Plan
    zone: str
    tariff: Tariff
    destination: str
    billed: int
    cost: int
    bands: Segments | None = None
    counters: tuple[CounterDef, ...] = ()


def rate_record(
    snapshot: CatalogSnapshot, plan_id: str, record: UsageRecord, rate_type: str | None
) -> RatedUsage:
    """Price one record for an account on ``plan_id``; OcsError when it cannot be rated."""
    plan = snapshot.plan(plan_id)
    if plan is None:
        raise OcsError(Reason.UNAVAILABLE, f"plan {plan_id!r} is not in the catalog")
    tariff = snapshot.rate_type_tariff(plan_id, rate_type) if rate_type is not None else None
    destination = record.called or record.service or ""
    is_call = record.service is None
    if tariff is None and record.service is not None:
        tariff = snapshot.tariff_named(plan_id, record.service)
        if tariff is None:
            raise OcsError(
                Reason.DESTINATION_NOT_ALLOWED,
                f"plan {plan_id!r} has no rate for service {record.service!r}"
                + (f" or rate type {rate_type!r}" if rate_type else ""),
                field="service",
            )
    elif tariff is None:
        if not record.called:
            raise OcsError(
                Reason.DESTINATION_NOT_ALLOWED,
                f"plan {plan_id!r} has no rate for rate type {rate_type!r}"
                if rate_type
                else "the record has no rate type, service or called number to rate it by",
                field="called",
            )
        # As authorize rates it (``tariff_of``): translated, normalised, matched by direction.
        match = tariff_of(
            snapshot, plan_id, plan.translation.apply(record.called), None, record.direction
        )
        tariff, destination = match.tariff, match.digits
    rate = tariff.rate
    billed = billed_seconds(rate, record.quantity)
    if billed > MAX_QUANTITY:
        # Its CDR could not hold it (``MAX_QUANTITY``): refused before any debit.
        measure = "duration" if is_call else "quantity"
        raise OcsError(
            Reason.INVALID_FIELD,
            f"{record.quantity} billed as {billed} in the increments of zone {tariff.zone!r},"
            f" more than a record holds ({MAX_QUANTITY:,})",
            field=measure,
        )
    bands = call_bands(plan, rate, record.start_ms // 1000, record.quantity) if is_call else None
    return RatedUsage(
        plan,
        tariff.zone,
        tariff,
        destination,
        billed,
        cost(rate, record.quantity, bands),
        bands,
        snapshot.counters_for_zone(plan_id, tariff.zone)
        if is_call and record.direction == "outbound"
        else (),
    )


def priced_with_counter(
    rated: RatedUsage, record: UsageRecord, counter: CounterDef, free: int
) -> tuple[int, int]:
    """(cost, counter seconds used) of a rated call whose first seconds ``counter``
    pays, while it has ``free`` seconds left, as a live call's stop prices it."""
    split = CounterSplit(counter.rate, free) if free > 0 else None
    return (
        cost_with_counter(rated.tariff.rate, record.quantity, split, rated.bands),
        counter_seconds_used(split, record.quantity),
    )
