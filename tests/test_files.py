import pytest
import xlsxwriter

from loan_engine_dagster.adapters.files import open_workbook, read_csv, read_sheet
from loan_engine_dagster.rules.errors import StructuralError


def test_not_a_workbook(tmp_path):
    path = tmp_path / "MASTER_SHEET.xlsx"
    path.write_text("this is not a zip file")
    with pytest.raises(StructuralError, match="not a readable workbook") as err:
        open_workbook(path)
    assert err.value.file == "MASTER_SHEET.xlsx"


def test_missing_file(tmp_path):
    with pytest.raises(StructuralError, match="the file is missing"):
        open_workbook(tmp_path / "nope.xlsx")
    with pytest.raises(StructuralError, match="the file is missing"):
        read_csv(tmp_path / "nope.csv")


def test_missing_sheet_lists_what_is_there(tmp_path):
    path = tmp_path / "Underwriting_Grids_COMAP.xlsx"
    with xlsxwriter.Workbook(str(path)) as wb:
        wb.add_worksheet("SFY")
        wb.add_worksheet("Prime")
    with pytest.raises(StructuralError) as err:
        read_sheet(open_workbook(path), path, "SFY - Notes")
    assert err.value.sheet == "SFY - Notes"
    assert "the workbook has: SFY, Prime" in str(err.value)


def test_sheet_aligned_to_a1_with_leading_blank_rows(tmp_path):
    path = tmp_path / "x.xlsx"
    with xlsxwriter.Workbook(str(path)) as wb:
        ws = wb.add_worksheet("S")
        ws.write(4, 2, "SELLER Loan #")
    name, raw = read_sheet(open_workbook(path), path)
    assert name == "S" and raw.iloc[4, 2] == "SELLER Loan #"


def test_sheet_names_match_case_insensitively(tmp_path):
    path = tmp_path / "x.xlsx"
    with xlsxwriter.Workbook(str(path)) as wb:
        wb.add_worksheet("SFY COMAP")
    assert read_sheet(open_workbook(path), path, "sfy comap ")[0] == "SFY COMAP"


def test_unreadable_csv(tmp_path):
    path = tmp_path / "current_assets.csv"
    path.write_bytes(b"")
    with pytest.raises(StructuralError, match="not a readable CSV") as err:
        read_csv(path)
    assert err.value.file == "current_assets.csv"


def _pandas_reader(path):
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


@pytest.mark.parametrize("text", [
    "SELLER Loan #,Orig. Balance,note\nSFC_1,100.5,\nSFC_2,,x\n\nSFC_3,3,\"a, b\"\n",  # the fast reader's case
    "SELLER Loan #, Orig. Balance, note\nSFC_1, 100.5, \"a, b\"\nSFC_2,\t7,\n",  # spaces after commas: pandas' reader
])
def test_csv_reads_as_pandas_reads_it(tmp_path, text):
    path = tmp_path / "t.csv"
    path.write_text(text)
    frame, expected = read_csv(path), _pandas_reader(path)
    assert list(frame.columns) == list(expected.columns)
    assert frame.to_dict("list") == expected.to_dict("list")
    assert all(str(t) == "str" for t in frame.dtypes)
