"""Bank statement files read into payment entries: CSV and ISO 20022 camt.053 (pure).

Nothing here touches a store: a file becomes ``BankEntry`` values (credits to
match to accounts, ``ocs.billing.payments``) and ``BankProblem`` values (what
could not be read or is not a payment: a debit, a pending entry, a bad
amount), each with its place in the file ("line 4", "entry 2") so an operator
can find it (decision 0027).

The CSV has a header line naming its columns, in any order (others are
ignored): ``date`` (YYYY-MM-DD), ``amount`` (a decimal, positive: money
received), ``currency`` (ISO 4217), ``transaction_id`` (the bank's id of the
transaction: what makes a second import of the same line a no-op), and any of
``reference`` (the remittance text), ``account`` (an account id) and
``invoice`` (an invoice number).

camt.053 is parsed with lxml, with entities never resolved, no network, no
DTD loaded, and any document carrying a DOCTYPE refused outright: a bank file
has no use for one, and refusing it closes XXE and entity expansion both.
Every camt.053 version (001.02 to 001.08+) is read by local names.
"""

import csv
import io
from dataclasses import dataclass
from datetime import date

from lxml import etree

from ocs.errors import invalid
from ocs.money import MoneyError, format_amount, parse_amount

CSV_REQUIRED = ("date", "amount", "currency", "transaction_id")
CSV_OPTIONAL = ("reference", "account", "invoice")
# An id a bank gives a transaction, as stored (payments.external_id).
MAX_EXTERNAL_ID = 200
MAX_REFERENCE = 500
FORMATS = ("csv", "camt053")


@dataclass(frozen=True, slots=True)
class BankEntry:
    """One credit of a statement: money received, to be matched to an account.

    ``references`` are the texts searched for an invoice number or account id
    (remittance information, end-to-end id); ``account`` and ``invoice`` are
    given when the file names them in their own columns.
    """

    position: str
    external_id: str
    booked_on: date
    amount: int
    currency: str
    references: tuple[str, ...]
    account: str | None = None
    invoice: str | None = None


@dataclass(frozen=True, slots=True)
class BankProblem:
    """An entry of the file that is not applied, and why."""

    position: str
    problem: str


@dataclass(frozen=True, slots=True)
class BankFile:
    """What a statement file holds: its credits and the entries left out."""

    entries: tuple[BankEntry, ...]
    problems: tuple[BankProblem, ...]


def detect_format(data: bytes) -> str:
    """``camt053`` for an XML document, ``csv`` otherwise (by its first character)."""
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    return "camt053" if head == b"<" else "csv"


def parse(data: bytes, file_format: str | None = None) -> BankFile:
    """A statement file in ``file_format`` (None: detected); 400 naming ``file`` when the
    file as a whole cannot be read."""
    chosen = file_format or detect_format(data)
    if chosen == "csv":
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise invalid("file", f"not UTF-8 text (byte {exc.start})") from None
        return parse_csv(text)
    if chosen == "camt053":
        return parse_camt053(data)
    raise invalid("format", f"expected one of {', '.join(FORMATS)}")


# --- CSV -------------------------------------------------------------------------------


def _text_field(value: str | None, limit: int) -> str:
    """A cell stripped, with its length limited."""
    return (value or "").strip()[:limit]


def _csv_entry(line: int, row: dict[str, str | None]) -> BankEntry | BankProblem:
    """One CSV row as an entry, or what is wrong with it."""
    where = f"line {line}"
    external_id = _text_field(row.get("transaction_id"), MAX_EXTERNAL_ID + 1)
    if not external_id or len(external_id) > MAX_EXTERNAL_ID or not external_id.isprintable():
        return BankProblem(where, f"transaction_id: expected 1 to {MAX_EXTERNAL_ID} characters")
    try:
        booked_on = date.fromisoformat(_text_field(row.get("date"), 20))
    except ValueError:
        return BankProblem(where, "date: expected YYYY-MM-DD")
    try:
        amount = parse_amount(_text_field(row.get("amount"), 40), allow_negative=True)
    except MoneyError as exc:
        return BankProblem(where, f"amount: {exc}")
    if amount <= 0:
        return BankProblem(where, "amount: not a credit (money paid out is not a payment)")
    currency = _text_field(row.get("currency"), 4).upper()
    if len(currency) != 3 or not currency.isalpha() or not currency.isascii():
        return BankProblem(where, "currency: expected an ISO 4217 code such as EUR")
    reference = _text_field(row.get("reference"), MAX_REFERENCE)
    return BankEntry(
        where,
        external_id,
        booked_on,
        amount,
        currency,
        (reference,) if reference else (),
        _text_field(row.get("account"), 65) or None,
        _text_field(row.get("invoice"), 65) or None,
    )


