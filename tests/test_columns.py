"""Column headers as sellers write them, and other spellings mapped in the rules file."""

import copy
import datetime as dt
import re
from importlib import resources

import pandas as pd
import pytest
import yaml

from conftest import exhibit_raw, loan
from loan_engine_dagster.adapters.files import open_workbook, read_sheet
from loan_engine_dagster.adapters.inbox import find_batch
from loan_engine_dagster.adapters.loading import load_batch_inputs
from loan_engine_dagster.adapters.sample import generate_inbox
from loan_engine_dagster.rules import parsing
from loan_engine_dagster.rules.config import RulesFileError, load_rules, parse_rules
from loan_engine_dagster.rules.errors import StructuralError


def _packaged() -> dict:
    return yaml.safe_load(resources.files("loan_engine_dagster.rules").joinpath("rules.yaml").read_text())


def _rules_file(tmp_path, columns: dict):
    data = _packaged()
    data["columns"] = columns
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_rules(path)


def _renamed(raw: pd.DataFrame, renames: dict[str, str]) -> pd.DataFrame:
    raw = raw.copy()
    header_row = 3  # exhibit_raw's title block is three rows
    raw.iloc[header_row] = [renames.get(h, h) for h in raw.iloc[header_row]]
    return raw


def _parse(raw, rules, platform="sfy"):
    return parsing.parse_exhibit(raw, platform=platform, file="SFY_x.xlsx", sheet="Exhibit A", rules=rules)


def test_income_header_as_sellers_write_it(rules):
    frame = _parse(exhibit_raw([loan("SFC_1", Income=84000.0)]), rules)
    assert frame.loc[0, "income"] == 84000.0
    assert frame.loc[0, "row_problems"] == ""


@pytest.mark.parametrize("written", ["Orig.\nBalance", "Orig.\xa0Balance", "Orig.  Balance", "Orig.\r\nBalance"])
def test_white_space_inside_a_header_reads_as_one_space(rules, written):
    # A header typed with Alt+Enter, a non-breaking space or two spaces was
    # refused, and the Alt+Enter one cut the error message at its line break.
    raw = _renamed(exhibit_raw([loan("SFC_1")]), {"Orig. Balance": written, "SELLER Loan #": "SELLER\xa0Loan #"})
    frame = _parse(raw, rules)
    assert frame.loc[0, "orig_balance"] == 10000.0 and frame.loc[0, "row_problems"] == ""


@pytest.mark.parametrize(("header", "written"), [
    ("promo_term", "Promo Term"), ("Stamp fee", "Stamp Fees"), ("TU144", "TU-144"),
    ("promo_term", "Promo Term (months)"), ("promo_term", "promo_term_months"), ("Stamp fee", "Stamp fee (USD)"),
    ("Stamp fee", "Stamp fee $"), ("TU144", "TU144 (Y/N)"),
])
def test_an_optional_column_under_a_near_spelling_is_refused_not_read_as_absent(rules, header, written):
    # Past bugs: `Promo Term` left every promo term at 0 and `TU-144` cost a
    # loan its exemption, silently: the near spelling was an unknown column.
    # So did a header with a note (`Promo Term (months)`): the NINP
    # promo-term limit read 4.0 % instead of 9.8 % (hostile pass).
    raw = _renamed(exhibit_raw([loan("SFC_1", promo_term=12, TU144=1)], extra_header=["TU144"]), {header: written})
    with pytest.raises(StructuralError, match=re.escape(f"column '{written}' for '{header}': optional")) as err:
        _parse(raw, rules)
    assert err.value.columns == [written] and "columns: exhibit" in str(err.value)


@pytest.mark.parametrize(("header", "written"), [("promo_term", "Promo Term End Date"), ("Stamp fee", "Stamp fee paid")])
def test_a_column_that_only_begins_like_an_optional_header_is_another_column(rules, header, written):
    raw = exhibit_raw([loan("SFC_1", **{written: "x"})])
    raw = raw.loc[:, raw.iloc[3] != header]  # the optional column itself absent
    assert _parse(raw, rules).loc[0, "row_problems"] == ""


def test_a_missing_column_message_stays_one_line(rules):
    raw = _renamed(exhibit_raw([loan("SFC_1")]), {"Orig. Balance": "Original\nBalance"})
    with pytest.raises(StructuralError) as err:
        _parse(raw, rules)
    assert "\n" not in str(err.value) and "'Original\\nBalance'" in str(err.value)


def test_sample_inbox_writes_the_real_headers(tmp_path, rules):
    generate_inbox(tmp_path, batch=dt.date(2026, 2, 19), loans=20, existing=20)
    files = find_batch(tmp_path, "2026-02-19", rules.inbox.tape_lookback_days)
    for path in files.exhibits.values():
        _, raw = read_sheet(open_workbook(path), path)
        cells = {str(c).strip() for c in raw.stack().tolist()}
        assert {h.header for h in parsing.EXHIBIT_FIELDS if h.required} <= cells
        assert "Income (annual)" not in cells
    assert len(load_batch_inputs(files, rules).exhibits) == 20


