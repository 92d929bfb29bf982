"""The NOC's series (docs/operations.md): decisions by protocol, result and reason; latency
by front end and kind in buckets around the 5 ms budget; the state sampled from Redis,
PostgreSQL and the catalog (live calls, funds, lines, hot accounts, ledger lag, billing
runs); backend probes; lost stops; payments, dunning and webhook deliveries; and, under
``--workers``, every worker's series in one scrape.

Real Redis, PostgreSQL and radclient; values are read from this process's registry
(``tests.radius_udp.sample``) or, for the workers, from the text a scrape returns.
"""

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from ocs import metrics, state_metrics
from ocs.backend_health import POSTGRESQL, BackendHealth
from ocs.balances import keys
from ocs.balances.accounts import AccountSpec
from ocs.balances.ledger_writer import LedgerWriter
from ocs.billing import dunning, dunning_store, payments, runs
from ocs.billing.cycles import PlanBilling
from ocs.billing.payments import NewPayment
from ocs.billing.store import Subscription, add_charge, set_plan_billing, subscribe
from ocs.charging.janitor import Janitor
from ocs.config import with_overrides
from ocs.events.delivery import deliver_pending
from ocs.services import Services
from ocs.state_metrics import StateSampler, top
from tests.billing_helpers import EUR, billed_plan, customer, monthly, post_on_time, run
from tests.conftest import RunningApp, RunningRadius, add_plan, caught_up
from tests.helpers import acct, auth, new_account
from tests.outage_helpers import FlakyPool
from tests.ports import free_port
from tests.radius_udp import sample

GERMANY = "4930901820"


@pytest.fixture(autouse=True)
def forget_the_state() -> Iterator[None]:
    """What a test's sampler published is not exported into the next test."""
    yield
    metrics.STATE.forget()


def decisions() -> dict[tuple[str, str, str], float]:
    """Every ``ocs_decisions_total`` sample: (protocol, result, reason) -> count."""
    found = {}
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == "ocs_decisions_total":
                found[(s.labels["protocol"], s.labels["result"], s.labels["reason"])] = s.value
    return found


def grown(before: dict[tuple[str, str, str], float]) -> dict[tuple[str, str, str], float]:
    """What grew since ``before``."""
    return {k: v - before.get(k, 0.0) for k, v in decisions().items() if v != before.get(k, 0.0)}


def radius_call(user: str, destination: str | None, conf_id: str) -> list[tuple[str, str]]:
    """An Access-Request's attributes (no Called-Station-Id: a balance query)."""
    pairs = [("NAS-IP-Address", "127.0.0.1"), ("User-Name", user)]
    if destination is not None:
        pairs.append(("Called-Station-Id", destination))
    return [*pairs, ("h323-conf-id", f"h323-conf-id={conf_id}")]


# -- decisions and latency -------------------------------------------------------------------


async def test_decisions_are_counted_by_protocol_result_and_reason(nas: RunningRadius) -> None:
    app = nas.app
    await new_account(app, "h-rich", balance="1.00")
    await new_account(app, "h-poor", balance="0")
    await new_account(app, "r-rich", balance="1.00")
    before = decisions()

    assert (await app.post("/v1/calls", {"account": "h-rich", "destination": GERMANY}))[0] == 201
    assert (await app.post("/v1/calls", {"account": "h-poor", "destination": GERMANY}))[0] == 402
    assert (await app.post("/v1/calls", {"account": "nobody", "destination": GERMANY}))[0] == 404
    assert (await auth(nas, radius_call("r-rich", GERMANY, "D-1"))).code == "Access-Accept"
    assert (await auth(nas, radius_call("nobody", GERMANY, "D-2"))).code == "Access-Reject"
    # A balance query is answered, but decides no call.
    assert (await auth(nas, radius_call("r-rich", None, "D-3"))).code == "Access-Accept"

    assert grown(before) == {
        ("http", "granted", ""): 1,
        ("http", "refused", "zero_balance"): 1,
        ("http", "refused", "account_not_found"): 1,
        ("radius", "granted", ""): 1,
        ("radius", "refused", "account_not_found"): 1,
    }


def latency_count(frontend: str, kind: str) -> float:
    return sample("ocs_request_duration_seconds_count", frontend=frontend, kind=kind)


