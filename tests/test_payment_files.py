"""Bank statement files (issue 14, decision 0027): a camt.053 or CSV statement's credits
are matched to accounts by the invoice number or account id in their reference and
applied once each; what matches nothing is reported with its place, not applied; a
file imported again moves nothing; a file with a DOCTYPE (XXE) is refused.

The account ``pp`` (postpaid) owes two posted invoices of 10.00 rent each (January
INV-2026-000001, February INV-2026-000002): its balance is -20.00 before any payment.
"""

from datetime import date
from pathlib import Path

import pytest

from ocs.balances.accounts import AccountSpec
from ocs.billing import bank_files, posting
from ocs.billing.store import Subscription, add_charge, subscribe
from ocs.errors import OcsError
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, invoice_id, monthly, run
from tests.conftest import RunningApp, eventually
from tests.helpers import Raw, ocs_cli, send

DATA = Path(__file__).parent / "data" / "payments"


async def owing_account(services: Services) -> tuple[int, int]:
    """``pp`` with January's and February's 10.00 rent posted: their invoice ids."""
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await services.accounts.create(AccountSpec("pp", plan_id="retail", credit_limit=100 * EUR))
    sub = await subscribe(services.pool, Subscription("pp", "retail", date(2026, 1, 1)))
    await add_charge(services.pool, sub, "rent")
    for period in ("2026-01", "2026-02"):
        await posting.post(services.pool, services.store, run_id=await run(services, period))
    return await invoice_id(services, "pp", "2026-01"), await invoice_id(services, "pp", "2026-02")


async def balance(services: Services) -> int:
    """``pp``'s real-time balance (Redis)."""
    state = await services.store.get_account("pp")
    assert state is not None
    return state.balance


async def amounts_paid(services: Services, *ids: int) -> list[int]:
    """Each invoice's amount_paid."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, amount_paid FROM invoices")
    paid = {r["id"]: r["amount_paid"] for r in rows}
    return [paid[i] for i in ids]


async def payment_rows(services: Services) -> list[tuple[str, int, int]]:
    """(external id, amount, allocated) of every payment, by id."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT external_id, amount, allocated FROM payments ORDER BY id")
    return [(r["external_id"], r["amount"], r["allocated"]) for r in rows]


async def ledger_payments(app: RunningApp, marker: str) -> list[tuple[str, int]]:
    """The ledger's payment credits of ``pp`` once the ledger writer has written
    everything up to a marker top-up made now (so nothing is still on its way)."""
    services = app.services
    await services.accounts.topup("pp", 1, marker)

    async def marked() -> bool:
        async with services.pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT 1 FROM ledger WHERE reference = $1", marker))

    await eventually(marked, what="the ledger writer")
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT reference, amount FROM ledger WHERE account_id = 'pp'"
            " AND reference LIKE 'pay:%' ORDER BY reference"
        )
    return [(r["reference"], r["amount"]) for r in rows]


