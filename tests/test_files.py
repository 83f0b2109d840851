import json
import subprocess
import sys

import pytest
import xlsxwriter

from loan_engine_dagster.adapters import files
from loan_engine_dagster.adapters.files import open_workbook, read_ahead, read_csv, read_sheet
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


def _hidden_first(path, *states):
    """A workbook whose sheets have these states, the first one hidden: the
    seller's old tab kept out of sight in front of the one to review."""
    import openpyxl

    wb = openpyxl.Workbook()
    for i, state in enumerate(("hidden", *states)):
        ws = wb.active if i == 0 else wb.create_sheet()
        ws.title = f"S{i}"
        ws["A1"] = f"sheet {i} ({state})"
        ws.sheet_state = state
    wb.active = next((i for i, state in enumerate(("hidden", *states)) if state == "visible"), 0)
    wb.save(path)


def test_a_hidden_first_sheet_is_not_read_as_the_first_sheet(tmp_path, monkeypatch):
    path = tmp_path / "SFY_02-19-2026_ExhibitAtoFormofSaleNotice - Pre-Funding.xlsx"
    _hidden_first(path, "veryHidden", "visible", "visible")
    name, raw = read_sheet(open_workbook(path), path)
    assert (name, raw.iloc[0, 0]) == ("S2", "sheet 2 (visible)")
    assert read_sheet(open_workbook(path), path, "S0")[1].iloc[0, 0] == "sheet 0 (hidden)"  # by name, as asked
    # Read ahead, every sheet is read by name: the step takes the visible one from there.
    _read_ahead_and_wait(path)
    from_disk = []
    monkeypatch.setattr(files, "_sheet_frame", lambda *a, real=files._sheet_frame: from_disk.append(a[2]) or real(*a))
    name, raw = read_sheet(open_workbook(path), path)
    assert (name, raw.iloc[0, 0], from_disk) == ("S2", "sheet 2 (visible)", [])


def test_a_chart_tab_in_front_is_not_read_as_the_first_sheet(tmp_path):
    """A chart of the data in front of the data sheet was read as an empty
    sheet: "the sheet is empty", about a tab that holds no cells at all."""
    import openpyxl
    from openpyxl.chart import BarChart, Reference

    path = tmp_path / "MASTER_SHEET.xlsx"
    wb = openpyxl.Workbook()
    data = wb.active
    data.title = "Programs"
    data.append(["Program", "Balance"])
    data.append(["P1", 100])
    tab = wb.create_chartsheet("Chart", 0)
    chart = BarChart()
    chart.add_data(Reference(data, min_col=2, min_row=1, max_row=2), titles_from_data=True)
    tab.add_chart(chart)
    wb.save(path)
    name, raw = read_sheet(open_workbook(path), path)
    assert (name, raw.iloc[1, 0]) == ("Programs", "P1")


def test_a_workbook_with_every_sheet_hidden_is_a_structural_error(tmp_path):
    import zipfile

    # Excel and openpyxl refuse to save such a workbook; another program, or a
    # hand edit, need not: its last visible sheet is hidden inside the file.
    saved, path = tmp_path / "saved.xlsx", tmp_path / "MASTER_SHEET.xlsx"
    _hidden_first(saved, "visible")
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "xl/workbook.xml":
                assert data.count(b'state="visible"') == 1
                data = data.replace(b'state="visible"', b'state="hidden"')
            target.writestr(item, data)
    with pytest.raises(StructuralError, match=r"no visible worksheet \(S0, S1: hidden, or charts\)") as err:
        read_sheet(open_workbook(path), path)
    assert err.value.file == "MASTER_SHEET.xlsx"


# Each reader of an input file, by name, in a process of its own (see the
# `unreadable` fixture): what it raised, as JSON.
_READERS = """
import json, sys
from pathlib import Path
from loan_engine_dagster.adapters.files import open_workbook, read_ahead, read_csv, read_sheet
from loan_engine_dagster.adapters.inbox import describe_file
path = Path(sys.argv[1])
read_ahead([path])  # met there first, its failure must leave the steps their own error
readers = {"read": lambda: read_csv(path) if path.suffix == ".csv" else read_sheet(open_workbook(path), path),
           "describe_file": lambda: describe_file("tape", path)}
out = {}
for name, reader in readers.items():
    try:
        reader()
        out[name] = None
    except Exception as exc:
        out[name] = [type(exc).__name__, str(exc), getattr(exc, "kind", None)]
print(json.dumps(out))
"""


