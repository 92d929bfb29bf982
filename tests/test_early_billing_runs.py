"""A billing run of a period whose usage window has not ended: refused unless early; an
early run's usage stops at its creation and the next invoice bills the later calls; and
every run's drafting waits for the ledger writer to write its window's calls."""

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from ocs import api_tokens
from ocs.balances import keys
from ocs.billing import runs
from ocs.billing.itemised import call_rows
from ocs.billing.worker import BillingWorker, WorkerSettings
from ocs.config import Settings
from ocs.errors import OcsError, Reason
from ocs.http.app import create_app
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, cdr, customer, invoice_id, monthly
from tests.conftest import RunningApp, bearer
from tests.helpers import ocs_cli

MARCH_END = datetime(2026, 4, 1, tzinfo=UTC)
CENT = EUR // 100


async def _renting(services: Services) -> None:
    """The retail plan (arrears, cycle on the 1st), 10.00 rent a month, account a0."""
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "a0", "rent", date(2026, 1, 1))


async def _run_count(services: Services) -> int:
    async with services.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM invoice_runs"))


async def _usage(services: Services, label: str) -> list[tuple[int, int, str]]:
    """The usage lines of a0's invoice of ``label``: (calls, amount, description)."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT l.calls, l.amount, l.description FROM invoice_lines l"
            " JOIN invoices i ON i.id = l.invoice_id"
            " WHERE i.account_id = 'a0' AND i.period_label = $1 AND l.kind = 'usage'"
            " ORDER BY l.position",
            label,
        )
    return [(r["calls"], r["amount"], r["description"]) for r in rows]


async def test_a_period_is_refused_until_its_window_ended_and_the_run_delay_passed(
    services: Services,
) -> None:
    await _renting(services)
    # On March 20, and 299 s after March ended (the delay is 300 s): refused, naming period.
    for now in (datetime(2026, 3, 20, tzinfo=UTC), MARCH_END + timedelta(seconds=299)):
        with pytest.raises(OcsError) as refused:
            await runs.create_run(services.pool, "2026-03", timing=runs.Timing(delay=300, now=now))
        assert (refused.value.reason, refused.value.field) == (Reason.INVALID_FIELD, "period")
        assert "'2026-03' has not ended" in refused.value.message, refused.value.message
        assert "early" in refused.value.message
    assert await _run_count(services) == 0
    # Once the delay has passed: the run is made, its usage not cut.
    run_id = await runs.create_run(
        services.pool, "2026-03", timing=runs.Timing(delay=300, now=MARCH_END + timedelta(300))
    )
    async with services.pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT usage_cutoff FROM invoice_runs WHERE id = $1", run_id)
            is None
        )


@pytest.mark.parametrize(
    ("period", "says"),
    [
        ("garbage", "expected YYYY-MM or YYYY-MM-DD..YYYY-MM-DD"),
        ("2026-13", "not a month"),
        ("2026-02-30..2026-03-01", "not a date"),
        ("2026-12-05..2026-01-01", "first day must come before its end"),
    ],
)
async def test_a_period_name_no_plan_could_have_is_refused_with_no_account_to_bill(
    services: Services, period: str, says: str
) -> None:
    # A plan with no account: the name was parsed only per account, so these were
    # stored as runs with nothing to bill, done at once, and counted as taken.
    await billed_plan(services)
    with pytest.raises(OcsError) as refused:
        await runs.create_run(services.pool, period, timing=runs.Timing(early=True))
    assert (refused.value.reason, refused.value.field) == (Reason.INVALID_FIELD, "period")
    assert says in refused.value.message, refused.value.message
    assert await _run_count(services) == 0


async def test_the_api_and_the_cli_refuse_this_month_unless_an_admin_asks_early(
    app: RunningApp, settings: Settings, tmp_path: Path
) -> None:
    services = app.services
    await _renting(services)
    month = f"{datetime.now(UTC):%Y-%m}"
    status, refused = await app.post("/v1/invoice-runs", {"period": month, "execute": True})
    assert status == 400, refused
    assert (refused["error"]["reason"], refused["error"]["field"]) == ("invalid_field", "period")
    assert "has not ended" in refused["error"]["message"]
    # An early run is an admin's: an operator is refused, naming the field.
    operator = await api_tokens.create(services.pool, "biller", "operator")
    status, refused, _ = await app.anonymous(
        "POST",
        "/v1/invoice-runs",
        json={"period": month, "early": True},
        headers=bearer(operator),
    )
    assert (status, refused["error"]["field"]) == (403, "early"), refused
    assert await _run_count(services) == 0

    code, out, err = await ocs_cli(settings, tmp_path, "billing", "run", "--period", month)
    assert (code, out) == (2, ""), err
    line = err.strip().splitlines()[-1]
    assert err.count("ocs: ") == 1, err
    assert line.startswith(f"ocs: usage error: period: '{month}' has not ended"), line
    assert await _run_count(services) == 0

    before = datetime.now(UTC)
    status, made = await app.post("/v1/invoice-runs", {"period": month, "early": True})
    assert status == 201, made
    # Its usage stops at its creation.
    cutoff = datetime.fromisoformat(made["usage_cutoff"])
    assert before <= cutoff <= datetime.now(UTC), made


async def _debit(services: Services, entry: str, kind: str, amount: int, at: datetime) -> None:
    """A ledger row the ledger writer wrote (a call's debit, a top-up)."""
    async with services.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO ledger (entry_id, account_id, kind, amount, balance_after,"
            " occurred_at) VALUES ($1, 'a0', $2, $3, 0, $4)",
            entry,
            kind,
            amount,
            at,
        )


async def _call(services: Services, entry: str, at: datetime, charged: int) -> None:
    """A call of a0 stopped at ``at``: its CDR and its debit."""
    await cdr(services, entry, "a0", at, charged=charged)
    await _debit(services, entry, "call", -charged, at)


async def _statement(services: Services, label: str) -> tuple[int, int, int, int]:
    """a0's statement of ``label``: previous balance, payments, debited, closing balance."""
    async with services.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT previous_balance, payments, debited, closing_balance FROM invoices"
            " WHERE account_id = 'a0' AND period_label = $1",
            label,
        )
    return (row["previous_balance"], row["payments"], row["debited"], row["closing_balance"])


