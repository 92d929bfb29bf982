"""Invoice documents: the PDF of an invoice and the CSV of its calls (issue 14, decision 0026).

A posted invoice reaches the customer as a PDF. Its PDF is rendered once and
stored as ``<number>.pdf`` under ``settings.invoice_documents_dir`` (default
``<data_dir>/invoices``), written atomically (a temporary file in the same
folder, then renamed), and served from that file afterwards: the customer's
copy never changes. A draft gets a preview marked DRAFT, rendered each time
and never stored (a draft still changes); a void invoice is served from its
stored file, or rendered marked VOID when none was stored.

The long call listing is not in the PDF: ``calls_csv`` gives it as a CSV
attachment (``ocs.billing.itemised``'s list and format).
"""

import asyncio
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from ocs.billing import itemised
from ocs.billing.document_data import InvoiceFacts, load_facts
from ocs.billing.document_layout import Issuer, layout
from ocs.billing.document_render import render_pdf
from ocs.config import Settings

# A number safe as a file name as it is (issuers are [A-Z0-9]{1,16}: INV-2026-000001).
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def documents_dir(settings: Settings) -> Path:
    """Where stored invoice PDFs live: the setting, else ``<data_dir>/invoices``."""
    if settings.invoice_documents_dir:
        return Path(settings.invoice_documents_dir)
    return Path(settings.data_dir) / "invoices"


def document_name(invoice_id: int, number: str | None) -> str:
    """The stored file's name: ``<number>.pdf``, or ``invoice-<id>.pdf`` for a number
    that could not be a file name."""
    if number and _SAFE_NAME.match(number):
        return f"{number}.pdf"
    return f"invoice-{invoice_id}.pdf"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the whole file or none: a
    temporary file beside it, flushed to disk, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def render_facts(facts: InvoiceFacts, settings: Settings) -> bytes:
    """The PDF of an invoice's facts with the settings' issuer and locale (blocking)."""
    issuer = Issuer.from_settings(settings.invoice_issuer_name, settings.invoice_issuer_address)
    content = layout(facts, issuer, settings.invoice_locale)
    return render_pdf(content, settings.invoice_fallback_fonts, facts.id)


def stored(facts: InvoiceFacts) -> bool:
    """Whether an invoice's PDF is the stored customer copy (it was posted)."""
    return facts.state in ("posted", "void") and facts.number is not None


@dataclass(frozen=True, slots=True)
class Document:
    """An invoice's PDF and the file name it is offered under."""

    name: str
    pdf: bytes


async def invoice_document(pool: asyncpg.Pool, settings: Settings, invoice_id: int) -> Document:
    """An invoice's PDF (as ``invoice_pdf``) with the file name it is offered under:
    ``<number>.pdf``, a draft's preview ``invoice-<id>-draft.pdf``. NOT_FOUND for no
    such invoice."""
    async with pool.acquire() as conn:
        facts = await load_facts(conn, invoice_id)
    if not stored(facts):
        preview = await asyncio.to_thread(render_facts, facts, settings)
        return Document(f"invoice-{facts.id}-{facts.state}.pdf", preview)
    name = document_name(facts.id, facts.number)
    path = documents_dir(settings) / name
    try:
        return Document(name, await asyncio.to_thread(path.read_bytes))
    except FileNotFoundError:
        pass
    pdf = await asyncio.to_thread(render_facts, facts, settings)
    if facts.state == "posted":
        # Two first requests at once both render the same document; the rename makes
        # the last one win whole. A void invoice whose PDF was never asked for while
        # it was posted is shown marked VOID, and not stored as the copy it never was.
        await asyncio.to_thread(write_atomically, path, pdf)
    return Document(name, pdf)


async def invoice_pdf(pool: asyncpg.Pool, settings: Settings, invoice_id: int) -> bytes:
    """The PDF of an invoice: a posted one's stored file (rendered and stored the first
    time), a draft's preview rendered each time and never stored. NOT_FOUND for no such
    invoice."""
    return (await invoice_document(pool, settings, invoice_id)).pdf


async def calls_csv(pool: asyncpg.Pool, invoice_id: int) -> bytes:
    """The invoice's itemised call listing as CSV bytes (UTF-8); NOT_FOUND for no such
    invoice."""
    return itemised.calls_csv(await itemised.call_rows(pool, invoice_id)).encode()
