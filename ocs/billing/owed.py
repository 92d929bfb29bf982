"""What a posted invoice asks to be paid: one rule for payments, credit, dunning and
documents.

``round_line(max(min(amount_due, new_charges), 0), currency)``: the amount due
after posting, but never more than the invoice's own new charges (debt carried
in from an earlier invoice is asked by that invoice, not twice), and nothing
for a prepaid account whose balance already paid (decision 0027); rounded once
to the currency's ISO 4217 minor unit, half away from zero, like a line
(decision 0019). Both statement figures are the ledger's exact micro-units (a
call costs 12.344871), and money arrives in minor units (a bank's 12.34, a
gateway's cents): an ask in micro-units could never be paid in full.

Posting stores the figure (``invoices.amount_asked``, migration 0062); SQL reads
that column (``asks_sql``), never the rule again, so every reader sees one figure.
"""

from ocs.billing.currency import round_line


def asked(amount_due: int, new_charges: int, currency: str) -> int:
    """What an invoice with this statement asks (micro-units, whole minor units of
    ``currency``): its own new charges capped by the amount due, at least 0, rounded
    once to the minor unit (EUR 12.344871 -> 12.34, 12.345 -> 12.35)."""
    return round_line(max(min(amount_due, new_charges), 0), currency)


def asks_sql(alias: str = "") -> str:
    """SQL of what a posted invoice asks to be paid (the figure posting stored by
    ``asked``), its column qualified by ``alias`` when given."""
    at = f"{alias}." if alias else ""
    return f"{at}amount_asked"
