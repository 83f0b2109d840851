import datetime as dt

import pytest

from conftest import band_sheet, by_number, comap_frame, loan, run_rules, sheet_raw
from loan_engine_dagster.rules import parsing
from loan_engine_dagster.rules.errors import StructuralError


def test_band_layout_minimum_is_lowest_band_listing_the_program():
    raw = sheet_raw(["Applied Program", "600-659", "660-699", "700+", "Notes"],
                    [["A", "", "Std 120", "Std 120", "x"], ["B", "", "", "Std 120", ""], ["C", "Other", "", "", ""]])
    table = parsing.parse_comap_sheet(raw, file="g.xlsx", sheet="S", max_rows=20).set_index("program_key")
    assert table.loc["std 120", "min_fico"] == 660
    assert table.loc["other", "min_fico"] == 600
    assert "a" not in table.index  # the applied-for column is not a band


@pytest.mark.parametrize("corner", ["Applied Program", None, "  "])
def test_band_layout_first_column_is_the_program_whatever_its_header(corner):
    # A blank corner cell must not make the lowest band pass for the program column.
    raw = sheet_raw([corner, "620-659", "660-699", "700+"],
                    [["Prog A", "Prog A", "Prog A", "Prog A"], ["Prog B", None, "Prog B", "Prog B"]])
    table = parsing.parse_comap_sheet(raw, file="g.xlsx", sheet="S", max_rows=20).set_index("program_key")
    assert table["min_fico"].to_dict() == {"prog a": 620.0, "prog b": 660.0}


def test_band_layout_table_may_start_right_of_column_a():
    raw = sheet_raw([None, None, "620-659", "660-699"], [[None, "Prog A", "Prog A", "Prog A"], [None, "Prog B", None, "Prog B"]])
    table = parsing.parse_comap_sheet(raw, file="g.xlsx", sheet="S", max_rows=20).set_index("program_key")
    assert table["min_fico"].to_dict() == {"prog a": 620.0, "prog b": 660.0}


def test_list_layout():
    raw = sheet_raw(["Loan Program ", "min fico"], [["Std 120", 690]])
    table = parsing.parse_comap_sheet(raw, file="g.xlsx", sheet="S", max_rows=20)
    assert table.iloc[0].to_dict() == {"program_key": "std 120", "min_fico": 690.0, "sheet": "S"}


def test_sheet_with_neither_layout_is_structural():
    with pytest.raises(StructuralError, match="neither layout") as err:
        parsing.parse_comap_sheet(sheet_raw(["Program", "Band"], [["x", "y"]]), file="g.xlsx", sheet="SFY COMAP", max_rows=20)
    assert err.value.sheet == "SFY COMAP" and err.value.file == "g.xlsx"


def _eras_comap(rules):
    empty = sheet_raw(["Applied Program", "600-659"], [])
    sheets = {name: empty for name in rules.comap_sheets()}
    sheets["SFY COMAP-Oct25"] = band_sheet([("Std 120", 700)])
    sheets["SFY COMAP"] = band_sheet([("Std 120", 660)])
    sheets["SFY COMAP2"] = band_sheet([("Hybrid 12", 740)])
    sheets["SFY COMAP-Oct25-2"] = band_sheet([("Hybrid 12", 600), ("Std 120", 600)])
    sheets["Prime CoMAP-Oct25"] = band_sheet([("Std 120", 740)])
    sheets["Prime CoMAP - New"] = band_sheet([("Std 120", 700)])
    sheets["Prime COMAP"] = sheet_raw(["loan program", "Min FICO"], [["Std 120", 660]])
    sheets["Notes CoMAP"] = band_sheet([("Std 120", 740)])
    return comap_frame(sheets, rules)


@pytest.mark.parametrize(
    ("platform", "submit", "fico", "expected"),
    [
        # A Submit Date on a cut-off day belongs to the earlier era.
        ("sfy", dt.datetime(2025, 10, 24), 680, "pass"),
        ("sfy", dt.datetime(2025, 10, 25), 680, "fail"),
        ("sfy", dt.datetime(2025, 10, 25), 700, "pass"),
        ("prime", dt.datetime(2025, 10, 25), 720, "fail"),
        ("prime", dt.datetime(2025, 10, 24), 720, "pass"),
        ("prime", dt.datetime(2024, 6, 12), 690, "fail"),
        ("prime", dt.datetime(2024, 6, 11), 690, "pass"),
        ("prime", dt.datetime(2020, 1, 1), 660, "pass"),
    ],
)
def test_eras_by_submit_date(rules, platform, submit, fico, expected):
    row = loan("SFC_1", **{"Submit Date": submit, "FICO Borrower": fico})
    decisions = run_rules([row] if platform == "sfy" else [], [row] if platform == "prime" else [],
                          comap=_eras_comap(rules))
    result = by_number(decisions)
    assert result.loc["SFC_1", "comap_status"] == expected
    assert (result.loc["SFC_1", "rejection_criteria"] == f"comap_{platform}") == (expected == "fail")


def test_first_applicable_sheet_listing_the_program_wins(rules):
    # Std 120 is in both current SFY sheets; the first (min 700) decides, not the second (min 600).
    result = by_number(run_rules([loan("SFC_1", **{"FICO Borrower": 680})], comap=_eras_comap(rules)))
    assert result.loc["SFC_1", "comap_status"] == "fail"
    assert result.loc["SFC_1", "comap_sheet"] == "SFY COMAP-Oct25"


def test_program_listed_only_in_second_sheet_of_era(rules):
    result = by_number(run_rules([loan("SFC_1", **{"Loan Program": "Hybrid 12", "FICO Borrower": 660})],
                                 comap=_eras_comap(rules)))
    assert result.loc["SFC_1", "comap_status"] == "pass"
    assert result.loc["SFC_1", "comap_sheet"] == "SFY COMAP-Oct25-2"


def test_not_in_grid_is_a_warning_not_a_rejection(rules):
    decisions = run_rules([loan("SFC_1", **{"Loan Program": "Std 180"})], comap=_eras_comap(rules))
    result = by_number(decisions)
    assert result.loc["SFC_1", "comap_status"] == "not_in_grid"
    assert result.loc["SFC_1", "disposition"] == "to_purchase"
    warnings = decisions.exceptions[decisions.exceptions["severity"] == "warning"]
    assert "not_in_grid" in set(warnings["reason"])


def test_only_price_checked_loans_are_comap_checked(rules):
    result = by_number(run_rules([loan("SFC_1", **{"modeled_purchase_price": 0.97, "FICO Borrower": 600})],
                                 comap=_eras_comap(rules)))
    assert result.loc["SFC_1", "comap_status"] == "not_checked"
    assert result.loc["SFC_1", "rejection_reasons"] == "purchase_price_mismatch;underwriting_sfy"


def test_notes_use_notes_comap_and_reason(rules):
    result = by_number(run_rules([loan("SFC_1", **{"Application Type": "HD NOTE", "FICO Borrower": 720})],
                                 comap=_eras_comap(rules)))
    assert result.loc["SFC_1", "comap_sheet"] == "Notes CoMAP"
    assert result.loc["SFC_1", "rejection_criteria"] == "comap_notes"