@pytest.mark.parametrize("linked", [False, True], ids=["file", "link into a private folder"])
@pytest.mark.parametrize("name", ["SFY_02-19-2026_ExhibitAtoFormofSaleNotice - Pre-Funding.xlsx", "Tape20Loans_02-19-2026.csv"])
def test_a_file_this_process_may_not_read_is_named_as_such(tmp_path, unreadable, name, linked):
    # Past bug: `not a readable workbook (OSError: Permission denied (os error 13))`
    # or a bare PermissionError, both blamed on the seller's file. A link into
    # a folder it may not enter failed before the reader, on looking whether
    # the file is there.
    path = tmp_path / name
    target = tmp_path / "private" / name if linked else path
    target.parent.mkdir(exist_ok=True)
    if path.suffix == ".csv":
        target.write_text("SELLER Loan #,Orig. Balance\nSFC_1,100.5\n")
    else:
        _two_sheets(target, "SELLER Loan #")
    if linked:
        path.symlink_to(target)
    unreadable.make(target.parent if linked else path)
    result = subprocess.run([*unreadable.prefix, sys.executable, "-c", _READERS, str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    said = (f"file '{name}' cannot be read: permission denied to this process's account ({path}); "
            "give it read access (and search access to the folders it is in) and re-run")
    assert json.loads(result.stdout) == {"read": ["InboxUnreadable", said, "infra"],
                                         "describe_file": ["InboxUnreadable", said, "infra"]}


def _pandas_reader(path):
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, skip_blank_lines=False)
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


TAPE_TEXT = "Account Number,Loan Group,Status Codes\n1000001,FX1-B,ACTIVE\n1000002,FX3-A,REPURCHASE;Peña note\n"


@pytest.mark.parametrize(("encoding", "bom"), [
    ("cp1252", b""),  # Excel's "CSV (Comma delimited)" on Windows
    ("utf-16-le", b"\xff\xfe"),  # saved as Unicode text
    ("utf-16-be", b"\xfe\xff"),
    ("utf-8", b"\xef\xbb\xbf"),  # Excel's "CSV UTF-8"
])
def test_a_csv_saved_in_another_encoding_reads_as_its_utf8_copy(tmp_path, encoding, bom):
    """Past bug: a tape saved by Excel on Windows (one `ñ` in a note) failed
    the batch with "'utf-8' codec can't decode byte 0xf1 in position 7"."""
    plain = tmp_path / "plain.csv"
    plain.write_text(TAPE_TEXT, encoding="utf-8")
    other = tmp_path / "Tape20Loans_02-18-2026.csv"
    other.write_bytes(bom + TAPE_TEXT.encode(encoding))
    frame, expected = read_csv(other), read_csv(plain)
    assert list(frame.columns) == list(expected.columns)
    assert frame.to_dict("list") == expected.to_dict("list")


@pytest.mark.parametrize(("encoding", "bom"), [("utf-16-le", b"\xff\xfe"), ("utf-8", b"")])
def test_a_tab_separated_file_is_refused_as_such(tmp_path, encoding, bom):
    """Excel's "Unicode Text" is UTF-16 and tab-separated. Past bug (second
    read): read as one column, it failed as "required column missing (did you
    mean 'Account Number<tab>Loan Group<tab>Status Codes')", sending on-call
    to map a new spelling in the rules file."""
    path = tmp_path / "Tape20Loans_02-18-2026.csv"
    path.write_bytes(bom + TAPE_TEXT.replace(",", "\t").encode(encoding))
    with pytest.raises(StructuralError, match="tab-separated, not comma-separated: save it again as CSV UTF-8"):
        read_csv(path)


def test_a_csv_whose_data_lines_end_with_a_delimiter_is_read_in_its_own_columns(tmp_path):
    # Past bug: one field more than the header on every data line made the
    # fallback reader take the first column as the row index: each column
    # read as the one before it (Status Codes empty, every repurchase missed).
    path = tmp_path / "Tape20Loans_02-18-2026.csv"
    path.write_text("Account Number,Customer Number,Status Codes\r\n1000000,880000,REPURCHASE,\r\n1000001,880001,,\r\n")
    frame = read_csv(path)
    assert frame.to_dict("list") == {"Account Number": ["1000000", "1000001"], "Customer Number": ["880000", "880001"],
                                     "Status Codes": ["REPURCHASE", ""]}


def test_a_value_past_the_headers_last_column_names_its_row(tmp_path):
    path = tmp_path / "Tape20Loans_02-18-2026.csv"
    path.write_text("Account Number,Status Codes\n1,,\n2,REPURCHASE,late\n3,,\n4,, x\n")
    with pytest.raises(StructuralError) as err:
        read_csv(path)
    assert err.value.rows == [3, 5] and err.value.file == path.name
    assert "values past the header's last column (it names 2)" in str(err.value)


def test_a_csv_in_no_known_encoding_names_its_row(tmp_path):
    path = tmp_path / "Tape20Loans_02-18-2026.csv"
    # 0x81 is a byte no Windows-1252 text holds, and no UTF-8 either.
    path.write_bytes(TAPE_TEXT.encode("utf-8").replace(b"FX3-A", b"FX3\x81A"))
    with pytest.raises(StructuralError) as err:
        read_csv(path)
    assert err.value.file == "Tape20Loans_02-18-2026.csv"
    assert "line 3 " in str(err.value) and "save it again as CSV UTF-8" in str(err.value), str(err.value)


def test_a_space_in_the_last_row_of_a_many_block_csv_goes_to_pandas_reader(tmp_path):
    # Arrow reads a file this size in several blocks; the check must see them all.
    rows = [f"SFC_{i},{i}.5,note {i}" for i in range(80_000)] + ["SFC_last,1, 7"]
    path = tmp_path / "t.csv"
    path.write_text("SELLER Loan #,Orig. Balance,note\n" + "\n".join(rows) + "\n")
    frame = read_csv(path)
    assert frame["note"].iloc[-1] == "7"
    assert frame.to_dict("list") == _pandas_reader(path).to_dict("list")


def _two_sheets(path, first_cell):
    with xlsxwriter.Workbook(str(path)) as wb:
        wb.add_worksheet("SFY").write(0, 0, first_cell)
        wb.add_worksheet("Prime").write(2, 1, "x")


def _read_ahead_and_wait(*paths):
    read_ahead(paths)
    for path in paths:
        files._AHEAD[files._key(path)][1].result()


def test_files_read_ahead_read_as_the_files_do_and_only_once(tmp_path, monkeypatch):
    workbook, table = tmp_path / "grids.xlsx", tmp_path / "tape.csv"
    _two_sheets(workbook, "SELLER Loan #")
    table.write_text("SELLER Loan #,Orig. Balance\nSFC_1,100.5\n")
    expected = {name: read_sheet(open_workbook(workbook), workbook, name)[1] for name in ("SFY", "Prime")}
    expected_csv = read_csv(table)
    _read_ahead_and_wait(workbook, table)
    # From here on a read that goes to the disk is seen.
    from_disk = []
    monkeypatch.setattr(files, "_sheet_frame", lambda *a, real=files._sheet_frame: from_disk.append(a[2]) or real(*a))
    monkeypatch.setattr(files, "_csv_frame", lambda path, real=files._csv_frame: from_disk.append(path.name) or real(path))
    for name in ("prime", "SFY"):
        name, frame = read_sheet(open_workbook(workbook), workbook, name)
        assert frame.equals(expected[name])
    assert read_csv(table).equals(expected_csv)
    assert from_disk == [] and files._key(workbook) not in files._AHEAD and files._key(table) not in files._AHEAD
    read_sheet(open_workbook(workbook), workbook, "SFY")
    read_csv(table)
    assert from_disk == ["SFY", "tape.csv"]


def test_a_file_replaced_after_it_was_read_ahead_is_read_again(tmp_path):
    workbook, table = tmp_path / "exhibit.xlsx", tmp_path / "tape.csv"
    _two_sheets(workbook, "old")
    table.write_text("a,b\nold,1\n")
    _read_ahead_and_wait(workbook, table)
    _two_sheets(workbook, "new")  # the seller sends the file again while the run starts
    table.write_text("a,b\nnew,1\n")
    assert read_sheet(open_workbook(workbook), workbook)[1].iloc[0, 0] == "new"
    assert read_csv(table)["a"].tolist() == ["new"]


def test_a_bad_file_read_ahead_is_reported_by_the_step_as_always(tmp_path):
    workbook, table, gone = tmp_path / "MASTER_SHEET.xlsx", tmp_path / "current_assets.csv", tmp_path / "gone.csv"
    workbook.write_text("this is not a zip file")
    table.write_bytes(b"")
    read_ahead([workbook, table, gone])
    with pytest.raises(StructuralError, match="not a readable workbook"):
        open_workbook(workbook)
    with pytest.raises(StructuralError, match="not a readable CSV") as err:
        read_csv(table)
    assert err.value.file == "current_assets.csv"
    with pytest.raises(StructuralError, match="the file is missing"):
        read_csv(gone)


@pytest.mark.parametrize("far", ["XFD1048576", "S1048576", "ZZ200000"])
def test_a_value_far_outside_the_table_is_a_structural_error_not_a_crash(tmp_path, far):
    # Past bug: calamine holds A1 to the last value as one block, and a stray
    # value at XFD1048576 asked for 512 GiB and aborted the process with a
    # Rust backtrace; the run died without naming the file.
    import openpyxl

    path = tmp_path / "SFY_02-19-2026_ExhibitAtoFormofSaleNotice - Pre-Funding.xlsx"
    workbook = openpyxl.Workbook()
    workbook.active.title = "Exhibit A"
    workbook.active["A1"] = "SELLER Loan #"
    workbook.active[far] = "."
    workbook.save(path)
    # In a child process: without the guard, the read aborts the process.
    script = (
        "import sys; from pathlib import Path\n"
        "from loan_engine_dagster.adapters.files import open_workbook, read_ahead, read_sheet\n"
        "path = Path(sys.argv[1])\n"
        "read_ahead([path])  # met there first, its failure must leave the step its own error\n"
        "try:\n"
        "    read_sheet(open_workbook(path), path)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc.file, exc.sheet, exc.problem)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"StructuralError {path.name} Exhibit A values reach cell {far}, far outside the table")


def test_a_far_cell_with_a_format_and_no_value_is_read_as_usual(tmp_path):
    import openpyxl
    from openpyxl.styles import Font

    path = tmp_path / "MASTER_SHEET.xlsx"
    workbook = openpyxl.Workbook()
    workbook.active["A1"] = "loan program"
    workbook.active["XFD1048576"].font = Font(bold=True)  # widens the sheet's declared range only
    workbook.save(path)
    _, frame = read_sheet(open_workbook(path), path)
    assert frame.shape == (1, 1) and frame.iloc[0, 0] == "loan program"


def test_a_value_past_the_header_is_found_while_another_file_is_read_beside_it(tmp_path):
    # Past bug (second read): the check listened for pandas' warning, which
    # another thread's read could take: the stray value was dropped unseen.
    from concurrent.futures import ThreadPoolExecutor

    stray, spaced = tmp_path / "stray.csv", tmp_path / "spaced.csv"
    stray.write_text("Account Number,Status Codes\n" + "1,,\n" * 20000 + "2,REPURCHASE,late\n")
    spaced.write_text("a,b\n" + "1, 2\n" * 20000)
    for _ in range(3):
        with ThreadPoolExecutor(max_workers=2) as pool:
            spaced_read = pool.submit(files._csv_frame, spaced)
            with pytest.raises(StructuralError, match="values past the header's last column"):
                pool.submit(files._csv_frame, stray).result()
            assert len(spaced_read.result()) == 20000