async def test_a_camt053_statement_pays_in_full_in_part_reports_the_unknown_and_applies_once(
    app: RunningApp,
) -> None:
    services = app.services
    january, february = await owing_account(services)
    statement = Raw((DATA / "statement.camt053.xml").read_bytes(), "application/xml")

    status, body = await send(app, "POST", "/v1/payments/import", statement)

    assert status == 200, body
    assert [(a["position"], a["account"], a["amount"], a["created"]) for a in body["applied"]] == [
        ("entry 1", "pp", "10.000000", True),
        ("entry 2", "pp", "4.000000", True),
    ]
    assert [(u["position"], u["problem"]) for u in body["unmatched"]] == [
        ("entry 3", "no posted invoice number or account id found in its reference"),
        ("entry 4", "a debit (CdtDbtInd DBIT): not a payment"),
    ]
    # Entry 1 pays January in full; entry 2 pays 4.00 of February.
    assert await amounts_paid(services, january, february) == [10 * EUR, 4 * EUR]
    assert await balance(services) == -6 * EUR  # -20.00 + 10.00 + 4.00
    assert await payment_rows(services) == [
        ("BANK-0001", 10 * EUR, 10 * EUR),
        ("BANK-0002", 4 * EUR, 4 * EUR),
    ]
    assert await ledger_payments(app, "m1") == [("pay:1", 10 * EUR), ("pay:2", 4 * EUR)]

    status, again = await send(app, "POST", "/v1/payments/import", statement)

    # The same file again: the same entries found, nothing moved.
    assert status == 200, again
    assert [(a["position"], a["created"]) for a in again["applied"]] == [
        ("entry 1", False),
        ("entry 2", False),
    ]
    assert len(again["unmatched"]) == 2
    assert await amounts_paid(services, january, february) == [10 * EUR, 4 * EUR]
    assert await balance(services) == -6 * EUR + 1  # the first marker's micro-unit only
    assert len(await payment_rows(services)) == 2
    assert await ledger_payments(app, "m2") == [("pay:1", 10 * EUR), ("pay:2", 4 * EUR)]
    async with services.pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM events WHERE kind = 'payment.received'") == 2
        )


async def test_a_csv_statement_by_the_cli_names_lines_left_out(
    services: Services, tmp_path: Path
) -> None:
    january, february = await owing_account(services)

    code, out, err = await ocs_cli(
        services.settings, tmp_path, "payments", "import", str(DATA / "statement.csv")
    )

    # Entries left out: exit 1, each named by its line.
    assert code == 1, err
    assert '"position": "line 4"' in out and "not a credit" in out
    assert '"position": "line 5"' in out
    # Line 2 names February's invoice: paid first, in full; line 3 names the account:
    # January, in part.
    assert await amounts_paid(services, january, february) == [3_500_000, 10 * EUR]
    assert await balance(services) == -6_500_000
    assert await payment_rows(services) == [
        ("TX-1", 10 * EUR, 10 * EUR),
        ("TX-2", 3_500_000, 3_500_000),
    ]

    code, out, err = await ocs_cli(
        services.settings,
        tmp_path,
        "payments",
        "import",
        str(DATA / "statement.csv"),
        "--format",
        "csv",
    )
    assert code == 1 and out.count('"created": false') == 2, err
    assert await balance(services) == -6_500_000


async def test_csv_over_the_api_and_files_refused_whole(app: RunningApp) -> None:
    services = app.services
    january, february = await owing_account(services)
    text = "date,amount,currency,transaction_id,account\n2026-04-03,25.00,EUR,T-9,pp\n"

    status, body = await send(app, "POST", "/v1/payments/import", Raw(text, "text/csv"))

    # 25.00: both invoices in full, 5.00 left as credit.
    assert status == 200, body
    assert body["unmatched"] == [] and body["settled_accounts"] == ["pp"]
    assert await amounts_paid(services, january, february) == [10 * EUR, 10 * EUR]
    assert await balance(services) == 5 * EUR

    missing = "date,amount,currency\n2026-04-03,1.00,EUR\n"
    status, body = await send(app, "POST", "/v1/payments/import", Raw(missing, "text/csv"))
    assert status == 400 and body["error"]["field"] == "file", body
    assert "transaction_id" in body["error"]["message"]

    xxe = Raw((DATA / "xxe.camt053.xml").read_bytes(), "application/xml")
    status, body = await send(app, "POST", "/v1/payments/import", xxe)
    assert status == 400 and body["error"]["field"] == "file", body
    assert "DOCTYPE" in body["error"]["message"]

    status, body = await send(app, "POST", "/v1/payments/import", Raw("<Document>", "text/xml"))
    assert status == 400 and body["error"]["field"] == "file", body
    assert await balance(services) == 5 * EUR


