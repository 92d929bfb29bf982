"""Invoice documents (issue 14): a posted invoice reaches the customer as a PDF.

What a customer and an operator notice: the PDF's text (read back with
poppler's ``pdftotext``) shows the issuer, the billing address, the number,
dates, the grouped lines, hand-computed totals and taxes, the statement and
the plan's message; it renders to a page image (``pdftoppm``); a posted
invoice's PDF is stored once and then served from its file; a draft's preview
says DRAFT and is never stored; the API answers application/pdf to a viewer
and 404 for an unknown invoice; the command line writes the file; the calls
CSV lists the invoice's calls.
"""

import asyncio
import json
import subprocess
import sys
import threading
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from ocs import api_tokens
from ocs.billing import documents
from ocs.billing.document_data import Address, DocumentLine, InvoiceFacts
from ocs.billing.document_layout import Issuer, layout
from ocs.cli import main
from ocs.config import Settings
from ocs.errors import OcsError, Reason
from ocs.money import format_amount
from tests.billing_helpers import cdr
from tests.conftest import RunningApp, add_plan, bearer, reset_state

ISSUER_ADDRESS = "1 High Street|London EC1A 1BB|VAT GB123456789"
MESSAGE = "Thank you. Please pay by bank transfer to IBAN GB00 TEST 0000 01."


@pytest.fixture
def settings(redis_url: str, database_url: str, tmp_path: Path, pepper_file: Path) -> Settings:
    """The test settings with an issuer and the British locale (euros: €1,234.50)."""
    return Settings(
        pepper_file=pepper_file,
        redis_url=redis_url,
        database_url=database_url,
        data_dir=tmp_path / "var",
        http_host="127.0.0.1",
        http_port=0,
        log_format="text",
        invoice_issuer_name="Example Telecom Ltd",
        invoice_issuer_address=ISSUER_ADDRESS,
        invoice_locale="en_GB",
    )


def pdf_text(pdf: bytes, tmp_path: Path, name: str) -> str:
    """The PDF's text as poppler reads it (layout kept: one table row per line)."""
    path = tmp_path / f"{name}.pdf"
    path.write_bytes(pdf)
    done = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, check=True, timeout=30
    )
    return done.stdout.decode()


def page_image(pdf: bytes, tmp_path: Path) -> bytes:
    """The PDF's first page as a PNG, drawn by poppler's ``pdftoppm`` at 50 dpi."""
    (tmp_path / "page.pdf").write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-png", "-r", "50", "-f", "1", "-l", "1", str(tmp_path / "page.pdf"),
         str(tmp_path / "page")],
        check=True, timeout=30,
    )  # fmt: skip
    [png] = list(tmp_path.glob("page*.png"))
    return png.read_bytes()


def row(text: str, *cells: str) -> bool:
    """Whether one line of the text holds these cells, in this order."""
    for line in text.splitlines():
        position = 0
        for cell in cells:
            position = line.find(cell, position)
            if position < 0:
                break
            position += len(cell)
        else:
            return True
    return False


