"""Payments and refunds that meet another step of billing at the same instant.

Two refund events of one charge handled at once refund only what the gateway refunded;
a payment stored while its account's invoice is being posted pays that invoice; a void,
or the credit step, and a gateway refund of a payment they lock both complete; a payment
naming a newer invoice and the credit step, or a void of an older one, both complete."""

import asyncio
from collections.abc import Awaitable, Callable

from ocs.billing import credit, payments, posting
from ocs.billing.gateway import GatewayEvent
from ocs.billing.payments import NewPayment
from ocs.billing.void import void
from ocs.services import Services
from tests.billing_helpers import EUR, invoice_id, renting, run
from tests.conftest import eventually


def gateway_event(event_id: str, action: str, key: str, amount: int) -> GatewayEvent:
    kind = "payment_intent.succeeded" if action == "payment" else "charge.refunded"
    return GatewayEvent(event_id, kind, action, 1775000000, key, amount, "EUR", "pp")


async def test_two_refund_events_at_once_refund_what_the_gateway_refunded(
    services: Services,
) -> None:
    await posting.post(services.pool, services.store, run_id=await renting(services))
    for n in range(3):  # the race is won either way round: three tries
        key = f"pi_{n}"
        event = gateway_event(f"evt_pay_{n}", "payment", key, 50 * EUR)
        await payments.apply_gateway_event(services.pool, services.store, event)
        before = (await services.store.get_account("pp")).balance
        # Two partial refunds, 10.00 then 10.00 more: the events carry the running total.
        done = await asyncio.gather(
            payments.apply_gateway_event(
                services.pool, services.store, gateway_event(f"evt_r2_{n}", "refund", key, 20 * EUR)
            ),
            payments.apply_gateway_event(
                services.pool, services.store, gateway_event(f"evt_r1_{n}", "refund", key, 10 * EUR)
            ),
        )
        assert sorted(d.outcome for d in done) in (["ignored", "refund"], ["refund", "refund"])
        async with services.pool.acquire() as conn:
            refunded = await conn.fetchval(
                "SELECT refunded FROM payments WHERE external_id = $1", key
            )
        after = (await services.store.get_account("pp")).balance
        assert (refunded, before - after) == (20 * EUR, 20 * EUR)


PAUSE_AT_COMMIT = """
CREATE OR REPLACE FUNCTION test_pause_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER test_pause_commit AFTER INSERT ON payments
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_pause_commit();
"""


async def test_a_payment_stored_while_its_invoice_is_posted_pays_it(services: Services) -> None:
    run_id = await renting(services)
    invoice = await invoice_id(services, "pp", "2026-01")
    pool = services.pool
    # The payment's transaction pauses at its commit, after it looked for posted
    # invoices (January's is still a draft then): the posting runs meanwhile.
    await pool.execute(PAUSE_AT_COMMIT)
    try:
        paying = asyncio.ensure_future(
            payments.record_payment(
                pool, services.store, NewPayment("pp", 10 * EUR, "manual", "ref-1")
            )
        )

        async def committing() -> bool:
            return bool(
                await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                )
            )

        await eventually(committing, what="the payment's commit under way")
        await posting.post(pool, services.store, run_id=run_id)
        done = await paying
    finally:
        await pool.execute(
            "DROP TRIGGER IF EXISTS test_pause_commit ON payments;"
            " DROP FUNCTION IF EXISTS test_pause_commit()"
        )
    assert done.created
    async with pool.acquire() as conn:
        paid = await conn.fetchval("SELECT amount_paid FROM invoices WHERE id = $1", invoice)
        allocated = await conn.fetchval(
            "SELECT allocated FROM payments WHERE external_id = 'ref-1'"
        )
    assert (paid, allocated) == (10 * EUR, 10 * EUR)