async def test_a_call_stopped_after_an_early_run_is_billed_by_the_next_invoice(
    services: Services,
) -> None:
    # On March 10 at noon an admin bills March early. A call of March 5 is on it; one of
    # March 20 stops after it, and is on April's invoice beside April's own: none lost.
    # A top-up of March 25 is on April's statement too.
    await _renting(services)
    await _call(services, "1-1", datetime(2026, 3, 5, tzinfo=UTC), 10 * CENT)
    created = datetime(2026, 3, 10, 12, tzinfo=UTC)
    march = await runs.create_run(
        services.pool,
        "2026-03",
        invoice_date=date(2026, 3, 10),
        timing=runs.Timing(delay=300, early=True, now=created),
    )
    assert (await runs.execute_run(services.pool, march)).state == "done"
    await _call(services, "1-2", datetime(2026, 3, 20, tzinfo=UTC), 20 * CENT)
    await _debit(services, "1-9", "topup", 5 * EUR, datetime(2026, 3, 25, tzinfo=UTC))
    await _call(services, "1-3", datetime(2026, 4, 5, tzinfo=UTC), 40 * CENT)
    april = await runs.create_run(services.pool, "2026-04", invoice_date=date(2026, 5, 1))
    assert (await runs.execute_run(services.pool, april)).state == "done"

    async with services.pool.acquire() as conn:
        window = await conn.fetchrow(
            "SELECT window_start, window_end FROM invoices WHERE period_label = '2026-03'"
        )
    assert (window["window_start"], window["window_end"]) == (
        datetime(2026, 3, 1, tzinfo=UTC),
        created,
    )
    assert [(c, a) for c, a, _ in await _usage(services, "2026-03")] == [(1, 10 * CENT)]
    # April: its own call, and March 20's as a late line from its stop to April 1.
    assert sorted((c, a) for c, a, _ in await _usage(services, "2026-04")) == [
        (1, 20 * CENT),
        (1, 40 * CENT),
    ]
    late = [d for _, a, d in await _usage(services, "2026-04") if a == 20 * CENT]
    assert late == [
        "Calls to UK Mobile, made after the previous invoice's usage ended on 2026-03-10"
    ]
    # The itemised lists agree: each call on exactly one invoice.
    march_calls = await call_rows(services.pool, await invoice_id(services, "a0", "2026-03"))
    april_calls = await call_rows(services.pool, await invoice_id(services, "a0", "2026-04"))
    assert [r.cdr for r in march_calls] == ["1-1"]
    assert [r.cdr for r in april_calls] == ["1-2", "1-3"]
    # The statements follow each other: March's ends on March 10 at noon (its 10.00 rent
    # unposted), April's reads the ledger from there: the top-up and both calls.
    assert await _statement(services, "2026-03") == (0, 0, 10 * CENT, -1010 * CENT)
    assert await _statement(services, "2026-04") == (-10 * CENT, 5 * EUR, 60 * CENT, -570 * CENT)


