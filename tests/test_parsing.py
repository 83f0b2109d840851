import datetime as dt

import pandas as pd
import pytest

from conftest import exhibit_raw, loan, sheet_raw
from loan_engine_dagster.rules import parsing
from loan_engine_dagster.rules.errors import StructuralError


def _parse(raw, rules, platform="sfy"):
    return parsing.parse_exhibit(raw, platform=platform, file="SFY_x.xlsx", sheet="Exhibit A", rules=rules)


@pytest.mark.parametrize("title_rows", [0, 1, 7, 19])
def test_header_found_anywhere_in_first_20_rows(rules, title_rows):
    raw = exhibit_raw([loan("SFC_1")], title_rows=title_rows) if title_rows else exhibit_raw([loan("SFC_1")], title_rows=1).iloc[1:].reset_index(drop=True)
    frame = _parse(raw, rules)
    assert list(frame["seller_loan_number"]) == ["SFC_1"]
    header_row = max(title_rows, 0) + 1
    assert frame.loc[0, "source_row"] == header_row + 1


def test_header_below_row_20_is_structural(rules):
    with pytest.raises(StructuralError, match="no header row with a cell reading 'SELLER Loan #' in the first 20 rows") as err:
        _parse(exhibit_raw([loan("SFC_1")], title_rows=20), rules)
    assert (err.value.file, err.value.sheet) == ("SFY_x.xlsx", "Exhibit A")


def test_missing_required_columns_are_all_named(rules):
    raw = exhibit_raw([loan("SFC_1")]).drop(columns=[6, 14])  # FICO Borrower, Submit Date
    with pytest.raises(StructuralError) as err:
        _parse(raw, rules)
    assert err.value.columns == ["FICO Borrower", "Submit Date"]
    assert str(err.value) == (
        "Data problem in file 'SFY_x.xlsx', sheet 'Exhibit A', columns 'FICO Borrower', 'Submit Date': required column missing"
        "; headers found: 'SELLER Loan #', 'Loan Program', 'Application Type', 'Property State', 'Orig. Balance', "
        "'Income', 'DTI', 'PTI', 'Term', 'APR', 'Lender Price(%)', 'modeled_purchase_price', 'Dealer Fee', "
        "'Stamp fee', 'promo_term'; another spelling can be mapped to a column in the rules file under columns: exhibit"
    )
    assert err.value.kind == "data"


def test_header_names_match_trimmed_and_case_insensitive(rules):
    raw = exhibit_raw([loan("SFC_1")])
    raw.iloc[3] = [f"  {str(h).upper()} " for h in raw.iloc[3]]
    assert _parse(raw, rules).loc[0, "fico"] == 720


def test_empty_rows_skipped_extra_columns_kept(rules):
    rows = [loan("SFC_1", **{"Dealer Name": "=cmd|' /C calc'!A0"}), {k: "" for k in loan("x")}, loan("SFC_2")]
    frame = _parse(exhibit_raw(rows), rules)
    assert list(frame["seller_loan_number"]) == ["SFC_1", "SFC_2"]
    assert list(frame["source_row"]) == [5, 7]
    assert frame.loc[0, "seller:Dealer Name"] == "=cmd|' /C calc'!A0"


def test_optional_columns_default_to_zero(rules):
    raw = exhibit_raw([loan("SFC_1")]).drop(columns=[15, 16])  # Stamp fee, promo_term
    frame = _parse(raw, rules)
    assert frame.loc[0, "stamp_fee"] == 0 and frame.loc[0, "promo_term"] == 0 and frame.loc[0, "tu144"] == 0


@pytest.mark.parametrize("value", [dt.datetime(2026, 2, 1), "2026-02-01", "02/01/2026", 46054])
def test_submit_date_forms(rules, value):
    frame = _parse(exhibit_raw([loan("SFC_1", **{"Submit Date": value})]), rules)
    assert frame.loc[0, "submit_date"] == pd.Timestamp("2026-02-01")
    assert frame.loc[0, "row_problems"] == ""


def test_numeric_loan_number_loses_float_suffix(rules):
    assert _parse(exhibit_raw([loan(12345.0)]), rules).loc[0, "seller_loan_number"] == "12345"


