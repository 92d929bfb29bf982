"""A call authorized and charged over RADIUS by FreeRADIUS's radclient."""

from tests.conftest import RADIUS_SECRET, RunningRadius, add_plan, eventually
from tests.radclient import radclient


async def test_access_accept_then_start_and_stop_charge_the_call(radius: RunningRadius) -> None:
    app = radius.app
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "1001", "plan": "retail", "balance": "1.00"})
    reply = await radclient(
        "auth",
        radius.auth_port,
        RADIUS_SECRET,
        [
            ("User-Name", "1001"),
            ("Called-Station-Id", "447700900123"),
            ("Calling-Station-Id", "4930123456"),
            ("h323-conf-id", "h323-conf-id=CONF-1"),
        ],
    )
    assert reply.code == "Access-Accept", reply.output
    assert reply.attributes["Session-Timeout"] == ["846"]
    assert reply.attributes["h323-credit-time"] == ["h323-credit-time=846"]
    assert reply.attributes["h323-return-code"] == ["h323-return-code=0"]
    assert "Message-Authenticator" in reply.attributes
    accounting = [("User-Name", "1001"), ("h323-conf-id", "h323-conf-id=CONF-1")]
    start = await radclient(
        "acct", radius.acct_port, RADIUS_SECRET, [("Acct-Status-Type", "Start"), *accounting]
    )
    assert start.code == "Accounting-Response", start.output
    for _ in range(3):  # a retransmitted Stop charges once
        stop = await radclient(
            "acct",
            radius.acct_port,
            RADIUS_SECRET,
            [("Acct-Status-Type", "Stop"), *accounting, ("Acct-Session-Time", "45")],
        )
        assert stop.code == "Accounting-Response", stop.output
    _, account = await app.get("/v1/accounts/1001")
    assert account["balance"] == "0.802000" and account["lines_in_use"] == 0

    async def cdr_written() -> bool:
        async with app.services.pool.acquire() as conn:
            return (
                await conn.fetchval("SELECT charged FROM cdrs WHERE call_id = 'CONF-1'") == 198_000
            )

    await eventually(cdr_written, what="the CDR of CONF-1 in PostgreSQL")
