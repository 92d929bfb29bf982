"""Usage mediation: rate a supplier's or a switch's own usage files like live calls.

A usage import template (``template``) reads a file (``reader``) into records
(``records``), classifies each to a rate type (``classify``); the supplier's
overrides regroup the rate types, the plan's rates price them by the one rating
function, and the same Lua usage path debits each record once (``importer``).
"""
