import datetime as dt

import pytest

from conftest import by_number, existing_frame, loan, run_rules, tape_frame
from loan_engine_dagster.rules import purchase_price
from loan_engine_dagster.rules.calendar import purchase_date

import pandas as pd


@pytest.mark.parametrize(
    ("lender", "modeled", "ok"),
    [(98.75, 0.9875, True), (98.75, 0.98749, True), (98.75, 0.98744, False), (100.0, 1.0, True), (101.25, 1.0126, False),
     # Half up on the decimal value: 0.98755 x 100 = 98.755 -> 98.76, whatever the float noise says.
     (98.76, 0.98755, True), (98.75, 0.98755, False), (98.755, 0.98755, True), (100.01, 1.000050, True)],
)
def test_purchase_price_rounds_both_sides_to_cents(lender, modeled, ok):
    assert bool(purchase_price.price_matches(pd.Series([lender]), pd.Series([modeled]))[0]) is ok


def test_reasons_in_spec_order_and_first_is_criteria():
    row = loan("SFC_1", **{"Loan Program": "No Such Program", "modeled_purchase_price": 0.90, "FICO Borrower": 600})
    result = by_number(run_rules([row]))
    assert result.loc["SFC_1", "rejection_reasons"] == "unknown_program;purchase_price_mismatch;underwriting_sfy"
    assert result.loc["SFC_1", "rejection_criteria"] == "unknown_program"
    assert result.loc["SFC_1", "disposition"] == "rejected"
    assert "No Such Program" in result.loc["SFC_1", "message"]


def test_unknown_program_is_still_checked_by_other_rules():
    result = by_number(run_rules([loan("SFC_1", **{"Loan Program": "Mystery"})]))
    assert result.loc["SFC_1", "rejection_reasons"] == "unknown_program;underwriting_sfy"
    assert result.loc["SFC_1", "comap_status"] == "not_in_grid"


def test_stray_spaces_and_odd_case_still_match():
    row = loan("SFC_1", **{"Loan Program": "  sTd   120 ", "Application Type": " individual "})
    result = by_number(run_rules([row]))
    assert result.loc["SFC_1", "loan_program"] == "sTd   120"
    assert result.loc["SFC_1", "type"] == "standard"
    assert result.loc["SFC_1", "disposition"] == "to_purchase"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"FICO Borrower": ""}, "FICO Borrower is empty"),
        ({"FICO Borrower": 851}, "FICO Borrower 851 outside 300-850"),
        ({"FICO Borrower": 299}, "FICO Borrower 299 outside 300-850"),
        ({"Orig. Balance": 0}, "Orig. Balance 0 is not above 0"),
        ({"Orig. Balance": "12,000 USD"}, "Orig. Balance '12,000 USD' is not a number"),
        ({"Submit Date": "someday"}, "Submit Date 'someday' is not a date"),
        ({"Loan Program": "  "}, "Loan Program is empty"),
        ({"Stamp fee": "n/a"}, "Stamp fee 'n/a' is not a number"),
    ],
)
def test_invalid_rows_are_rejected_with_row_number(overrides, fragment):
    decisions = run_rules([loan("SFC_0"), loan("SFC_1", **overrides)])
    result = by_number(decisions)
    row = result.loc["SFC_1"]
    assert row["rejection_reasons"] == "invalid_data"
    assert row["purchase_price_check"] is False or row["purchase_price_check"] == False  # noqa: E712
    assert row["underwriting_status"] == "not_checked" and row["comap_status"] == "not_checked"
    # Title row, two blank title rows, header on row 4, SFC_0 on row 5, SFC_1 on row 6.
    assert row["message"].startswith("SFY.xlsx row 6: ")
    assert fragment in row["message"]
    assert result.loc["SFC_0", "disposition"] == "to_purchase"


def test_several_problems_are_all_named():
    result = by_number(run_rules([loan("SFC_1", **{"FICO Borrower": 900, "DTI": "", "Orig. Balance": -5})]))
    message = result.loc["SFC_1", "message"]
    assert "FICO Borrower 900 outside" in message and "DTI is empty" in message and "Orig. Balance -5" in message


def test_duplicate_seller_loan_numbers_reject_every_copy():
    decisions = run_rules([loan("SFC_1"), loan("SFC_2")], [loan("SFC_1")])
    result = decisions.loans
    dupes = result[result["seller_loan_number"] == "SFC_1"]
    assert list(dupes["rejection_reasons"]) == ["invalid_data", "invalid_data"]
    assert "SFY.xlsx row 5" in dupes.iloc[0]["message"] and "PRIME.xlsx row 5" in dupes.iloc[0]["message"]
    assert result.set_index("seller_loan_number").loc["SFC_2", "disposition"] == "to_purchase"


def test_invalid_loans_take_no_part_in_eligibility():
    decisions = run_rules([loan("SFC_1", **{"FICO Borrower": 900, "Orig. Balance": 1e9})])
    assert decisions.checks.set_index(["platform", "check_id"]).loc[("sfy", "check_g2"), "status"] == "no_data"