async def ok(app: RunningApp, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    """A request with the admin token that must answer ``status``: its JSON."""
    response = await app.client.request(method, path, json=body)
    answer = await response.json()
    assert response.status == status, (method, path, answer)
    return answer


async def march_invoice(app: RunningApp) -> int:
    """Account a1 on retail (14 grace days, a message): 10.00 rent taxed STD, VAT 20% on
    STD, one 90 s call of 0.50 in March, billing address in London; its March draft."""
    await add_plan(app.services)
    billing = {
        "cycle": "fixed_date", "cycle_day": 1, "effective_date": "2026-01-01",
        "grace_days": 14, "invoice_message": MESSAGE,
    }  # fmt: skip
    await ok(app, "PUT", "/v1/plans/retail/billing", billing)
    charge = {
        "id": "rent", "name": "Line rent", "product_code": "LINE", "currency": "EUR",
        "amount": "10.00", "kind": "recurring", "cadence": "monthly", "tax_code": "STD",
    }  # fmt: skip
    await ok(app, "POST", "/v1/charges", charge, 201)
    vat = {
        "code": "VAT20", "name": "VAT", "rate": "20", "level": "federal", "currency": "EUR",
        "valid_from": "2026-01-01",
    }  # fmt: skip
    await ok(app, "POST", "/v1/taxes", vat, 201)
    assign = {"tax": "VAT20", "target_kind": "tax_code", "target": "STD"}
    await ok(app, "POST", "/v1/plans/retail/taxes", assign, 201)
    await ok(app, "POST", "/v1/accounts", {"id": "a1", "plan": "retail", "balance": "30"}, 201)
    subscription = {
        "account": "a1", "plan": "retail", "start_date": "2026-01-01", "charges": ["rent"],
        "billing_address": "Acme Ltd\n2 Low Road", "billing_city": "London",
        "billing_postal_code": "SW1A 1AA", "billing_country": "GB",
    }  # fmt: skip
    await ok(app, "POST", "/v1/subscriptions", subscription, 201)
    await cdr(
        app.services, "1-1", "a1", datetime(2026, 3, 10, 12, tzinfo=UTC),
        duration=90, billed_seconds=90, charged=500_000, rated_cost=500_000,
    )  # fmt: skip
    run = {"period": "2026-03", "invoice_date": "2026-04-01", "execute": True}
    assert (await ok(app, "POST", "/v1/invoice-runs", run, 201))["state"] == "done"
    [draft] = (await ok(app, "GET", "/v1/invoices?account=a1"))["invoices"]
    return int(draft["id"])


async def test_a_posted_invoice_pdf_shows_its_figures_and_is_stored_once(
    app: RunningApp, tmp_path: Path
) -> None:
    invoice_id = await march_invoice(app)
    services = app.services
    stored_dir = services.settings.data_dir / "invoices"

    # The draft: a preview marked DRAFT, rendered each time, never stored.
    preview = await documents.invoice_pdf(services.pool, services.settings, invoice_id)
    text = pdf_text(preview, tmp_path, "draft")
    assert "DRAFT" in text and "INV-" not in text, text
    assert not stored_dir.exists() or list(stored_dir.iterdir()) == []

    await ok(app, "POST", f"/v1/invoices/{invoice_id}/post")
    # Posted on its date (1 April), as a worker on time does: the due date counts from
    # the later of the two (decision 0028), and this test posts on today's clock.
    async with services.pool.acquire() as conn:
        await conn.execute(
            "UPDATE invoices SET posted_at = '2026-04-01T00:00:00Z' WHERE id = $1", invoice_id
        )
    shown = await ok(app, "GET", f"/v1/invoices/{invoice_id}")
    # Rent 10.00 + usage 0.50 = 10.50; VAT 20% of the STD rent only: 2.00; total 12.50.
    assert (shown["number"], shown["subtotal"], shown["tax_total"], shown["total"]) == (
        "INV-2026-000001",
        "10.500000",
        "2.000000",
        "12.500000",
    )
    pdf = await documents.invoice_pdf(services.pool, services.settings, invoice_id)
    assert pdf.startswith(b"%PDF-")
    text = pdf_text(pdf, tmp_path, "posted")
    assert "DRAFT" not in text
    # The issuer block, and the customer's billing address, each line.
    for line in ("Example Telecom Ltd", "1 High Street", "London EC1A 1BB", "VAT GB123456789"):
        assert line in text, line
    for line in ("Account a1", "Acme Ltd", "2 Low Road", "SW1A 1AA London", "United Kingdom"):
        assert line in text, line
    assert row(text, "Number", "INV-2026-000001")
    assert row(text, "Invoice date", "1 April 2026")
    assert row(text, "Period", "1 March 2026 – 31 March 2026")
    assert row(text, "Due date", "15 April 2026")  # 1 April + 14 grace days
    assert row(text, "Line rent", "1 Mar 2026 – 31 Mar 2026", "1", "€10.00")
    assert row(text, "UK Mobile", "1", "1.5", "€0.50")  # one call, 90 s = 1.5 minutes
    assert row(text, "VAT20 VAT", "federal", "€10.00", "20%", "€2.00")
    assert row(text, "Subtotal", "€10.50")
    assert row(text, "Tax", "€2.00")
    assert row(text, "Total", "€12.50")
    # The statement as stored with the invoice, each figure at its label.
    async with services.pool.acquire() as conn:
        figures = await conn.fetchrow(
            "SELECT previous_balance, payments, new_charges, closing_balance, amount_due"
            " FROM invoices WHERE id = $1",
            invoice_id,
        )
    assert figures["new_charges"] == 12_000_000  # what posting moves: rent and its VAT
    assert row(text, "New charges", "€12.00")
    for label, column in (("Previous balance", "previous_balance"), ("Payments", "payments")):
        amount = f"€{figures[column] / 1_000_000:,.2f}".replace("€-", "-€")
        assert row(text, label, amount), (label, amount, text)
    assert row(text, "Amount due", f"€{figures['amount_due'] / 1_000_000:,.2f}")
    assert MESSAGE in " ".join(text.split())

    # Stored once as <number>.pdf; afterwards served from that file, not rendered again.
    path = stored_dir / "INV-2026-000001.pdf"
    assert path.read_bytes() == pdf
    assert [p.name for p in stored_dir.iterdir()] == ["INV-2026-000001.pdf"]
    path.write_bytes(b"%PDF-1.7 the stored copy")
    again = await documents.invoice_pdf(services.pool, services.settings, invoice_id)
    assert again == b"%PDF-1.7 the stored copy"
    path.write_bytes(pdf)

    # It renders to a page image with ink on it (a blank page compresses to almost nothing).
    image = page_image(pdf, tmp_path)
    assert image.startswith(b"\x89PNG") and len(image) > 8_000, len(image)

    # The API: a viewer gets application/pdf; an unknown invoice is 404; a bad id 400.
    viewer = await api_tokens.create(services.pool, "clerk", "viewer")
    response = await app.client.get(f"/v1/invoices/{invoice_id}.pdf", headers=bearer(viewer))
    assert response.status == 200, await response.text()
    assert response.content_type == "application/pdf"
    assert await response.read() == pdf
    assert 'filename="INV-2026-000001.pdf"' in response.headers["Content-Disposition"]
    response = await app.client.get("/v1/invoices/999999.pdf", headers=bearer(viewer))
    assert response.status == 404
    assert (await response.json())["error"]["reason"] == "not_found"
    response = await app.client.get("/v1/invoices/0.pdf", headers=bearer(viewer))
    assert (response.status, (await response.json())["error"]["field"]) == (400, "invoice_id")
    # The JSON invoice is still answered at its own path.
    assert (await ok(app, "GET", f"/v1/invoices/{invoice_id}"))["number"] == "INV-2026-000001"


async def test_a_credit_note_pdf_adds_up_to_the_money_it_gives_back(
    app: RunningApp, tmp_path: Path
) -> None:
    # The March invoice: rent 10.00, VAT 2.00 (both moved at posting) and one call of
    # 0.50 the real-time path debited when it ended; total 12.50.
    invoice_id = await march_invoice(app)
    services = app.services
    await ok(app, "POST", f"/v1/invoices/{invoice_id}/post")
    before = (await services.accounts.show("a1")).balance

    voided = await ok(app, "POST", f"/v1/invoices/{invoice_id}/void", status=201)

    # The void gives back what posting took, 12.00; the call stays paid. The credit note
    # says exactly that: -12.00, -2.00 of it tax.
    assert (await services.accounts.show("a1")).balance - before == 12 * 1_000_000
    note = await ok(app, "GET", f"/v1/invoices/{voided['credit_note']}")
    assert (note["subtotal"], note["tax_total"], note["total"]) == (
        "-10.000000",
        "-2.000000",
        "-12.000000",
    )
    pdf = await documents.invoice_pdf(services.pool, services.settings, voided["credit_note"])
    text = pdf_text(pdf, tmp_path, "credit-note")
    assert "Credit note" in text and row(text, "Number", "CN-2026-000001")
    assert row(text, "Voids invoice", "INV-2026-000001")
    # Each reversal under the kind it reverses: the rent under charges, the VAT under
    # taxes with its basis and rate; the call, which nothing gives back, is not there.
    assert row(text, "Reversal: Line rent", "1 Mar 2026 – 31 Mar 2026", "1", "-€10.00")
    assert row(text, "Charges", "-€10.00")
    assert row(text, "VAT20 VAT", "federal", "-€10.00", "20%", "-€2.00")
    assert row(text, "Taxes", "-€2.00")
    assert "UK Mobile" not in text and "Usage" not in text
    assert row(text, "Subtotal", "-€10.00")
    assert row(text, "Tax", "-€2.00")
    assert row(text, "Total", "-€12.00")
    # Nothing is due on a credit note: it says what came back to the account instead of
    # a statement of zeros.
    assert row(text, "Credited to your account", "€12.00")
    for absent in ("Due date", "Amount due", "Previous balance", "Closing balance"):
        assert absent not in text, (absent, text)
    # The plan's invoice message asks for payment: it is an invoice's, not a credit
    # note's (the credit note printed it, and its JSON repeated it).
    assert MESSAGE not in " ".join(text.split())
    assert note["message"] == ""
    # The JSON says what the PDF says: the invoice its statement, as stored; the credit
    # note none (its statement columns, all 0, read as a statement of zeros).
    async with services.pool.acquire() as conn:
        stored = await conn.fetchrow(
            "SELECT previous_balance, payments, new_charges, closing_balance, amount_due"
            " FROM invoices WHERE id = $1",
            invoice_id,
        )
    invoice = await ok(app, "GET", f"/v1/invoices/{invoice_id}")
    assert invoice["message"] == MESSAGE
    assert invoice["statement"] == {
        name: format_amount(value) for name, value in dict(stored).items()
    }
    assert invoice["statement"]["new_charges"] == "12.000000"
    assert note["statement"] is None
    listed = await ok(app, "GET", "/v1/invoices?account=a1")
    by_kind = {found["kind"]: found for found in listed["invoices"]}
    assert by_kind["credit_note"]["statement"] is None
    assert by_kind["invoice"]["statement"] == invoice["statement"]


async def test_the_calls_csv_lists_the_invoice_calls(app: RunningApp) -> None:
    invoice_id = await march_invoice(app)
    csv_bytes = await documents.calls_csv(app.services.pool, invoice_id)
    lines = csv_bytes.decode().splitlines()
    assert lines[0].startswith("time,caller,member,destination,zone")
    assert len(lines) == 2
    assert "UK Mobile" in lines[1] and "0.500000" in lines[1] and ",90," in lines[1], lines
    with pytest.raises(OcsError) as raised:
        await documents.calls_csv(app.services.pool, 999_999)
    assert raised.value.reason is Reason.NOT_FOUND


@pytest.fixture
def ocs(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Any:
    """Run one ``ocs`` command line on the test backends: (exit code, JSON out, stderr)."""
    asyncio.run(reset_state(settings.redis_url or "", settings.database_url or ""))
    monkeypatch.setenv("OCS_REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("OCS_DATABASE_URL", settings.database_url or "")
    monkeypatch.setenv("OCS_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("OCS_LOG_LEVEL", "warning")
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> tuple[int, Any, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, json.loads(out) if out.strip() else None, err

    return run


def test_the_command_line_writes_an_invoice_pdf(ocs: Any, tmp_path: Path) -> None:
    assert ocs("plans", "create", "retail", "--currency", "EUR")[0] == 0
    code, _, err = ocs(
        "plans", "billing", "retail", "--cycle", "fixed_date", "--cycle-day", "1",
        "--effective-date", "2026-01-01", "--message", "Thanks",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = ocs(
        "charges", "create", "rent", "--name", "Line rent", "--product", "LINE",
        "--currency", "EUR", "--amount", "10.00", "--kind", "recurring", "--cadence", "monthly",
    )  # fmt: skip
    assert code == 0, err
    assert ocs("accounts", "create", "c1", "--plan", "retail", "--balance", "20.00")[0] == 0
    code, _, err = ocs(
        "subscriptions", "create", "c1", "--plan", "retail", "--start", "2026-01-01",
        "--charge", "rent",
    )  # fmt: skip
    assert code == 0, err
    code, run, err = ocs("billing", "run", "--period", "2026-03", "--invoice-date", "2026-04-01")
    assert code == 0, err
    [draft] = ocs("invoices", "list", "--period", "2026-03")[1]["invoices"]

    # A draft's preview, to a named file.
    out = tmp_path / "preview.pdf"
    code, wrote, err = ocs("invoices", "pdf", str(draft["id"]), "--out", str(out))
    assert code == 0, err
    assert wrote == {"invoice": draft["id"], "file": str(out), "bytes": out.stat().st_size}
    assert "DRAFT" in pdf_text(out.read_bytes(), tmp_path, "cli-draft")

    # Posted: written as <number>.pdf in the current directory, the stored copy.
    assert ocs("billing", "post", "--run", str(run["id"]))[0] == 0
    code, wrote, err = ocs("invoices", "pdf", str(draft["id"]))
    assert code == 0, err
    written = tmp_path / "INV-2026-000001.pdf"
    assert wrote["file"] == str(written)
    text = pdf_text(written.read_bytes(), tmp_path, "cli-posted")
    assert row(text, "Total", "€10.00") and "Thanks" in text and "DRAFT" not in text
    assert (tmp_path / "var" / "invoices" / "INV-2026-000001.pdf").read_bytes() == (
        written.read_bytes()
    )
    code, _, err = ocs("invoices", "pdf", "999999")
    assert code != 0 and "999999" in err


def facts_with(lines: list[DocumentLine], **fields: Any) -> InvoiceFacts:
    """An invoice's facts for the layout alone (no database): EUR, April 2026 in Paris."""
    base: dict[str, Any] = {
        "id": 7, "kind": "invoice", "state": "draft", "number": None, "account_id": "a9",
        "plan_id": "retail", "currency": "EUR", "invoice_date": date(2026, 5, 1),
        # Paris midnights (UTC+2 in April): the days printed are Paris days.
        "period_start": datetime(2026, 3, 31, 22, tzinfo=UTC),
        "period_end": datetime(2026, 4, 30, 22, tzinfo=UTC), "period_label": "2026-04",
        "time_zone": "Europe/Paris", "grace_days": 30, "subtotal": 0, "tax_total": 0,
        "total": 0, "previous_balance": 1_234_500, "payments": 0, "new_charges": 0,
        "closing_balance": 0, "amount_due": 1_234_567_890, "message": "",
        "address": Address("Rue 1", "Paris", "", "", "75001", "FR"), "lines": tuple(lines),
    }  # fmt: skip
    base.update(fields)
    return InvoiceFacts(**base)


def test_the_layout_groups_lines_and_writes_amounts_and_dates_for_the_locale() -> None:
    def line(kind: str, amount: int, **fields: Any) -> DocumentLine:
        return DocumentLine(kind, kind, None, None, 1, amount, **fields)

    lines = [
        line("recurring", 10_000_000),
        line("usage", 300_000, zone="FR Mobile", direction="outbound", calls=2, seconds=90),
        line("usage", 200_000, zone="FR Mobile", direction="inbound", calls=1, seconds=45),
        line("counter", 1_000_000),
        line("bundle_discount", -500_000),
        line("surcharge", 250_000),
        line("tax", 1_000_000, tax_code="TVA", basis=5_000_000, rate=20_000_000,
             tax_level="federal", tax_name="TVA"),
        line("tax", 1_010_000, tax_code="TVA", basis=5_050_000, rate=20_000_000,
             tax_level="federal", tax_name="TVA"),
        line("resiliation", 3_000_000),
    ]  # fmt: skip
    content = layout(
        facts_with(lines, new_charges=1_234_344_871),
        Issuer.from_settings("Télécom SA", " 1 rue | Paris "),
        "fr_FR",
    )
    assert content["banner"] == "DRAFT" and content["number"] == "DRAFT"
    assert content["issuer"] == {"name": "Télécom SA", "lines": ["1 rue", "Paris"]}
    assert content["customer"] == ["Account a9", "Rue 1", "75001 Paris", "France"]
    facts = dict(content["facts"])
    assert facts["Due date"] == "31 mai 2026"  # 1 May + 30 days
    assert facts["Period"] == "1 avril 2026 – 30 avril 2026"  # Paris days
    sections = {s["title"]: s for s in content["sections"]}
    assert list(sections) == [
        "Charges", "Usage", "Counters", "Discounts and surcharges", "Taxes",
    ]  # fmt: skip
    # French parts "€" and "%" with a no-break space, groups thousands with a narrow one.
    nbsp, narrow = "\xa0", "\u202f"
    assert sections["Charges"]["total"][-1] == f"13,00{nbsp}€"  # rent + the resiliation
    # One zone: both directions, 3 calls, 135 s = 2,3 minutes (2.25 rounded half up).
    assert sections["Usage"]["rows"] == [["FR Mobile", "3", "2,3", f"0,50{nbsp}€"]]
    assert sections["Discounts and surcharges"]["total"][-1] == f"-0,25{nbsp}€"
    # The two lines of one tax code and level are one row: bases and amounts summed.
    assert sections["Taxes"]["rows"] == [
        ["TVA TVA", "federal", f"10,05{nbsp}€", f"20{nbsp}%", f"2,01{nbsp}€"]
    ]
    statement = dict(content["statement"])
    assert statement["Previous balance"] == f"1,2345{nbsp}€"  # exact: nothing rounded away
    assert statement["New charges"] == f"1{narrow}234,344871{nbsp}€"
    # The amount due is what the invoice asks, in cents: its new charges (the account
    # owes 1 234,56789, the rest asked by earlier invoices), rounded half away from zero.
    assert content["due"] == ["Amount due", f"1{narrow}234,34{nbsp}€"]


def test_a_credit_note_prints_no_invoice_message() -> None:
    # A credit note made before voids stopped copying it kept its invoice's message (a
    # request to pay): its document, rendered later, leaves it out.
    reversal = DocumentLine("reversal", "Reversal: rent", None, None, 1, -10_000_000)
    note = facts_with(
        [reversal],
        kind="credit_note",
        state="posted",
        number="CN-2026-000001",
        total=-10_000_000,
        message=MESSAGE,
        voids_number="INV-2026-000001",
    )
    content = layout(note, Issuer.from_settings("Example Telecom", "1 Street"), "en_GB")
    assert content["message"] == ""
    assert (content["statement"], content["due"]) == ([], ["Credited to your account", "€10.00"])
    invoice = facts_with([], message=MESSAGE)
    shown = layout(invoice, Issuer.from_settings("Example Telecom", "1 Street"), "en_GB")
    assert shown["message"] == MESSAGE


def test_documents_rendered_in_threads_at_once_all_render(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Documents render in threads (asyncio.to_thread), several at once when events are
    # delivered. reportlab fills its table of named colours on first use, unguarded: a
    # second thread saw it still empty and failed on "black" (seen in CI).
    from concurrent.futures import ThreadPoolExecutor

    from reportlab.lib import colors

    from ocs.billing.document_render import render_pdf

    content = layout(
        facts_with([DocumentLine("recurring", "rent", None, None, 1, 10_000_000)]),
        Issuer.from_settings("Example Telecom", "1 Street"),
        "en_GB",
    )
    threads = 8

    def render(start: threading.Barrier) -> bytes:
        start.wait()  # all at once, as a batch of deliveries starts
        return render_pdf(content)

    # Threads switched as often as the interpreter allows, so the window is met.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(30):
            # As in a fresh process: the table not built yet.
            monkeypatch.setattr(colors, "_namedColors", None)
            start = threading.Barrier(threads)
            with ThreadPoolExecutor(max_workers=threads) as pool:
                pdfs = list(pool.map(render, [start] * threads))
            assert all(pdf[:4] == b"%PDF" for pdf in pdfs)
    finally:
        sys.setswitchinterval(interval)


def japanese_invoice() -> InvoiceFacts:
    """A posted yen invoice to 山田太郎 in Tokyo: 1,000 yen of rent, due 31 May 2026."""
    rent = DocumentLine("recurring", "基本料金", None, None, 1, 1_000_000_000)
    return facts_with(
        [rent],
        state="posted",
        number="INV-2026-000042",
        currency="JPY",
        time_zone="Asia/Tokyo",
        subtotal=1_000_000_000,
        total=1_000_000_000,
        new_charges=1_000_000_000,
        amount_due=1_000_000_000,
        previous_balance=0,
        address=Address("山田太郎\n千代田1-1", "東京", "", "", "100-0001", "JP"),
    )


def test_a_japanese_invoice_prints_the_name_dates_and_yen_in_a_system_font(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # DejaVu Sans has no CJK glyphs: the name was blank and the dates and the full-width
    # yen sign were boxes. The default fallback fonts include Debian's Droid Sans Fallback
    # (fonts-droid-fallback, installed by .ci/run).
    settings = Settings(invoice_locale="ja_JP", invoice_issuer_name="東京テレコム")
    with caplog.at_level("WARNING", logger="ocs.billing.documents"):
        pdf = documents.render_facts(japanese_invoice(), settings)
    text = pdf_text(pdf, tmp_path, "ja")
    assert "東京テレコム" in text and "山田太郎" in text and "100-0001 東京" in text
    assert row(text, "Due date", "2026年5月31日")  # the ja_JP long date
    assert row(text, "基本料金", "￥1,000") and row(text, "Amount due", "￥1,000")
    assert caplog.records == []  # every character had a font


def test_a_character_no_font_has_is_logged_once_per_document_without_the_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No fallback font on the machine (a listed file absent is skipped): the CJK
    # characters cannot be drawn. Said once for the document, naming the invoice and the
    # script, never the customer's name.
    settings = Settings(invoice_locale="ja_JP", invoice_fallback_fonts=(str(tmp_path / "no.ttf"),))
    with caplog.at_level("WARNING", logger="ocs.billing.documents"):
        pdf = documents.render_facts(japanese_invoice(), settings)
    assert "Due date" in pdf_text(pdf, tmp_path, "ja-bare")  # the rest is printed
    [record] = caplog.records
    assert record.getMessage() == "invoice characters drawn blank: no font has them"
    assert (record.invoice_id, record.scripts, record.fonts) == (7, "CJK,FULLWIDTH", 0)
    assert record.characters >= len(set("山田太郎千代東京年月日基本料金"))
    assert "山" not in str(record.__dict__)