async def test_drafting_waits_while_the_ledger_writer_holds_a_call_of_the_window(
    services: Services, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # An operator's March run, made once March ended: the ledger writer (PostgreSQL was
    # away) still holds a call stopped on March 31. Drafted now, it would be on no invoice.
    await _renting(services)
    run_id = await runs.create_run(services.pool, "2026-03", invoice_date=date(2026, 4, 1))
    stream = keys.ledger(keys.bucket_of("a0"))
    inside = f"{int(datetime(2026, 3, 31, 23, 59, tzinfo=UTC).timestamp() * 1000)}-0"
    after = f"{int(datetime(2026, 4, 1, 0, 30, tzinfo=UTC).timestamp() * 1000)}-0"
    redis = Redis.from_url(redis_url)
    entry: Any = {"kind": "call", "account": "a0", "amount": "-1000"}
    await redis.xadd(stream, entry, id=inside)
    await redis.xadd(stream, entry, id=after)
    april = datetime(2026, 4, 1, 12, tzinfo=UTC)
    worker = BillingWorker(
        services.pool, WorkerSettings(run_delay=300), clock=lambda: april, store=services.store
    )
    try:
        with caplog.at_level("INFO", logger="ocs.billing.worker"):
            progress = await worker.work_on(run_id, asyncio.Event())
            assert (progress.state, progress.accounts_done) == ("running", 0)
            await worker.run_once()  # still waiting: logged once
            async with services.pool.acquire() as conn:
                assert await conn.fetchval("SELECT count(*) FROM invoices") == 0
            # Written (and deleted from the stream): only an entry after the window is left,
            # which holds nothing.
            await redis.xdel(stream, inside)
            progress = await worker.work_on(run_id, asyncio.Event())
    finally:
        await redis.aclose()
    assert (progress.state, progress.accounts_done) == ("done", 1)
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("billing run waits for the ledger writer") == 1
    assert messages.count("the ledger writer caught up; billing run goes on") == 1


async def test_a_run_executed_by_the_api_while_the_writer_is_behind_is_left_undrafted(
    services: Services, redis_url: str
) -> None:
    # No ledger writer runs here: a call of March 31 waits in its stream. "execute" does
    # not draft March now (the call would be on no invoice): the workers will.
    await _renting(services)
    stream = keys.ledger(keys.bucket_of("a0"))
    inside = f"{int(datetime(2026, 3, 31, 23, 59, tzinfo=UTC).timestamp() * 1000)}-0"
    redis = Redis.from_url(redis_url)
    entry: Any = {"kind": "call", "account": "a0", "amount": "-1000"}
    await redis.xadd(stream, entry, id=inside)
    await redis.aclose()
    token = await api_tokens.create(services.pool, "boss", "admin")
    client = TestClient(TestServer(create_app(services)), headers=bearer(token))
    await client.start_server()
    try:
        response = await client.post(
            "/v1/invoice-runs",
            json={"period": "2026-03", "invoice_date": "2026-04-01", "execute": True},
        )
        made = await response.json()
    finally:
        await client.close()
    assert response.status == 201, made
    assert (made["state"], made["accounts_done"], made["accounts_total"]) == ("running", 0, 1)
    async with services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM invoices") == 0