def parse_csv(text: str) -> BankFile:
    """A CSV statement: its credits and the lines left out (each named by line number)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [name.strip().lower() for name in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise invalid("file", f"not valid CSV: {exc}") from None
    missing = [name for name in CSV_REQUIRED if name not in header]
    if missing:
        raise invalid(
            "file",
            f"the header line lacks {', '.join(missing)} (columns: {', '.join(CSV_REQUIRED)},"
            f" and any of {', '.join(CSV_OPTIONAL)})",
        )
    reader.fieldnames = header
    entries: list[BankEntry] = []
    problems: list[BankProblem] = []
    try:
        for row in reader:
            # The reader's line_num is the file line the row ended on.
            found = _csv_entry(reader.line_num, row)
            if isinstance(found, BankEntry):
                entries.append(found)
            else:
                problems.append(found)
    except csv.Error as exc:
        raise invalid("file", f"not valid CSV at line {reader.line_num}: {exc}") from None
    return BankFile(tuple(entries), tuple(problems))


# --- camt.053 ---------------------------------------------------------------------------


def _parser() -> etree.XMLParser:
    """An XML parser that resolves nothing and fetches nothing."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def _first(element: etree._Element, *paths: str) -> str | None:
    """The stripped text of the first of ``paths`` (local names) that has some."""
    for path in paths:
        found = element.find(path)
        if found is not None and found.text and found.text.strip():
            return found.text.strip()
    return None


def _all_texts(element: etree._Element, path: str) -> list[str]:
    """The stripped texts of every element at ``path``."""
    return [f.text.strip() for f in element.iterfind(path) if f.text and f.text.strip()]


def _camt_amount(element: etree._Element | None) -> tuple[int, str] | str:
    """(micro-units, currency) of an ``Amt`` element, or what is wrong with it."""
    if element is None or not element.text:
        return "Amt: missing"
    currency = (element.get("Ccy") or "").strip().upper()
    if len(currency) != 3 or not currency.isalpha() or not currency.isascii():
        return "Amt: its Ccy is not an ISO 4217 code"
    try:
        return parse_amount(element.text.strip()), currency
    except MoneyError as exc:
        return f"Amt: {exc}"


def _booked_on(entry: etree._Element) -> date | None:
    """The entry's booking date (else its value date); None when it has neither."""
    text = _first(entry, "{*}BookgDt/{*}Dt", "{*}BookgDt/{*}DtTm", "{*}ValDt/{*}Dt")
    if text is None:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def _status_problem(entry: etree._Element) -> str | None:
    """Why the entry's ``Sts`` says it is not booked; None when it is BOOK (or absent).

    001.02-001.07 write the code as the element's text (``<Sts>BOOK</Sts>``), 001.08+
    as ``<Sts><Cd>BOOK</Cd></Sts>`` or a bank's own ``<Sts><Prtry>PDNG</Prtry></Sts>``.
    Only the ISO code BOOK is booked: a proprietary status, even one spelt BOOK, is not
    known to mean money received.
    """
    status = entry.find("{*}Sts")
    if status is None:
        return None
    code = _first(status, "{*}Cd")
    if code is None and len(status) == 0:
        code = (status.text or "").strip() or None
    if code == "BOOK":
        return None
    proprietary = _first(status, "{*}Prtry")
    if code is not None:
        shown = code
    elif proprietary is not None:
        shown = f"{proprietary} (proprietary)"
    else:
        shown = "without a code"
    return f"status {shown[:40]}: only booked entries are payments"


def _detail_money(
    entry: etree._Element, detail: etree._Element, only: bool
) -> tuple[int, str] | str:
    """A transaction's (micro-units, currency): its ``Amt``, else ``AmtDtls/TxAmt``, else,
    when it is the entry's ``only`` transaction, the entry's; or what is wrong."""
    money = _camt_amount(detail.find("{*}Amt"))
    if isinstance(money, str):
        money = _camt_amount(detail.find("{*}AmtDtls/{*}TxAmt/{*}Amt"))
    if isinstance(money, str) and only:
        money = _camt_amount(entry.find("{*}Amt"))
    return money


def _credit(
    here: str, detail: etree._Element, external_id: str, booked_on: date, money: tuple[int, str]
) -> BankEntry:
    """A credit of a ``TxDtls`` (or of an ``Ntry`` detailing none), with its references."""
    end_to_end = _first(detail, "{*}Refs/{*}EndToEndId")
    references = [
        *_all_texts(detail, "{*}RmtInf/{*}Ustrd"),
        *_all_texts(detail, "{*}RmtInf/{*}Strd/{*}CdtrRefInf/{*}Ref"),
    ]
    if end_to_end and end_to_end != "NOTPROVIDED":
        references.append(end_to_end)
    return BankEntry(
        here,
        external_id[:MAX_EXTERNAL_ID],
        booked_on,
        money[0],
        money[1],
        tuple(text[:MAX_REFERENCE] for text in references),
    )


