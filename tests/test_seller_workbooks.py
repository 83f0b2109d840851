"""Exhibits as sellers' own tools write them (openpyxl, XlsxWriter): formulas
never computed, error cells, a second table, cells Excel shows as numbers.
Every workbook is written to disk and read by the real readers, through the
batch loader."""

import datetime as dt
import re
import subprocess
import sys
import warnings
import zipfile

import openpyxl
import pytest
import xlsxwriter

from conftest import EXHIBIT_HEADER, loan
from loan_engine_dagster.adapters.inbox import find_batch
from loan_engine_dagster.adapters.loading import load_batch_inputs
from loan_engine_dagster.adapters.sample import generate_inbox
from loan_engine_dagster.rules.errors import StructuralError


@pytest.fixture
def batch(tmp_path, rules):
    generate_inbox(tmp_path, batch=dt.date(2026, 2, 19), loans=20, existing=20)
    return find_batch(tmp_path, "2026-02-19", rules.inbox.tape_lookback_days)


def write_exhibit(path, rows, *, title=("Exhibit A to Form of Sale Notice",), after=()):
    """An SFY exhibit written by openpyxl: a title row, the header, one row per
    loan (dicts), then any rows in `after` (lists, as written)."""
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Exhibit A"
    sheet.append(list(title))
    sheet.append(EXHIBIT_HEADER)
    for row in rows:
        sheet.append([row[h] for h in EXHIBIT_HEADER])
    for row in after:
        sheet.append(list(row))
    book.save(path)
    return book


def sfy_loans(batch, rules):
    loans = load_batch_inputs(batch, rules).exhibits
    return loans[loans["platform"] == "sfy"].set_index("seller_loan_number")


def test_a_formula_never_computed_or_an_error_cell_is_named_as_such_not_as_empty(batch, rules):
    # Past bug: openpyxl writes `=700+20` without its value and calamine reads
    # such a cell (and an error cell such as #N/A) as empty, so the loan was
    # rejected as "FICO Borrower is empty" while Excel shows 720 (or #N/A).
    write_exhibit(batch.exhibits["sfy"], [
        loan("GOOD"),
        loan("FORMULA", **{"FICO Borrower": "=700+20"}),
        loan("NA", **{"FICO Borrower": "#N/A"}),
        loan("REF", **{"Property State": "#REF!"}),
        loan("DIV", **{"Orig. Balance": "#DIV/0!", "Submit Date": "=DATE(2026,2,1)"}),
        loan("EMPTY", **{"Income": None}),
    ])
    problems = sfy_loans(batch, rules)["row_problems"]
    assert problems["GOOD"] == ""
    assert problems["FORMULA"] == ("FICO Borrower holds a formula (=700+20) whose value was never saved: "
                                   "open the file in Excel and save it again")
    assert problems["NA"] == "FICO Borrower holds the error #N/A"
    assert problems["REF"] == "Property State holds the error #REF!"
    assert problems["DIV"] == ("Orig. Balance holds the error #DIV/0!; Submit Date holds a formula (=DATE(2026,2,1)) "
                               "whose value was never saved: open the file in Excel and save it again")
    assert problems["EMPTY"] == "Income is empty"  # a really empty cell says so, as before


def test_a_second_table_below_the_loans_is_structural_not_bought(batch, rules):
    # Past bug: a second table under the loans (withdrawn loans, a previous
    # week's list) with its own header row was read on as loans: its header
    # row and its title became two rejected phantom loans and its loans were
    # offered for purchase like the others.
    write_exhibit(batch.exhibits["sfy"], [loan("OFFERED")], after=[
        [], ["Withdrawn loans"], EXHIBIT_HEADER, [loan("WITHDRAWN")[h] for h in EXHIBIT_HEADER],
    ])
    with pytest.raises(StructuralError, match="second header row") as caught:
        load_batch_inputs(batch, rules)
    assert (caught.value.file, caught.value.sheet, caught.value.rows) == (batch.exhibits["sfy"].name, "Exhibit A", [6])
    assert caught.value.columns == ["SELLER Loan #"]


