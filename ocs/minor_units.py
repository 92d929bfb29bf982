"""ISO 4217 minor units: the currencies ocs can round money in, and their decimals.

A currency ocs accepts anywhere (a plan's, a charge's, a tax's) must have a minor unit:
invoices, statements and reports round every amount to it (decision 0019). The lookup
lives in this lowest layer so that the catalog, which accepts a plan's currency, and
billing, which rounds in it, ask the same table (``ocs.billing.currency`` rounds).
"""

import functools

from iso4217 import Currency

from ocs.money import MICRO_DIGITS


class CurrencyError(ValueError):
    """A currency code ocs cannot invoice in; the message names the code and why."""


@functools.cache
def minor_unit_exponent(code: str) -> int:
    """The ISO 4217 minor-unit exponent of ``code``: JPY 0, EUR 2, BHD 3, CLF 4.

    Cached: an invoice run asks it for every line (the ISO table does not change while
    a process runs; an unknown code raises each time, so nothing wrong is cached).

    Raises CurrencyError (a ValueError) for a code ISO 4217 does not list, and
    for the codes it lists without a minor unit ("N.A.": gold XAU, the SDR XDR,
    the test code XTS, ...): no rounding rule exists for them, so ocs refuses
    to invoice in them rather than invent one.
    """
    try:
        currency = Currency(code)
    except ValueError:
        raise CurrencyError(f"unknown currency code {code!r}: not in ISO 4217") from None
    exponent = currency.exponent
    if exponent is None:
        raise CurrencyError(
            f"currency {code!r} has no minor unit in ISO 4217 (N.A.); ocs does not invoice in it"
        )
    if exponent > MICRO_DIGITS:  # pragma: no cover - ISO's largest is 4 (CLF, UYW)
        raise CurrencyError(f"currency {code!r} has {exponent} decimals, finer than micro-units")
    return exponent
