"""The mediation admin endpoints: rate types, rate-type rates, overrides, usage templates."""

from typing import Any

from ocs.http.endpoint import Endpoint

ENDPOINTS: tuple[Endpoint[Any, Any], ...] = ()