async def test_credit_and_a_new_payment_at_once_pay_an_invoice_once(services: Services) -> None:
    # P1 was stored while January's invoice was a draft, so all of it is credit; its
    # credit pays invoices once posted (decision 0027). P2, a new payment, pays January
    # in a transaction not committed yet. P1's credit read January as open without
    # locking it, then added its 10.00 to what P2 paid: 20.00 paid of 10.00, and P1's
    # credit spent on nothing.
    await posting.post(services.pool, services.store, run_id=await renting(services))
    january = await invoice_id(services, "pp", "2026-01")
    async with services.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO payments (account_id, source, external_id, amount, currency,"
            " received_on) VALUES ('pp', 'manual', 'P1', $1, 'EUR', '2026-02-02')",
            10 * EUR,
        )
    async with services.pool.acquire() as second:
        paying = second.transaction()
        await paying.start()
        # P2 pays January as ``payments`` allocates: the invoice's row locked and paid.
        await second.execute(
            "UPDATE invoices SET amount_paid = amount_paid + $2, paid_at = now() WHERE id = $1",
            january,
            10 * EUR,
        )
        crediting = asyncio.create_task(credit_open_invoices(services))

        async def waiting_for_the_invoice() -> bool:
            async with services.pool.acquire() as conn:
                return bool(
                    await conn.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> $1",
                        second.get_server_pid(),
                    )
                )

        await eventually(waiting_for_the_invoice, what="P1's credit to wait for P2's invoice")
        await paying.commit()
        await crediting
    async with services.pool.acquire() as conn:
        paid = await conn.fetchval("SELECT amount_paid FROM invoices WHERE id = $1", january)
        allocated = await conn.fetchval("SELECT allocated FROM payments WHERE external_id = 'P1'")
    assert (paid, allocated) == (10 * EUR, 0)


async def credit_open_invoices(services: Services) -> int:
    """``pay_open_invoices`` for ``pp`` in a transaction of its own."""
    async with services.pool.acquire() as conn, conn.transaction():
        return await credit.pay_open_invoices(conn, "pp")