def _camt_entries(
    statement_id: str, number: int, entry: etree._Element
) -> list[BankEntry | BankProblem]:
    """The credits of one ``Ntry``: one per transaction detail (a batch booking holds
    several), or the entry itself when it details none.

    A transaction is credited only when its own ``CdtDbtInd`` (001.03+) is CRDT or
    absent (it is then the entry's), and only when the entry's credited transactions
    add up to the entry's amount, in its currency: the entry is what the bank booked,
    so transactions claiming more (a return netted into a batch, a detail in another
    currency) would credit money that never arrived. Such an entry credits nothing
    and is reported whole.
    """
    where = f"entry {number}"
    indicator = _first(entry, "{*}CdtDbtInd")
    if indicator != "CRDT":
        return [BankProblem(where, "a debit (CdtDbtInd DBIT): not a payment")]
    status = _status_problem(entry)
    if status is not None:
        return [BankProblem(where, status)]
    booked_on = _booked_on(entry)
    if booked_on is None:
        return [BankProblem(where, "BookgDt: missing or not a date")]
    entry_money = _camt_amount(entry.find("{*}Amt"))
    details = entry.findall("{*}NtryDtls/{*}TxDtls")
    entry_ref = _first(entry, "{*}AcctSvcrRef", "{*}NtryRef")
    if not details:
        if isinstance(entry_money, str):
            return [BankProblem(where, entry_money)]
        external_id = entry_ref or f"{statement_id}:{number}:1"
        return [_credit(where, entry, external_id, booked_on, entry_money)]
    problems: list[BankEntry | BankProblem] = []
    credits: list[BankEntry] = []
    for part, detail in enumerate(details, start=1):
        here = where if len(details) == 1 else f"{where}, transaction {part}"
        detail_indicator = _first(detail, "{*}CdtDbtInd")
        if detail_indicator is not None and detail_indicator != "CRDT":
            problems.append(
                BankProblem(here, f"a debit (CdtDbtInd {detail_indicator[:10]}): not a payment")
            )
            continue
        money = _detail_money(entry, detail, len(details) == 1)
        if isinstance(money, str):
            problems.append(BankProblem(here, money))
            continue
        # The bank's own reference identifies the transaction; the statement's id and
        # the entry's place do when the bank gives none (stable for the same file).
        external_id = (
            _first(detail, "{*}Refs/{*}AcctSvcrRef", "{*}Refs/{*}TxId")
            or (f"{entry_ref}/{part}" if entry_ref and len(details) > 1 else entry_ref)
            or f"{statement_id}:{number}:{part}"
        )
        credits.append(_credit(here, detail, external_id, booked_on, money))
    if isinstance(entry_money, str):
        return [BankProblem(where, f"{entry_money}: its transactions cannot be checked"), *problems]
    mismatch = _sum_problem(entry_money, credits)
    if mismatch is not None:
        return [BankProblem(where, mismatch), *problems]
    return [*problems, *credits]


def _sum_problem(entry_money: tuple[int, str], credits: list[BankEntry]) -> str | None:
    """Why an entry's credited transactions are not its amount; None when they are."""
    if not credits:
        return None
    amount, currency = entry_money
    other = sorted({c.currency for c in credits if c.currency != currency})
    if other:
        return (
            f"its transactions are in {', '.join(other)}, the entry in {currency}:"
            " none of them is applied"
        )
    credited = sum(c.amount for c in credits)
    if credited != amount:
        return (
            f"its credited transactions add up to {format_amount(credited)} {currency},"
            f" the entry is {format_amount(amount)} {currency}: none of them is applied"
        )
    return None


def parse_camt053(data: bytes) -> BankFile:
    """A camt.053 statement: its booked credits and the entries left out (by number,
    counted through the file from 1)."""
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise invalid("file", f"not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.doctype:
        raise invalid("file", "a DOCTYPE is not accepted in a bank statement")
    statements = root.findall("{*}BkToCstmrStmt/{*}Stmt")
    if etree.QName(root).localname != "Document" or not statements:
        raise invalid("file", "not a camt.053 document (Document/BkToCstmrStmt/Stmt)")
    entries: list[BankEntry] = []
    problems: list[BankProblem] = []
    number = 0
    for statement in statements:
        statement_id = _first(statement, "{*}Id") or "statement"
        for entry in statement.iterfind("{*}Ntry"):
            number += 1
            for found in _camt_entries(statement_id, number, entry):
                if isinstance(found, BankEntry):
                    entries.append(found)
                else:
                    problems.append(found)
    return BankFile(tuple(entries), tuple(problems))