def test_a_true_or_false_cell_is_no_amount_or_date(batch, rules):
    # Past bug: a TRUE/FALSE cell (a checkbox's linked cell, a comparison
    # pasted as values) was read as 1 or 0: an Orig. Balance of TRUE made a
    # valid $1 loan, a DTI of FALSE a 0 % DTI that passed underwriting, a
    # Submit Date of TRUE the date 1899-12-31.
    write_exhibit(batch.exhibits["sfy"], [
        loan("BALANCE", **{"Orig. Balance": True}),
        loan("DTI", DTI=False),
        loan("DATE", **{"Submit Date": True}),
        loan("TU144"),
        loan("NO_TU144"),
    ])
    book = openpyxl.load_workbook(batch.exhibits["sfy"])
    sheet = book.active
    sheet.cell(row=2, column=len(EXHIBIT_HEADER) + 1, value="TU144")  # a 0/1 flag: TRUE and FALSE say the same
    for row, flag in ((6, True), (7, False)):
        sheet.cell(row=row, column=len(EXHIBIT_HEADER) + 1, value=flag)
    book.save(batch.exhibits["sfy"])
    loans = sfy_loans(batch, rules)
    problems = loans["row_problems"]
    assert problems["BALANCE"] == "Orig. Balance 'TRUE' is not a number"
    assert problems["DTI"] == "DTI 'FALSE' is not a number"
    assert problems["DATE"] == "Submit Date 'TRUE' is not a date"
    assert problems["TU144"] == problems["NO_TU144"] == ""
    assert loans.loc["TU144", "tu144"] == 1.0 and loans.loc["NO_TU144", "tu144"] == 0.0


@pytest.mark.parametrize(("cell", "value"), [
    ("12000\u00a0", 12000.0),  # a non-breaking space copied from a web page or a PDF
    ("\u00a012,000.50", 12000.5),
    ("12000\t", 12000.0),
    ("$12,000", 12000.0),
    ("$ 12,000.00", 12000.0),
    ("1,234,567.5", 1234567.5),
    ("-$1,000", -1000.0),
])
def test_an_amount_stored_as_text_as_excel_shows_it_is_read(batch, rules, cell, value):
    # Past bug: a text cell reading 12000 followed by a non-breaking space was
    # refused as "Orig. Balance '12000' is not a number" (the message showing
    # the number it refused), and US thousands separators and a dollar sign
    # (what Excel shows for the same amount in a number cell) rejected the loan.
    write_exhibit(batch.exhibits["sfy"], [loan("TEXT", **{"Income": cell})])
    loans = sfy_loans(batch, rules)
    assert loans.loc["TEXT", "row_problems"] == "" and loans.loc["TEXT", "income"] == value


@pytest.mark.parametrize("cell", ["12,34", "1.234,56", "12,3456", "$", "1,000 x", "12 000"])
def test_text_that_is_no_us_amount_is_still_not_a_number(batch, rules, cell):
    write_exhibit(batch.exhibits["sfy"], [loan("TEXT", **{"Income": cell})])
    assert sfy_loans(batch, rules).loc["TEXT", "row_problems"] == f"Income '{cell}' is not a number"


@pytest.mark.parametrize(("header", "cell"), [("DTI", "0,360"), ("Dealer Fee", "4,500"), ("APR", "$7.99"),
                                             ("modeled_purchase_price", "0,987")])
def test_a_separator_or_dollar_sign_outside_the_dollar_columns_is_not_a_number(batch, rules, header, cell):
    # Past bug (second read): read as a US amount in every column, a DTI of
    # 0,360 (a decimal comma) became 360 and failed underwriting, a Dealer Fee
    # of 4,500 became 4,500% and weighed in the limits.
    write_exhibit(batch.exhibits["sfy"], [loan("TEXT", **{header: cell})])
    assert sfy_loans(batch, rules).loc["TEXT", "row_problems"] == f"{header} '{cell}' is not a number"


def write_with_xlsxwriter(path, rows, cell=None) -> None:
    """The exhibit as XlsxWriter writes it: a formula saved with 0 in place
    of its value (the workbook asks Excel to compute it on opening).
    `cell(sheet, r, c, row, header, dates)` writes a cell its own way and
    returns True, or returns False to leave it to the usual writing."""
    with xlsxwriter.Workbook(str(path)) as book:
        sheet = book.add_worksheet("Exhibit A")
        dates = book.add_format({"num_format": "yyyy-mm-dd"})
        sheet.write_row(0, 0, ["Exhibit A to Form of Sale Notice"])
        sheet.write_row(1, 0, EXHIBIT_HEADER)
        for r, row in enumerate(rows, start=2):
            for c, header in enumerate(EXHIBIT_HEADER):
                if cell is not None and cell(sheet, r, c, row, header, dates):
                    continue
                value = row[header]
                if isinstance(value, dt.datetime):
                    sheet.write_datetime(r, c, value, dates)
                else:
                    sheet.write(r, c, value)