async def test_latency_is_bucketed_around_the_budget_by_front_end_and_kind(
    nas: RunningRadius,
) -> None:
    app = nas.app
    await new_account(app, "lat", balance="1.00")
    before = {
        (frontend, kind): latency_count(frontend, kind)
        for frontend, kind in [
            ("http", "authorize"),
            ("http", "stop"),
            ("http", "admin"),
            ("radius", "authorize"),
            ("radius", "query"),
        ]
    }
    status, call = await app.post("/v1/calls", {"account": "lat", "destination": GERMANY})
    assert status == 201, call
    status, _ = await app.post(f"/v1/calls/{call['call_id']}/stop", {"duration": 3})
    assert status == 200
    await app.get("/v1/accounts/lat")
    await auth(nas, radius_call("nobody", GERMANY, "L-1"))
    await auth(nas, radius_call("lat", None, "L-2"))

    assert {key: latency_count(*key) - count for key, count in before.items()} == {
        ("http", "authorize"): 1,
        ("http", "stop"): 1,
        ("http", "admin"): 1,
        ("radius", "authorize"): 1,
        ("radius", "query"): 1,
    }
    bounds = {
        s.labels["le"]
        for family in REGISTRY.collect()
        if family.name == "ocs_request_duration_seconds"
        for s in family.samples
        if s.name.endswith("_bucket")
        and s.labels["frontend"] == "http"
        and s.labels["kind"] == "authorize"
    }
    # Four of ten bounds below the 5 ms budget, one exactly on it.
    assert bounds == {"0.001", "0.002", "0.003", "0.004", "0.005", "0.0075", "0.01", "0.025"} | {
        "0.1",
        "1.0",
        "+Inf",
    }
    # The per-endpoint series keep a count and a sum, no buckets.
    names = {s.name for f in REGISTRY.collect() for s in f.samples}
    assert "ocs_http_request_duration_seconds_count" in names
    assert "ocs_http_request_duration_seconds_bucket" not in names
    assert "ocs_radius_request_duration_seconds_bucket" not in names


def other_method_requests() -> float:
    """HTTP requests counted under method "other", every endpoint and result."""
    return sum(
        s.value
        for f in REGISTRY.collect()
        if f.name == "ocs_http_requests"
        for s in f.samples
        if s.name == "ocs_http_requests_total" and s.labels["method"] == "other"
    )


async def test_an_unknown_http_method_is_counted_as_other_not_by_its_name(
    app: RunningApp,
) -> None:
    # HTTP's parser lets only methods it knows through; WebDAV's are among them.
    before = other_method_requests()
    response = await app.client.request("PROPFIND", "/v1/calls")
    assert response.status == 405
    assert other_method_requests() == before + 1
    methods = {
        s.labels["method"]
        for f in REGISTRY.collect()
        if f.name == "ocs_http_requests"
        for s in f.samples
    }
    assert "PROPFIND" not in methods


# -- the state sampled from Redis ---------------------------------------------------------


def micro(amount: str) -> int:
    return int(Decimal(amount) * 1_000_000)


