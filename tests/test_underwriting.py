import pytest

from conftest import by_number, loan, run_rules


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "pass"),
        # Boundary: 0.55 * 100 is 55.000000000000007 in binary floating point; must still pass dti_max 55.
        ({"DTI": 0.55, "FICO Borrower": 700, "Income": 24000}, "pass"),
        ({"DTI": 0.5500001, "FICO Borrower": 700, "Income": 24000}, "fail"),
        # Exact boundaries are inclusive: income 2000/month, FICO 700, balance 50000.
        ({"Income": 24000, "FICO Borrower": 700, "Orig. Balance": 50000, "DTI": 0.55}, "pass"),
        ({"Orig. Balance": 50000.01, "FICO Borrower": 720, "Income": 90000}, "fail"),
        # Stamp fee comes off the balance before the approval limit.
        ({"Orig. Balance": 50025, "Stamp fee": 25, "FICO Borrower": 720}, "pass"),
        # Income too low for every row: FICO exactly 700 gets no waiver ...
        ({"Income": 12000, "FICO Borrower": 700, "PTI": 0.05}, "fail"),
        # ... FICO 701 does, when PTI fits.
        ({"Income": 12000, "FICO Borrower": 701, "PTI": 0.05}, "pass_income_waived"),
        ({"Income": 12000, "FICO Borrower": 701, "PTI": 0.16}, "fail"),
        ({"FICO Borrower": 620}, "fail"),
    ],
)
def test_underwriting_regular_sfy(overrides, expected):
    result = by_number(run_rules([loan("SFC_1", **overrides)]))
    assert result.loc["SFC_1", "underwriting_status"] == expected
    assert ("underwriting_sfy" in result.loc["SFC_1", "rejection_reasons"].split(";")) == (expected == "fail")


def test_program_without_grid_rows_fails():
    result = by_number(run_rules([loan("SFC_1", **{"Loan Program": "Std 180", "FICO Borrower": 720})],
                                 grids=None))
    assert result.loc["SFC_1", "underwriting_status"] == "pass"
    from conftest import GRID_ROWS, grids_frame
    grids = grids_frame({"SFY": [r for r in GRID_ROWS if r[0] != "Std 180"], "Prime": GRID_ROWS,
                         "SFY - Notes": GRID_ROWS[:2], "Prime - Notes": GRID_ROWS[:2]})
    result = by_number(run_rules([loan("SFC_1", **{"Loan Program": "Std 180", "FICO Borrower": 720})], grids=grids))
    assert result.loc["SFC_1", "underwriting_status"] == "fail"
    assert "has no rows in grid 'SFY'" in result.loc["SFC_1", "message"]


def test_tu144_exempts_sfy_only():
    rows = [loan("SFC_1", **{"FICO Borrower": 620, "TU144": 1}), loan("SFC_2", **{"FICO Borrower": 620, "TU144": 0})]
    result = by_number(run_rules(rows, [loan("SFC_3", **{"FICO Borrower": 620, "TU144": 1})]))
    assert result.loc["SFC_1", "underwriting_status"] == "exempt_tu144"
    assert result.loc["SFC_2", "underwriting_status"] == "fail"
    assert result.loc["SFC_3", "underwriting_status"] == "fail"  # PRIME has no TU144 exemption


@pytest.mark.parametrize("header", ["TU144", "TU 144", "tu_144", " Tu 1_44 "])
def test_tu144_header_variants(header):
    result = by_number(run_rules([loan("SFC_1", **{"FICO Borrower": 620, header: 1})]))
    assert result.loc["SFC_1", "underwriting_status"] == "exempt_tu144"


def test_notes_use_notes_grid_and_reason():
    from conftest import GRID_ROWS, grids_frame
    grids = grids_frame({"SFY": GRID_ROWS, "Prime": GRID_ROWS, "SFY - Notes": [["Std 120", 9000, 780, 5000, 20, 0.01]],
                         "Prime - Notes": GRID_ROWS[:2]})
    result = by_number(run_rules([loan("SFC_1", **{"Application Type": "  hd note "}), loan("SFC_2")], grids=grids))
    assert result.loc["SFC_1", "loan_kind"] == "notes"
    assert result.loc["SFC_1", "underwriting_status"] == "fail"
    assert result.loc["SFC_1", "rejection_criteria"] == "underwriting_notes"
    assert result.loc["SFC_2", "underwriting_status"] == "pass"


def test_prime_reason():
    result = by_number(run_rules([], [loan("SFC_9", **{"FICO Borrower": 600})]))
    assert result.loc["SFC_9", "rejection_criteria"] == "underwriting_prime"