def test_buy_loan_constants_and_dealer_fee_fraction():
    result = by_number(run_rules([loan("SFC_1", **{"Dealer Fee": 4.5})]))
    row = result.loc["SFC_1"]
    assert row["dealer_fee"] == pytest.approx(0.045)
    assert (row["repurchase"], row["excess_asset"], row["borrowing_base_eligible"]) == (False, False, True)
    assert row["irr_support_target"] == 8.05
    assert row["purchase_date"] == pd.Timestamp("2026-02-24")


@pytest.mark.parametrize(
    ("notice", "expected"),
    [
        (dt.date(2026, 2, 19), dt.date(2026, 2, 24)),  # Thursday -> next Tuesday
        (dt.date(2026, 2, 24), dt.date(2026, 3, 3)),  # a Tuesday notice -> strictly after: the next one
        (dt.date(2025, 12, 19), dt.date(2025, 12, 23)),
        (dt.date(2026, 11, 5), dt.date(2026, 11, 10)),
        # Veterans Day 2025 is Tuesday 11 November: the purchase moves to Wednesday.
        (dt.date(2025, 11, 6), dt.date(2025, 11, 12)),
        # Christmas 2029 is a Tuesday.
        (dt.date(2029, 12, 20), dt.date(2029, 12, 26)),
    ],
)
def test_purchase_date(notice, expected):
    assert purchase_date(notice) == expected


def test_repurchases_read_from_the_tape():
    existing = existing_frame([{"SELLER Loan #": "SFC_10"}, {"SELLER Loan #": "SFC_11"}, {"SELLER Loan #": "SFC_12", "Repurchase": "TRUE"}])
    decisions_tape = tape_frame(["SFC_10", "SFC_11", "SFC_12", "SFC_1"], repurchased=["SFC_11"])
    from loan_engine_dagster.rules.normalization import mark_repurchases
    marked = mark_repurchases(existing, decisions_tape).set_index("seller_loan_number")["repurchase"]
    assert marked.to_dict() == {"SFC_10": False, "SFC_11": True, "SFC_12": True}


@pytest.mark.parametrize(
    ("codes", "repurchased"),
    [("REPURCHASE", True), ("active; repurchase ", True), ("ACTIVE;Repurchase;AUTOPAY", True),
     ("REPURCHASED", False), ("ACTIVE", False), ("", False), ("PRE-REPURCHASE", False)],
)
def test_tape_status_codes(codes, repurchased):
    from loan_engine_dagster.rules.parsing import parse_tape
    tape = parse_tape(pd.DataFrame({"Account Number": ["12"], "Loan Group": ["FX1"], "Status Codes": [codes]}), file="t.csv")
    assert bool(tape.loc[0, "repurchased"]) is repurchased
    assert tape.loc[0, "seller_loan_number"] == "SFC_12"
    assert tape.loc[0, "tagging"] == "SFY"


def test_a_loan_the_buyer_already_holds_is_flagged_unless_repurchased():
    # Offered again while current_assets.csv lists it: a second sale of the
    # same loan. Only a warning (the rules' reasons are fixed), but one that
    # the exceptions, the summary and the UI's data-quality check show.
    existing = existing_frame([{"SELLER Loan #": "SFC_1"}, {"SELLER Loan #": "SFC_2", "Repurchase": "TRUE"},
                               {"SELLER Loan #": "SFC_3"}])
    decisions = run_rules([loan("SFC_1"), loan("SFC_2"), loan("SFC_3")], existing=existing,
                          tape=tape_frame(["SFC_1", "SFC_2", "SFC_3"], repurchased=["SFC_3"]))
    exc = decisions.exceptions
    held = exc[exc["reason"] == "already_owned"]
    assert held["seller_loan_number"].tolist() == ["SFC_1"] and set(held["severity"]) == {"warning"}
    assert "already held" in held["message"].iloc[0]
    assert set(by_number(decisions)["disposition"]) == {"to_purchase"}


def test_a_loan_listed_twice_in_the_existing_assets_is_refused():
    from loan_engine_dagster.rules.errors import StructuralError

    with pytest.raises(StructuralError, match="listed more than once") as err:
        existing_frame([{"SELLER Loan #": "SFC_7"}, {"SELLER Loan #": "SFC_8"}, {"SELLER Loan #": "SFC_7"}])
    assert (err.value.file, err.value.columns, err.value.rows) == ("current_assets.csv", ["SELLER Loan #"], [2, 4])


@pytest.mark.parametrize("pool_size", [3, 40])
def test_listed_loan_numbers_match_set_membership_whichever_side_is_larger(pool_size):
    """The hash table is built from the smaller side (a 600k-row tape against
    100k loans); the answer must not depend on which side that is, nor on
    repeats in either, nor on a side without any text (object dtype)."""
    from loan_engine_dagster.rules.normalization import is_listed

    numbers = pd.Series(pd.array([f"SFC_{i % 9}" for i in range(12)] + ["sfc_1", ""], dtype="string"))
    pool = pd.Series(pd.array([f"SFC_{i}" for i in range(0, pool_size, 2)] * 2 + [""], dtype="string"))
    expected = [n in set(pool) for n in numbers]
    assert is_listed(numbers, pool).tolist() == expected
    assert is_listed(numbers.astype(object), pool).tolist() == expected  # pandas' own isin
    assert not is_listed(numbers, pool.iloc[:0]).any()
