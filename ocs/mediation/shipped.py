"""The usage import templates shipped with ocs: a switch's own CDR files, rated as is.

``asterisk-cdr-csv`` (Asterisk cdr_csv's Master.csv), ``freeswitch-cdr-csv``
(FreeSWITCH mod_cdr_csv's default template) and ``kamailio-acc`` (Kamailio acc's
dialog CDRs, acc_cdrs exported as CSV); each is a JSON definition in
``ocs/mediation/shipped/``, its columns in docs/mediation-templates.md. A stored
template of the same name (``ocs.mediation.store``) is the operator's own and
comes first; these are what an operator copies to change the time zone or columns.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import msgspec

from ocs.mediation.template import Template, template_from_json

SHIPPED: tuple[str, ...] = ("asterisk-cdr-csv", "freeswitch-cdr-csv", "kamailio-acc")


@cache
def shipped_template(name: str) -> Template | None:
    """The shipped template of that name, or None."""
    if name not in SHIPPED:
        return None
    text = resources.files("ocs.mediation").joinpath("shipped", f"{name}.json").read_bytes()
    return template_from_json(msgspec.json.decode(text))