async def test_the_sampler_reads_live_calls_their_funds_lines_and_the_hottest_accounts(
    nas: RunningRadius,
) -> None:
    app = nas.app
    await new_account(app, "busy", balance="5.00", max_lines=2)
    await new_account(app, "calm", balance="5.00", max_lines=3)
    held = 0
    call_ids = []
    for account in ("busy", "busy", "calm"):
        status, call = await app.post("/v1/calls", {"account": account, "destination": GERMANY})
        assert status == 201, call
        held += micro(call["reserved"])
        call_ids.append(call["call_id"])
        # Answered: an HTTP call is provisional until its /start (decision 0055).
        status, progress = await app.post(f"/v1/calls/{call['call_id']}/start", {})
        assert status == 200, progress
    # A RADIUS call waits for its Accounting-Start.
    reply = await auth(nas, radius_call("calm", GERMANY, "LIVE-1"))
    assert reply.code == "Access-Accept", reply.output
    sampler = StateSampler.of(app.services)

    await sampler.sample()

    assert sample("ocs_live_calls", state="started") == 3
    assert sample("ocs_live_calls", state="not_started") == 1
    assert sample("ocs_lines_in_use") == 4
    assert sample("ocs_reserved_funds_micros", currency="EUR") > held > 0
    assert sample("ocs_accounts_with_live_calls") == 2
    assert sample("ocs_accounts_at_line_limit") == 1  # busy: 2 of 2; calm: 2 of 3
    assert sample("ocs_hot_account_live_calls", account="busy") == 2
    assert sample("ocs_hot_account_live_calls", account="calm") == 2
    assert sample("ocs_hot_zone_live_calls", zone="Germany") == 4
    assert sample("ocs_state_sampled_timestamp_seconds") == pytest.approx(time.time(), abs=60)

    for call_id in call_ids:
        status, _ = await app.post(f"/v1/calls/{call_id}/stop", {"duration": 0})
        assert status == 200
    # The RADIUS call is its NAS's to stop (decision 0048).
    stopped = await acct(nas, "Stop", radius_call("calm", None, "LIVE-1"))
    assert stopped.code == "Accounting-Response", stopped.output
    await sampler.sample()
    assert sample("ocs_lines_in_use") == 0
    assert REGISTRY.get_sample_value("ocs_hot_account_live_calls", {"account": "busy"}) is None
    assert REGISTRY.get_sample_value("ocs_reserved_funds_micros", {"currency": "EUR"}) is None


def test_the_hottest_are_the_ten_largest_ties_by_name() -> None:
    from collections import Counter

    counts = Counter({f"a{n:02}": n % 13 for n in range(40)})
    chosen = top(counts)
    assert len(chosen) == metrics.HOT_TOP == 10
    assert chosen[:3] == [("a12", 12), ("a25", 12), ("a38", 12)]
    assert all(count >= 9 for _, count in chosen)


async def test_ledger_lag_is_what_redis_holds_not_yet_in_postgresql(services: Services) -> None:
    await add_plan(services)
    # No ledger writer runs beside the ``services`` fixture: the entries wait.
    for n in range(3):
        await services.accounts.create(
            AccountSpec(f"lag{n}", plan_id="retail", opening_balance=EUR)
        )
    await services.redis.xadd(keys.dead_letters(7), {"error": "refused by PostgreSQL"})
    later = time.time() + 60
    sampler = StateSampler(services.redis, services.pool, services.catalog, clock=lambda: later)

    await sampler.sample()
    assert sample("ocs_ledger_pending_entries") == 3
    assert 60 <= sample("ocs_ledger_oldest_pending_age_seconds") <= 120
    assert sample("ocs_ledger_dead_letter_entries") == 1

    writer = LedgerWriter(services.redis, services.pool)
    await writer.ensure_groups()
    written_before = sample("ocs_ledger_entries_written_total")
    assert await writer.read_new() == 3
    assert sample("ocs_ledger_entries_written_total") == written_before + 3
    assert sample("ocs_backend_roundtrip_seconds_count", backend="postgresql", source="ledger") > 0
    await sampler.sample()
    assert sample("ocs_ledger_pending_entries") == 0
    assert sample("ocs_ledger_oldest_pending_age_seconds") == 0


