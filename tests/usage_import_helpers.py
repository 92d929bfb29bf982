"""Shared by the usage-import tests: the carrier's plan, rate types, overrides and
template (hand-checked rates), the steps and reads the tests repeat, an importer whose
debits wait or fail on cue, and a ledger writer beside the command line."""

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg

from ocs.balances import keys
from ocs.balances.ledger_writer import LedgerWriter
from ocs.balances.script_args import UsageEvent
from ocs.billing.cycles import PlanBilling
from ocs.billing.store import Subscription, set_plan_billing, subscribe
from ocs.config import Settings
from ocs.mediation.importer import ImportRequest, UsageImporter
from ocs.mediation.summary import ImportSummary
from ocs.runtime import open_runtime
from tests.conftest import RunningApp, add_plan, eventually

DECK = (
    "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"
    "44,UK,0.02,0,60,60\n"
    "1613,Canada,0.01,0,1,1\n"
)
HEADER = "id,account,called,start,duration,dir,country,type\n"
TEMPLATE: dict[str, Any] = {
    "name": "carrier-x",
    "supplier": "carrier-x",
    "format": {"kind": "csv", "delimiter": ",", "header": True},
    "columns": {
        "record_id": "id",
        "account": "account",
        "called": "called",
        "start": "start",
        "duration": "duration",
        "direction": "dir",
    },
    "start": {"format": "%Y-%m-%d %H:%M:%S", "time_zone": "America/Toronto"},
    "direction": {"map": {"O": "outbound", "I": "inbound"}},
    "classify": [
        {
            "rate_type": "Inbound Toll-free Canada",
            "when": {"direction": "inbound", "cells": [{"column": "country", "equals": "CA"}]},
        },
        {
            "rate_type": "Inbound Toll-free USA",
            "when": {"direction": "inbound", "cells": [{"column": "country", "equals": "US"}]},
        },
        {"rate_type": "Canada On-Net", "when": {"cells": [{"column": "type", "regex": "^onnet"}]}},
    ],
}


async def setup_mediation(
    app: RunningApp, template: dict[str, Any] = TEMPLATE, deck: str = DECK
) -> None:
    """The plan with its deck, two rate types with rates, the supplier's overrides and the
    template, straight into PostgreSQL; the catalog reloaded."""
    await add_plan(app.services, deck=deck)
    async with app.services.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO rate_types (name) VALUES ('Inbound Toll-free'), ('Canada On-Net')"
        )
        # Inbound toll-free 0.018/min, 30 s then 6 s; on-net 0.004/min, 6/6.
        await conn.execute(
            "INSERT INTO rate_type_rates (plan_id, rate_type, name, currency, first_block,"
            " increment, price_per_minute) VALUES"
            " ('retail', 'Inbound Toll-free', 'Toll-free in', 'EUR', 30, 6, 18000),"
            " ('retail', 'Canada On-Net', 'On-net CA', 'EUR', 6, 6, 4000)"
        )
        await conn.execute(
            "INSERT INTO rate_type_overrides VALUES"
            " ('carrier-x', 'Inbound Toll-free Canada', 'Inbound Toll-free'),"
            " ('carrier-x', 'Inbound Toll-free USA', 'Inbound Toll-free')"
        )
        await conn.execute(
            "INSERT INTO usage_templates (name, version, supplier, definition)"
            " VALUES ($1, 1, $2, $3)",
            template["name"],
            template["supplier"],
            json.dumps(template),
        )
    await app.services.catalog.reload()


def importer(app: RunningApp, pool: asyncpg.Pool | None = None, **options: Any) -> UsageImporter:
    """The importer over the app's services, as ``ocs usage import`` builds it (over
    ``pool`` when given; ``options`` as UsageImporter takes them)."""
    services = app.services
    return UsageImporter(
        pool or services.pool,
        services.store,
        services.catalog,
        database_url=services.database_url,
        result_ttl=3600,
        **options,
    )


async def add_template(
    app: RunningApp, name: str, supplier: str, columns: dict[str, str] | None = None
) -> None:
    """The carrier's template stored again under another name and supplier (and other
    ``columns``, when given)."""
    other = {**TEMPLATE, "name": name, "supplier": supplier}
    if columns is not None:
        other["columns"] = columns
    await app.services.pool.execute(
        "INSERT INTO usage_templates (name, version, supplier, definition) VALUES ($1, 1, $2, $3)",
        name,
        supplier,
        json.dumps(other),
    )


async def run_import(
    app: RunningApp, path: Path, mode: str = "good_rows", template: str = "carrier-x"
) -> ImportSummary:
    """Import one file; the summary."""
    request = ImportRequest(template=template, files=(str(path),), mode=mode)  # type: ignore[arg-type]
    return await importer(app).run(request)


def text_of(path: str | None) -> str:
    """A file the import wrote (rejects, report)."""
    assert path is not None
    return Path(path).read_text()


async def balance(app: RunningApp, account_id: str) -> int:
    """The account's real-time balance (micro-units)."""
    return int(await app.services.redis.hget(keys.account(account_id), "balance"))


async def new_account(app: RunningApp, account_id: str, amount: str) -> None:
    """An account on the plan with ``amount`` EUR."""
    status, body = await app.post(
        "/v1/accounts", {"id": account_id, "plan": "retail", "balance": amount}
    )
    assert status == 201, body


