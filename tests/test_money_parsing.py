"""Amounts as people write them: decimal strings turned into micro-units exactly, or
refused with a reason, never rounded and never a server error."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocs.money import MAX_AMOUNT, MoneyError, format_amount, parse_amount
from tests.conftest import RunningApp, add_plan


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("0.198", 198_000),
        ("1", 1_000_000),
        ("+1.5", 1_500_000),
        (".5", 500_000),
        ("5.", 5_000_000),
        ("0001.100000000", 1_100_000),  # zeros that change nothing
        (" 2.50 ", 2_500_000),
        ("1000000000", MAX_AMOUNT),
        (12, 12_000_000),
    ],
)
def test_a_decimal_amount_is_read_exactly(text: object, micro: int) -> None:
    assert parse_amount(text) == micro


@pytest.mark.parametrize(
    ("text", "why"),
    [
        # The 29th decimal used to vanish in Decimal's 28-digit context: 1.000000 credited.
        ("1.0000000000000000000000000000001", "more than 6 decimal places"),
        ("0.0000001", "more than 6 decimal places"),
        ("١٢", "not a decimal amount"),  # Arabic-Indic digits are not ASCII digits
        ("1e5", "not a decimal amount"),
        ("1\n2", "not a decimal amount"),
        (".", "not a decimal amount"),
        ("9" * 1_000_000, "too large"),  # refused at once, not a server error
        ("1000000000.000001", "too large"),
        ("-1", "must not be negative"),
        (1.5, "not a float"),
    ],
)
def test_what_is_not_an_exact_amount_is_refused_saying_why(text: object, why: str) -> None:
    with pytest.raises(MoneyError, match=why):
        parse_amount(text)


@given(st.integers(-MAX_AMOUNT, MAX_AMOUNT))
def test_every_amount_reads_back_as_it_was_written(micro: int) -> None:
    assert parse_amount(format_amount(micro), allow_negative=True) == micro


async def test_an_amount_the_api_cannot_take_is_a_400_naming_it(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "ann", "plan": "retail", "balance": "1.00"})
    for amount in ("9" * 500_000, "١٢", "1.0000000000000000000000000000001"):
        status, body = await app.post(
            "/v1/accounts/ann/topups", {"amount": amount, "topup_id": "t-1"}
        )
        assert (status, body["error"]["field"]) == (400, "amount"), body
    _, view = await app.get("/v1/accounts/ann")
    assert view["balance"] == "1.000000"
