import pandas as pd
import pytest

from conftest import existing_frame, loan, run_rules
from loan_engine_dagster.rules.config import Check, default_rules
from loan_engine_dagster.rules.eligibility import PopulationArrays, check_match, evaluate_checks


def _checks(decisions):
    return decisions.checks.set_index(["platform", "check_id"])


def test_excess_balance_formula_and_contributors():
    # SFY base: existing 80,000 standard Term 120; batch adds 20,000 of Hybrid APR < 7 (check_a2 limit < 0.25).
    existing = existing_frame([{"SELLER Loan #": "SFC_100", "Orig. Balance": "80000"}])
    decisions = run_rules(
        [loan("SFC_1", **{"Loan Program": "Hybrid 12", "APR": 6.5, "Orig. Balance": 12000}),
         loan("SFC_2", **{"Loan Program": "Hybrid 12", "APR": 6.5, "Orig. Balance": 8000})],
        existing=existing,
    )
    row = _checks(decisions).loc[("sfy", "check_a2")]
    assert row["status"] == "pass"  # 20,000 / 100,000 = 0.20 < 0.25
    assert row["value"] == pytest.approx(0.20)
    assert row["before"] == 0.0
    decisions = run_rules(
        [loan("SFC_1", **{"Loan Program": "Hybrid 12", "APR": 6.5, "Orig. Balance": 30000}),
         loan("SFC_2", **{"Loan Program": "Hybrid 12", "APR": 6.5, "Orig. Balance": 10000})],
        existing=existing,
    )
    row = _checks(decisions).loc[("sfy", "check_a2")]
    s, b, limit = 40000.0, 120000.0, 0.25
    assert row["status"] == "fail"
    assert row["value"] == pytest.approx(s / b)
    assert row["excess_balance"] == pytest.approx((s - limit * b) / (1 - limit))
    # Removing exactly the excess brings the share to the limit.
    assert (s - row["excess_balance"]) / (b - row["excess_balance"]) == pytest.approx(limit)
    assert [c["seller_loan_number"] for c in row["contributors"]] == ["SFC_1", "SFC_2"]


def test_repurchased_and_excess_assets_leave_the_base():
    existing = existing_frame([
        {"SELLER Loan #": "SFC_100", "Orig. Balance": "50000"},
        {"SELLER Loan #": "SFC_101", "Orig. Balance": "900000", "Excess_Asset": "TRUE"},
        {"SELLER Loan #": "SFC_102", "Orig. Balance": "900000", "Repurchase": "TRUE"},
    ])
    decisions = run_rules([loan("SFC_1", **{"Orig. Balance": 50000, "FICO Borrower": 720, "Income": 100000})],
                          existing=existing)
    checks = _checks(decisions)
    assert checks.loc[("sfy", "check_g2"), "value"] == pytest.approx(50000)  # mean over 2 base rows
    assert checks.loc[("sfy", "check_g2"), "before"] == pytest.approx(50000)


def test_tape_repurchase_removes_existing_asset_from_base():
    from conftest import tape_frame
    existing = existing_frame([{"SELLER Loan #": "SFC_100", "Orig. Balance": "10000"},
                               {"SELLER Loan #": "SFC_101", "Orig. Balance": "30000"}])
    decisions = run_rules([], [loan("SFC_1")], existing=existing,
                          tape=tape_frame(["SFC_1", "SFC_100", "SFC_101"], repurchased=["SFC_101"]))
    assert _checks(decisions).loc[("sfy", "check_g2"), "value"] == pytest.approx(10000)


def test_no_data_when_platform_base_is_empty():
    decisions = run_rules([loan("SFC_1")])
    checks = _checks(decisions)
    prime = checks.loc["prime"]
    assert set(prime["status"]) == {"no_data"}
    assert prime["value"].isna().all() and prime["before"].isna().all()
    assert checks.loc[("sfy", "check_g2"), "before"] is None or pd.isna(checks.loc[("sfy", "check_g2"), "before"])


