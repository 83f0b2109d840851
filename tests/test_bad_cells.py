"""Hostile cells (infinite or huge numbers, dates pandas cannot hold) reject
their own loan as invalid_data and the batch goes on: through the real
workbook reader, and through one whole `loan-engine run`."""

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from conftest import EXHIBIT_HEADER, loan
from loan_engine_dagster.adapters import database
from loan_engine_dagster.adapters.files import open_workbook, read_sheet
from loan_engine_dagster.rules import parsing
from loan_engine_dagster.rules.errors import StructuralError

BIN = Path(sys.executable).parent
BATCH = "2026-02-19"
HUGE = 1.5e308  # written as a number cell, then turned into 1e400 in the sheet's XML


def write_numeric_overflow(path: Path) -> None:
    """Excel files can hold a number cell reading `1e400`; openpyxl cannot write
    one, so the sheet's XML is edited the way another program would write it."""
    with zipfile.ZipFile(path) as source:
        items = {name: source.read(name) for name in source.namelist()}
    for name, data in items.items():
        if name.startswith("xl/worksheets/"):
            items[name] = data.replace(b"<v>1.5e+308</v>", b"<v>1e400</v>")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for name, data in items.items():
            target.writestr(name, data)


# (column, cell as written, what the loan's problem says); one loan per case
CASES = [
    ("Orig. Balance", "inf", "Orig. Balance 'inf' on sheet 'Exhibit A' is out of range"),
    ("Orig. Balance", "1e400", "Orig. Balance '1e400' on sheet 'Exhibit A' is out of range"),
    ("Orig. Balance", "-inf", "Orig. Balance '-inf' on sheet 'Exhibit A' is out of range"),
    ("Orig. Balance", "nan", "Orig. Balance 'nan' is not a number"),
    ("Orig. Balance", HUGE, "Orig. Balance 'inf' on sheet 'Exhibit A' is out of range"),
    ("Income", "1e400", "Income '1e400' on sheet 'Exhibit A' is out of range"),
    ("APR", "-1e300", "APR '-1e300' on sheet 'Exhibit A' is out of range"),
    ("Stamp fee", "inf", "Stamp fee 'inf' on sheet 'Exhibit A' is out of range"),
    ("Submit Date", dt.datetime(9999, 12, 31), "Submit Date '9999-12-31' on sheet 'Exhibit A' is out of range"),
    ("Submit Date", "9999-12-31", "Submit Date '9999-12-31' on sheet 'Exhibit A' is out of range"),
    ("Submit Date", 99999999, "Submit Date '99999999.0' on sheet 'Exhibit A' is out of range"),
    ("Submit Date", -99999999, "Submit Date '-99999999.0' on sheet 'Exhibit A' is out of range"),
    ("Submit Date", "1066-10-14", "Submit Date '1066-10-14' on sheet 'Exhibit A' is out of range"),
    ("Submit Date", "inf", "Submit Date 'inf' on sheet 'Exhibit A' is out of range"),
]


def test_hostile_cells_read_from_a_real_workbook_reject_only_their_loan(tmp_path, rules):
    path = tmp_path / "SFY_hostile.xlsx"
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Exhibit A"
    sheet.append(["Exhibit A to Form of Sale Notice"])
    sheet.append(EXHIBIT_HEADER)
    rows = [loan("SFC_GOOD")] + [loan(f"SFC_{i}", **{column: cell}) for i, (column, cell, _) in enumerate(CASES)]
    for row in rows:
        sheet.append([row[h] for h in EXHIBIT_HEADER])
    book.save(path)
    write_numeric_overflow(path)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow or invalid-value warnings either
        name, raw = read_sheet(open_workbook(path), path)
        frame = parsing.parse_exhibit(raw, platform="sfy", file=path.name, sheet=name, rules=rules)
    problems = frame.set_index("seller_loan_number")["row_problems"]
    rows_at = frame.set_index("seller_loan_number")["source_row"]
    assert problems["SFC_GOOD"] == ""
    for i, (_, _, expected) in enumerate(CASES):
        assert problems[f"SFC_{i}"].startswith(expected), (i, problems[f"SFC_{i}"])
        assert rows_at[f"SFC_{i}"] == i + 4  # title row 1, header row 2, SFC_GOOD row 3
    assert frame["orig_balance"].abs().max() < float("inf") and frame["submit_date"].dtype == "datetime64[ns]"