def test_a_batch_booking_is_one_payment_per_transaction_and_pending_entries_wait() -> None:
    xml = b"""<?xml version="1.0"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"><BkToCstmrStmt><Stmt>
<Id>S1</Id>
<Ntry><Amt Ccy="EUR">5.25</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>BOOK</Sts>
 <BookgDt><Dt>2026-04-06</Dt></BookgDt><AcctSvcrRef>B-10</AcctSvcrRef>
 <NtryDtls>
  <TxDtls><Refs><AcctSvcrRef>B-10-1</AcctSvcrRef></Refs>
   <AmtDtls><TxAmt><Amt Ccy="EUR">2.00</Amt></TxAmt></AmtDtls>
   <RmtInf><Ustrd>INV-2026-000001</Ustrd></RmtInf></TxDtls>
  <TxDtls><Refs><EndToEndId>E2E-7</EndToEndId></Refs>
   <AmtDtls><TxAmt><Amt Ccy="EUR">3.25</Amt></TxAmt></AmtDtls></TxDtls>
 </NtryDtls></Ntry>
<Ntry><Amt Ccy="EUR">1.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>PDNG</Sts>
 <BookgDt><Dt>2026-04-06</Dt></BookgDt></Ntry>
</Stmt></BkToCstmrStmt></Document>"""

    parsed = bank_files.parse(xml)

    assert [(e.position, e.external_id, e.amount, e.references) for e in parsed.entries] == [
        ("entry 1, transaction 1", "B-10-1", 2_000_000, ("INV-2026-000001",)),
        ("entry 1, transaction 2", "B-10/2", 3_250_000, ("E2E-7",)),
    ]
    assert [(p.position, p.problem) for p in parsed.problems] == [
        ("entry 2", "status PDNG: only booked entries are payments")
    ]
    # Entity expansion (billion laughs) never runs: the DOCTYPE is refused first.
    bomb = b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa">]><Document>&a;</Document>'
    with pytest.raises(OcsError, match="DOCTYPE"):
        bank_files.parse(bomb)


def _statement(*entries: str) -> bytes:
    """A camt.053.001.08 statement of the given ``Ntry`` elements."""
    return (
        '<?xml version="1.0"?><Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08">'
        "<BkToCstmrStmt><Stmt><Id>S9</Id>" + "".join(entries) + "</Stmt></BkToCstmrStmt></Document>"
    ).encode()


def _entry(amount: str, status: str, ref: str, inner: str) -> str:
    """A credit ``Ntry`` of ``amount`` EUR with the ``Sts`` content and the rest given."""
    return (
        f'<Ntry><Amt Ccy="EUR">{amount}</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>{status}</Sts>'
        f"<BookgDt><Dt>2026-04-06</Dt></BookgDt><AcctSvcrRef>{ref}</AcctSvcrRef>{inner}</Ntry>"
    )


def _detail(ref: str, amount: str, indicator: str, text: str) -> str:
    """A ``TxDtls`` of ``amount`` EUR; ``indicator`` "" leaves its CdtDbtInd out (001.02)."""
    own = f"<CdtDbtInd>{indicator}</CdtDbtInd>" if indicator else ""
    return (
        f'<TxDtls><Refs><AcctSvcrRef>{ref}</AcctSvcrRef></Refs><Amt Ccy="EUR">{amount}</Amt>'
        f"{own}<RmtInf><Ustrd>{text}</Ustrd></RmtInf></TxDtls>"
    )