def test_empty_sheet_is_structural(rules):
    with pytest.raises(StructuralError, match="the sheet is empty"):
        _parse(pd.DataFrame(dtype=object), rules)


@pytest.mark.parametrize(
    ("rows", "fragment", "column", "bad_rows"),
    [
        ([["Std", "SFY", "weird", False]], "type must be one of", "type", [2]),
        ([["Std", "SFY", "standard", False], ["Std", "BOTH", "standard", False]], "platform must be SFY or PRIME", "platform", [3]),
        ([["Std", "SFY", "standard", False], [" std ", "sfy", "hybrid", False]], "listed twice", "loan program", [2, 3]),
        ([["Std", "SFY", "standard", "maybe"]], "empty or unreadable", "new_programs", [2]),
        ([["", "SFY", "standard", False]], "empty or unreadable", "loan program", [2]),
    ],
)
def test_master_sheet_structural_errors(rows, fragment, column, bad_rows):
    with pytest.raises(StructuralError, match=fragment) as err:
        parsing.parse_master(sheet_raw(["loan program", "platform", "type", "new_programs"], rows),
                             file="MASTER_SHEET.xlsx", sheet="Programs", max_rows=20)
    assert err.value.columns == [column] and err.value.rows == bad_rows
    assert err.value.file == "MASTER_SHEET.xlsx" and err.value.sheet == "Programs"


def test_master_missing_column():
    with pytest.raises(StructuralError, match="required column missing") as err:
        parsing.parse_master(sheet_raw(["loan program", "platform", "new_programs"], [["Std", "SFY", False]]),
                             file="MASTER_SHEET.xlsx", sheet="Programs", max_rows=20)
    assert err.value.columns == ["type"]


def test_tape_errors_name_rows():
    frame = pd.DataFrame({"Account Number": ["1", "x", "3.5"], "Loan Group": ["FX3"] * 3, "Status Codes": [""] * 3})
    with pytest.raises(StructuralError) as err:
        parsing.parse_tape(frame, file="Tape20Loans_02-18-2026.csv")
    assert err.value.columns == ["Account Number"] and err.value.rows == [3, 4]
    with pytest.raises(StructuralError, match="Status Codes"):
        parsing.parse_tape(frame.drop(columns="Status Codes"), file="Tape20Loans_02-18-2026.csv")


@pytest.mark.parametrize("fast", [True, False])  # the Arrow reader, and pandas' (a cell after ", ")
def test_csv_blank_lines_and_empty_rows_are_skipped_and_rows_numbered_as_a_spreadsheet_shows_them(tmp_path, fast):
    # Past bug: Excel's trailing ",,," rows refused the file, and the blank
    # lines the reader dropped shifted every row number named after them.
    from loan_engine_dagster.adapters.files import read_csv

    sep = "," if fast else ", "
    path = tmp_path / "Tape20Loans_02-18-2026.csv"
    path.write_text(f"Account Number{sep}Loan Group{sep}Status Codes\n1{sep}FX3{sep}ACTIVE\n\n\n"
                    f"2{sep}FX3{sep}ACTIVE\nx{sep}FX3{sep}ACTIVE\n,,\n,,\n")
    with pytest.raises(StructuralError) as err:
        parsing.parse_tape(read_csv(path), file=path.name)
    assert err.value.rows == [6]  # line 6 of the file, as a spreadsheet numbers it
    path.write_text(path.read_text().replace(f"x{sep}", f"3{sep}"))
    tape = parsing.parse_tape(read_csv(path), file=path.name)
    assert tape["seller_loan_number"].tolist() == ["SFC_1", "SFC_2", "SFC_3"]


def test_account_numbers_in_exponent_form_are_refused_naming_their_rows():
    # Past bug: Excel saves a 12-digit number of a General cell as 1.23457E+11;
    # read as 123457000000, the repurchase landed on a loan nobody holds.
    frame = pd.DataFrame({"Account Number": ["123456789012", "1.23457E+11", " 4e5", "7"], "Loan Group": ["FX3"] * 4,
                          "Status Codes": ["", "REPURCHASE", "", ""]})
    with pytest.raises(StructuralError, match=r"exponent form \(e\.g\. 1\.23457E\+11\) have lost their last digits") as err:
        parsing.parse_tape(frame, file="Tape20Loans_02-18-2026.csv")
    assert err.value.columns == ["Account Number"] and err.value.rows == [3, 4]
    parsing.parse_tape(frame.iloc[[0, 3]], file="Tape20Loans_02-18-2026.csv")  # whole numbers as written pass


