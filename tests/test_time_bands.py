"""Time bands: calls split at band edges in the plan's time zone, DST nights included."""

from datetime import UTC, date, datetime, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ocs.charging.lifecycle import CallService
from ocs.charging.values import AuthorizeRequest, Origin
from ocs.config import with_overrides
from ocs.rating.bands import MINUTES_A_DAY, BandRule, BandSchedule, bands_from
from ocs.rating.rates import Rate, cost, max_duration
from tests.conftest import RunningApp

LONDON = ZoneInfo("Europe/London")
WEEKDAYS = frozenset(range(5))
SCHEDULE = BandSchedule(
    "Europe/London",
    (
        BandRule("peak", WEEKDAYS, 8 * 60, 18 * 60),
        BandRule("weekend", frozenset({5, 6}), 0, 24 * 60),
    ),
    frozenset({date(2026, 12, 25)}),
)
# Off-peak (no band) 0.01/min, peak 0.05/min, weekend 0.005/min, holidays free; 1/1.
RATE = Rate(0, 1, 1, 10_000, band_prices=(("peak", 50_000), ("weekend", 5_000), ("holiday", 0)))


def at(year: int, month: int, day: int, hour: int, minute: int, fold: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=LONDON, fold=fold).timestamp())


def priced(start: int, seconds: int, rate: Rate = RATE) -> int:
    return cost(rate, seconds, SCHEDULE.segments(start, seconds + 60))


def test_a_call_starting_ten_minutes_before_peak() -> None:
    # Monday 07:50: 10 minutes off-peak at 0.01, then 10 minutes peak at 0.05.
    assert priced(at(2026, 11, 23, 7, 50), 20 * 60) == 100_000 + 500_000


def test_a_call_over_midnight_into_the_weekend() -> None:
    # Friday 23:50: 10 minutes off-peak, then Saturday at the weekend rate.
    assert priced(at(2026, 11, 27, 23, 50), 20 * 60) == 100_000 + 50_000


def test_a_holiday_takes_the_whole_day() -> None:
    assert priced(at(2026, 12, 25, 9, 0), 20 * 60) == 0  # a Friday, peak hours


def test_the_spring_forward_night_bills_real_seconds() -> None:
    night = BandSchedule("Europe/London", (BandRule("night", frozenset(range(7)), 0, 6 * 60),))
    rate = Rate(0, 1, 1, 60_000, band_prices=(("night", 6_000),))
    # 29 March 2026: 01:00 GMT becomes 02:00 BST. A call from 00:50 for 20 real minutes
    # ends at 02:10 on the wall clock: 20 minutes at the night rate, not 80.
    start = at(2026, 3, 29, 0, 50)
    assert cost(rate, 20 * 60, night.segments(start, 21 * 60)) == 20 * 6_000


def test_the_autumn_night_counts_the_repeated_hour_twice() -> None:
    late = BandSchedule("Europe/London", (BandRule("late", frozenset(range(7)), 60, 120),))
    rate = Rate(0, 1, 1, 60_000, band_prices=(("late", 0),))
    # 25 October 2026: 02:00 BST becomes 01:00 GMT; 01:00-02:00 happens twice.
    # From 00:30 BST for 120 real minutes: 30 minutes before 01:00, then 90 "late".
    start = at(2026, 10, 25, 0, 30)
    assert cost(rate, 120 * 60, late.segments(start, 121 * 60)) == 30 * 60_000


def test_max_duration_counts_the_dearer_band_ahead() -> None:
    # 0.60 from Monday 07:50: 10 min off-peak (0.10) leaves 0.50 = 10 min of peak.
    start = at(2026, 11, 23, 7, 50)
    assert max_duration(RATE, 600_000, 3600, SCHEDULE.segments(start, 3660)) == 20 * 60


@given(
    start=st.integers(
        int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()),
        int(datetime(2027, 1, 1, tzinfo=UTC).timestamp()),
    ),
    seconds=st.integers(1, 4 * 3600),
    cut=st.integers(1, 4 * 3600),
)
def test_splitting_a_call_at_any_second_sums_to_the_whole(
    start: int, seconds: int, cut: int
) -> None:
    """Per-second rating (1/1, no fees): the two parts of a call cost the whole."""
    cut = min(cut, seconds)
    rate = Rate(0, 0, 1, 60_000, band_prices=(("peak", 120_000), ("weekend", 30_000)))
    whole = cost(rate, seconds, SCHEDULE.segments(start, seconds + 60))
    first = cost(rate, cut, SCHEDULE.segments(start, cut + 60))
    second = cost(rate, seconds - cut, SCHEDULE.segments(start + cut, seconds - cut + 60))
    assert first + second == whole


