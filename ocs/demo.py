"""`ocs demo`: the server with a small catalog and funded accounts, and commands to try.

The demo data is loaded once per data directory; running the demo again keeps
the balances and calls of the previous run.

The admin API is closed as in production: the demo prints an admin token and
puts it in the commands it prints. The first run prints the bootstrap token;
a later one (whose earlier token was shown once and kept only as a digest)
replaces its own ``demo`` token. A token set in ``OCS_ADMIN_BOOTSTRAP_TOKEN`` is
never printed: the commands name the variable instead.

The demo writes only into stores that hold nothing but its own data (or nothing
at all: a new data dir, a new database): plans ``demo`` and ``demo-monthly`` and
what belongs to them, the ``bootstrap`` and ``demo`` tokens. Elsewhere (a
production database or Redis named by ``OCS_DATABASE_URL`` or ``OCS_REDIS_URL``, or
the embedded stores ``ocs serve`` keeps in /var/lib/ocs) it refuses before writing
anything (before migrating, making a pepper, or starting its ledger writer and
janitor: ``ocs.demo_stores`` says which Redis keys are the demo's), unless
``--use-configured-stores`` asks for it; even then no billing worker runs beside
it (it would draft and post the other plans' runs), and its invoice is numbered
in its own ``DEMO`` sequence, never the real ``INV`` one.

Embedded stores are the demo's only when the demo made them (``ocs.demo_data_dir``):
a store ``ocs serve`` has just made holds nothing but a ``bootstrap`` token, as the
demo's does, so the demo marks the data dir it finds empty, and refuses one without
its mark that holds anything, or that a running ocs process (``ocs serve``) uses.
"""

import asyncio
import contextlib
import os
import secrets
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from ocs import api_tokens
from ocs.balances.accounts import AccountSpec
from ocs.balances.cluster import redis_client
from ocs.billing import posting, runs
from ocs.billing.cycles import PlanBilling
from ocs.billing.store import Charge, Subscription, create_charge, set_plan_billing, subscribe
from ocs.billing.worker import BillingWorker, WorkerSettings
from ocs.catalog import store as catalog_store
from ocs.catalog.snapshot import Plan
from ocs.charging.values import AuthorizeRequest
from ocs.config import RadiusClientConfig, Settings, default_data_dir, with_overrides
from ocs.decks.rate_deck import parse_deck
from ocs.demo_data_dir import (
    MARKER_FILE,
    has_marker,
    in_use_by,
    uses_embedded_stores,
    what_it_holds,
    write_marker,
)
from ocs.demo_stores import other_redis_data
from ocs.errors import OcsError, Reason
from ocs.radius.radclient_hint import radclient_command
from ocs.runtime import postgresql_error, redis_error
from ocs.server import Listening, serve
from ocs.services import Services

DEMO_PLAN = Plan(
    id="demo",
    name="Demo prepaid (EUR)",
    currency="EUR",
    credit_limit=0,
    min_balance=0,
    max_lines=2,
    max_call_duration=3600,
)

