"""Admin API endpoints (issue 14): placeholder until its module is written."""

from typing import Any

from ocs.http.endpoint import Endpoint

ENDPOINTS: tuple[Endpoint[Any, Any], ...] = ()