def test_populations_value_before_to_purchase():
    existing = existing_frame([{"SELLER Loan #": "SFC_100", "Orig. Balance": "10000", "FICO Borrower": "690"}])
    decisions = run_rules(
        [loan("SFC_1", **{"FICO Borrower": 720, "Orig. Balance": 10000}),
         loan("SFC_2", **{"FICO Borrower": 660, "Orig. Balance": 20000, "modeled_purchase_price": 0.5})],
        existing=existing,
    )
    row = _checks(decisions).loc[("sfy", "check_j2")]  # FICO < 700
    assert row["value"] == pytest.approx(30000 / 40000)  # all valid buy loans + existing
    assert row["before"] == pytest.approx(1.0)  # existing only
    assert row["to_purchase"] == pytest.approx(10000 / 20000)  # SFC_2 is rejected


def test_batch_balance_share_has_only_value():
    existing = existing_frame([{"SELLER Loan #": "SFC_100", "type": "standard_bd", "Orig. Balance": "90000"}])
    decisions = run_rules([loan("SFC_1", **{"Orig. Balance": 10000})], existing=existing)
    checks = _checks(decisions)
    l5 = checks.loc[("sfy", "check_l5")]
    assert l5["value"] == 0.0 and l5["before"] is None and l5["to_purchase"] is None and l5["status"] == "info"
    assert checks.loc[("sfy", "check_l2"), "value"] == pytest.approx(0.9)


def test_distribution_largest_first():
    existing = existing_frame([{"SELLER Loan #": "SFC_100", "Property State": "TX", "Orig. Balance": "30000"}])
    decisions = run_rules([loan("SFC_1", **{"Property State": "NY", "Orig. Balance": 10000})], existing=existing)
    dist = _checks(decisions).loc[("sfy", "check_h_state_dist")]
    assert list(dist["value"].items()) == [("TX", 0.75), ("NY", 0.25)]
    assert dist["status"] == "info"


@pytest.mark.parametrize(
    ("term", "status"),
    [(84, "pass"), (85, "fail")],  # check_b4: NINP with Term > 84 must be <= 0 of the balance
)
def test_zero_limit_check(term, status):
    rules = default_rules()
    pop = pd.DataFrame({
        "seller_loan_number": ["SFC_1"], "platform": ["sfy"], "loan_program": ["N"], "type": ["ninp"], "term": [term],
        "fico": [720.0], "apr": [9.0], "lender_price": [99.0], "orig_balance": [1000.0], "promo_term": [0.0],
        "dealer_fee": [0.04], "new_programs": [False], "property_state": ["CA"], "repurchase": [False],
        "excess_asset": [False], "is_buy": [True], "to_purchase": [True], "program_key": ["n"],
    })
    checks = evaluate_checks(pop, rules).set_index(["platform", "check_id"])
    assert checks.loc[("sfy", "check_b4"), "status"] == status
    if status == "fail":
        assert checks.loc[("sfy", "check_b4"), "excess_balance"] == pytest.approx(1000.0)


def test_program_exclusion_filter_f3():
    existing = existing_frame([{"SELLER Loan #": "SFC_100", "Orig. Balance": "10000", "Lender Price(%)": "101",
                                "loan program": "Unsec Std - 999 - 120"},
                               {"SELLER Loan #": "SFC_101", "Orig. Balance": "10000", "Lender Price(%)": "101"}])
    decisions = run_rules([], [loan("SFC_1")], existing=existing)
    checks = _checks(decisions)
    assert checks.loc[("sfy", "check_f2"), "value"] == pytest.approx(1.0)
    assert checks.loc[("sfy", "check_f3"), "value"] == pytest.approx(0.5)
    assert checks.loc[("sfy", "check_f1"), "status"] == "pass"  # max 101 <= 101.25