def test_other_spellings_from_a_custom_rules_file(tmp_path):
    custom = _rules_file(tmp_path, {
        "exhibit": {"Income": ["Annual Income"], "FICO Borrower": ["FICO"], "SELLER Loan #": ["Loan Number"]},
        "tape": {"Account Number": ["Acct No"]},
    })
    raw = _renamed(exhibit_raw([loan("SFC_1", Income=72000.0, **{"FICO Borrower": 731})]),
                   {"Income": " annual INCOME ", "FICO Borrower": "FICO", "SELLER Loan #": "Loan Number"})
    frame = _parse(raw, custom)
    assert (frame.loc[0, "seller_loan_number"], frame.loc[0, "income"], frame.loc[0, "fico"]) == ("SFC_1", 72000.0, 731)
    assert "FICO" not in frame.columns  # a mapped column is not carried again as an extra one
    tape = pd.DataFrame({"Acct No": ["12"], "Loan Group": ["FX1"], "Status Codes": [""]})
    assert list(parsing.parse_tape(tape, file="t.csv", aliases=custom.column_aliases("tape"))["seller_loan_number"]) == ["SFC_12"]


def test_the_packaged_rules_know_no_other_spelling(rules):
    raw = _renamed(exhibit_raw([loan("SFC_1")]), {"Income": "Annual Income"})
    with pytest.raises(StructuralError) as err:
        _parse(raw, rules)
    assert err.value.columns == ["Income"]


@pytest.mark.parametrize(
    ("written", "suggested"),
    [
        ("Income (annual)", "Income (annual)"),  # pins the header the seller files used to be refused for
        ("Incme", "Incme"),
        ("income_", "income_"),
    ],
)
def test_missing_column_suggests_the_closest_header(rules, written, suggested):
    raw = _renamed(exhibit_raw([loan("SFC_1")]), {"Income": written})
    with pytest.raises(StructuralError) as err:
        _parse(raw, rules)
    message = str(err.value)
    assert message.startswith(
        f"Data problem in file 'SFY_x.xlsx', sheet 'Exhibit A', column 'Income': required column missing "
        f"(did you mean '{suggested}'?); headers found: 'SELLER Loan #', 'Loan Program',"
    )
    assert f"'{written}', 'FICO Borrower'" in message
    assert message.endswith("another spelling can be mapped to a column in the rules file under columns: exhibit")


def test_no_suggestion_when_nothing_is_close(rules):
    raw = exhibit_raw([loan("SFC_1")]).drop(columns=[5])  # Income
    with pytest.raises(StructuralError, match="column 'Income': required column missing; headers found: "):
        _parse(raw, rules)


def test_reference_file_error_lists_headers_and_suggests():
    frame = pd.DataFrame({"Account Numbr": ["1"], "Loan Group": ["FX1"], "Status Codes": [""]})
    with pytest.raises(StructuralError) as err:
        parsing.parse_tape(frame, file="Tape20Loans_02-18-2026.csv")
    assert str(err.value) == (
        "Data problem in file 'Tape20Loans_02-18-2026.csv', column 'Account Number': required column missing "
        "(did you mean 'Account Numbr'?); headers found: 'Account Numbr', 'Loan Group', 'Status Codes'; "
        "another spelling can be mapped to a column in the rules file under columns: tape"
    )


def test_a_file_with_both_the_header_and_its_other_spelling_is_refused(tmp_path):
    custom = _rules_file(tmp_path, {"exhibit": {"Income": ["Annual Income"]}})
    raw = exhibit_raw([loan("SFC_1", **{"Annual Income": 1.0})])
    with pytest.raises(StructuralError) as err:
        _parse(raw, custom)
    assert err.value.columns == ["Income", "Annual Income"]
    assert "2 columns name 'Income'" in str(err.value)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"exhibit": {"FICO Borrower": ["DTI"]}}, "columns.exhibit: 'DTI' cannot mean 'FICO Borrower': it already names 'DTI'"),
        ({"exhibit": {"Income": ["Amount"], "Orig. Balance": [" amount"]}},
         "columns.exhibit: ' amount' cannot mean 'Orig. Balance': it already names 'Income'"),
        ({"exhibit": {"Income": ["TU 144"]}}, "columns.exhibit: 'TU 144' cannot mean 'Income': it already names 'TU144'"),
        ({"exhibit": {"Incom": ["Annual Income"]}}, "columns.exhibit: 'Incom' is not a column of the exhibit file"),
        ({"tapes": {"Loan Group": ["Group"]}}, "columns.tapes"),
    ],
)
def test_ambiguous_or_unknown_spellings_refuse_the_rules_file(columns, message):
    data = copy.deepcopy(_packaged())
    data["columns"] = columns
    with pytest.raises(RulesFileError, match="invalid rules file: .*" + message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_rules(data)


def test_the_same_spelling_in_another_file_kind_is_fine():
    data = copy.deepcopy(_packaged())
    data["columns"] = {"exhibit": {"FICO Borrower": ["FICO"]}, "existing": {"FICO Borrower": ["FICO"]}}
    assert parse_rules(data).column_aliases("existing") == {"FICO Borrower": ["FICO"]}