async def test_a_void_and_a_refund_of_its_payment_at_once_both_complete(
    services: Services,
) -> None:
    # January (10.00) is paid by a gateway payment. The gateway then refunds it all while
    # the operator voids January. The refund locks the payment, then January to take its
    # 10.00 back; the void locked January, then the payment to give back what it paid:
    # each waited for the other and PostgreSQL failed one (DeadlockDetectedError, a 500).
    # A transaction holding the payment lines both up behind it, refund first.
    await posting.post(services.pool, services.store, run_id=await renting(services))
    january = await invoice_id(services, "pp", "2026-01")
    paying = gateway_event("evt_pay_v", "payment", "pi_v", 10 * EUR)
    await payments.apply_gateway_event(services.pool, services.store, paying)
    before = (await services.store.get_account("pp")).balance
    async with services.pool.acquire() as holder:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT id FROM payments WHERE external_id = 'pi_v' FOR UPDATE")

        def waiting(count: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                found = await services.pool.fetchval(
                    "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND pid <> $1",
                    holder.get_server_pid(),
                )
                return bool(found >= count)

            return check

        refunding = asyncio.create_task(
            payments.apply_gateway_event(
                services.pool,
                services.store,
                gateway_event("evt_refund_v", "refund", "pi_v", 10 * EUR),
            )
        )
        await eventually(waiting(1), what="the refund to wait for the payment")
        voiding = asyncio.create_task(void(services.pool, services.store, january))
        await eventually(waiting(2), what="the void to wait for the payment")
        await held.commit()
        refunded, voided = await asyncio.gather(refunding, voiding)
    async with services.pool.acquire() as conn:
        payment = await conn.fetchrow(
            "SELECT amount, allocated, refunded FROM payments WHERE external_id = 'pi_v'"
        )
        invoice = await conn.fetchrow(
            "SELECT state, amount_paid FROM invoices WHERE id = $1", january
        )
    after = (await services.store.get_account("pp")).balance
    assert refunded.outcome == "refund"
    assert voided.total == -10 * EUR
    assert tuple(payment) == (10 * EUR, 0, 10 * EUR)
    assert tuple(invoice) == ("void", 0)
    # The refund took 10.00 of the balance, the credit note gave January's 10.00 back.
    assert after - before == 0


async def test_credit_and_a_refund_of_a_payment_it_pays_from_at_once_both_complete(
    services: Services,
) -> None:
    # January (10.00) is open for 6.00: P2, a gateway payment of 9.00, paid 4.00 of it
    # and holds 5.00 of credit; P1 holds 3.00 of credit. Neither's credit was counted by
    # January's statement (no ledger row), so the credit step pays January from both,
    # P1 first. The gateway refunds all of P2 meanwhile: the refund locks P2, then
    # January to take its 4.00 back. The credit step locked P1, then January, then
    # waited for P2: each waited for the other and PostgreSQL failed one of them
    # (DeadlockDetectedError: a failed posting or payment, or a 500 to the gateway). A
    # transaction holding P2 lines both up behind it, refund first.
    await posting.post(services.pool, services.store, run_id=await renting(services))
    january = await invoice_id(services, "pp", "2026-01")
    async with services.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO payments (account_id, source, external_id, amount, currency,"
            " received_on) VALUES ('pp', 'manual', 'P1', $1, 'EUR', '2026-02-02')",
            3 * EUR,
        )
        p2 = await conn.fetchval(
            "INSERT INTO payments (account_id, source, external_id, amount, allocated,"
            " currency, received_on) VALUES ('pp', 'stripe', 'pi_c', $1, $2, 'EUR',"
            " '2026-02-02') RETURNING id",
            9 * EUR,
            4 * EUR,
        )
        await conn.execute(
            "INSERT INTO payment_allocations (payment_id, invoice_id, amount) VALUES ($1, $2, $3)",
            p2,
            january,
            4 * EUR,
        )
        await conn.execute("UPDATE invoices SET amount_paid = $2 WHERE id = $1", january, 4 * EUR)
    async with services.pool.acquire() as holder:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT id FROM payments WHERE id = $1 FOR UPDATE", p2)

        def waiting(count: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                found = await services.pool.fetchval(
                    "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND pid <> $1",
                    holder.get_server_pid(),
                )
                return bool(found >= count)

            return check

        refunding = asyncio.create_task(
            payments.apply_gateway_event(
                services.pool,
                services.store,
                gateway_event("evt_refund_c", "refund", "pi_c", 9 * EUR),
            )
        )
        await eventually(waiting(1), what="the refund to wait for P2")
        crediting = asyncio.create_task(credit_open_invoices(services))
        await eventually(waiting(2), what="the credit step to wait for P2")
        await held.commit()
        refunded, credited = await asyncio.gather(refunding, crediting)
    async with services.pool.acquire() as conn:
        paid = await conn.fetchval("SELECT amount_paid FROM invoices WHERE id = $1", january)
        held_by = {
            r["external_id"]: (r["allocated"], r["refunded"])
            for r in await conn.fetch(
                "SELECT external_id, allocated, refunded FROM payments WHERE account_id = 'pp'"
            )
        }
    # The refund took P2's 4.00 back from January first; then only P1's credit was left.
    assert refunded.outcome == "refund"
    assert credited == 3 * EUR
    assert paid == 3 * EUR
    assert held_by == {"P1": (3 * EUR, 0), "pi_c": (0, 9 * EUR)}


def waiting_besides(
    services: Services, holder_pid: int, count: int
) -> Callable[[], Awaitable[bool]]:
    """A check: at least ``count`` sessions other than the holder's wait for a lock."""

    async def check() -> bool:
        found = await services.pool.fetchval(
            "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND pid <> $1",
            holder_pid,
        )
        return bool(found >= count)

    return check


async def january_and_february_open(services: Services) -> tuple[int, int, str]:
    """``pp`` with January and February posted, 10.00 each, unpaid: (January's id,
    February's id, February's number)."""
    await posting.post(services.pool, services.store, run_id=await renting(services))
    await posting.post(services.pool, services.store, run_id=await run(services, "2026-02"))
    january = await invoice_id(services, "pp", "2026-01")
    february = await invoice_id(services, "pp", "2026-02")
    number = await services.pool.fetchval("SELECT number FROM invoices WHERE id = $1", february)
    return january, february, str(number)


async def allocations(services: Services) -> dict[tuple[str, int], int]:
    """What each payment (external id) paid of each invoice."""
    rows = await services.pool.fetch(
        "SELECT p.external_id, a.invoice_id, a.amount FROM payment_allocations a"
        " JOIN payments p ON p.id = a.payment_id WHERE a.amount > 0"
    )
    return {(r["external_id"], r["invoice_id"]): r["amount"] for r in rows}


async def test_a_payment_naming_february_and_the_credit_step_at_once_both_complete(
    services: Services,
) -> None:
    # January and February ask 10.00 each. P1 holds 1.00 of credit no statement counted,
    # so the credit step pays January from it. A payment of 12.00 naming February (the
    # API's invoice_number) pays February first, then January. The credit step locked
    # January, then February; the payment locked February (named) first, then January:
    # each waited for the other and PostgreSQL failed one (DeadlockDetectedError, a 500).
    # A transaction holding January lines both up behind it, the credit step first.
    january, february, number = await january_and_february_open(services)
    await services.pool.execute(
        "INSERT INTO payments (account_id, source, external_id, amount, currency,"
        " received_on) VALUES ('pp', 'manual', 'P1', $1, 'EUR', '2026-02-02')",
        1 * EUR,
    )
    async with services.pool.acquire() as holder:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT id FROM invoices WHERE id = $1 FOR UPDATE", january)
        crediting = asyncio.create_task(credit_open_invoices(services))
        await eventually(
            waiting_besides(services, holder.get_server_pid(), 1),
            what="the credit step to wait for January",
        )
        paying = asyncio.create_task(
            payments.record_payment(
                services.pool,
                services.store,
                NewPayment("pp", 12 * EUR, "manual", "ref-feb", invoice_number=number),
            )
        )
        await eventually(
            waiting_besides(services, holder.get_server_pid(), 2),
            what="the payment to wait for January",
        )
        await held.commit()
        credited, paid = await asyncio.gather(crediting, paying)
    invoices_paid = dict(
        await services.pool.fetch("SELECT id, amount_paid FROM invoices WHERE account_id = 'pp'")
    )
    assert credited == 1 * EUR
    # The named invoice first, all of it, then January (paid oldest first, it would
    # have taken 9.00 and left February 3.00); P1's 1.00 was already in January.
    assert {a.invoice_id: a.amount for a in paid.payment.allocations} == {
        february: 10 * EUR,
        january: 2 * EUR,
    }
    assert invoices_paid == {january: 3 * EUR, february: 10 * EUR}
    assert await allocations(services) == {
        ("P1", january): 1 * EUR,
        ("ref-feb", february): 10 * EUR,
        ("ref-feb", january): 2 * EUR,
    }


async def test_a_gateway_payment_naming_february_and_a_void_of_january_at_once_both_complete(
    services: Services,
) -> None:
    # January and February ask 10.00 each; P1 paid 4.00 of January. The operator voids
    # January while the gateway's payment of 8.00 naming February (metadata
    # invoice_number) arrives. The void locked P1, January, then February (to pay it
    # from P1's freed 4.00); the payment locked February (named) first, then January:
    # each waited for the other and PostgreSQL failed one (DeadlockDetectedError, a 500
    # to the gateway's webhook). A transaction holding January lines both up behind it,
    # the void first.
    january, february, number = await january_and_february_open(services)
    p1 = await services.pool.fetchval(
        "INSERT INTO payments (account_id, source, external_id, amount, allocated, currency,"
        " received_on) VALUES ('pp', 'manual', 'P1', $1, $1, 'EUR', '2026-02-02') RETURNING id",
        4 * EUR,
    )
    await services.pool.execute(
        "INSERT INTO payment_allocations (payment_id, invoice_id, amount) VALUES ($1, $2, $3)",
        p1,
        january,
        4 * EUR,
    )
    await services.pool.execute(
        "UPDATE invoices SET amount_paid = $2 WHERE id = $1", january, 4 * EUR
    )
    event = GatewayEvent(
        "evt_pay_feb",
        "payment_intent.succeeded",
        "payment",
        1775000000,
        "pi_feb",
        8 * EUR,
        "EUR",
        None,
        number,
    )
    async with services.pool.acquire() as holder:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT id FROM invoices WHERE id = $1 FOR UPDATE", january)
        voiding = asyncio.create_task(void(services.pool, services.store, january))
        await eventually(
            waiting_besides(services, holder.get_server_pid(), 1),
            what="the void to wait for January",
        )
        paying = asyncio.create_task(
            payments.apply_gateway_event(services.pool, services.store, event)
        )
        await eventually(
            waiting_besides(services, holder.get_server_pid(), 2),
            what="the payment to wait for January",
        )
        await held.commit()
        voided, paid = await asyncio.gather(voiding, paying)
    invoices_paid = {
        r["id"]: (r["state"], r["amount_paid"])
        for r in await services.pool.fetch(
            "SELECT id, state, amount_paid FROM invoices WHERE account_id = 'pp'"
            " AND kind = 'invoice'"
        )
    }
    assert voided.total == -10 * EUR
    assert paid.outcome == "payment"
    assert paid.payment is not None
    # P1's 4.00, freed by the void, paid February; the named payment the 6.00 left.
    assert (paid.payment.payment.allocated, paid.payment.payment.credit) == (6 * EUR, 2 * EUR)
    assert invoices_paid == {january: ("void", 0), february: ("posted", 10 * EUR)}
    assert await allocations(services) == {("P1", february): 4 * EUR, ("pi_feb", february): 6 * EUR}