def test_every_spec_check_is_defined():
    rules = default_rules()
    prime = [c.id for c in rules.eligibility.prime]
    sfy = [c.id for c in rules.eligibility.sfy]
    assert prime == ["check_a", "check_b1", "check_b3", "check_c", "check_d", "check_e", "check_f", "check_g",
                     "check_h1", "check_h2", "check_h3", "check_i1", "check_i2", "check_j_state_dist", "check_l1",
                     "check_l2", "check_l3", "check_l4", "check_s1"]
    assert sfy == ["check_a1", "check_a2", "check_b1", "check_b2", "check_b3", "check_b4", "check_c1", "check_d1",
                   "check_d2", "check_d3", "check_d4", "check_e1", "check_e2", "check_e3", "check_e4", "check_f1",
                   "check_f2", "check_f3", "check_f4", "check_g1", "check_g2", "check_h_state_dist", "check_j1",
                   "check_j2", "check_j3", "check_j4", "check_l1", "check_l2", "check_l5", "check_s1"]


def test_a_text_filter_compared_by_order_reads_only_its_platforms_rows():
    # PRIME's missing state cannot be ordered against "M"; the SFY check never looks at it.
    pop = pd.DataFrame({"property_state": pd.array(["CA", None, "TX"], dtype="string"), "platform": ["sfy", "prime", "sfy"]})
    check = Check(id="x", description="states before M", metric="balance_share", where=[("property_state", "<", "M")])
    sfy = (pop["platform"] == "sfy").to_numpy()
    assert check_match(pop, check, PopulationArrays(pop).subset(sfy)).tolist() == [True, False]


def _portfolio_only(rows: list[dict], buy_on: str) -> pd.DataFrame:
    """The checks of a portfolio of existing assets, with one buy loan on the other platform."""
    existing = existing_frame([{"SELLER Loan #": f"SFC_{100 + i}", **r} for i, r in enumerate(rows)])
    buy = [loan("SFC_1")]
    return _checks(run_rules(buy if buy_on == "sfy" else [], buy if buy_on == "prime" else [], existing=existing))


def test_a_share_exactly_at_its_limit_is_judged_in_decimal_not_in_float():
    # Past bug: 61,103.12 of 244,412.48 is exactly 25% but 0.25000000000000006
    # in float, so SFY check_c1 (epni <= 0.25) failed with an excess of 1e-11.
    epni = [{"type": "epni", "Orig. Balance": b} for b in ("35458.47", "4395.76", "21248.89")]
    row = _portfolio_only([*epni, {"Orig. Balance": "183309.36"}], buy_on="prime").loc[("sfy", "check_c1")]
    assert row["status"] == "pass" and pd.isna(row["excess_balance"])
    # A strict limit is not met by a value exactly on it, though float puts
    # 27,426.56 of 78,361.60 a hair below 35%: PRIME check_d (hybrid < 0.35).
    prime = [{"platform": "PRIME", "type": t, "Orig. Balance": b}
             for t, b in (("hybrid", "7476.76"), ("hybrid", "19949.80"), ("standard", "50935.04"))]
    row = _portfolio_only(prime, buy_on="sfy").loc[("prime", "check_d")]
    assert row["status"] == "fail" and row["value"] == pytest.approx(0.35)


@pytest.mark.parametrize(("op", "value", "expected"), [
    ("<=", 0.25 * (1 + 5e-10), True), ("<=", 0.25 * (1 + 2e-9), False),
    ("<", 0.25, False), ("<", 0.25 * (1 - 5e-10), False), ("<", 0.25 * (1 - 2e-9), True),
    (">=", 700 * (1 - 5e-10), True), (">", 700.0, False), (">", 700 * (1 + 2e-9), True),
    ("<=", 0.0, True), ("<", 0.0, False),
])
def test_limits_hold_within_a_relative_tolerance_of_1e_9(op, value, expected):
    from loan_engine_dagster.rules.eligibility import holds

    limit = 0.0 if value == 0.0 else (700.0 if op in (">", ">=") else 0.25)
    assert bool(holds(value, op, limit)) is expected
