"""Shared by the usage-import tests: the carrier's plan, rate types, overrides and
template (hand-checked rates), and the steps and reads the tests repeat."""

import json
from pathlib import Path
from typing import Any

from ocs.balances import keys
from ocs.mediation.importer import ImportRequest, ImportSummary, UsageImporter
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


def importer(app: RunningApp) -> UsageImporter:
    """The importer over the app's services, as ``ocs usage import`` builds it."""
    services = app.services
    return UsageImporter(services.pool, services.store, services.catalog, result_ttl=3600)


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