# Real-looking destinations, each with a different billing shape.
DEMO_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
44,United Kingdom Fixed,0.010,0.000,60,60
447,United Kingdom Mobile,0.060,0.150,30,6
49,Germany Fixed,0.012,0.000,1,1
4915,Germany Mobile,0.080,0.000,30,6
4916,Germany Mobile,0.080,0.000,30,6
4917,Germany Mobile,0.080,0.000,30,6
33,France Fixed,0.011,0.000,60,60
336,France Mobile,0.070,0.000,30,6
337,France Mobile,0.070,0.000,30,6
1,USA and Canada,0.005,0.000,6,6
"""

# The RADIUS secret of the demo client 127.0.0.1: for trying ocs on one machine only.
DEMO_RADIUS_SECRET = "ocs-demo-secret"

# The admin token a later demo run makes when the first run's is gone from view.
DEMO_TOKEN_NAME = "demo"
BOOTSTRAP_ENV = "OCS_ADMIN_BOOTSTRAP_TOKEN"

# (account, opening balance in micro-units, max lines)
DEMO_ACCOUNTS = (("1001", 10_000_000, 2), ("1002", 500_000, 1))


async def load_demo_data(services: Services) -> None:
    """Create the demo plan, deck and accounts unless this data dir has them already."""
    try:
        await catalog_store.create_plan(services.pool, DEMO_PLAN)
    except OcsError as exc:
        if exc.reason is not Reason.PLAN_EXISTS:
            raise
        return
    await catalog_store.import_deck(services.pool, DEMO_PLAN.id, parse_deck(DEMO_DECK))
    await services.catalog.reload()
    for account_id, balance, lines in DEMO_ACCOUNTS:
        await services.accounts.create(
            AccountSpec(account_id, DEMO_PLAN.id, opening_balance=balance, max_lines=lines)
        )


# The billing demo: a monthly plan with a 5.00 line rent, and account 2001 on it.
BILLING_PLAN = Plan(
    id="demo-monthly",
    name="Demo monthly (EUR)",
    currency="EUR",
    credit_limit=0,
    min_balance=0,
    max_lines=1,
    max_call_duration=3600,
)
BILLING_ACCOUNT = "2001"
BILLING_FEE = Charge(
    "demo-line-rent",
    "Line rent",
    "LINE",
    "EUR",
    5_000_000,
    "recurring",
    cadence="monthly",
    gl_code="4000",
    plan_id=BILLING_PLAN.id,
)
# The demo's invoices have a gapless sequence of their own: DEMO-2026-000001.
DEMO_ISSUER = "DEMO"
# The demo's call: 45 s to a UK mobile, 0.15 + 0.06/min on 30/6: 48 s billed, 0.198.
BILLING_CALL = ("447700900123", 45)
CDR_WAIT_S = 30.0


# What the demo loads: a database holding nothing else (or nothing) is the demo's own.
DEMO_PLAN_IDS = [DEMO_PLAN.id, BILLING_PLAN.id]
DEMO_ACCOUNT_IDS = [*(account for account, _balance, _lines in DEMO_ACCOUNTS), BILLING_ACCOUNT]
DEMO_TOKEN_NAMES = [api_tokens.BOOTSTRAP_NAME, DEMO_TOKEN_NAME]
# (what, table, the condition a row that is not the demo's meets, its arguments). An
# account, invoice or payment belongs to a plan: one on a plan not the demo's is counted
# by "accounts"; a run of every plan (NULL) would draft and post every plan's invoices.
_NOT_THE_DEMOS: tuple[tuple[str, str, str, tuple[list[str], ...]], ...] = (
    ("plans", "plans", "id <> ALL($1::text[])", (DEMO_PLAN_IDS,)),
    ("accounts", "accounts", "plan_id <> ALL($1::text[])", (DEMO_PLAN_IDS,)),
    (
        "invoice runs",
        "invoice_runs",
        "plan_id IS NULL OR plan_id <> ALL($1::text[])",
        (DEMO_PLAN_IDS,),
    ),
    ("API tokens", "api_tokens", "name <> ALL($1::text[])", (DEMO_TOKEN_NAMES,)),
    ("webhooks", "webhooks", "TRUE", ()),
)
# Counted up to this many: saying "over 1000 accounts" is enough, and costs no full scan.
_COUNT_UP_TO = 1000
OVERRIDE_FLAG = "--use-configured-stores"


class DemoRefused(Exception):
    """The stores hold data that is not the demo's: its one line says which, where, and
    how to run the demo anyway."""


async def other_data(conn: asyncpg.Connection) -> list[str]:
    """What the database holds that is not the demo's, e.g. ``["plans: 3", "accounts: 12"]``;
    empty for a database holding only the demo's data, or nothing (not migrated yet)."""
    present = {
        row["tablename"]
        for row in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
    }
    found = []
    for what, table, where, args in _NOT_THE_DEMOS:
        if table not in present:
            continue
        count = await conn.fetchval(
            f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {where}"
            f" LIMIT {_COUNT_UP_TO + 1}) AS t",
            *args,
        )
        if count > _COUNT_UP_TO:
            found.append(f"{what}: over {_COUNT_UP_TO}")
        elif count:
            found.append(f"{what}: {count}")
    return found


