"""Bad HTTP input is answered with a 4xx JSON error naming the field, and changes nothing.

Each case sends one bad request to a system holding a funded account with a
live call, then compares the whole state (the account as the API shows it,
every Redis key, every catalog/account/ledger/CDR row in PostgreSQL) with the
state before: a refused request must leave no trace anywhere.
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import RunningApp, add_plan, bearer, eventually
from tests.helpers import Raw, send

ACCOUNT = "1001"
LIVE_CALL = "live-1"
UK_MOBILE = "447700900123"
TABLES = (
    "plans",
    "zones",
    "prefixes",
    "tariffs",
    "accounts",
    "ledger",
    "cdrs",
    "carrier_rates",
    "code_lists",
    "counters",
    "account_counters",
)


@dataclass(frozen=True)
class State:
    account: dict[str, Any]
    redis: dict[bytes, Any]
    postgres: dict[str, list[tuple[Any, ...]]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _keys(app: RunningApp, match: str = "*") -> list[bytes]:
    return [key async for key in app.services.redis.scan_iter(match=match, count=5000)]


async def _ledger_drained(app: RunningApp) -> bool:
    pipe = app.services.redis.pipeline(transaction=False)
    for key in await _keys(app, "ledger:*"):
        pipe.xlen(key)
    return not any(await pipe.execute())


_READ_BY_TYPE = {
    "hash": lambda pipe, key: pipe.hgetall(key),
    "string": lambda pipe, key: pipe.get(key),
    "zset": lambda pipe, key: pipe.zrange(key, 0, -1, withscores=True),
    "set": lambda pipe, key: pipe.smembers(key),
    "list": lambda pipe, key: pipe.lrange(key, 0, -1),
    "stream": lambda pipe, key: pipe.xrange(key),
}


async def _redis_state(app: RunningApp) -> dict[bytes, Any]:
    """Every key and its value (TTLs aside), but the ledger streams.

    Those are drained to PostgreSQL before each snapshot, so an entry a bad request
    wrongly appended shows up in the ledger table instead.
    """
    redis = app.services.redis
    keys = [key for key in await _keys(app) if not key.startswith(b"ledger:")]
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    kinds = [_text(kind) for kind in await pipe.execute()]
    pipe = redis.pipeline(transaction=False)
    for key, kind in zip(keys, kinds, strict=True):
        _READ_BY_TYPE.get(kind, lambda pipe, key: pipe.exists(key))(pipe, key)
    values = await pipe.execute()
    return {
        key: sorted(value) if isinstance(value, set) else value
        for key, value in zip(keys, values, strict=True)
    }


async def _postgres_state(app: RunningApp) -> dict[str, list[tuple[Any, ...]]]:
    state: dict[str, list[tuple[Any, ...]]] = {}
    async with app.services.pool.acquire() as conn:
        for table in TABLES:
            rows = await conn.fetch(f"SELECT * FROM {table}")
            state[table] = sorted((tuple(r.values()) for r in rows), key=repr)
    return state


async def settled_state(app: RunningApp) -> State:
    """Everything a request could change, once the ledger writer has caught up."""
    await eventually(lambda: _ledger_drained(app), what="the ledger streams to drain")
    status, account = await app.get(f"/v1/accounts/{ACCOUNT}")
    assert status == 200, account
    return State(
        account=account, redis=await _redis_state(app), postgres=await _postgres_state(app)
    )


@pytest.fixture
async def funded(app: RunningApp) -> RunningApp:
    """Plan 'retail' and account 1001 with 10.00, held by the live call 'live-1';
    carrier 'c1' without a deck."""
    await add_plan(app.services, max_lines=2)
    status, body = await app.post(
        "/v1/accounts", {"id": ACCOUNT, "plan": "retail", "balance": "10.00"}
    )
    assert status == 201, body
    status, body = await app.post(
        "/v1/calls", {"account": ACCOUNT, "destination": UK_MOBILE, "call_id": LIVE_CALL}
    )
    assert status == 201, body
    status, body = await app.post("/v1/carriers", {"id": "c1", "currency": "EUR"})
    assert status == 201, body
    return app


LONG_CALL_ID = "c" * 129
DECK_HEADER = "prefix,zone,price_per_minute,connect_fee,first_block,increment"
CARRIER_HEADER = "prefix,connect_fee,first_block,increment,price_per_minute"
CSV_REFUSED = "invalid_deck|invalid_field"
TOPUP = f"/v1/accounts/{ACCOUNT}/topups"
TOPUP_PATH = "/v1/accounts/{account_id}/topups"
JSON = {"Content-Type": "application/json"}
# Past the 4,300 digits Python's int() reads from text: never converted, refused by length.
HUGE_ID = "1" * 4301
STOP = f"/v1/calls/{LIVE_CALL}/stop"


@dataclass(frozen=True)
class Case:
    """One bad request and the error it must get; ``reason`` and ``field`` may list
    alternatives with '|' (a CSV's parser words some problems itself, per line)."""

    name: str
    method: str
    path: str
    payload: object
    code: int
    reason: str
    field: str


def bad(name: str, path: str, payload: object, field: str) -> Case:
    """A POST with a bad field: 400 invalid_field naming ``field``."""
    return Case(name, "POST", path, payload, 400, "invalid_field", field)


# Grouped by endpoint: one running app per group keeps the suite fast, and every case
# of a group is checked (failures are collected, not stopped at the first).
CASES: dict[str, list[Case]] = {
    "body": [
        bad("malformed JSON", "/v1/calls", Raw('{"account": "1001",'), "body"),
        bad("JSON array", "/v1/calls", Raw('[{"account": "1001", "destination": "44"}]'), "body"),
        bad("JSON string", TOPUP, Raw('"5.00"'), "body"),
        bad("JSON null", "/v1/calls", Raw("null"), "body"),
        bad("control bytes", "/v1/calls", Raw("\x00\x01"), "body"),
        bad("integer of 5000 digits", "/v1/calls", Raw("1" * 5000), "body"),
        bad("nested 100,000 deep", "/v1/calls", Raw("[" * 100_000 + "]" * 100_000), "body"),
        bad("NaN", TOPUP, Raw('{"amount": NaN}'), "body"),
        Case("a body past 1 MiB", "POST", TOPUP,
             Raw('{"amount": "1.00"' + " " * (1 << 20) + "}"), 413, "body_too_large", "body"),
        # A \u escape sends the body to the standard library's reader too: it must
        # refuse what it cannot read as msgspec does, not fail.
        bad("malformed JSON with a \\u escape", "/v1/calls",
            Raw('{"destination": 5, "account": "\\u0031"'), "body"),
        bad("nested 100,000 deep after a \\u escape", "/v1/calls",
            Raw('{"account": "\\u0031", "destination": ' + "[" * 100_000 + "]" * 100_000 + "}"),
            "body"),
    ],
    # Field trials: 13 endpoints answered 500 (UnicodeDecodeError) to these.
    "not UTF-8": [
        bad("Latin-1 JSON", "/v1/calls", Raw(b'{"account": "1001", "destination": "\xe9"}'),
            "body"),
        bad("a lone byte", STOP, Raw(b"\xff"), "body"),
        bad("lone byte, usage", "/v1/usage", Raw(b">\xa5,/\xff\x0e_"), "body"),
        bad("lone byte, PIN batch", "/v1/pin-batches", Raw(b"\xa5"), "body"),
        Case("a charset ocs does not read", "POST", TOPUP,
             Raw('{"amount": "1.00"}', "application/json; charset=iso-8859-1"), 415,
             "unsupported_media_type", "Content-Type"),
        Case("an unknown charset", "POST", TOPUP,
             Raw('{"amount": "1.00"}', "application/json; charset=no-such-charset"), 415,
             "unsupported_media_type", "Content-Type"),
        Case("a deck in an unknown charset", "POST", "/v1/plans/retail/tariffs",
             Raw(f"{DECK_HEADER}\n44,UK,0.01,0,60,60\n", "text/csv; charset=klingon"), 415,
             "unsupported_media_type", "Content-Type"),
        Case("Latin-1 CSV", "PUT", "/v1/area-codes",
             Raw(b"prefix,name\n44,R\xe9union\n", "text/csv"), 400, "invalid_field", "codes"),
    ],
    # Field trials: a NUL reached asyncpg (CharacterNotInRepertoireError, a 500).
    "NUL and lone surrogates": [
        bad("NUL in a plan's name", "/v1/plans",
            {"id": "gold", "currency": "EUR", "name": "Gold\u0000"}, "name"),
        bad("NUL in a caller", "/v1/calls",
            {"account": ACCOUNT, "destination": UK_MOBILE, "caller": "4420\u00007946"}, "caller"),
        bad("NUL in a usage event's service", "/v1/usage",
            {"account": ACCOUNT, "event_id": "e1", "service": "Da\u0000ta", "quantity": 1},
            "service"),
        bad("NUL in a usage event's id", "/v1/usage",
            {"account": ACCOUNT, "event_id": "e\u00001", "service": "Data", "quantity": 1},
            "event_id"),
        Case("NUL in a nested field", "PUT", "/v1/plans/retail/bands",
             {"rules": [{"band": "peak\u0000", "start": "08:00", "end": "18:00"}]}, 400,
             "invalid_field", "rules[0].band"),
        bad("NUL in a member name", "/v1/plans",
            {"id": "gold", "currency": "EUR", "na\u0000me": "x"}, "body"),
        bad("lone surrogate", "/v1/plans",
            Raw('{"id": "gold", "currency": "EUR", "name": "\\ud800"}'), "name"),
        Case("NUL in a path parameter", "DELETE", f"/v1/accounts/{ACCOUNT}/counters/a%00b", None,
             400, "invalid_field", "counter_id"),
        Case("NUL in a query parameter", "GET", "/v1/plans/retail/lookup?number=44%00", None,
             400, "invalid_field", "number"),
        Case("NUL in a tariff zone", "PUT", "/v1/plans/retail/tariffs/UK%00/shape",
             {"per": 60}, 400, "invalid_field", "zone"),
    ],
    # Field trials: a carriage return in a quoted CSV field escaped as _csv.Error (a 500).
    "CSV": [
        Case("CR in an area-code name", "PUT", "/v1/area-codes",
             Raw('prefix,name\n44,UK\rX\n', "text/csv"), 400, CSV_REFUSED, "codes"),
        Case("CR in a quoted area-code name", "PUT", "/v1/plans/retail/area-codes",
             Raw('prefix,name\n44,"U"K\r"X"\n', "text/csv"), 400, CSV_REFUSED, "codes"),
        Case("NUL in a code list", "PUT", "/v1/area-codes",
             Raw("prefix,name\n44,U\x00K\n", "text/csv"), 400, "invalid_field", "codes"),
        Case("CR in a deck's zone", "POST", "/v1/plans/retail/tariffs",
             Raw(f"{DECK_HEADER}\n44,UK\rX,0.01,0,60,60\n", "text/csv"), 400, CSV_REFUSED,
             "deck|body"),
        Case("CR in a quoted zone", "POST", "/v1/plans/retail/tariffs",
             Raw(f'{DECK_HEADER}\n44,"U"K\r"X",0.01,0,60,60\n', "text/csv"), 400, CSV_REFUSED,
             "deck|body"),
        Case("CR in a carrier's deck", "PUT", "/v1/carriers/c1/rates",
             Raw(f"{CARRIER_HEADER}\n4\r4,0,1,1,0.01\n", "text/csv"), 400, CSV_REFUSED, "deck"),
        Case("an A2Billing initblock of 4,400 digits", "POST",
             "/v1/plans/retail/tariffs?format=a2billing",
             Raw(f"dialprefix,dest_name,rateinitial,initblock\n44,UK,0.01,{'6' * 4400}\n",
                 "text/csv"), 400, "invalid_deck", "deck"),
    ],
    "plan policy": [
        Case("unknown reservation policy", "PUT", "/v1/plans/retail/policy",
             {"reservation_policy": "half"}, 400, "invalid_field", "reservation_policy"),
        Case("slice of no seconds", "PUT", "/v1/plans/retail/policy",
             {"reservation_policy": "slice", "slice_seconds": 0}, 400, "invalid_field",
             "slice_seconds"),
        Case("slice as a string", "PUT", "/v1/plans/retail/policy",
             {"reservation_policy": "slice", "slice_seconds": "30"}, 400, "invalid_field",
             "slice_seconds"),
    ],
    # It resets every account's counters: an empty request must not do that by mistake.
    "counter reset": [
        bad("no body", "/v1/counters/reset", Raw(""), "body"),
        bad("NUL in the cycle", "/v1/counters/reset", {"cycle": "2026-12\u0000"}, "cycle"),
    ],
    "authorize": [
        bad("missing account", "/v1/calls", {"destination": UK_MOBILE}, "account"),
        bad("account not a string", "/v1/calls", {"account": 1001, "destination": UK_MOBILE},
            "account"),
        bad("account an object", "/v1/calls", {"account": {"id": 1}, "destination": UK_MOBILE},
            "account"),
        bad("missing destination", "/v1/calls", {"account": ACCOUNT}, "destination"),
        bad("destination with letters", "/v1/calls",
            {"account": ACCOUNT, "destination": "44abc7700"}, "destination"),
        bad("destination all letters", "/v1/calls", {"account": ACCOUNT, "destination": "UK"},
            "destination"),
        bad("call_id too long", "/v1/calls",
            {"account": ACCOUNT, "destination": UK_MOBILE, "call_id": LONG_CALL_ID}, "call_id"),
        Case("unknown account", "POST", "/v1/calls",
             {"account": "nobody", "destination": UK_MOBILE}, 404, "account_not_found",
             "account"),
    ],
    # The PIN queries with the PIN in the body: refused before any PIN is looked up, so
    # no wrong PIN is counted either (the state, pin guard included, is unchanged).
    "pin queries": [
        bad("no PIN", "/v1/pins/lookup", {"caller": "4930555000"}, "pin"),
        bad("no PIN, time", "/v1/pins/time", {"destination": UK_MOBILE}, "pin"),
        bad("PIN in the query string only", "/v1/pins/lookup?pin=123456789012", {}, "pin"),
        bad("PIN a number", "/v1/pins/lookup", {"pin": 123456789012}, "pin"),
        bad("empty PIN", "/v1/pins/time", {"pin": "", "destination": UK_MOBILE}, "pin"),
        bad("PIN of 33 digits", "/v1/pins/lookup", {"pin": "1" * 33}, "pin"),
        bad("no body", "/v1/pins/lookup", Raw(""), "body"),
        bad("no destination", "/v1/pins/time", {"pin": "123456789012"}, "destination"),
        bad("a typo in a field", "/v1/pins/lookup", {"pin": "123456789012", "calller": "1"},
            "calller"),
    ],
    # A fractional duration and a stop without one are a call's real length (the time
    # since its start): tests/test_calls_api.py and the lifecycle's tests cover them.
    "stop": [
        bad("negative duration", STOP, {"duration": -1}, "duration"),
        bad("duration in words", STOP, {"duration": "forty-five"}, "duration"),
        bad("boolean duration", STOP, {"duration": True}, "duration"),
        bad("call_id too long", f"/v1/calls/{LONG_CALL_ID}/stop", {"duration": 10}, "call_id"),
        bad("duration with an exponent no Decimal holds", STOP,
            Raw('{"duration": 1E+99999999999999999999999}'), "duration"),
        bad("duration nested 1,000 deep", STOP,
            Raw('{"duration": ' + "[" * 1000 + "]" * 1000 + "}"), "body"),
    ],
    "topup": [
        bad("float amount", TOPUP, Raw('{"amount": 1.5}'), "amount"),
        bad("exponent amount", TOPUP, Raw('{"amount": 1e2}'), "amount"),
        bad("exponent no Decimal holds", TOPUP, Raw('{"amount": 1E+99999999999999999999999}'),
            "amount"),
        bad("7 decimals", TOPUP, {"amount": "0.0000001"}, "amount"),
        bad("31 decimals", TOPUP, {"amount": "1.0000000000000000000000000000001"}, "amount"),
        bad("Arabic-Indic digits", TOPUP, {"amount": "\u0661\u0662"}, "amount"),
        bad("negative", TOPUP, {"amount": "-5.00"}, "amount"),
        bad("zero", TOPUP, {"amount": "0"}, "amount"),
        bad("zero with decimals", TOPUP, {"amount": "0.000000"}, "amount"),
        bad("not a number", TOPUP, {"amount": "five"}, "amount"),
        bad("missing amount", TOPUP, {}, "amount"),
        Case("unknown account", "POST", "/v1/accounts/nobody/topups", {"amount": "1.00"}, 404,
             "account_not_found", "account_id"),
    ],
    "payment": [
        bad("exponent no Decimal holds", "/v1/payments",
            Raw('{"account": "1001", "reference": "r1", "amount": 1E+99999999999999999999999}'),
            "amount"),
    ],
    "numeric ids": [
        Case(f"{name} of 4,301 digits", method, path.replace("ID", HUGE_ID), payload, 400,
             "invalid_field", name)
        for name, method, path, payload in (
            ("invoice_id", "GET", "/v1/invoices/ID", None),
            ("invoice_id", "GET", "/v1/invoices/ID/calls", None),
            ("invoice_id", "GET", "/v1/invoices/ID.pdf", None),
            ("run_id", "GET", "/v1/invoice-runs/ID", None),
            ("payment_id", "GET", "/v1/payments/ID", None),
            ("payment_id", "POST", "/v1/payments/ID/refund", {"amount": "1.00"}),
            ("import_id", "GET", "/v1/usage/imports/ID", None),
            ("subscription_id", "GET", "/v1/subscriptions/ID/bundles", None),
            ("subscription_id", "POST", "/v1/subscriptions/ID/status", {"status": "active"}),
            ("event_id", "POST", "/v1/events/ID/replay", {}),
        )
    ] + [
        bad("an id past BIGINT", f"/v1/payments/{2**63}/refund", {"amount": "1.00"},
            "payment_id"),
    ],
    "show": [
        Case("unknown account", "GET", "/v1/accounts/nobody", None, 404, "account_not_found",
             "account_id"),
        Case("bad account id", "GET", "/v1/accounts/bad%20id", None, 400, "invalid_field",
             "account_id"),
    ],
    "create account": [
        Case("unknown plan", "POST", "/v1/accounts", {"id": "2002", "plan": "no-such-plan"}, 404,
             "plan_not_found", "plan"),
        Case("duplicate", "POST", "/v1/accounts",
             {"id": ACCOUNT, "plan": "retail", "balance": "3.00"}, 409, "account_exists", "id"),
        bad("bad status", "/v1/accounts", {"id": "2002", "plan": "retail", "status": "closed"},
            "status"),
        bad("status not a string", "/v1/accounts",
            {"id": "2002", "plan": "retail", "status": 1}, "status"),
        bad("7 decimals", "/v1/accounts",
            {"id": "2002", "plan": "retail", "balance": "1.0000001"}, "balance"),
        bad("float balance", "/v1/accounts",
            Raw('{"id": "2002", "plan": "retail", "balance": 2.5}'), "balance"),
        bad("negative balance", "/v1/accounts",
            {"id": "2002", "plan": "retail", "balance": "-1"}, "balance"),
        bad("missing id", "/v1/accounts", {"plan": "retail"}, "id"),
    ],
    "create plan": [
        bad("4-letter currency", "/v1/plans", {"id": "gold", "currency": "EURO"}, "currency"),
        bad("currency and a newline", "/v1/plans", {"id": "gold", "currency": "EUR\n"},
            "currency"),
        bad("currency with a digit", "/v1/plans", {"id": "gold", "currency": "E1R"}, "currency"),
        bad("numeric currency", "/v1/plans", {"id": "gold", "currency": 978}, "currency"),
        bad("currency without a minor unit", "/v1/plans", {"id": "gold", "currency": "XAU"},
            "currency"),
        bad("withdrawn currency", "/v1/plans", {"id": "gold", "currency": "HRK"}, "currency"),
        bad("missing currency", "/v1/plans", {"id": "gold"}, "currency"),
        Case("duplicate", "POST", "/v1/plans", {"id": "retail", "currency": "EUR"}, 409,
             "plan_exists", "id"),
    ],
}  # fmt: skip


async def check_case(app: RunningApp, case: Case) -> list[str]:
    """What is wrong with the answer to ``case`` and with the state after it."""
    before = await settled_state(app)
    status, body = await send(app, case.method, case.path, case.payload)
    problems = []
    error = body.get("error") or {}
    reason, field = error.get("reason"), error.get("field")
    if reason in case.reason.split("|"):
        reason = case.reason
    if field in case.field.split("|"):
        field = case.field
    got = (status, error.get("code"), reason, field)
    want = (case.code, case.code, case.reason, case.field)
    if got != want:
        problems.append(f"(status, code, reason, field) is {got}, expected {want}: {body}")
    if not (isinstance(error.get("message"), str) and error["message"]):
        problems.append(f"no message: {body}")
    elif case.reason == "invalid_field" and not error["message"].startswith(f"{field}:"):
        problems.append(f"message does not name {case.field!r}: {error['message']!r}")
    after = await settled_state(app)
    for part in ("account", "redis", "postgres"):
        if getattr(after, part) != getattr(before, part):
            problems.append(f"{part} state changed")
    return [f"{case.name}: {problem}" for problem in problems]


@pytest.mark.parametrize("group", list(CASES))
async def test_bad_input_is_refused_naming_the_field_and_changes_nothing(
    funded: RunningApp, group: str
) -> None:
    problems = []
    for case in CASES[group]:
        problems += await check_case(funded, case)
    assert not problems, "\n".join(problems)


async def test_the_live_call_survives_bad_stops_and_is_charged_once_by_a_good_one(
    funded: RunningApp,
) -> None:
    app = funded
    for payload in ({"duration": -45}, {"duration": "forty-five"}, {"duration": True}):
        status, body = await send(app, "POST", f"/v1/calls/{LIVE_CALL}/stop", payload)
        assert (status, body["error"]["field"]) == (400, "duration"), body
    status, shown = await app.get(f"/v1/accounts/{ACCOUNT}")
    assert shown["lines_in_use"] == 1 and shown["reserved"] != "0.000000"

    status, stopped = await app.post(f"/v1/calls/{LIVE_CALL}/stop", {"duration": 45})
    assert status == 200, stopped
    # UK Mobile: 0.15 connect + 48 s (30/6) at 0.06/min.
    assert (stopped["cost"], stopped["balance"], stopped["repeated"]) == (
        "0.198000",
        "9.802000",
        False,
    )


async def test_a_string_amount_with_six_decimals_is_accepted_where_seven_are_refused(
    funded: RunningApp,
) -> None:
    app = funded
    status, body = await app.post(f"/v1/accounts/{ACCOUNT}/topups", {"amount": "0.0000001"})
    assert status == 400 and body["error"]["field"] == "amount"
    status, body = await app.post(f"/v1/accounts/{ACCOUNT}/topups", {"amount": "0.000001"})
    assert status == 201, body
    assert body["amount"] == "0.000001"
    assert body["balance"] == "10.000001"


async def test_the_server_keeps_serving_through_a_burst_of_bad_requests(
    funded: RunningApp,
) -> None:
    app = funded
    before = await settled_state(app)
    every_case = [case for cases in CASES.values() for case in cases]
    answers = await asyncio.gather(
        *[send(app, case.method, case.path, case.payload) for case in every_case * 3]
    )
    assert all(400 <= status < 500 for status, _ in answers)
    response = await app.client.get("/healthz")
    assert response.status == 200
    after = await settled_state(app)
    assert after == before


async def test_the_plan_policy_sets_how_calls_reserve_funds(funded: RunningApp) -> None:
    app = funded
    response = await app.client.put(
        "/v1/plans/retail/policy", json={"reservation_policy": "slice", "slice_seconds": 30}
    )
    body = await response.json()
    assert response.status == 200, body
    assert (body["reservation_policy"], body["slice_seconds"]) == ("slice", 30)
    status, plans = await app.get("/v1/plans")
    assert status == 200, plans
    (retail,) = [plan for plan in plans["plans"] if plan["id"] == "retail"]
    assert (retail["reservation_policy"], retail["slice_seconds"]) == ("slice", 30)


async def test_a_counter_reset_needs_its_body_and_takes_an_empty_object(
    funded: RunningApp,
) -> None:
    app = funded
    response = await app.client.post("/v1/counters/reset")
    body = await response.json()
    assert (response.status, body["error"]["field"]) == (400, "body"), body
    status, report = await app.post("/v1/counters/reset", {})
    assert status == 200, report
    assert report["accounts"] >= 1


async def test_a_body_past_what_ocs_reads_is_413_body_too_large_as_documented(
    funded: RunningApp,
) -> None:
    app = funded
    before = await settled_state(app)

    async def chunked() -> AsyncIterator[bytes]:
        # No Content-Length: refused once past the limit is read.
        yield b'{"amount": "1.00"'
        for _ in range(20):
            yield b" " * (1 << 16)
        yield b"}"

    status, answer, _ = await app.anonymous(
        "POST", TOPUP, data=chunked(), headers={**bearer(app.admin_token), **JSON}
    )
    assert (status, answer["error"]["reason"], answer["error"]["field"]) == (
        413,
        "body_too_large",
        "body",
    ), answer
    # A code list past the 64 MiB aiohttp reads: the same answer, with the same reason.
    codes = b"prefix,name\n" + b"44,UK\n" * ((64 << 20) // 6)
    status, answer = await send(app, "PUT", "/v1/area-codes", Raw(codes, "text/csv"))
    assert (status, answer["error"]["reason"], answer["error"]["field"]) == (
        413,
        "body_too_large",
        "body",
    ), answer

    async def usage_file() -> AsyncIterator[bytes]:
        # A usage file is streamed to disk: refused past 64 MiB, as its endpoint says
        # (through a template that exists: an unknown one is refused before the body).
        for _ in range(1024):
            yield b" " * (1 << 16)
        yield b"x"

    status, answer, _ = await app.anonymous(
        "POST",
        "/v1/usage/imports?template=asterisk-cdr-csv",
        data=usage_file(),
        headers={**bearer(app.admin_token), "Content-Type": "text/csv"},
    )
    assert (status, answer["error"]["reason"], answer["error"]["field"]) == (
        413,
        "body_too_large",
        "body",
    ), answer
    assert await settled_state(app) == before
    # /openapi.json says so for every operation that takes a body.
    status, spec = await app.get("/openapi.json")
    assert status == 200
    for path, method in (
        (TOPUP_PATH, "post"),
        ("/v1/area-codes", "put"),
        ("/v1/usage/imports", "post"),
        ("/v1/payments/webhooks/stripe", "post"),
    ):
        assert "413" in spec["paths"][path][method]["responses"], (path, method)