# Entry 1: 90.00 booked, its transactions a credit of 100.00 and a return of 10.00 (the
# bank nets them): the bank received 90.00. Entry 2: 50.00 pending, said in a bank's own
# code. Entry 3: a 12.00 batch of 5.00 (its own CRDT) and 7.00 (no indicator: the
# entry's). Entry 4: a proprietary "BOOK" is no ISO status. Entry 5: ISO PDNG.
NETTED = _statement(
    _entry(
        "90.00",
        "<Cd>BOOK</Cd>",
        "E1",
        "<NtryDtls>"
        + _detail("T1", "100.00", "CRDT", "account pp")
        + _detail("T2", "10.00", "DBIT", "return pp")
        + "</NtryDtls>",
    ),
    _entry("50.00", "<Prtry>PDNG</Prtry>", "E2", "<RmtInf><Ustrd>pp</Ustrd></RmtInf>"),
    _entry(
        "12.00",
        "<Cd>BOOK</Cd>",
        "E3",
        "<NtryDtls>"
        + _detail("T3", "5.00", "CRDT", "INV-2026-000001")
        + _detail("T4", "7.00", "", "INV-2026-000002")
        + "</NtryDtls>",
    ),
    _entry("3.00", "<Prtry>BOOK</Prtry>", "E4", "<RmtInf><Ustrd>pp</Ustrd></RmtInf>"),
    _entry("4.00", "<Cd>PDNG</Cd>", "E5", "<RmtInf><Ustrd>pp</Ustrd></RmtInf>"),
)


def test_a_transaction_is_credited_only_as_its_own_indicator_and_the_entry_booked_say() -> None:
    parsed = bank_files.parse(NETTED)

    assert [(e.position, e.external_id, e.amount) for e in parsed.entries] == [
        ("entry 3, transaction 1", "T3", 5 * EUR),
        ("entry 3, transaction 2", "T4", 7 * EUR),
    ]
    assert [(p.position, p.problem) for p in parsed.problems] == [
        (
            "entry 1",
            "its credited transactions add up to 100.000000 EUR, the entry is 90.000000 EUR:"
            " none of them is applied",
        ),
        ("entry 1, transaction 2", "a debit (CdtDbtInd DBIT): not a payment"),
        ("entry 2", "status PDNG (proprietary): only booked entries are payments"),
        ("entry 4", "status BOOK (proprietary): only booked entries are payments"),
        ("entry 5", "status PDNG: only booked entries are payments"),
    ]


def test_a_single_transaction_claiming_more_or_another_currency_than_its_entry_is_refused() -> None:
    more = _entry(
        "5.00", "BOOK", "E1", "<NtryDtls>" + _detail("T1", "50.00", "", "pp") + "</NtryDtls>"
    )
    other = _entry(
        "5.00",
        "BOOK",
        "E2",
        '<NtryDtls><TxDtls><Refs><TxId>T2</TxId></Refs><Amt Ccy="USD">5.00</Amt></TxDtls>'
        "</NtryDtls>",
    )
    parsed = bank_files.parse(_statement(more, other))

    assert parsed.entries == ()
    assert [(p.position, p.problem) for p in parsed.problems] == [
        (
            "entry 1",
            "its credited transactions add up to 50.000000 EUR, the entry is 5.000000 EUR:"
            " none of them is applied",
        ),
        ("entry 2", "its transactions are in USD, the entry in EUR: none of them is applied"),
    ]


async def test_an_import_credits_what_the_bank_booked_and_nothing_it_did_not(
    app: RunningApp,
) -> None:
    services = app.services
    january, february = await owing_account(services)

    status, body = await send(app, "POST", "/v1/payments/import", Raw(NETTED, "application/xml"))

    assert status == 200, body
    # Only entry 3's 5.00 and 7.00, each paying the invoice it names.
    assert [(a["position"], a["amount"]) for a in body["applied"]] == [
        ("entry 3, transaction 1", "5.000000"),
        ("entry 3, transaction 2", "7.000000"),
    ]
    assert [u["position"] for u in body["unmatched"]] == [
        "entry 1",
        "entry 1, transaction 2",
        "entry 2",
        "entry 4",
        "entry 5",
    ]
    assert await payment_rows(services) == [("T3", 5 * EUR, 5 * EUR), ("T4", 7 * EUR, 7 * EUR)]
    assert await amounts_paid(services, january, february) == [5 * EUR, 7 * EUR]
    assert await balance(services) == -8 * EUR  # -20.00 + 12.00: not + 100 + 10 + 50 + 3 + 4