def refusal(settings: Settings, found: list[str]) -> DemoRefused:
    """The refusal of a database holding ``found`` (``other_data``), naming it."""
    from ocs.embedded import describe_url  # lazily, as ocs.runtime: it imports psutil

    where = (
        f"PostgreSQL {describe_url(settings.database_url)}"
        if settings.database_url
        else f"the embedded PostgreSQL in {settings.data_dir}"
    )
    return DemoRefused(
        f"{where} holds data that is not the demo's ({', '.join(found)}); the demo would add"
        " plans, funded accounts 1001, 1002 and 2001, an admin token and a posted invoice to"
        f" it: {_ELSEWHERE}"
    )


def redis_refusal(settings: Settings, found: list[str]) -> DemoRefused:
    """The refusal of a Redis holding ``found`` (``other_redis_data``), naming it."""
    from ocs.embedded import describe_url

    where = (
        f"Redis {describe_url(settings.redis_url)}"
        if settings.redis_url
        else f"the embedded Redis in {settings.data_dir}"
    )
    return DemoRefused(
        f"{where} holds data that is not the demo's ({', '.join(found)}); the demo would"
        " take over accounts 1001, 1002 and 2001 there, move its ledger entries into the"
        f" demo's PostgreSQL and close its live calls: {_ELSEWHERE}"
    )


# How a refusal ends: where the demo runs instead, and the override.
_ELSEWHERE = (
    "run it on stores of its own (a new --data-dir, no redis_url or database_url set),"
    f" or pass {OVERRIDE_FLAG} to run it there anyway"
)


async def stores_not_the_demos(redis: Any, pool: asyncpg.Pool, settings: Settings) -> None:
    """Refuse (``DemoRefused``) stores holding data that is not the demo's: PostgreSQL
    first (``other_data``), then Redis (``other_redis_data``). Reads only."""
    async with pool.acquire() as conn:
        found = await other_data(conn)
    if found:
        raise refusal(settings, found)
    found = await other_redis_data(redis, DEMO_ACCOUNT_IDS, DEMO_PLAN_IDS)
    if found:
        raise redis_refusal(settings, found)


async def check_configured_stores(settings: Settings) -> None:
    """Refuse (``DemoRefused``) a database or Redis named by ``database_url`` or
    ``redis_url`` that holds data not the demo's, before the server starts anything:
    embedded ones are looked at once started, before the runtime writes to them."""
    if settings.database_url is not None:
        await _check_configured_database(settings, settings.database_url)
    if settings.redis_url is not None:
        await _check_configured_redis(settings, settings.redis_url)


async def _check_configured_database(settings: Settings, url: str) -> None:
    """``check_configured_stores`` of PostgreSQL at ``url``."""
    try:
        conn = await asyncpg.connect(url)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise postgresql_error(url, exc) from exc
    try:
        found = await other_data(conn)
    finally:
        await conn.close()
    if found:
        raise refusal(settings, found)


async def _check_configured_redis(settings: Settings, url: str) -> None:
    """``check_configured_stores`` of Redis (or a Redis Cluster's node) at ``url``."""
    redis = redis_client(url, cluster=settings.redis_cluster, max_connections=1)
    try:
        try:
            found = await other_redis_data(redis, DEMO_ACCOUNT_IDS, DEMO_PLAN_IDS)
        except (OSError, TimeoutError, RedisError) as exc:
            raise redis_error(url, exc) from exc
    finally:
        await redis.aclose()
    if found:
        raise redis_refusal(settings, found)


def _resolved(data_dir: Path) -> Path:
    """``data_dir`` as a refusal names it: absolute, links followed."""
    return Path(data_dir).resolve()


def check_data_dir_not_in_use(settings: Settings) -> None:
    """Refuse (``DemoRefused``) a data dir whose embedded stores a running ocs process
    (``ocs serve``, another demo) uses, before anything is started: the demo would
    attach to them and write its data beside theirs. Reads only."""
    if not uses_embedded_stores(settings):
        return
    user = in_use_by(settings.data_dir)
    if user is not None:
        raise DemoRefused(
            f"the data dir {_resolved(settings.data_dir)} is in use by a running ocs"
            f" process{user}; the demo would add plans, funded accounts 1001, 1002 and 2001"
            f" and an admin token to its stores: stop it first, {_ELSEWHERE}"
        )