@given(
    start=st.integers(1_767_225_600, 1_798_761_600), a=st.integers(0, 7200), b=st.integers(0, 7200)
)
def test_banded_cost_never_decreases(start: int, a: int, b: int) -> None:
    low, high = sorted((a, b))
    bands = SCHEDULE.segments(start, 7300)
    assert cost(RATE, low, bands) <= cost(RATE, high, bands)


async def put_peak(app: RunningApp, start: str, end: str = "18:00") -> None:
    """Retail's schedule: peak on weekdays from ``start`` to ``end`` in London, Christmas
    a holiday; waits until the serving catalog has it."""
    from tests.conftest import eventually

    response = await app.client.put(
        "/v1/plans/retail/bands",
        json={
            "time_zone": "Europe/London",
            "rules": [{"band": "peak", "days": [0, 1, 2, 3, 4], "start": start, "end": end}],
            "holidays": ["2026-12-25"],
        },
    )
    assert response.status == 200, await response.text()
    hours, minutes = start.split(":")
    end_hours, end_minutes = end.split(":")

    async def loaded() -> bool:
        plan = app.services.catalog.snapshot.plan("retail")
        rules = plan.bands.rules if plan and plan.bands else ()
        return bool(rules) and (rules[0].start, rules[0].end) == (
            int(hours) * 60 + int(minutes),
            int(end_hours) * 60 + int(end_minutes),
        )

    await eventually(loaded, what=f"peak from {start} in the snapshot")


async def monday_0750_calls(
    app: RunningApp,
    peak: str | None = "08:00",
    peak_end: str = "18:00",
    max_call_duration: int = 14_400,
    **settings: object,
) -> CallService:
    """Retail with UK at 0.01/min off-peak and 0.05/min in peak (from ``peak`` to
    ``peak_end``; None: no schedule yet), an account "band" with 0.60, and a call service
    (with ``settings``) whose clock says Monday 07:50 in London: 0.60 buys 10 minutes
    off-peak and 10 of peak."""
    from urllib.parse import quote

    from tests.conftest import add_plan, eventually

    await add_plan(
        app.services,
        deck=(
            "prefix,zone,price_per_minute,connect_fee,first_block,increment\n44,UK,0.010,0,1,1\n"
        ),
        max_call_duration=max_call_duration,
    )
    if peak is not None:
        await put_peak(app, peak, peak_end)
    response = await app.client.put(
        f"/v1/plans/retail/tariffs/{quote('UK')}/shape", json={"band_prices": {"peak": "0.05"}}
    )
    assert response.status == 200, await response.text()

    async def priced() -> bool:
        found = app.services.catalog.snapshot.tariff_for("retail", "4420")
        return bool(found and found[1].rate.band_prices)

    await eventually(priced, what="band prices in the snapshot")
    await app.post("/v1/accounts", {"id": "band", "plan": "retail", "balance": "0.60"})
    return monday_0750_service(app, **settings)


def monday_0750_service(app: RunningApp, **settings: object) -> CallService:
    """A call service of ``app``'s catalog and store (its settings with ``settings``)
    whose clock says Monday 07:50 in London; each one its own, as another ocs process's
    would be."""
    monday_0750 = float(at(2026, 11, 23, 7, 50))
    return CallService(
        app.services.catalog,
        app.services.store,
        with_overrides(app.services.settings, **settings),
        app.services.digests,
        clock=lambda: monday_0750,
    )


async def test_bands_reach_authorize_and_stop_through_the_catalog(app: RunningApp) -> None:
    calls = await monday_0750_calls(app)
    grant = await calls.authorize(AuthorizeRequest("band", "442079460000", call_id="band-1"))
    # It may be answered until 07:55: 0.60 pays 16 minutes from then (20 from 07:50).
    assert grant.max_duration == 16 * 60
    charge = await calls.stop("band-1", 20 * 60)
    assert charge.charged == 600_000
    _, body = await app.get("/v1/accounts/band")
    assert body["balance"] == "0.000000"