def test_a_tape_with_no_loan_is_refused():
    frame = pd.DataFrame({"Account Number": [], "Loan Group": [], "Status Codes": []}, dtype=str)
    with pytest.raises(StructuralError, match="the tape lists no loan") as err:
        parsing.parse_tape(frame, file="Tape20Loans_02-18-2026.csv")
    assert err.value.file == "Tape20Loans_02-18-2026.csv"


def test_tape_tagging():
    frame = pd.DataFrame({"Account Number": ["1", "2", "3"], "Loan Group": ["FX3-A", "grp fx1", "PRM"], "Status Codes": ["", "", ""]})
    assert list(parsing.parse_tape(frame, file="t.csv")["tagging"]) == ["SFY", "SFY", "PRIME"]


def test_existing_assets_errors_and_defaults():
    base = {"SELLER Loan #": "SFC_1", "platform": "sfy", "loan program": "Std", "type": "standard",
            "Orig. Balance": "100", "Lender Price(%)": "99", "FICO Borrower": "700", "Term": "120", "APR": "9",
            "Property State": "CA", "Dealer Fee": "0.04", "Purchase_Date": "2025-01-01", "Repurchase": "false"}
    parsed = parsing.parse_existing(pd.DataFrame([base]), file="current_assets.csv")
    assert parsed.loc[0, "excess_asset"] == False  # noqa: E712
    assert pd.isna(parsed.loc[0, "modeled_purchase_price"])
    assert parsed.loc[0, "promo_term"] == 0
    with pytest.raises(StructuralError) as err:
        parsing.parse_existing(pd.DataFrame([base, {**base, "Orig. Balance": "abc"}]), file="current_assets.csv")
    assert err.value.columns == ["Orig. Balance"] and err.value.rows == [3]
    with pytest.raises(StructuralError, match="type must be one of") as err:
        parsing.parse_existing(pd.DataFrame([base, {**base, "type": "balloon"}]), file="current_assets.csv")
    assert err.value.columns == ["type"] and err.value.rows == [3]
    with pytest.raises(StructuralError, match="'Repurchase'"):
        parsing.parse_existing(pd.DataFrame([base]).drop(columns="Repurchase"), file="current_assets.csv")


def test_grid_missing_column_names_sheet():
    with pytest.raises(StructuralError) as err:
        parsing.parse_underwriting_grid(sheet_raw(["finance_type_name_nls", "fico_min"], [["A", 600]]),
                                        file="Underwriting_Grids_COMAP.xlsx", sheet="SFY - Notes", max_rows=20)
    assert err.value.sheet == "SFY - Notes"
    assert err.value.columns == ["monthly_income_min", "approval_high", "dti_max", "pti_ratio"]


def test_income_header_as_sellers_write_it(rules):
    """Regression: real exhibits head the annual income column plain `Income`."""
    raw = exhibit_raw([loan("SFC_1", Income=84000)])
    assert "Income" in list(raw.iloc[3])
    assert _parse(raw, rules).loc[0, "income"] == 84000


def test_text_numbers_read_as_pandas_reads_them():
    """CSV columns take Arrow's cast; it must agree with pandas' parser on
    every number, including the odd spellings, and leave bad cells NaN."""
    import numpy as np

    from loan_engine_dagster.rules.parsing import LARGEST_NUMBER, to_number

    rng = np.random.default_rng(1)
    x = rng.random(20_000) * 10.0 ** rng.integers(-5, 12, 20_000)
    spellings = [repr(float(v)) for v in x] + ["%.3f" % v for v in x] + ["%.25g" % v for v in x[:500]]
    odd = ["1e5", "+3", "-0.0", "1.", ".5", "inf", "-inf", "1E-3", "12345678901234567890123", ""]
    for extra in ([], ["12 x"], [" 7"]):  # the last two take pandas' own path
        text = pd.Series(spellings + odd + extra, dtype="str")
        expected = pd.to_numeric(text, errors="coerce").astype("float64")
        expected = expected.where(expected.abs() <= LARGEST_NUMBER)  # `inf` and 1e22 are out of range on both paths
        pd.testing.assert_series_equal(to_number(text), expected)


