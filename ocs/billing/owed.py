"""What a posted invoice asks to be paid: one rule for payments and dunning.

``max(min(amount_due, new_charges), 0)``: the amount due after posting, but
never more than the invoice's own new charges (debt carried in from an
earlier invoice is asked by that invoice, not twice), and nothing for a
prepaid account whose balance already paid (decision 0027).
"""


def asks_sql(alias: str = "") -> str:
    """SQL of what a posted invoice asks to be paid, its columns qualified by ``alias``
    when given."""
    at = f"{alias}." if alias else ""
    return f"GREATEST(LEAST({at}amount_due, {at}new_charges), 0)"