def test_a_formula_saved_as_0_by_a_program_that_never_computed_it_is_not_read_as_0(batch, rules):
    # Past bug: XlsxWriter saves every formula with 0 in place of its value
    # (Excel computes it when the file is opened, as the workbook asks). A DTI
    # of =0.1*3 was read as 0 and passed underwriting; a FICO of =700+20 was
    # rejected as "FICO Borrower 0 outside 300-850".
    def computed(sheet, r, c, row, header, dates):
        if row["SELLER Loan #"] == "SAVED" and header == "DTI":
            sheet.write_formula(r, c, row[header], None, 0.3)  # a writer that computed it
            return True
        return False

    write_with_xlsxwriter(batch.exhibits["sfy"], [
        loan("DTI", DTI="=0.1*3"), loan("FICO", **{"FICO Borrower": "=700+20"}), loan("ZERO", DTI=0),
        loan("SAVED", DTI="=0.1*3"),
    ], cell=computed)
    loans = sfy_loans(batch, rules)
    problems = loans["row_problems"]
    assert problems["DTI"] == ("DTI holds a formula (=0.1*3) whose value was never computed (the program that wrote "
                               "the file saved 0 in its place): open the file in Excel and save it again")
    assert problems["FICO"] == ("FICO Borrower holds a formula (=700+20) whose value was never computed (the program "
                                "that wrote the file saved 0 in its place): open the file in Excel and save it again")
    assert problems["ZERO"] == problems["SAVED"] == ""  # a 0 typed as such, a formula's saved value: read as they are
    assert loans.loc["SAVED", "dti"] == 0.3


def test_an_empty_cell_inside_merged_cells_says_whose_value_it_shows(batch, rules):
    # Past bug: a Loan Program merged down over three loans shows the program
    # beside each of them in Excel, but the value belongs to the top cell
    # alone; the two loans below were rejected as "Loan Program is empty",
    # and the seller found no empty cell to fill.
    book = write_exhibit(batch.exhibits["sfy"], [
        loan("TOP"), loan("MIDDLE", **{"Loan Program": None}), loan("BOTTOM", **{"Loan Program": None}),
        loan("ALONE", **{"Loan Program": None}), loan("TOP2"), loan("UNDER2", **{"Loan Program": None}),
    ], title=["Exhibit A to Form of Sale Notice"])
    book.active.merge_cells("B3:B5")
    book.active.merge_cells("B7:B8")
    book.active.merge_cells("A1:Q1")  # the title over the whole table: not a loan's cell
    book.save(batch.exhibits["sfy"])
    problems = sfy_loans(batch, rules)["row_problems"]
    merged = ("Loan Program is empty: the cell is part of the merged cells B3:B5, whose value belongs to B3 alone; "
              "unmerge them and fill in each loan's value")
    assert (problems["TOP"], problems["MIDDLE"], problems["BOTTOM"]) == ("", merged, merged)
    assert problems["ALONE"] == "Loan Program is empty" and problems["TOP2"] == ""
    assert problems["UNDER2"] == merged.replace("B3:B5", "B7:B8").replace("B3", "B7")


@pytest.mark.parametrize(("column", "value", "problem"), [
    # Lender Price(%) in a column formatted as a percentage: Excel shows 98.75% and stores 0.9875.
    ("Lender Price(%)", 0.9875, "every Lender Price(%) is below 1"),
    ("DTI", 36, "every DTI is 1 or more"),  # percent figures where the rules want a fraction
    ("PTI", 5, "every PTI is 1 or more"),
])
def test_a_whole_column_in_the_other_unit_is_structural(batch, rules, column, value, problem):
    # Past bug: every loan was rejected for a reason that was not its own
    # (purchase_price_mismatch, underwriting_sfy) instead of the file being
    # named as written in the wrong unit, as APR and Dealer Fee already were.
    write_exhibit(batch.exhibits["sfy"], [loan(f"SFC_{i}", **{column: value}) for i in range(10)])
    with pytest.raises(StructuralError, match=re.escape(problem)) as caught:
        load_batch_inputs(batch, rules)
    assert (caught.value.sheet, caught.value.columns, caught.value.rows) == ("Exhibit A", [column], [3, 4, 5])