async def data_dir_is_the_demos(redis: Any, pool: asyncpg.Pool, settings: Settings) -> None:
    """Refuse (``DemoRefused``) embedded stores the demo did not make: a data dir without
    the demo's marker that holds anything (``what_it_holds``), made by ``ocs serve`` or
    another command. Marks a data dir holding nothing as the demo's, before anything is
    written to its stores; one the demo made before is the demo's."""
    if not uses_embedded_stores(settings) or has_marker(settings.data_dir):
        return
    async with pool.acquire() as conn:
        found = await what_it_holds(
            settings,
            redis if settings.redis_url is None else None,
            conn if settings.database_url is None else None,
        )
    if found:
        raise DemoRefused(
            f"the data dir {_resolved(settings.data_dir)} holds stores the demo did not"
            f" make ({', '.join(found)}; no {MARKER_FILE} file): `ocs serve` or another ocs"
            " command made them, and the demo would add plans, funded accounts 1001, 1002"
            f" and 2001 and an admin token to them: {_ELSEWHERE}"
        )
    write_marker(settings.data_dir)


def _month_start(today: date) -> date:
    """The first day of ``today``'s month."""
    return today.replace(day=1)


async def load_billing_demo(services: Services) -> None:
    """The billing plan (cycle on the 1st, in arrears), its fee, and account 2001 on it."""
    try:
        await catalog_store.create_plan(services.pool, BILLING_PLAN)
    except OcsError as exc:
        if exc.reason is not Reason.PLAN_EXISTS:
            raise
        return
    await catalog_store.import_deck(services.pool, BILLING_PLAN.id, parse_deck(DEMO_DECK))
    await services.catalog.reload()
    first = _month_start(datetime.now(UTC).date())
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling(
            BILLING_PLAN.id,
            "fixed_date",
            first,
            cycle_day=1,
            invoice_message="Thank you",
            issuer=DEMO_ISSUER,
        ),
    )
    await create_charge(services.pool, BILLING_FEE)
    await services.accounts.create(
        AccountSpec(BILLING_ACCOUNT, BILLING_PLAN.id, opening_balance=20_000_000)
    )
    await subscribe(services.pool, Subscription(BILLING_ACCOUNT, BILLING_PLAN.id, first))