def test_reference_file_with_an_infinite_number_is_structural():
    frame = pd.DataFrame({"loan program": ["Std 120"], "Min FICO": ["inf"]}, dtype=object)
    raw = pd.DataFrame([list(frame.columns)] + frame.values.tolist(), dtype=object)
    with pytest.raises(StructuralError, match=r"sheet 'CoMAP', column 'Min FICO', row 2: empty or unreadable"):
        parsing.parse_comap_sheet(raw, file="grids.xlsx", sheet="CoMAP", max_rows=20)


def _spoil(path: Path, spoils: dict[int, tuple[str, object]]) -> dict[str, int]:
    """Write hostile cells into the given loan rows (0 = first loan) of a real
    exhibit; returns {seller loan number: spreadsheet row}."""
    book = openpyxl.load_workbook(path)
    sheet = book.worksheets[0]
    header_row = next(r for r in range(1, 21) if any(c.value == "SELLER Loan #" for c in sheet[r]))
    columns = {c.value: c.column for c in sheet[header_row] if c.value}
    spoiled = {}
    for offset, (column, value) in spoils.items():
        row = header_row + 1 + offset
        sheet.cell(row=row, column=columns[column], value=value)
        # A loan number of its own: the sample inbox offers a few numbers twice on purpose.
        sheet.cell(row=row, column=columns["SELLER Loan #"], value=f"HOSTILE_{offset}")
        spoiled[f"HOSTILE_{offset}"] = row
    book.save(path)
    return spoiled


@pytest.mark.slow
def test_whole_run_with_hostile_cells_goes_on(sample_inbox, tmp_path):
    inbox = tmp_path / "inbox"
    shutil.copytree(sample_inbox, inbox)
    sfy = next(inbox.glob("SFY_*.xlsx"))
    spoiled = _spoil(sfy, {0: ("Orig. Balance", "inf"), 1: ("Orig. Balance", "1e400"), 2: ("Orig. Balance", HUGE),
                           3: ("Submit Date", dt.datetime(9999, 12, 31)), 4: ("Submit Date", 99999999),
                           5: ("Submit Date", "1066-10-14"), 6: ("Dealer Fee", "-inf")})
    write_numeric_overflow(sfy)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_"))}
    env["DAGSTER_HOME"] = str(home)
    results_url = f"sqlite:///{tmp_path / 'results.db'}"
    result = subprocess.run(
        [str(BIN / "loan-engine"), "run", BATCH, "--inbox", str(inbox), "--output-dir", str(tmp_path / "out"),
         "--database-url", results_url], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stderr and "Traceback" not in result.stderr, result.stderr

    folder = tmp_path / "out" / BATCH
    decisions = pd.read_csv(folder / "loan_decisions.csv", dtype=str, keep_default_na=False).set_index("seller_loan_number")
    assert len(decisions) == 600
    for number, row in spoiled.items():
        assert decisions.loc[number, "rejection_reasons"] == "invalid_data"
        message = decisions.loc[number, "message"]
        assert message.startswith(f"{sfy.name} row {row}: ") and "out of range" in message, message
        assert re.search(r"on sheet '[^']+'", message), message
    assert (decisions.drop(index=list(spoiled))["rejection_reasons"] != "invalid_data").sum() > 500  # the rest went on

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))

    strict((folder / "run_summary.json").read_text())
    strict((folder / "eligibility_checks.json").read_text())
    engine = database.engine_for(results_url)
    assert database.batch_row_counts(engine, BATCH)["loan_facts"] == 600
    engine.dispose()