def test_text_dates_and_flags_read_alike_on_both_paths():
    from loan_engine_dagster.rules.parsing import bool_invalid, to_bool, to_date

    iso = pd.Series(["2026-01-29", "", "2025-12-31"], dtype="str")
    mixed = pd.Series(["2026-01-29", "", "12/31/2025", "46024", "nope"], dtype="str")
    assert to_date(iso).tolist()[::2] == [pd.Timestamp("2026-01-29"), pd.Timestamp("2025-12-31")]
    assert pd.isna(to_date(iso)[1]) and str(to_date(iso).dtype) == "datetime64[ns]"
    assert to_date(mixed).tolist()[:4:2] == [pd.Timestamp("2026-01-29"), pd.Timestamp("2025-12-31")]
    assert to_date(mixed)[3] == pd.Timestamp("2026-01-02") and pd.isna(to_date(mixed)[4])
    flags = pd.Series([" TRUE", "no", "", None, "1.0", "maybe", 1.0, True], dtype=object)
    assert to_bool(flags).tolist() == [True, False, False, False, True, False, True, True]
    assert bool_invalid(flags).tolist() == [False, False, False, False, False, True, False, False]


def test_blank_cells_on_every_path():
    from loan_engine_dagster.rules.parsing import is_blank

    cells = [None, float("nan"), "", "  ", "\t\n", "x", " y ", 0.0, 12.5, 3, True, False, dt.date(2026, 1, 2), pd.NA, "\u00a0"]
    expected = [True, True, True, True, True, False, False, False, False, False, False, False, False, True, True]
    assert is_blank(pd.Series(cells, dtype=object)).tolist() == expected  # workbook cells
    numbers = pd.Series([1.5, "", None, " ", 2.0, "n/a"], dtype=object)  # a number column with gaps
    assert is_blank(numbers).tolist() == [False, True, True, True, False, False]
    text = pd.Series(["", " a", None, "  "], dtype="str")  # a CSV column
    assert is_blank(text).tolist() == [True, False, True, True]


@pytest.mark.parametrize(("column", "value"), [("APR", 0.0799), ("Dealer Fee", 0.045)])
def test_a_percent_column_entered_as_fractions_is_refused(rules, column, value):
    # Past bug: a column formatted as a percentage in Excel (11.2% stored as
    # 0.112) was read as APRs of a hundredth of a percent, without a word.
    loans = [loan(f"SFC_{i}", **{column: value}) for i in range(10)]
    with pytest.raises(StructuralError, match=f"every {column} is below 1") as err:
        parsing.parse_exhibit(exhibit_raw(loans), platform="sfy", file="SFY.xlsx", sheet="Exhibit A", rules=rules)
    assert (err.value.sheet, err.value.columns, err.value.rows) == ("Exhibit A", [column], [5, 6, 7])
    # Nine loans are too few to tell a whole column in the other unit from odd loans.
    frame = parsing.parse_exhibit(exhibit_raw(loans[:9]), platform="sfy", file="SFY.xlsx", sheet="Exhibit A", rules=rules)
    assert (frame["row_problems"] == "").all()


def test_existing_dealer_fees_entered_as_percent_are_refused():
    from conftest import existing_frame

    with pytest.raises(StructuralError, match="every Dealer Fee is 1 or more") as err:
        existing_frame([{"SELLER Loan #": f"SFC_{i}", "Dealer Fee": "4.5"} for i in range(10)])
    assert err.value.file == "current_assets.csv" and err.value.rows == [2, 3, 4]
    existing_frame([{"SELLER Loan #": f"SFC_{i}", "Dealer Fee": "4.5" if i else "0.045"} for i in range(10)])


@pytest.mark.parametrize("dtype", ["string", "str", object])
@pytest.mark.parametrize("values", [["a", "b"], ["a", "a"], ["a", None], [None, None], ["a", None, "b"], []])
def test_the_portfolios_uniqueness_question_answers_as_pandas_does(values, dtype):
    """Asked of Arrow for speed; a missing loan number twice is a repeat, as for pandas."""
    from loan_engine_dagster.rules.parsing import _all_different

    series = pd.Series(values, dtype=dtype)
    assert _all_different(series) == series.is_unique