async def billing_cycle(services: Services) -> int:
    """The demo's finished cycle: a call, a run of this month so far, its invoice posted.

    Once per data directory: a later demo shows the invoice posted before. The
    run's usage cut-off is now, so the call of a moment ago is on the invoice
    (the CDR reaches PostgreSQL through the ledger writer: waited for, polled).
    Returns the posted invoice's id.
    """
    async with services.pool.acquire() as conn:
        posted = await conn.fetchval(
            "SELECT max(id) FROM invoices WHERE account_id = $1 AND state = 'posted'",
            BILLING_ACCOUNT,
        )
    if posted is not None:
        return int(posted)
    call_id = f"demo-bill-{secrets.token_hex(3)}"
    destination, seconds = BILLING_CALL
    await services.calls.authorize(AuthorizeRequest(BILLING_ACCOUNT, destination, call_id=call_id))
    await services.calls.stop(call_id, seconds, BILLING_ACCOUNT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CDR_WAIT_S
    while loop.time() < deadline:
        async with services.pool.acquire() as conn:
            if await conn.fetchval("SELECT 1 FROM cdrs WHERE call_id = $1", call_id):
                break
        await asyncio.sleep(0.05)
    now = datetime.now(UTC)
    run_id = await runs.create_run(
        services.pool,
        f"{now:%Y-%m}",
        plan_id=BILLING_PLAN.id,
        invoice_date=now.date(),
        usage_cutoff=now,
        # This month has not ended: the demo bills what is known so far (decision 0021).
        timing=runs.Timing(early=True, now=now),
    )
    # The billing worker beside the demo may take chunks too: they are shared.
    await runs.execute_run(services.pool, run_id)
    await posting.post(services.pool, services.store, run_id=run_id, settings=services.settings)
    async with services.pool.acquire() as conn:
        return int(
            await conn.fetchval(
                "SELECT id FROM invoices WHERE run_id = $1 AND account_id = $2",
                run_id,
                BILLING_ACCOUNT,
            )
        )


def billing_instructions(invoice_id: int, settings: Settings) -> str:
    """The command that shows the demo's posted invoice (on the demo's own stores)."""
    where = "" if settings.data_dir == default_data_dir() else f" --data-dir {settings.data_dir}"
    return "\n".join(
        [
            "Billing: account 2001 on plan demo-monthly (5.00 line rent a month, the call"
            " above), invoiced and posted:",
            "",
            f"  ocs invoices show {invoice_id}{where}",
            "",
        ]
    )


async def demo_admin_token(pool: asyncpg.Pool, settings: Settings) -> tuple[str, bool]:
    """The admin token for the printed commands, and whether it may be printed.

    (token, True): a token made now, printed this once. ("$OCS_ADMIN_BOOTSTRAP_TOKEN",
    False): the operator's own token from the environment, named, never printed.
    """
    made = await api_tokens.ensure_bootstrap_admin_token(pool, settings)
    if made is not None:
        return made, True
    given = settings.admin_bootstrap_token
    if (
        given is not None
        and os.environ.get(BOOTSTRAP_ENV) == given
        and await api_tokens.role_of(pool, given) == "admin"
    ):
        return f"${BOOTSTRAP_ENV}", False
    # A later run: the token shown before is kept only as a digest. The demo's own
    # token is replaced, never another admin's.
    await api_tokens.revoke(pool, DEMO_TOKEN_NAME)
    return await api_tokens.create(pool, DEMO_TOKEN_NAME, "admin"), True


def demo_instructions(port: int, token: str = "", shown: bool = True) -> str:
    """curl commands that work as printed; admin calls send ``token`` (a value or a
    ``$VARIABLE`` the shell expands)."""
    base = f"http://127.0.0.1:{port}"
    call_id = f"demo-{secrets.token_hex(3)}"
    json_header = "-H 'Content-Type: application/json'"
    auth = f'-H "Authorization: Bearer {token}" ' if token else ""
    if not token:
        token_lines: list[str] = []
    elif shown:
        token_lines = [
            f"Admin API token (shown once; only its digest is kept): {token}",
            "",
        ]
    else:
        token_lines = [f"Admin API token: the one in {token[1:]} (not shown).", ""]
    return "\n".join(
        [
            "",
            f"ocs demo is running on {base} (Ctrl-C stops it).",
            *token_lines,
            "Try:",
            "",
            "  # account 1001 (EUR 10.00 to start) and its balance: the admin API takes a token",
            f"  curl -s {auth}{base}/v1/accounts/1001",
            "  # authorize a call to a UK mobile: 0.06/min, 0.15 connect fee, 30/6 billing",
            "  # (a switch on 127.0.0.1 needs no token: switch_networks)",
            f"  curl -s -X POST {base}/v1/calls {json_header} "
            f'-d \'{{"account": "1001", "destination": "+447700900123", '
            f'"call_id": "{call_id}"}}\'',
            "  # stop it after 45 s: billed 48 s, cost 0.198000",
            f"  curl -s -X POST {base}/v1/calls/{call_id}/stop {json_header} "
            "-d '{\"duration\": 45}'",
            "  # top up 5.00",
            f"  curl -s -X POST {auth}{base}/v1/accounts/1001/topups {json_header} "
            '-d \'{"amount": "5.00"}\'',
            "  # metrics and health",
            f"  curl -s {base}/metrics | grep ^ocs_",
            f"  curl -s {base}/healthz",
            "",
        ]
    )


def radius_instructions(auth_port: int, acct_port: int) -> str:
    """radclient commands (FreeRADIUS's freeradius-utils) that work as printed."""
    call_id = f"demo-radius-{secrets.token_hex(3)}"
    call = [
        ("User-Name", "1001"),
        ("Calling-Station-Id", "4930123456"),
        ("Called-Station-Id", "447700900123"),
        ("h323-conf-id", f"h323-conf-id={call_id}"),
    ]
    accounting = [
        ("User-Name", "1001"),
        ("Acct-Session-Id", call_id),
        ("h323-conf-id", f"h323-conf-id={call_id}"),
    ]
    return "\n".join(
        [
            f"RADIUS: auth on udp/{auth_port}, accounting on udp/{acct_port}; client "
            f"127.0.0.1, secret {DEMO_RADIUS_SECRET} (apt-get install freeradius-utils):",
            "",
            "  # Access-Request: Access-Accept with Session-Timeout and h323-credit-time",
            "  " + radclient_command("auth", auth_port, DEMO_RADIUS_SECRET, call),
            "  # Accounting Start, then Stop after 45 s (cost 0.198000)",
            "  "
            + radclient_command(
                "acct", acct_port, DEMO_RADIUS_SECRET, [("Acct-Status-Type", "Start"), *accounting]
            ),
            "  "
            + radclient_command(
                "acct",
                acct_port,
                DEMO_RADIUS_SECRET,
                [("Acct-Status-Type", "Stop"), *accounting, ("Acct-Session-Time", "45")],
            ),
            "  # balance query of account 1002 (no Called-Station-Id): nothing reserved",
            "  "
            + radclient_command("auth", auth_port, DEMO_RADIUS_SECRET, [("User-Name", "1002")]),
            "",
        ]
    )


def _loopback_unless_asked(host: str) -> str:
    """127.0.0.1 where the setting is still the serving default (every interface)."""
    return "127.0.0.1" if host == "0.0.0.0" else host


async def run_demo(
    settings: Settings,
    stopping: asyncio.Event | None = None,
    *,
    use_configured_stores: bool = False,
) -> None:
    """Serve with the demo data, and print the commands to try once listening.

    ``DemoRefused`` before writing anything when the stores hold data that is not the
    demo's, unless ``use_configured_stores``; with it, no billing worker runs beside."""
    token: tuple[str, bool] = ("", True)
    # Whether the stores held only the demo's data when it started (found by inspect).
    own_stores = False

    stopping = stopping or asyncio.Event()
    worker_task: asyncio.Task[None] | None = None
    if not use_configured_stores:
        await check_configured_stores(settings)
        check_data_dir_not_in_use(settings)

    async def inspect(redis: Any, pool: asyncpg.Pool) -> None:
        # Before the runtime migrates PostgreSQL, makes a pepper or loads scripts, and
        # before the ledger writer and the janitor start: embedded stores too.
        nonlocal own_stores
        if not use_configured_stores:
            await stores_not_the_demos(redis, pool, settings)
            await data_dir_is_the_demos(redis, pool, settings)
            own_stores = True
            return
        async with pool.acquire() as conn:
            own_stores = not await other_data(conn)

    async def prepare(services: Services) -> None:
        nonlocal token
        await load_demo_data(services)
        await load_billing_demo(services)
        token = await demo_admin_token(services.pool, settings)

    async def ready(services: Services, listening: Listening) -> None:
        nonlocal worker_task
        if own_stores:
            # A billing worker in this process, as `ocs billing-worker` runs one on its own:
            # on the demo's own stores only, where every plan it would run is the demo's.
            worker = BillingWorker(
                services.pool,
                WorkerSettings.of(settings),
                store=services.store,
                tax_settings=settings,
            )
            worker_task = asyncio.create_task(worker.run(stopping))
        text = demo_instructions(listening.http_port, *token)
        if listening.radius_auth_port and listening.radius_acct_port:
            text += "\n" + radius_instructions(
                listening.radius_auth_port, listening.radius_acct_port
            )
        text += "\n" + billing_instructions(await billing_cycle(services), settings)
        if not own_stores:
            text += (
                "\nNo billing worker runs beside this demo: these stores hold data that is"
                " not the demo's, whose billing runs it would draft and post.\n"
            )
        print(text, file=sys.stdout, flush=True)

    demo_client = RadiusClientConfig(
        name="demo-localhost", network="127.0.0.1/32", secret=DEMO_RADIUS_SECRET
    )
    settings = with_overrides(
        settings,
        radius_clients=(*settings.radius_clients, demo_client),
        # The demo's funded accounts and its known RADIUS secret are for this machine
        # only: listen on the loopback unless an address was asked for.
        http_host=_loopback_unless_asked(settings.http_host),
        radius_host=_loopback_unless_asked(settings.radius_host),
    )
    try:
        await serve(
            settings,
            before_listen=prepare,
            on_ready=ready,
            stopping=stopping,
            inspect_stores=inspect,
        )
    finally:
        if worker_task is not None:
            stopping.set()
            with contextlib.suppress(Exception):
                await worker_task