async def test_a_schedule_changed_during_a_call_does_not_reprice_it(app: RunningApp) -> None:
    """Stop charges by the bands the call was authorized in, not by an edit made since."""
    calls = await monday_0750_calls(app)
    grant = await calls.authorize(AuthorizeRequest("band", "442079460000", call_id="band-2"))
    assert grant.max_duration == 16 * 60  # the least over its answers until 07:55
    # During the call peak moves to 09:00: by the new schedule the call was all off-peak
    # (0.20). It was authorized as 10 minutes off-peak and 10 of peak: 0.60.
    await put_peak(app, "09:00")
    # Stopped by another process's service: the record comes from Redis, not a cache.
    charge = await monday_0750_service(app).stop("band-2", 20 * 60)
    assert charge.charged == 600_000
    _, body = await app.get("/v1/accounts/band")
    assert body["balance"] == "0.000000"


async def test_a_schedule_added_during_a_call_does_not_reprice_it(app: RunningApp) -> None:
    """A banded tariff of a plan with no schedule yet prices the call unbanded; the
    schedule added during the call does not reach it."""
    calls = await monday_0750_calls(app, peak=None)
    grant = await calls.authorize(AuthorizeRequest("band", "442079460000", call_id="band-3"))
    assert grant.max_duration == 60 * 60  # 0.60 at 0.01 a minute: no bands, no peak
    # Peak from 08:00 is added during the call: by it, 10 of its 20 minutes were peak
    # (0.60). The call was authorized at 0.01 a minute throughout: 0.20.
    await put_peak(app, "08:00")
    charge = await monday_0750_service(app).stop("band-3", 20 * 60)
    assert charge.charged == 200_000
    _, body = await app.get("/v1/accounts/band")
    assert body["balance"] == "0.400000"


def test_bands_seen_from_later_drop_what_has_passed() -> None:
    placed = ((0, None), (600, "peak"), (1200, None))
    assert bands_from(placed, 0) == placed
    assert bands_from(placed, 300) == ((0, None), (300, "peak"), (900, None))
    assert bands_from(placed, 600) == ((0, "peak"), (600, None))
    assert bands_from(placed, 1500) == ((0, None),)


async def test_a_call_answered_after_ringing_is_priced_from_its_answer(app: RunningApp) -> None:
    """A RADIUS call is authorized as it is dialled, answered when it is picked up: its
    interims and its stop are priced from the answer, in the bands of those minutes."""
    calls = await monday_0750_calls(app, debit_on_interim=True)
    await calls.authorize(
        AuthorizeRequest("band", "442079460000", call_id="rang"), Origin(wait_for_start=True)
    )
    answered = at(2026, 11, 23, 8, 0)  # it rang for 10 minutes
    await app.services.store.start(
        account_id="band", call_id="rang", started_at=answered, expires_at=answered + 3600
    )
    progress = await calls.update("rang", 300)
    assert progress.debited == 250_000  # 5 minutes of peak, not 5 off-peak (0.05)
    charge = await calls.stop("rang", 600)
    assert charge.charged == 500_000  # 08:00-08:10, all peak; not 07:50-08:00 (0.10)
    _, body = await app.get("/v1/accounts/band")
    assert body["balance"] == "0.100000"


async def test_a_radius_call_that_may_ring_into_peak_is_granted_what_peak_pays(
    app: RunningApp,
) -> None:
    """A RADIUS call is granted at its Access-Accept but priced from its answer, which
    may come up to the start timeout later: its Session-Timeout is what its reservation
    pays for whenever it is answered. Authorized 07:50 with 0.60 and 10 minutes to be
    answered, it may be answered at 08:00 in peak: 0.60 pays 12 minutes there, not the 20
    it paid off-peak from 07:50 (the NAS was told 20, and 0.40 of the call was lost)."""
    from ocs.radius.access import granted

    calls = await monday_0750_calls(app, start_timeout=600)
    request = AuthorizeRequest("band", "442079460000", call_id="ring-peak")
    grant = await calls.authorize(request, Origin(wait_for_start=True))
    attributes = granted(grant).attributes
    assert ("Session-Timeout", 720) in attributes
    assert grant.reserved == 600_000
    # A retransmitted Access-Request is answered the grant that stands.
    again = await calls.authorize(request, Origin(wait_for_start=True))
    assert (again.repeated, again.max_duration) == (True, 720)
    # It rang 10 minutes into peak and the NAS cut it at its Session-Timeout.
    answered = at(2026, 11, 23, 8, 0)
    await app.services.store.start(
        account_id="band", call_id="ring-peak", started_at=answered, expires_at=answered + 3600
    )
    charge = await calls.stop("ring-peak", 720)
    assert (charge.rated, charge.charged) == (600_000, 600_000)  # no more than reserved
    _, body = await app.get("/v1/accounts/band")
    assert body["balance"] == "0.000000"