async def stored_cdrs(app: RunningApp, supplier: str, count: int) -> list[Any]:
    """The supplier's CDRs once the ledger writer has stored ``count`` of them."""

    async def stored() -> bool:
        found = await app.services.pool.fetchval(
            "SELECT count(*) FROM cdrs WHERE supplier = $1", supplier
        )
        return bool(found == count)

    await eventually(stored, what=f"{count} CDRs of {supplier}")
    return list(
        await app.services.pool.fetch(
            "SELECT * FROM cdrs WHERE supplier = $1 ORDER BY record_id", supplier
        )
    )


class CuedImporter(UsageImporter):
    """An importer whose debits (one charge_batch.lua call each) go as the test says:
    the ``fail_first`` first calls raise, the calls after the first ``free`` wait until
    ``gate`` opens (or ``gate_timeout`` seconds pass, when it is set), as a slow Redis.
    With ``answer_late`` they wait after the debit is made instead (``debited`` counts
    those made): a script Redis ran whose answer is slow to come back."""

    def __init__(
        self,
        app: RunningApp,
        *,
        free: int = 1_000_000,
        fail_first: int = 0,
        gate_timeout: float | None = None,
        answer_late: bool = False,
        **options: Any,
    ) -> None:
        """The importer over the app's services, with its cues (``options`` as
        UsageImporter takes them)."""
        services = app.services
        super().__init__(
            services.pool,
            services.store,
            services.catalog,
            database_url=services.database_url,
            result_ttl=3600,
            **options,
        )
        self.free = free
        self.fail_first = fail_first
        self.gate_timeout = gate_timeout
        self.answer_late = answer_late
        self.app = app
        self.gate = asyncio.Event()
        self.calls = 0
        self.debited = 0
        self.saved_states: list[str] = []
        # When set, the final save waits for it (``finishing`` tells it has begun).
        self.final_gate: asyncio.Event | None = None
        self.finishing = asyncio.Event()

    async def debit(self, bucket: int, import_id: int, events: list[UsageEvent]) -> list[str]:
        """Fail, wait, or debit, by the call's place."""
        self.calls += 1
        if self.calls <= self.fail_first:
            raise ConnectionError("Redis went away (the test's cue)")
        waits = self.calls > self.free
        if waits and not self.answer_late:
            await self.wait_for_gate()
        words = await super().debit(bucket, import_id, events)
        self.debited += 1
        if waits and self.answer_late:
            await self.wait_for_gate()
        return words

    async def wait_for_gate(self) -> None:
        """Wait until ``gate`` opens, or ``gate_timeout`` seconds pass when it is set."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.gate.wait(), self.gate_timeout)

    async def save(
        self, summary: ImportSummary, *, error: str | None = None, finished: bool = False
    ) -> None:
        """Store the summary; a failed one opens the gate (the waiting debits go on). The
        final one waits for ``final_gate`` first, when it is set."""
        if finished and self.final_gate is not None:
            self.finishing.set()
            await self.final_gate.wait()
        await super().save(summary, error=error, finished=finished)
        self.saved_states.append(summary.state)
        if summary.state == "failed":
            self.gate.set()


@contextlib.contextmanager
def ledger_writer_beside(settings: Settings) -> Iterator[None]:
    """A ledger writer in a thread of its own while the block runs, as ``ocs serve`` runs
    one beside ``ocs usage import`` (which waits for it to store earlier entries)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stopping: list[asyncio.Event] = []

    async def write() -> None:
        async with open_runtime(settings, listen_catalog=False, load_catalog=False) as services:
            stopping.append(asyncio.Event())
            writer = LedgerWriter(services.redis, services.pool, block_ms=50)
            started.set()
            await writer.run(stopping[0])

    thread = threading.Thread(target=loop.run_until_complete, args=(write(),), daemon=True)
    thread.start()
    try:
        assert started.wait(30), "the ledger writer did not start"
        yield
    finally:
        if stopping:
            loop.call_soon_threadsafe(stopping[0].set)
        thread.join(30)
        loop.close()


async def billed_account(app: RunningApp) -> None:
    """The mediation plan billed monthly from January (UTC), and ``acc1`` (10.00 EUR)
    subscribed to it from January 1."""
    await setup_mediation(app)
    services = app.services
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("retail", "fixed_date", date(2026, 1, 1), cycle_day=1),
    )
    await new_account(app, "acc1", "10.00")
    await subscribe(services.pool, Subscription("acc1", "retail", date(2026, 1, 1)))


UK_NUMBER = "442071234567"  # the deck's UK: 60/60 at 0.02, so 61 s cost 0.04


def row(record_id: str, account: str, seconds: int = 61, minute: int = 0) -> str:
    """A ``HEADER`` row: a call to the UK on 3 March 2026 at 09:<minute>."""
    return f"{record_id},{account},{UK_NUMBER},2026-03-03 09:{minute:02d}:00,{seconds},O,,\n"


async def one_call_file(app: RunningApp, tmp_path: Path, name: str = "x.csv") -> Path:
    """The mediation set-up, ``acc1`` with 10.00 EUR, and a file of its one call ``r1``."""
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    path = tmp_path / name
    path.write_text(HEADER + row("r1", "acc1"))
    return path
