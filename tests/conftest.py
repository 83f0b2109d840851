"""Builders for small, readable test inputs, made in code (no committed binaries)."""

from __future__ import annotations

import contextlib
import datetime as dt

import pandas as pd
import pytest

from loan_engine_dagster.rules import parsing, pipeline
from loan_engine_dagster.rules.config import default_rules

BATCH = dt.date(2026, 2, 19)
EXHIBIT_HEADER = [
    "SELLER Loan #", "Loan Program", "Application Type", "Property State", "Orig. Balance", "Income",
    "FICO Borrower", "DTI", "PTI", "Term", "APR", "Lender Price(%)", "modeled_purchase_price", "Dealer Fee",
    "Submit Date", "Stamp fee", "promo_term",
]


@pytest.fixture(scope="session")
def rules():
    return default_rules()


def loan(number: str, **overrides) -> dict:
    """A loan that passes every rule against the default reference data."""
    row = {
        "SELLER Loan #": number, "Loan Program": "Std 120", "Application Type": "Individual",
        "Property State": "CA", "Orig. Balance": 10000.0, "Income": 60000.0, "FICO Borrower": 720,
        "DTI": 0.30, "PTI": 0.05, "Term": 120, "APR": 9.99, "Lender Price(%)": 98.75,
        "modeled_purchase_price": 0.9875, "Dealer Fee": 4.5, "Submit Date": dt.datetime(2026, 2, 1),
        "Stamp fee": 0, "promo_term": 0,
    }
    row.update(overrides)
    return row


def exhibit_raw(rows: list[dict], title_rows: int = 3, extra_header: list[str] = ()) -> pd.DataFrame:
    """A sheet as the reader returns it: title block, header row, loans."""
    header = list(EXHIBIT_HEADER) + [h for h in extra_header if h not in EXHIBIT_HEADER]
    for row in rows:
        header += [k for k in row if k not in header]
    grid = [["Exhibit A to Form of Sale Notice"] + [""] * (len(header) - 1)]
    grid += [[""] * len(header) for _ in range(title_rows - 1)]
    grid.append(header)
    grid += [[row.get(h, "") for h in header] for row in rows]
    return pd.DataFrame(grid, dtype=object)


def sheet_raw(header: list[str], rows: list[list]) -> pd.DataFrame:
    return pd.DataFrame([header] + rows, dtype=object)


def master_frame(rows: list[tuple]) -> pd.DataFrame:
    return parsing.parse_master(
        sheet_raw(["loan program", "platform", "type", "new_programs"], [list(r) for r in rows]),
        file="MASTER_SHEET.xlsx", sheet="Sheet1", max_rows=20,
    )


DEFAULT_MASTER = [
    ("Std 120", "SFY", "standard", False), ("Std 180", "SFY", "standard", False),
    ("Hybrid 12", "SFY", "hybrid", False), ("New Solar", "SFY", "standard", True),
    ("Std 120", "PRIME", "standard", False), ("Prime Hybrid", "PRIME", "hybrid", False),
]
DEFAULT_NOTES = [("Std 120", "SFY", "standard", False), ("Std 120", "PRIME", "standard", False)]
GRID_ROWS = [  # program, monthly_income_min, fico_min, approval_high, dti_max, pti_ratio
    ["Std 120", 3000, 640, 25000, 45, 0.10],
    ["Std 120", 2000, 700, 50000, 55, 0.15],
    ["Std 180", 3000, 680, 40000, 45, 0.10],
    ["Hybrid 12", 2500, 660, 40000, 50, 0.12],
    ["New Solar", 2500, 660, 40000, 50, 0.12],
    ["Prime Hybrid", 2500, 660, 40000, 50, 0.12],
]
GRID_HEADER = ["finance_type_name_nls", "monthly_income_min", "fico_min", "approval_high", "dti_max", "pti_ratio"]


def grids_frame(rows_by_sheet: dict[str, list[list]] | None = None) -> pd.DataFrame:
    rows_by_sheet = rows_by_sheet or {"SFY": GRID_ROWS, "Prime": GRID_ROWS, "SFY - Notes": GRID_ROWS[:2], "Prime - Notes": GRID_ROWS[:2]}
    return pd.concat(
        [parsing.parse_underwriting_grid(sheet_raw(GRID_HEADER, rows), file="grids.xlsx", sheet=name, max_rows=20)
         for name, rows in rows_by_sheet.items()],
        ignore_index=True,
    )


def band_sheet(rows: list[tuple[str, int]]) -> pd.DataFrame:
    """Band layout: each program listed from its minimum band upwards."""
    bands = [(600, "600-659"), (660, "660-699"), (700, "700-739"), (740, "740+")]
    return sheet_raw(["Applied Program"] + [b for _, b in bands],
                     [[p] + [p if low >= minimum else "" for low, _ in bands] for p, minimum in rows])


def comap_frame(sheets: dict[str, pd.DataFrame] | None = None, rules=None) -> pd.DataFrame:
    rules = rules or default_rules()
    default = band_sheet([("Std 120", 660), ("Std 180", 700), ("Hybrid 12", 660), ("Prime Hybrid", 660)])
    sheets = sheets or {}
    return pd.concat(
        [parsing.parse_comap_sheet(sheets.get(name, default), file="grids.xlsx", sheet=name, max_rows=20)
         for name in rules.comap_sheets()],
        ignore_index=True,
    )