def count_passes(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The times of every pass over the live state from now on (``sample_live`` counted)."""
    passes: list[float] = []
    read = state_metrics.sample_live

    async def counted(*args: object, **kwargs: object) -> metrics.LiveState:
        passes.append(time.time())
        return await read(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(state_metrics, "sample_live", counted)
    return passes


async def test_workers_share_one_pass_over_the_live_state(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_plan(services)
    for n in range(3):
        await services.accounts.create(
            AccountSpec(f"share{n}", plan_id="retail", opening_balance=EUR)
        )
    passes = count_passes(monkeypatch)
    now = [time.time()]
    workers = [
        StateSampler(services.redis, services.pool, services.catalog, clock=lambda: now[0])
        for _ in range(3)
    ]
    for worker in workers:
        await worker.sample(shared=True)
    # One pass for the three; each publishes it.
    assert len(passes) == 1
    assert sample("ocs_ledger_pending_entries") == 3

    # Once the sample is as old as the interval, the next worker to look takes a new one.
    await services.accounts.create(AccountSpec("share3", plan_id="retail", opening_balance=EUR))
    now[0] += state_metrics.DEFAULT_INTERVAL_S
    await workers[2].sample(shared=True)
    await workers[0].sample(shared=True)
    assert len(passes) == 2
    assert sample("ocs_ledger_pending_entries") == 4


async def test_a_worker_beside_a_background_process_publishes_its_sample_and_never_takes_one(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_plan(services)
    await services.accounts.create(AccountSpec("bgs1", plan_id="retail", opening_balance=EUR))
    passes = count_passes(monkeypatch)
    now = [time.time()]
    worker = StateSampler(
        services.redis, services.pool, services.catalog, clock=lambda: now[0], take_live_pass=False
    )
    background = StateSampler(services.redis, services.pool, services.catalog, clock=lambda: now[0])
    # No sample stored yet: the worker exports no live state, and takes no pass itself.
    await worker.sample(shared=True)
    assert passes == []
    assert sample("ocs_state_sampled_timestamp_seconds") == 0
    assert await services.redis.get(keys.live_state_lease()) is None
    # The background process's pass is what the worker publishes, also once it is older
    # than the interval (a pass-taking sampler would take a new one then).
    await background.sample(shared=True)
    assert len(passes) == 1
    now[0] += 3 * state_metrics.DEFAULT_INTERVAL_S
    await worker.sample(shared=True)
    assert len(passes) == 1
    assert sample("ocs_ledger_pending_entries") == 1  # the account's opening balance
    # Gone (the background process down for longer than the sample is kept): no figure.
    await services.redis.delete(keys.live_state_sample())
    await worker.sample(shared=True)
    assert len(passes) == 1
    assert sample("ocs_ledger_pending_entries") == 0
    assert sample("ocs_state_sampled_timestamp_seconds") == 0


async def test_the_catalog_version_age_and_size_follow_its_reloads(services: Services) -> None:
    clock = [1_000.0]
    sampler = StateSampler(services.redis, services.pool, services.catalog, clock=lambda: clock[0])
    await add_plan(services)  # RETAIL_DECK: four prefixes
    await caught_up(services)  # its notifications' reloads too
    await sampler.sample()
    first = services.catalog.version
    assert sample("ocs_catalog_version") == first
    assert sample("ocs_catalog_loaded_timestamp_seconds") == 1_000.0
    assert sample("ocs_catalog_size", what="plans") == 1
    assert sample("ocs_catalog_size", what="prefixes") == 4
    assert sample("ocs_catalog_size", what="carriers") == 0

    clock[0] = 1_010.0
    await sampler.sample()  # nothing reloaded: the same snapshot, loaded when it was
    assert sample("ocs_catalog_loaded_timestamp_seconds") == 1_000.0
    await add_plan(services, "wholesale")
    await caught_up(services)
    clock[0] = 1_020.0
    await sampler.sample()
    assert sample("ocs_catalog_version") > first
    assert sample("ocs_catalog_loaded_timestamp_seconds") == 1_020.0
    assert sample("ocs_catalog_size", what="plans") == 2
    assert sample("ocs_catalog_size", what="prefixes") == 8


# -- backends ---------------------------------------------------------------------------------


async def test_a_probe_that_fails_marks_the_backend_down_and_hides_what_it_cannot_read(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    health = BackendHealth()  # this test's outage alone
    pool = FlakyPool(services.pool)
    sampler = StateSampler(services.redis, pool, services.catalog, billing_every=1, health=health)
    await sampler.sample()
    assert sample("ocs_billing_runs", state="running") == 0  # read: exported
    errors = sample("ocs_backend_errors_total", backend="postgresql", source="probe")
    probes = sample("ocs_backend_roundtrip_seconds_count", backend="postgresql", source="probe")

    pool.down = True
    await sampler.sample()
    assert not health.is_up(POSTGRESQL)
    assert sample("ocs_backend_up", backend="postgresql") == 0
    assert sample("ocs_backend_errors_total", backend="postgresql", source="probe") == errors + 1
    assert REGISTRY.get_sample_value("ocs_billing_runs", {"state": "running"}) is None
    assert sample("ocs_live_calls", state="started") == 0  # Redis is still read

    pool.down = False
    await sampler.sample()
    assert health.is_up(POSTGRESQL)
    assert sample("ocs_backend_up", backend="postgresql") == 1
    assert sample("ocs_billing_runs", state="running") == 0  # read again
    assert (
        sample("ocs_backend_roundtrip_seconds_count", backend="postgresql", source="probe")
        == probes + 1
    )


async def test_the_hot_paths_redis_round_trips_are_timed_per_batch(app: RunningApp) -> None:
    before = sample("ocs_backend_roundtrip_seconds_count", backend="redis", source="pipeline")
    await add_plan(app.services)
    await new_account(app, "rt", balance="1.00")
    assert (await app.post("/v1/calls", {"account": "rt", "destination": GERMANY}))[0] == 201
    assert (
        sample("ocs_backend_roundtrip_seconds_count", backend="redis", source="pipeline") > before
    )


# -- lost stops -------------------------------------------------------------------------------


async def test_lost_stops_are_counted_by_cause_and_a_late_stop_too(nas: RunningRadius) -> None:
    app = nas.app
    await new_account(app, "lost", balance="5.00", max_lines=2)
    status, started = await app.post("/v1/calls", {"account": "lost", "destination": GERMANY})
    assert status == 201, started
    status, progress = await app.post(f"/v1/calls/{started['call_id']}/start", {})
    assert status == 200, progress
    # Granted over RADIUS, the other call waits for an Accounting-Start that never comes.
    reply = await auth(nas, radius_call("lost", GERMANY, "LOST-1"))
    assert reply.code == "Access-Accept", reply.output
    expired = sample("ocs_stale_calls_closed_total", cause="expired")
    never = sample("ocs_stale_calls_closed_total", cause="start-timeout")
    late = {
        outcome: sample("ocs_late_stops_total", outcome=outcome)
        for outcome in ("charged", "refunded", "covered")
    }

    # A day later, no stop has come: the janitor closes both.
    janitor = Janitor(app.services.calls, app.services.store)
    assert await janitor.sweep(now=int(time.time()) + 86_400) == 2
    assert sample("ocs_stale_calls_closed_total", cause="expired") == expired + 1
    assert sample("ocs_stale_calls_closed_total", cause="start-timeout") == never + 1

    # The started call's stop comes after all, 30 s: the close charged its whole grant,
    # and the rest is given back (decision 0015).
    status, body = await app.post(f"/v1/calls/{started['call_id']}/stop", {"duration": 30})
    assert status == 200, body
    assert sample("ocs_late_stops_total", outcome="refunded") == late["refunded"] + 1
    # The unstarted call's stop, a call never answered: its close charged as much.
    await app.services.calls.stop("LOST-1", 0)
    assert sample("ocs_late_stops_total", outcome="covered") == late["covered"] + 1
    assert sample("ocs_late_stops_total", outcome="charged") == late["charged"]


# -- billing, payments, dunning, webhooks ------------------------------------------------------


async def test_billing_runs_are_sampled_from_postgresql(services: Services) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "b1", "rent", date(2026, 3, 1))
    await customer(services, "b2", "rent", date(2026, 3, 1))
    chunks = sample("ocs_billing_chunk_duration_seconds_count")
    await run(services, "2026-03")
    assert sample("ocs_billing_chunk_duration_seconds_count") > chunks
    sampler = StateSampler(services.redis, services.pool, services.catalog, billing_every=1)

    await sampler.sample()
    assert sample("ocs_billing_runs", state="done") == 1
    assert sample("ocs_billing_runs", state="running") == 0
    assert sample("ocs_billing_oldest_running_run_age_seconds") == 0
    assert sample("ocs_billing_latest_run_accounts", progress="done") == 2
    assert sample("ocs_billing_latest_run_accounts", progress="total") == 2
    assert sample("ocs_billing_latest_run_invoices", state="draft") == 2
    assert sample("ocs_billing_last_run_finished_timestamp_seconds") == pytest.approx(
        time.time(), abs=120
    )
    assert 0 <= sample("ocs_billing_last_run_duration_seconds") < 120

    # A run created two hours ago that no worker has finished: late.
    late = await runs.create_run(services.pool, "2026-04", invoice_date=date(2026, 5, 1))
    async with services.pool.acquire() as conn:
        await conn.execute(
            "UPDATE invoice_runs SET created_at = now() - interval '2 hours' WHERE id = $1", late
        )
    await sampler.sample()
    assert sample("ocs_billing_runs", state="running") == 1
    assert 7_200 <= sample("ocs_billing_oldest_running_run_age_seconds") < 7_500
    assert sample("ocs_billing_latest_run_accounts", progress="done") == 0


async def test_payments_are_counted_by_source_and_result(services: Services) -> None:
    await add_plan(services)
    await services.accounts.create(AccountSpec("payer", plan_id="retail"))
    recorded = sample("ocs_payments_total", source="manual", result="recorded")
    repeated = sample("ocs_payments_total", source="manual", result="repeated")
    new = NewPayment("payer", 4 * EUR, "manual", "R1", reference="R1")
    await payments.record_payment(services.pool, services.store, new)
    await payments.record_payment(services.pool, services.store, new)
    assert sample("ocs_payments_total", source="manual", result="recorded") == recorded + 1
    assert sample("ocs_payments_total", source="manual", result="repeated") == repeated + 1
    refunds = sample("ocs_payment_refunds_total", source="manual")
    payment_id = (await payments.list_payments(services.pool, "payer"))[0].id
    await payments.refund_payment(services.pool, services.store, payment_id, EUR, "RF1")
    assert sample("ocs_payment_refunds_total", source="manual") == refunds + 1


async def test_a_dunning_run_counts_its_steps_and_leaves_no_backlog(services: Services) -> None:
    await add_plan(services)
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("retail", "fixed_date", date(2026, 1, 1), cycle_day=1, grace_days=10),
    )
    await monthly(services, "rent", 10 * EUR)
    await services.accounts.create(AccountSpec("late", plan_id="retail", credit_limit=100 * EUR))
    sub = await subscribe(services.pool, Subscription("late", "retail", date(2026, 3, 1)))
    await add_charge(services.pool, sub, "rent")
    await dunning_store.set_plan_settings(services.pool, "retail", 2, 7)
    run_id = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await post_on_time(services, run_id)
    notices = sample("ocs_dunning_steps_total", step="notice", outcome="sent")
    metrics.DUNNING_BACKLOG.set(5)  # what an earlier run that failed half-way left

    report = await dunning.run_dunning(
        services.pool, services.store, services.settings, datetime(2026, 4, 12, tzinfo=UTC)
    )
    assert [s.step for s in report.steps] == ["notice"]
    assert sample("ocs_dunning_steps_total", step="notice", outcome="sent") == notices + 1
    assert sample("ocs_dunning_backlog") == 0
    assert sample("ocs_dunning_last_run_timestamp_seconds") == pytest.approx(time.time(), abs=60)


async def test_a_webhook_that_never_answers_is_counted_dead_and_sampled(app: RunningApp) -> None:
    services = app.services
    port = free_port()  # nothing listens there
    status, made = await app.post(
        "/v1/webhooks",
        {"url": f"http://127.0.0.1:{port}/hook", "kinds": ["subscription.created"], "id": "crm"},
    )
    assert status == 201, made
    await billed_plan(services)
    await customer(services, "w1", None, date(2026, 3, 1))
    dead = sample("ocs_event_deliveries_total", channel="webhook", outcome="dead")
    settings = with_overrides(
        services.settings, webhook_max_attempts=1, webhook_timeout=2.0, webhook_backoff=1.0
    )

    report = await deliver_pending(services.pool, settings)
    assert report.dead == 1
    assert sample("ocs_event_deliveries_total", channel="webhook", outcome="dead") == dead + 1
    await StateSampler.of(services).sample()
    assert sample("ocs_event_deliveries_by_state", channel="webhook", state="dead") == 1
    assert sample("ocs_event_deliveries_by_state", channel="webhook", state="pending") == 0


def test_a_usage_import_counts_its_rows_by_outcome() -> None:
    done = sample("ocs_usage_imports_total", state="done")
    charged = sample("ocs_usage_import_rows_total", outcome="charged")
    rejected = sample("ocs_usage_import_rows_total", outcome="rejected")
    metrics.usage_import_finished("done", {"charged": 7, "repeated": 0, "rejected": 2})
    assert sample("ocs_usage_imports_total", state="done") == done + 1
    assert sample("ocs_usage_import_rows_total", outcome="charged") == charged + 7
    assert sample("ocs_usage_import_rows_total", outcome="rejected") == rejected + 2


# -- every worker -----------------------------------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import os, sys
    from ocs import metrics
    metrics.decision("radius", None)
    metrics.decision("http", "zero_balance")
    metrics.request_latency("radius", "authorize").observe(0.0042)
    metrics.BACKEND_UP.labels("redis").set(float(sys.argv[1]))
    print(os.getpid())
    """
)
_SCRAPE = textwrap.dedent(
    """
    import sys
    from prometheus_client import multiprocess
    from ocs import metrics
    for pid in sys.argv[2:]:
        multiprocess.mark_process_dead(int(pid), sys.argv[1])
    metrics.STATE.publish(
        catalog=metrics.CatalogState(version=3, loaded_at=1.0, sizes={"plans": 2})
    )
    sys.stdout.write(metrics.exposition().decode())
    """
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def python(env: dict[str, str], script: str, *args: object) -> str:
    """Run ``script`` in a new Python process; what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def scrape(env: dict[str, str], directory: Path, *dead: int) -> Samples:
    """What a worker's /metrics answers (after ``dead`` workers were reaped)."""
    text = python(env, _SCRAPE, directory, *dead)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_workers_series_come_in_one_scrape(tmp_path: Path) -> None:
    env = {**os.environ, metrics.MULTIPROCESS_DIR_ENV: str(tmp_path)}
    reaching = int(python(env, _WORKER, 1))
    lost = int(python(env, _WORKER, 0))  # this worker lost Redis
    assert reaching != lost

    found = scrape(env, tmp_path)
    granted = (("protocol", "radius"), ("reason", ""), ("result", "granted"))
    refused = (("protocol", "http"), ("reason", "zero_balance"), ("result", "refused"))
    assert found[("ocs_decisions_total", granted)] == 2
    assert found[("ocs_decisions_total", refused)] == 2
    within = (("frontend", "radius"), ("kind", "authorize"), ("le", "0.005"))
    below = (("frontend", "radius"), ("kind", "authorize"), ("le", "0.004"))
    assert found[("ocs_request_duration_seconds_bucket", within)] == 2
    assert found[("ocs_request_duration_seconds_bucket", below)] == 0
    # The lowest of the workers' values ...
    assert found[("ocs_backend_up", (("backend", "redis"),))] == 0
    # ... and the state of the process that answers, once, never a sum over workers.
    assert found[("ocs_catalog_version", ())] == 3
    assert found[("ocs_catalog_size", (("what", "plans"),))] == 2

    # A worker that died (its parent reaps it) no longer holds the gauge down; its
    # counts stay counted.
    found = scrape(env, tmp_path, lost)
    assert found[("ocs_backend_up", (("backend", "redis"),))] == 1
    assert found[("ocs_decisions_total", granted)] == 2


_PROBING_WORKER = textwrap.dedent(
    """
    import os, sys
    from ocs.backend_health import BackendHealth, WriteProbe
    tracker = BackendHealth()
    # Every master takes this worker's probe; then, with "left", a probe finds the
    # second one gone from the cluster (a failover, a scale-in).
    tracker.report_masters(WriteProbe({"10.0.0.1:6379": None, "10.0.0.2:6379": None}))
    if sys.argv[1] == "left":
        tracker.report_masters(WriteProbe({"10.0.0.1:6379": None}))
    print(os.getpid())
    """
)


def test_a_master_gone_from_the_cluster_leaves_every_workers_scrape(tmp_path: Path) -> None:
    # Under --workers each worker writes its gauges to a file that keeps every series it
    # held. Before, a master a worker's probe found gone from the cluster stayed in the
    # scrape at 1 until that worker restarted. Now it leaves the scrape, even while
    # another worker has not probed since; the master still there stays.
    env = {**os.environ, metrics.MULTIPROCESS_DIR_ENV: str(tmp_path)}
    python(env, _PROBING_WORKER, "left")
    python(env, _PROBING_WORKER, "stayed")
    found = scrape(env, tmp_path)
    up = {labels: value for (name, labels), value in found.items() if name == "ocs_redis_master_up"}
    assert up == {(("master", "10.0.0.1:6379"),): 1.0}
