"""How a limit reads in the UI and the summary workbook."""

import math

import pytest

from loan_engine_dagster.rules.limit_display import check_title, dollars, result_line, unit_of


def row(**overrides):
    base = {"status": "pass", "value": 0.041, "op": "<", "limit": 0.05, "excess_balance": None}
    return base | overrides


@pytest.mark.parametrize(
    ("metric", "column", "check", "expected"),
    [
        ("balance_share", None, row(headroom_balance=1_234_567.0), "4.1% vs < 5.0%: pass, headroom $1.2M"),
        ("balance_share", None, row(status="fail", value=0.086, excess_balance=18_523_000.0), "8.6% vs < 5.0%: fail, excess $18.5M"),
        # one decimal would show a breach as the limit itself: more decimals
        ("balance_share", None, row(status="fail", value=0.05004, excess_balance=950.0), "5.004% vs < 5.0%: fail, excess $950"),
        ("balance_share", None, row(headroom_balance=math.nan), "4.1% vs < 5.0%: pass"),  # no headroom column value
        ("balance_share", None, row(), "4.1% vs < 5.0%: pass"),  # no headroom column at all
        ("count_share", None, row(value=0.02, limit=0.03), "2.0% vs < 3.0%: pass"),
        ("mean", "orig_balance", row(value=19_234.4, op="<=", limit=20_000), "$19,234 vs <= $20,000: pass"),
        ("wavg", "dealer_fee", row(value=0.05, limit=0.15), "5.0% vs < 15.0%: pass"),
        ("max", "lender_price", row(value=101.0, op="<=", limit=102), "101.0% vs <= 102.0%: pass"),
        ("wavg", "fico", row(value=712.34, op=">", limit=700), "712.3 vs > 700.0: pass"),
        ("balance_share", None, row(status="no_data", value=None), "no data: no loans of this platform in the base (limit < 5.0%)"),
    ],
)
def test_result_line(metric, column, check, expected):
    assert result_line(check, unit_of(metric, column)) == expected


def test_title_and_dollars():
    assert check_title("prime", "check_a", "Standard, Term <= 144, FICO < 700") == "PRIME check_a: Standard, Term <= 144, FICO < 700"
    assert [dollars(v) for v in (812.0, 950_400.0, 1_200_000.0, 2.5e9)] == ["$812", "$950.4K", "$1.2M", "$2.5B"]
