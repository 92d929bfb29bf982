"""Invoice documents in the admin API: ``GET /v1/invoices/{invoice_id}.pdf``.

A thin adapter over ``ocs.billing.documents``: a posted invoice's stored PDF
(rendered and stored the first time), a draft's preview marked DRAFT. Viewers
may read. The answer is the PDF itself (``application/pdf``), not JSON: the
handler builds its response, as the CSV endpoints do.
"""

from typing import Any

from aiohttp import web

from ocs.billing import documents
from ocs.http.context import services_of
from ocs.http.endpoint import Endpoint, Role
from ocs.http.path_ids import path_id


def invoice_id_of(request: web.Request) -> int:
    """The invoice id from the path: a positive whole number, else 400 naming it."""
    return path_id(request, "invoice_id")


async def invoice_document(request: web.Request, params: None) -> web.Response:
    """GET /v1/invoices/{invoice_id}.pdf: the invoice as a PDF."""
    invoice_id = invoice_id_of(request)
    services = services_of(request)
    found = await documents.invoice_document(services.pool, services.settings, invoice_id)
    return web.Response(
        body=found.pdf,
        content_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{found.name}"'},
    )


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "GET",
        "/v1/invoices/{invoice_id}.pdf",
        Role.VIEWER,
        "An invoice as a PDF (a draft's preview is marked DRAFT)",
        invoice_document,
        None,
        None,
        errors=(404,),
        description="A posted invoice's PDF is rendered once and then served from its"
        " stored file; a draft's preview is rendered each time and never stored.",
        answer_description="the PDF (application/pdf)",
    ),
)
