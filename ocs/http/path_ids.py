"""Numeric ids in a request's path (``/v1/invoices/{invoice_id}``), read or refused."""

from aiohttp import web

from ocs.errors import invalid
from ocs.whole_numbers import positive_id


def path_id(request: web.Request, name: str) -> int:
    """The numeric path parameter ``name`` (``invoice_id``); 400 naming it unless it is
    a positive whole number that fits BIGINT (no longer text reaches ``int()``)."""
    value = positive_id(request.match_info[name])
    if value is None:
        raise invalid(name, "expected a positive whole number")
    return value