def test_a_wide_exhibit_is_carried_without_a_warning_per_column(batch, rules):
    # Past bug: each of a wide exhibit's own columns (a seller's export with
    # 150 of them) was added to the loans one at a time: pandas warned
    # "DataFrame is highly fragmented" once per column past the hundredth,
    # flooding the run's log, and copied the frame to consolidate it.
    extra = [f"Seller field {i}" for i in range(150)]
    book = write_exhibit(batch.exhibits["sfy"], [loan(f"SFC_{i}") for i in range(3)])
    sheet = book.active
    for c, header in enumerate(extra, start=len(EXHIBIT_HEADER) + 1):
        sheet.cell(row=2, column=c, value=header)
        for r in (3, 4, 5):
            sheet.cell(row=r, column=c, value=f"{header} of row {r}")
    book.save(batch.exhibits["sfy"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loans = sfy_loans(batch, rules)
    assert (loans["row_problems"] == "").all()
    assert loans.loc["SFC_2", "seller:Seller field 149"] == "Seller field 149 of row 5"


@pytest.mark.parametrize("cell", ["20260201", 20260201])
def test_a_date_written_as_yyyymmdd_is_that_date(batch, rules, cell):
    # Past bug: a Submit Date exported as 20260201 (as core banking systems
    # write dates) was taken for an Excel serial 55,000 years away and
    # rejected as "out of range (a date must fall between 1677-09-22 and
    # 2262-04-11)", a message that told the seller nothing.
    write_exhibit(batch.exhibits["sfy"], [loan("YMD", **{"Submit Date": cell}), loan("NOT", **{"Submit Date": "20261301"})])
    loans = sfy_loans(batch, rules)
    assert loans.loc["YMD", "row_problems"] == "" and loans.loc["YMD", "submit_date"] == dt.datetime(2026, 2, 1)
    assert loans.loc["NOT", "row_problems"].startswith("Submit Date '20261301' on sheet 'Exhibit A' is out of range")


def test_a_loan_number_too_long_for_a_number_cell_is_invalid_not_rounded(batch, rules):
    # Past bug: a 17-digit loan number stored in a number cell cannot be held
    # exactly (a spreadsheet number keeps about 15 digits): it was read as
    # the loan "1.234567890123457e+16", valid, a number the seller never
    # wrote, which two loans could share and no tape could match.
    # Second read: a 16-digit one typed in Excel is stored with its last digit 0.
    write_exhibit(batch.exhibits["sfy"], [
        loan(12345678901234567), loan(1234567890123450), loan(123456789012345), loan("98765432109876543210"),
    ])
    problems = sfy_loans(batch, rules)["row_problems"]
    assert problems["1.234567890123457e+16"] == (
        "SELLER Loan # 1.234567890123457e+16 is a number with more digits than a spreadsheet keeps exactly: "
        "its last digits are lost; enter the loan numbers as text")
    assert problems["1234567890123450"].startswith("SELLER Loan # 1234567890123450 is a number with more digits")
    assert problems["123456789012345"] == "" and problems["98765432109876543210"] == ""  # 15 digits; text


def test_hidden_rows_and_columns_are_read_like_the_others(batch, rules):
    # A choice, not a fix (decisions.md): the exhibit is the file, not the
    # view; a hidden loan row or column is still in it.
    book = write_exhibit(batch.exhibits["sfy"], [loan("SHOWN"), loan("HIDDEN")])
    book.active.row_dimensions[4].hidden = True
    book.active.column_dimensions["G"].hidden = True  # FICO Borrower
    book.save(batch.exhibits["sfy"])
    loans = sfy_loans(batch, rules)
    assert list(loans.index) == ["SHOWN", "HIDDEN"] and (loans["row_problems"] == "").all()
    assert (loans["fico"] == 720).all()


def _rewritten(path, change) -> None:
    """The workbook with each part's bytes passed through `change(name, data)`."""
    with zipfile.ZipFile(path) as source:
        parts = {name: source.read(name) for name in source.namelist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for name, data in parts.items():
            target.writestr(name, change(name, data))


def as_strict(path):
    """The workbook as Excel's "Strict Open XML Spreadsheet" writes it: the
    same parts under the ISO namespaces."""
    _rewritten(path, lambda name, data: data.replace(
        b"http://schemas.openxmlformats.org/spreadsheetml/2006/main", b"http://purl.oclc.org/ooxml/spreadsheetml/main",
    ).replace(b"http://schemas.openxmlformats.org/officeDocument/2006/relationships",
              b"http://purl.oclc.org/ooxml/officeDocument/relationships"))


def with_prefixed_sheets(path):
    """The workbook with its sheets' elements under a prefix (`<x:c r="A1">`),
    as .NET's Open XML SDK writes them."""
    _rewritten(path, lambda name, data: re.sub(rb"<(/?)([A-Za-z])", rb"<\1x:\2", data).replace(b"xmlns=", b"xmlns:x=")
               if name.startswith("xl/worksheets/") else data)


FAR_READ = (
    "import sys; from pathlib import Path\n"
    "from loan_engine_dagster.adapters.files import open_workbook, read_sheet\n"
    "path = Path(sys.argv[1])\n"
    "try:\n"
    "    read_sheet(open_workbook(path), path)\n"
    "except Exception as exc:\n"
    "    print(type(exc).__name__, exc.problem)\n"
)


def test_a_sheet_written_with_prefixed_elements_gets_the_far_value_guard(tmp_path):
    # Past bug: the guard looked for `<dimension` and `<c r=` only; a sheet
    # written as `<x:c r="A1">` (which the reader reads) with a stray value at
    # XFD1048576 was not refused and aborted the process.
    _far_value_is_refused(tmp_path, with_prefixed_sheets)


def without_dimension(path):
    """The workbook with no `<dimension>` in its sheets: it is optional, and
    some streaming writers leave it out."""
    _rewritten(path, lambda name, data: re.sub(rb"<dimension [^>]*/>", b"", data)
               if name.startswith("xl/worksheets/") else data)


def _far_value_is_refused(tmp_path, rewrite) -> None:
    """A sheet holding a stray value at XFD1048576, rewritten by `rewrite`,
    is refused by name in a process of its own (reading it would abort one)."""
    path = tmp_path / "SFY_02-19-2026_ExhibitAtoFormofSaleNotice - Pre-Funding.xlsx"
    book = openpyxl.Workbook()
    book.active.title = "Exhibit A"
    book.active["A1"] = "SELLER Loan #"
    book.active["XFD1048576"] = "."
    book.save(path)
    rewrite(path)
    done = subprocess.run([sys.executable, "-c", FAR_READ, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("StructuralError values reach cell XFD1048576, far outside the table")


def test_a_sheet_without_a_declared_range_gets_the_far_value_guard(batch, rules, tmp_path):
    # Past bug: the guard read the sheet's declared range and trusted its
    # absence: a sheet without one (optional in the format) holding a stray
    # value at XFD1048576 aborted the process.
    _far_value_is_refused(tmp_path, without_dimension)

    write_exhibit(batch.exhibits["sfy"], [loan("PLAIN")])  # and a table of usual size reads as usual
    without_dimension(batch.exhibits["sfy"])
    assert sfy_loans(batch, rules).loc["PLAIN", "row_problems"] == ""


def test_a_strict_open_xml_exhibit_gets_the_same_guards(batch, rules, tmp_path):
    # Past bug: the sheet's XML was looked up under the usual namespaces only,
    # so in a workbook saved as Strict Open XML (which the reader reads) a
    # stray value at XFD1048576 was not refused and aborted the process, and
    # a formula never computed was reported as an empty cell.
    _far_value_is_refused(tmp_path, as_strict)

    write_exhibit(batch.exhibits["sfy"], [loan("FORMULA", **{"FICO Borrower": "=700+20"})])
    as_strict(batch.exhibits["sfy"])
    assert sfy_loans(batch, rules).loc["FORMULA", "row_problems"].startswith("FICO Borrower holds a formula (=700+20)")


@pytest.mark.parametrize("cell", ["Feb\u00a019, 2026", "19\u00a0Feb\u00a02026", "Feb 19,\u00a02026", "2/19/2026\u202f3:45\u00a0PM"])
def test_a_text_date_spaced_with_non_breaking_spaces_is_read(batch, rules, cell):
    # Past bug: "Feb 19, 2026" typed with non-breaking spaces (copied from a
    # web page, a PDF or an e-mail) was refused as "Submit Date 'Feb 19,
    # 2026' is not a date", a message showing a date that reads like any other.
    write_exhibit(batch.exhibits["sfy"], [loan("SPACED", **{"Submit Date": cell})])
    loans = sfy_loans(batch, rules)
    assert loans.loc["SPACED", "row_problems"] == "" and loans.loc["SPACED", "submit_date"] == dt.datetime(2026, 2, 19)


def test_a_tu144_flag_written_as_a_word_is_that_flag(batch, rules):
    # Past bug: a TU144 of "Y" (or "Yes", "N", "false") rejected the loan as
    # "TU144 'Y' is not a number", though nobody reads it as anything but 1.
    words = {"Y": 1.0, "yes": 1.0, " TRUE ": 1.0, "N": 0.0, "No": 0.0, "false": 0.0}
    book = write_exhibit(batch.exhibits["sfy"], [loan(f"W{i}") for i in range(len(words) + 1)])
    sheet = book.active
    sheet.cell(row=2, column=len(EXHIBIT_HEADER) + 1, value="TU 144")
    for row, word in enumerate([*words, "maybe"], start=3):
        sheet.cell(row=row, column=len(EXHIBIT_HEADER) + 1, value=word)
    book.save(batch.exhibits["sfy"])
    loans = sfy_loans(batch, rules)
    for i, value in enumerate(words.values()):
        assert loans.loc[f"W{i}", "row_problems"] == "" and loans.loc[f"W{i}", "tu144"] == value, i
    assert loans.loc[f"W{len(words)}", "row_problems"] == "TU 144 'maybe' is not a number"


def test_a_text_formula_saved_as_0_is_not_read_as_the_text_0(batch, rules):
    # Past bug: XlsxWriter saves a text formula with 0 in place of its value
    # too: a Loan Program of ="Std "&"120" was read as the program "0"
    # (unknown_program), a Property State of =UPPER("ca") as the state "0".
    write_with_xlsxwriter(batch.exhibits["sfy"], [
        loan("TEXT", **{"Loan Program": '="Std "&"120"', "Property State": '=UPPER("ca")'})])
    never = ("whose value was never computed (the program that wrote the file saved 0 in its place): open the file "
             "in Excel and save it again")
    assert sfy_loans(batch, rules).loc["TEXT", "row_problems"] == (
        f'Loan Program holds a formula (="Std "&"120") {never}; Property State holds a formula (=UPPER("ca")) {never}')


def test_a_date_formula_saved_as_0_is_not_read_as_1899_12_30(batch, rules):
    # Past bug: XlsxWriter saves =DATE(2026,2,1) as 0. Unformatted, 0 was read
    # as the Excel serial for 1899-12-30, a valid Submit Date that chose the
    # oldest CoMAP sheets without a word; formatted as a date, the reader gave
    # a time of 00:00 and the loan was rejected as "Submit Date '00:00:00' is
    # not a date".
    def date_formula(sheet, r, c, row, header, dates):
        if header != "Submit Date":
            return False
        sheet.write_formula(r, c, "=DATE(2026,2,1)", dates if row["SELLER Loan #"] == "DATED" else None)
        return True

    write_with_xlsxwriter(batch.exhibits["sfy"], [loan("PLAIN"), loan("DATED")], cell=date_formula)
    problems = sfy_loans(batch, rules)["row_problems"]
    expected = ("Submit Date holds a formula (=DATE(2026,2,1)) whose value was never computed (the program that wrote "
                "the file saved 0 in its place): open the file in Excel and save it again")
    assert problems["PLAIN"] == problems["DATED"] == expected


@pytest.mark.parametrize(("header", "problem"), [
    ("FICO Borrower", "required column missing"),
    ("SELLER Loan #", "no header row with a cell reading 'SELLER Loan #'"),
])
def test_a_header_that_is_a_formula_never_computed_is_named(batch, rules, header, problem):
    # Past bug: a header cell holding a formula never computed (a template
    # whose headers come from a setup sheet, saved by openpyxl) reads as
    # empty: the batch failed as "required column missing" or "no header
    # row" while Excel shows the header right there.
    book = write_exhibit(batch.exhibits["sfy"], [loan("L1")])
    column = EXHIBIT_HEADER.index(header) + 1
    book.active.cell(row=2, column=column, value=f'="{header}"')
    book.active.merge_cells("A1:Q1")  # a merged title says nothing about the header
    book.save(batch.exhibits["sfy"])
    with pytest.raises(StructuralError, match=re.escape(problem)) as caught:
        load_batch_inputs(batch, rules)
    letter = openpyxl.utils.get_column_letter(column)
    assert caught.value.problem.endswith(
        f'; cell {letter}2 holds a formula (="{header}") whose value was never saved: open the file in Excel and save '
        "it again")