def existing_frame(rows: list[dict] | None = None) -> pd.DataFrame:
    base = {
        "SELLER Loan #": "SFC_1", "platform": "SFY", "loan program": "Std 120", "type": "standard",
        "Orig. Balance": "10000", "Lender Price(%)": "98.75", "FICO Borrower": "720", "Term": "120", "APR": "9.99",
        "Property State": "CA", "Dealer Fee": "0.045", "Purchase_Date": "2025-06-01", "Repurchase": "FALSE",
    }
    rows = rows if rows is not None else [base]
    frame = pd.DataFrame([{**base, **r} for r in rows]) if rows else pd.DataFrame(columns=list(base))
    return parsing.parse_existing(frame.astype(str), file="current_assets.csv")


def tape_frame(numbers: list[str], repurchased: list[str] = ()) -> pd.DataFrame:
    rows = [{"Account Number": n.removeprefix("SFC_"), "Loan Group": "FX3-A",
             "Status Codes": "ACTIVE; Repurchase" if n in repurchased else "ACTIVE"} for n in numbers]
    return parsing.parse_tape(pd.DataFrame(rows, columns=["Account Number", "Loan Group", "Status Codes"]), file="tape.csv")


def run_rules(sfy: list[dict], prime: list[dict] = (), *, rules=None, master=None, notes=None, grids=None,
              comap=None, existing=None, tape=None, pdate=dt.date(2026, 2, 24)) -> pipeline.Decisions:
    """The pure pipeline over in-memory inputs, as the assets run it."""
    rules = rules or default_rules()
    exhibits = [parsing.parse_exhibit(exhibit_raw(rows), platform=p, file=f"{p.upper()}.xlsx", sheet="Exhibit A", rules=rules)
                for p, rows in (("sfy", sfy), ("prime", list(prime))) if rows]
    all_numbers = [r["SELLER Loan #"] for r in list(sfy) + list(prime)]
    reference = pipeline.ReferenceData(
        master=master if master is not None else master_frame(DEFAULT_MASTER),
        notes_master=notes if notes is not None else master_frame(DEFAULT_NOTES),
        existing=existing if existing is not None else existing_frame([]),
        grids=grids if grids is not None else grids_frame(),
        comap=comap if comap is not None else comap_frame(rules=rules),
    )
    inputs = pipeline.BatchInputs(
        batch_key="2026-02-19", notice_date=BATCH, exhibits=pd.concat(exhibits, ignore_index=True),
        tape=tape if tape is not None else tape_frame([n for n in all_numbers if str(n).startswith("SFC_")]),
    )
    normalized = pipeline.normalize(reference, inputs, rules, pdate)
    loans = pipeline.run_comap(pipeline.run_underwriting(normalized.loans, reference.grids, rules), reference.comap, rules)
    return pipeline.run_eligibility(loans, pipeline.portfolio(reference, normalized), rules)


def by_number(decisions: pipeline.Decisions) -> pd.DataFrame:
    return decisions.loans.set_index("seller_loan_number")


# ---------------------------------------------------------------- PostgreSQL

PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def postgres_url():
    """A fresh database on the local server, dropped afterwards."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"loan_engine_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def sample_inbox(tmp_path_factory):
    """A small generated inbox shared by the end-to-end tests (read-only)."""
    from loan_engine_dagster.adapters.sample import generate_inbox

    folder = tmp_path_factory.mktemp("inbox")
    generate_inbox(folder, loans=600, existing=3000, seed=11)
    return folder


@pytest.fixture
def unreadable():
    """`unreadable.make(path)` takes read access away from a file for real, and
    `unreadable.prefix` is the command prefix under which it stays away: tests
    run as root here, and root reads a file whatever its mode (the
    CAP_DAC_OVERRIDE capability), so as root the command runs without that
    capability (setpriv) and the kernel refuses the read with EACCES, as it
    does for a service account. Monkeypatching an opener would only test the
    fake."""
    import os
    import shutil
    import stat

    class Unreadable:
        def __init__(self):
            self.prefix, self.made = [], []

        def make(self, path):
            path.chmod(0)
            self.made.append(path)

    helper = Unreadable()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no way to be refused a read")
        helper.prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]
    yield helper
    for path in helper.made:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a file system with 64 KiB of room (a tmpfs mount), so that
    writing more than that fails with ENOSPC as on a full disk. Needs root."""
    import os
    import shutil

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small file system")
    with _mounted(tmp_path / "full", ["-t", "tmpfs", "-o", "size=64k", "tmpfs"]) as folder:
        yield folder


@pytest.fixture
def dead_share(tmp_path):
    """A folder where a network share is mounted whose server is gone: a FUSE
    mount with no process behind it, so that every look at it fails with
    ENOTCONN, as a crashed sshfs or rclone share does (NFS and CIFS give
    ESTALE or EIO the same way). Needs root and /dev/fuse."""
    import os
    import shutil

    if os.geteuid() != 0 or not os.path.exists("/dev/fuse") or shutil.which("mount") is None:
        pytest.skip("needs root and /dev/fuse to mount a share whose server is gone")
    with contextlib.ExitStack() as mounts:
        device = os.open("/dev/fuse", os.O_RDWR)
        try:
            folder = mounts.enter_context(_mounted(
                tmp_path / "share", ["-t", "fuse", "-o", f"fd={device},rootmode=40000,user_id=0,group_id=0,allow_other",
                                     "deadshare"], pass_fds=[device]))
        finally:
            os.close(device)  # the "server" is gone from here on
        yield folder


@contextlib.contextmanager
def _mounted(folder, options, **run):
    """Mount at `folder` (made here) for the with-block; skips the test when
    this machine refuses the mount."""
    import subprocess

    folder.mkdir()
    mounted = subprocess.run(["mount", *options, str(folder)], capture_output=True, text=True, **run)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount {options[1]} here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