@pytest.mark.replaces_hot_path_function
async def test_an_http_call_that_may_ring_into_peak_is_granted_what_peak_pays(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HTTP call is granted at its authorization and priced from its /start (decision
    0055), which may come up to the start timeout later, as a RADIUS call's Start may.
    Authorized 07:50 with 0.60 and 10 minutes to be answered, it may be answered at 08:00
    in peak: 0.60 pays 12 minutes there. It was told 20 (what 0.60 pays from 07:50), cut
    at 20 from 08:00 it rated 1.00, and only 0.60 was charged."""
    from types import SimpleNamespace

    from ocs.charging import lifecycle

    app.services.calls = await monday_0750_calls(app, start_timeout=600)
    call = {"account": "band", "destination": "442079460000", "call_id": "http-peak"}
    status, grant = await app.post("/v1/calls", call)
    assert status == 201, grant
    granted = grant["max_duration"]
    # A retry of the authorization is answered the grant that stands.
    status, again = await app.post("/v1/calls", call)
    assert (status, again["max_duration"], again["repeated"]) == (200, granted, True)
    # The switch reports the answer at 08:00, and cuts the call at its grant.
    answered = at(2026, 11, 23, 8, 0)
    monkeypatch.setattr(lifecycle, "time", SimpleNamespace(time=lambda: float(answered)))
    status, started = await app.post("/v1/calls/http-peak/start", {})
    assert (status, started["started_at"]) == (200, answered), started
    status, charge = await app.post("/v1/calls/http-peak/stop", {"duration": granted})
    assert status == 200, charge
    # What it rated is what it was charged, all its funds and no more.
    assert (charge["rated_cost"], charge["cost"]) == ("0.600000", "0.600000")
    assert charge["balance"] == "0.000000"
    assert (granted, grant["reserved"]) == (720, "0.600000")


async def test_an_ivr_quote_is_never_more_than_the_grant(app: RunningApp) -> None:
    """What an IVR announces before the call is what the call is granted. At 07:50 with
    0.60 a call may be answered until 07:55 (the start timeout, 300 s): 0.60 pays 16
    minutes from then (5 off-peak, 0.05; 11 of peak, 0.55). The quote said 20 (what 0.60
    pays from 07:50); answered at 07:55 and run 20 minutes, such a call rates 0.80."""
    calls = await monday_0750_calls(app)
    quote = await calls.quote("band", "442079460000")
    grant = await calls.authorize(AuthorizeRequest("band", "442079460000", call_id="quoted"))
    assert grant.max_duration == quote.seconds
    # Answered at the end of its window and run as long as announced: exactly its funds.
    answered = at(2026, 11, 23, 7, 55)
    await app.services.store.start(
        account_id="band", call_id="quoted", started_at=answered, expires_at=answered + 3600
    )
    charge = await calls.stop("quoted", quote.seconds)
    assert (charge.rated, charge.charged) == (600_000, 600_000)
    _, body = await app.get("/v1/accounts/band")
    assert body["balance"] == "0.000000"
    assert (quote.seconds, quote.zone, grant.reserved) == (960, "UK", 600_000)


async def test_a_quote_with_no_bands_is_what_the_funds_pay(app: RunningApp) -> None:
    """A banded tariff of a plan with no schedule: the answer changes no price, and the
    quote and the grant are all the funds pay for (0.60 at 0.01 a minute: an hour)."""
    calls = await monday_0750_calls(app, peak=None)
    assert (await calls.quote("band", "442079460000")).seconds == 3600
    grant = await calls.authorize(AuthorizeRequest("band", "442079460000", call_id="flat"))
    assert grant.max_duration == 3600


async def test_a_radius_call_with_no_bands_is_granted_as_before(app: RunningApp) -> None:
    """A banded tariff of a plan with no schedule: the answer changes no price, and a
    RADIUS call is granted all its funds pay for (0.60 at 0.01 a minute: an hour)."""
    from ocs.radius.access import granted

    calls = await monday_0750_calls(app, peak=None)
    grant = await calls.authorize(
        AuthorizeRequest("band", "442079460000", call_id="no-bands"), Origin(wait_for_start=True)
    )
    assert ("Session-Timeout", 3600) in granted(grant).attributes


async def cut_at_030(app: RunningApp, **settings: object) -> CallService:
    """``monday_0750_calls`` with UK's calls cut where they cost 0.30 (max cost, "cut")."""
    from urllib.parse import quote

    from tests.conftest import eventually

    calls = await monday_0750_calls(app, **settings)
    response = await app.client.put(
        f"/v1/plans/retail/tariffs/{quote('UK')}/shape",
        json={"band_prices": {"peak": "0.05"}, "max_cost": "0.30", "max_cost_mode": "cut"},
    )
    assert response.status == 200, await response.text()

    async def shaped() -> bool:
        found = app.services.catalog.snapshot.tariff_for("retail", "4420")
        return bool(found and found[1].rate.cut_at_max_cost and found[1].rate.band_prices)

    await eventually(shaped, what="the max cost in the snapshot")
    return calls


async def test_a_banded_call_cut_at_its_max_cost_is_granted_where_it_reaches_it(
    app: RunningApp,
) -> None:
    """A banded tariff whose calls are cut at a max cost of 0.30. At 07:50 a call may be
    answered until 07:55: there it reaches 0.30 after 10 minutes (5 off-peak, 0.05; 5 of
    peak, 0.25), so it is granted 600 s and holds 0.30. Its grant, its quote and an HTTP
    call's grant all raised TypeError, after the script had reserved: the account kept
    0.30 and its one line held, and its next call was refused no_free_line."""
    from ocs.radius.access import granted

    calls = await cut_at_030(app)
    assert (await calls.quote("band", "442079460000")).seconds == 600
    request = AuthorizeRequest("band", "442079460000", call_id="cut-radius")
    grant = await calls.authorize(request, Origin(wait_for_start=True))
    assert ("Session-Timeout", 600) in granted(grant).attributes
    assert grant.reserved == 300_000
    answered = at(2026, 11, 23, 7, 55)
    await app.services.store.start(
        account_id="band", call_id="cut-radius", started_at=answered, expires_at=answered + 900
    )
    charge = await calls.stop("cut-radius", 600)
    assert (charge.rated, charge.charged) == (300_000, 300_000)
    # The line is free again: an HTTP call is granted the same, with the 0.30 left.
    app.services.calls = monday_0750_service(app)
    status, http = await app.post(
        "/v1/calls", {"account": "band", "destination": "442079460000", "call_id": "cut-http"}
    )
    assert status == 201, http
    assert (http["max_duration"], http["reserved"]) == (600, "0.300000")


@pytest.mark.replaces_hot_path_function
async def test_an_http_authorization_failing_after_its_script_gives_back_its_line_and_funds(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever fails after the authorize script reserved answers the switch an error (a
    500), so what the script reserved for an HTTP call is given back at once. It was kept:
    the account held 0.30 and its one line until the janitor expired the call (at its
    grant plus grace, hours), and every call meanwhile was refused no_free_line."""
    from ocs.charging import lifecycle

    calls = await cut_at_030(app)

    def broken(*_: object) -> int:
        raise RuntimeError("the grant could not be computed")

    monkeypatch.setattr(lifecycle, "least_grant", broken)
    request = AuthorizeRequest("band", "442079460000", call_id="failed")
    with pytest.raises(RuntimeError):
        await calls.authorize(request, Origin(wait_for_start=False))
    _, body = await app.get("/v1/accounts/band")
    assert (body["balance"], body["reserved"], body["lines_in_use"]) == ("0.600000", "0.000000", 0)
    monkeypatch.undo()
    # Nothing of it is left: the same call id is granted afresh.
    again = await calls.authorize(request, Origin(wait_for_start=False))
    assert (again.repeated, again.max_duration, again.reserved) == (False, 600, 300_000)


@pytest.mark.replaces_hot_path_function
async def test_a_radius_authorization_failing_after_its_script_keeps_a_grant_a_repeat_answered(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RADIUS grant waiting for its Start is not given back when this process fails
    after the script: a retransmitted Access-Request may have reached another process
    and been accepted meanwhile (the repeat leaves no mark on a waiting call), and the
    NAS then makes the call. Released, that call ran free: its Start found no call and
    its Stop charged nothing. Kept, it is charged; unanswered, the janitor closes it
    free at start_timeout."""
    from ocs.charging import lifecycle

    calls = await cut_at_030(app)
    request = AuthorizeRequest("band", "442079460000", call_id="dup")
    real = lifecycle.least_grant

    def broken(*_: object) -> int:
        raise RuntimeError("the grant could not be computed")

    monkeypatch.setattr(lifecycle, "least_grant", broken)
    with pytest.raises(RuntimeError):
        await calls.authorize(request, Origin(wait_for_start=True))
    monkeypatch.setattr(lifecycle, "least_grant", real)
    # The retransmission, answered by a process of its own (no cached calls).
    repeat = await monday_0750_service(app).authorize(request, Origin(wait_for_start=True))
    assert (repeat.repeated, repeat.max_duration, repeat.reserved) == (True, 600, 300_000)
    _, body = await app.get("/v1/accounts/band")
    assert (body["reserved"], body["lines_in_use"]) == ("0.300000", 1)
    answered = at(2026, 11, 23, 7, 50)
    await app.services.store.start(
        account_id="band", call_id="dup", started_at=answered, expires_at=answered + 900
    )
    # Ten minutes off-peak at 0.01/min, charged (released, the call was charged nothing).
    charge = await monday_0750_service(app).stop("dup", 600)
    assert charge.charged == 100_000
    _, body = await app.get("/v1/accounts/band")
    assert (body["balance"], body["reserved"], body["lines_in_use"]) == ("0.500000", "0.000000", 0)


async def test_a_call_answered_past_its_kept_bands_is_priced_by_the_schedule(
    app: RunningApp,
) -> None:
    """The bands a call's authorization kept reach its longest call and a minute: one that
    rang longer and ran long is placed by the schedule from its answer."""
    calls = await monday_0750_calls(app, peak_end="08:03", max_call_duration=600)
    await calls.authorize(
        AuthorizeRequest("band", "442079460000", call_id="rang-long"), Origin(wait_for_start=True)
    )
    answered = at(2026, 11, 23, 7, 55)
    await app.services.store.start(
        account_id="band", call_id="rang-long", started_at=answered, expires_at=answered + 900
    )
    charge = await monday_0750_service(app).stop("rang-long", 600)
    # 07:55-08:05: 5 minutes off-peak, 3 of peak, 2 off-peak: 0.05 + 0.15 + 0.02
    assert charge.charged == 220_000
    _, body = await app.get("/v1/accounts/band")
    assert body["balance"] == "0.380000"


async def test_a_late_stop_is_priced_from_the_answer_like_a_stop(app: RunningApp) -> None:
    """A Stop that comes after the janitor closed the call is priced from the call's
    answer, as its close and any stop are; it was priced from the authorization."""
    from ocs.charging.janitor import Janitor

    calls = await monday_0750_calls(app, stale_call_policy="last_reported")
    await calls.authorize(
        AuthorizeRequest("band", "442079460000", call_id="rang-late"), Origin(wait_for_start=True)
    )
    answered = at(2026, 11, 23, 8, 0)  # authorized 07:50 off-peak, answered 08:00 in peak
    await app.services.store.start(
        account_id="band", call_id="rang-late", started_at=answered, expires_at=answered + 3600
    )
    await calls.update("rang-late", 300)
    # Its Stop is late: the janitor charges its last report, 08:00-08:05 in peak (0.25).
    assert await Janitor(calls, app.services.store).sweep(now=2_000_000_000) == 1
    _, body = await app.get("/v1/accounts/band")
    assert body["balance"] == "0.350000"
    # A Stop with no duration leaves the close as it is; it was priced 07:50-07:55
    # off-peak (0.05) and gave back 0.20.
    unchanged = await monday_0750_service(app).stop("rang-late", None)
    assert (unchanged.charged, unchanged.repeated) == (250_000, True)
    _, body = await app.get("/v1/accounts/band")
    assert body["balance"] == "0.350000"
    # The real Stop, 10 minutes: 08:00-08:10, all peak (0.50); it was priced 07:50-08:00
    # off-peak (0.10) and gave back 0.15 of the close.
    charge = await monday_0750_service(app).stop("rang-late", 600)
    assert (charge.charged, charge.cause, charge.repeated) == (500_000, "late-stop", False)
    _, body = await app.get("/v1/accounts/band")
    assert body["balance"] == "0.100000"
    again = await monday_0750_service(app).stop("rang-late", 600)
    assert (again.charged, again.repeated) == (500_000, True)
    _, body = await app.get("/v1/accounts/band")
    assert body["balance"] == "0.100000"


async def test_bad_schedules_name_the_field(app: RunningApp) -> None:
    from tests.conftest import add_plan

    await add_plan(app.services)
    for body, field in (
        ({"time_zone": "Mars/Olympus", "rules": []}, "time_zone"),
        ({"rules": [{"band": "peak", "start": "18:00", "end": "08:00"}]}, "rules[0].end"),
        ({"rules": [{"band": "peak", "start": "8am", "end": "18:00"}]}, "rules[0].start"),
        (
            {"rules": [{"band": "peak", "days": [7], "start": "08:00", "end": "18:00"}]},
            "rules[0].days",
        ),
        ({"rules": [], "holidays": ["Christmas"]}, "holidays[0]"),
    ):
        response = await app.client.put("/v1/plans/retail/bands", json=body)
        assert response.status == 400, body
        assert (await response.json())["error"]["field"] == field


# -- placing a call in its bands: edge to edge, the same as minute by minute ---------------

# Zones with daylight saving in both hemispheres, a half-hour shift (Lord Howe), offsets of
# :30 and :45 (St John's, Chatham, Kolkata, Kathmandu), one whose local mean time had an
# offset of seconds (Amsterdam, to 1937) and one without daylight saving.
ZONES = (
    "UTC",
    "Europe/London",
    "Europe/Amsterdam",
    "America/New_York",
    "America/St_Johns",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Asia/Kolkata",
    "Asia/Kathmandu",
)
BAND_NAMES = ("peak", "off-peak", "night", "weekend")
SIX_HOURS = 6 * 3600


def minute_by_minute(schedule: BandSchedule, start: int, length: int) -> tuple[object, ...]:
    """The bands of a call as ocs placed them before 2026-12-07: each minute's local time
    looked up in the zone, one by one (the reference the edge-to-edge placing must equal)."""
    zone = ZoneInfo(schedule.time_zone)
    first_minute, second = divmod(start, 60)
    relative: list[tuple[int, str | None]] = []
    for n in range((second + length) // 60 + 1):
        band = schedule.band_at(datetime.fromtimestamp((first_minute + n) * 60, zone))
        if not relative or relative[-1][1] != band:
            relative.append((n * 60, band))
    out: list[tuple[int, str | None]] = []
    for offset, band in ((max(offset - second, 0), band) for offset, band in relative):
        if out and out[-1][0] == offset:
            out[-1] = (offset, band)
        elif not out or out[-1][1] != band:
            out.append((offset, band))
    return tuple(out)


def offset_changes(zone_name: str, first_year: int, last_year: int) -> list[int]:
    """Six-hour windows (their epoch start) in which the zone's UTC offset changes."""
    zone = ZoneInfo(zone_name)
    moment = int(datetime(first_year, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(last_year + 1, 1, 1, tzinfo=UTC).timestamp())
    found = []
    before = datetime.fromtimestamp(moment, zone).utcoffset()
    while moment < end:
        after = datetime.fromtimestamp(moment + SIX_HOURS, zone).utcoffset()
        if after != before:
            found.append(moment)
        moment, before = moment + SIX_HOURS, after
    return found


# DST nights of 1935-1940 (Amsterdam's seconds offset ended in 1937) and 2024-2028, and
# far ahead (2090-2091: the zones' rules, past the tz database's listed changes).
CHANGES = {
    zone: offset_changes(zone, 1935, 1940)
    + offset_changes(zone, 2024, 2028)
    + offset_changes(zone, 2090, 2091)
    for zone in ZONES
}


@st.composite
def band_rules(draw: st.DrawFn) -> tuple[BandRule, ...]:
    """Up to six rules, some of them a band across midnight (split at it, as the API
    asks), edges on any minute."""
    rules: list[BandRule] = []
    for _ in range(draw(st.integers(0, 6))):
        band = draw(st.sampled_from(BAND_NAMES))
        days = frozenset(draw(st.lists(st.integers(0, 6), min_size=1, max_size=7)))
        if draw(st.booleans()):  # across midnight: 22:00-24:00 and 00:00-06:00, say
            evening = draw(st.integers(1, MINUTES_A_DAY - 1))
            morning = draw(st.integers(1, MINUTES_A_DAY - 1))
            rules.append(BandRule(band, days, evening, MINUTES_A_DAY))
            rules.append(BandRule(band, frozenset((d + 1) % 7 for d in days), 0, morning))
        else:
            edges = st.lists(st.integers(0, MINUTES_A_DAY), min_size=2, max_size=2, unique=True)
            start, end = sorted(draw(edges))
            rules.append(BandRule(band, days, start, end))
    return tuple(rules)


@st.composite
def calls(draw: st.DrawFn) -> tuple[BandSchedule, int, int]:
    """A schedule (zone, rules, holidays near the call) and a call (start, seconds)."""
    zone = draw(st.sampled_from(ZONES))
    if draw(st.booleans()):  # around a change of the zone's offset, if it has any
        changes = CHANGES[zone] or [1_790_000_000]
        start = draw(st.sampled_from(changes)) + draw(st.integers(-48 * 3600, 48 * 3600))
    else:
        start = draw(st.integers(0, 4_102_444_800))  # 1970 to 2100
    length = draw(st.integers(1, 48 * 3600))
    first_day = datetime.fromtimestamp(start, UTC).date().toordinal()
    holidays = frozenset(
        date.fromordinal(first_day + n)
        for n in draw(st.lists(st.integers(-1, 3), max_size=3, unique=True))
    )
    return BandSchedule(zone, draw(band_rules()), holidays), start, length


@settings(max_examples=300, deadline=None)
@given(call=calls())
@example(  # a Sunday-night band across midnight into a Monday holiday, London spring
    call=(
        BandSchedule(
            "Europe/London",
            (
                BandRule("night", frozenset({6}), 22 * 60, MINUTES_A_DAY),
                BandRule("night", frozenset({0}), 0, 6 * 60),
                BandRule("peak", WEEKDAYS, 60, 150),
            ),
            frozenset({date(2026, 3, 30)}),
        ),
        at(2026, 3, 28, 20, 7) + 13,
        48 * 3600,
    )
)
@example(  # Lord Howe's autumn night: 02:00 becomes 01:30, half an hour twice
    call=(
        BandSchedule("Australia/Lord_Howe", (BandRule("late", frozenset(range(7)), 90, 120),)),
        int(datetime(2026, 4, 4, 23, 0, tzinfo=ZoneInfo("Australia/Lord_Howe")).timestamp()),
        24 * 3600,
    )
)
@example(  # Amsterdam 1937: local mean time (+00:19:32) becomes +00:20
    call=(
        BandSchedule("Europe/Amsterdam", (BandRule("peak", WEEKDAYS, 0, 20),)),
        int(datetime(1937, 6, 30, 22, 0, tzinfo=UTC).timestamp()),
        6 * 3600,
    )
)
def test_bands_placed_edge_to_edge_equal_those_placed_minute_by_minute(
    call: tuple[BandSchedule, int, int],
) -> None:
    schedule, start, length = call
    assert schedule.segments(start, length) == minute_by_minute(schedule, start, length)


def test_a_day_long_call_looks_its_zone_up_a_few_dozen_times_not_every_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Placing a 24-hour call (the longest one by default) took a local-time lookup per
    minute, 1,441 of them, about 4 ms: a file of long banded calls imported in the serving
    process held the loop answering RADIUS and HTTP for most of a second per chunk. Now
    it looks the zone up at the band edges and a few times a day for an offset change."""
    import ocs.rating.bands as bands

    lookups = 0

    class Counted(datetime):
        @classmethod
        def fromtimestamp(cls, t: float, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
            nonlocal lookups
            lookups += 1
            return datetime.fromtimestamp(t, tz)

    monkeypatch.setattr(bands, "datetime", Counted)
    # A schedule of its own: placings are cached by schedule and start.
    schedule = BandSchedule(
        "Europe/London",
        (
            BandRule("peak", WEEKDAYS, 8 * 60, 18 * 60),
            BandRule("weekend", frozenset({5, 6}), 0, 24 * 60),
            BandRule("night", frozenset(range(7)), 0, 6 * 60),
        ),
    )
    start = at(2026, 10, 24, 9, 30)  # a Saturday into the autumn night
    placed = schedule.segments(start, 24 * 3600 + 60)
    assert placed == minute_by_minute(schedule, start, 24 * 3600 + 60)
    assert lookups <= 60, lookups
