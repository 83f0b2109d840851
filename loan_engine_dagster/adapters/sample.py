"""A realistic sample inbox, generated from a seed: every reference file and
one batch, in the formats the seller and the servicer really send.

The portfolio is built to respect most limits, and a typical batch buys most
loans while rejecting some for every reason. `stress=True` makes about half the
loans fail, which makes the exception workbooks large (for the benchmark).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xlsxwriter

from .inbox import REFERENCE_FILES


@dataclass(frozen=True)
class Program:
    name: str
    platform: str
    type: str
    weight: float
    term: int
    promo: int = 0
    new: bool = False
    comap_min: int = 640  # lowest CoMAP band that lists it
    notes: bool = False  # may also be bought as HD notes


PROGRAMS = (
    Program("Unsec Std - 999 - 120", "sfy", "standard", 0.30, 120, notes=True),
    Program("Unsec Std - 999 - 144", "sfy", "standard", 0.10, 144),
    Program("Unsec Std - 999 - 180", "sfy", "standard", 0.08, 180, comap_min=680),
    Program("Std BD - 999 - 120", "sfy", "standard_bd", 0.04, 120),
    Program("Hybrid 12 - 999 - 120", "sfy", "hybrid", 0.12, 120, promo=12, notes=True),
    Program("Hybrid 24 - 999 - 144", "sfy", "hybrid", 0.06, 144, promo=24),
    Program("NINP 6 - 999 - 60", "sfy", "ninp", 0.08, 60, promo=6),
    Program("NINP 12 - 999 - 84", "sfy", "ninp", 0.06, 84, promo=12, comap_min=680),
    Program("EPNI 12 - 999 - 120", "sfy", "epni", 0.06, 120, promo=12),
    Program("WPDI 12 - 999 - 120", "sfy", "wpdi", 0.06, 120, promo=6),
    Program("WPDI BD 6 - 999 - 84", "sfy", "wpdi_bd", 0.005, 84, promo=6),
    Program("Solar Flex - 999 - 240", "sfy", "standard", 0.01, 120, new=True),
    Program("Prime Std 120", "prime", "standard", 0.38, 120, notes=True),
    Program("Prime Std 180", "prime", "standard", 0.20, 180, comap_min=680),
    Program("Prime Hybrid 144", "prime", "hybrid", 0.15, 144, promo=12),
    Program("Prime NINP 12", "prime", "ninp", 0.10, 84, promo=12),
    Program("Prime EPNI 18", "prime", "epni", 0.08, 120, promo=18),
    Program("Prime WPDI 12", "prime", "wpdi", 0.08, 120, promo=12),
    Program("Prime New Roof 96", "prime", "standard", 0.01, 96, new=True),
)
# Offered by the seller but unknown to the buyer's master sheet.
UNKNOWN_PROGRAM = "Unsec Promo - 777 - 60"
# Known, but listed in no current CoMAP sheet: such loans come out not_in_grid.
NOT_IN_GRID_PROGRAM = "Solar Flex - 999 - 240"
# Listed only in the second sheet of the current SFY era.
SECOND_SHEET_PROGRAM = "EPNI 12 - 999 - 120"
BANDS = ((600, "600-639"), (640, "640-679"), (680, "680-719"), (720, "720+"))
GRID_TIERS = (  # fico_min, monthly_income_min, approval_high, dti_max, pti_ratio
    (640, 3000.0, 25000.0, 45.0, 0.12),
    (680, 2500.0, 50000.0, 50.0, 0.15),
    (720, 2000.0, 75000.0, 55.0, 0.18),
)
STATES = np.array(["CA", "TX", "FL", "NY", "AZ", "NV", "GA", "NC", "NJ", "IL", "CO", "WA", "PA", "OH", "MI"])
STATE_WEIGHTS = np.array([20, 14, 12, 7, 6, 4, 5, 5, 4, 4, 4, 4, 4, 4, 3], dtype=float)
WORKBOOK_OPTIONS = {"constant_memory": True, "strings_to_formulas": False, "strings_to_numbers": False, "strings_to_urls": False}


def default_batch_date() -> dt.date:
    return dt.date(2026, 2, 19)


def _programs(platform: str) -> list[Program]:
    return [p for p in PROGRAMS if p.platform == platform]


def _write_sheet(workbook: xlsxwriter.Workbook, name: str, header: list, rows, title: list[list] = ()) -> None:
    sheet = workbook.add_worksheet(name)
    date_format = workbook.add_format({"num_format": "mm/dd/yyyy"})
    r = 0
    for line in title:
        sheet.write_row(r, 0, line)
        r += 1
    sheet.write_row(r, 0, header)
    for row in rows:
        r += 1
        for c, value in enumerate(row):
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            if isinstance(value, (dt.date, pd.Timestamp)):
                sheet.write_datetime(r, c, pd.Timestamp(value).to_pydatetime(), date_format)
            else:
                sheet.write(r, c, value)


def write_reference(inbox: Path) -> None:
    """Master sheets, underwriting grids and CoMAP grids consistent with PROGRAMS."""
    with xlsxwriter.Workbook(str(inbox / REFERENCE_FILES["master"]), WORKBOOK_OPTIONS) as wb:
        _write_sheet(wb, "Programs", ["Loan Program", "Platform", "Type", "new_programs"],
                     [[p.name, p.platform.upper(), p.type, p.new] for p in PROGRAMS])
    with xlsxwriter.Workbook(str(inbox / REFERENCE_FILES["notes_master"]), WORKBOOK_OPTIONS) as wb:
        _write_sheet(wb, "Notes", ["Loan Program", "Platform", "Type", "new_programs"],
                     [[p.name, p.platform.upper(), p.type, False] for p in PROGRAMS if p.notes])

    grid_header = ["finance_type_name_nls", "monthly_income_min", "fico_min", "approval_high", "dti_max", "pti_ratio"]
    with xlsxwriter.Workbook(str(inbox / REFERENCE_FILES["grids"])) as wb:
        for sheet, platform, notes in (("SFY", "sfy", False), ("Prime", "prime", False),
                                       ("SFY - Notes", "sfy", True), ("Prime - Notes", "prime", True)):
            rows = [[p.name, *tier[1:2], tier[0], *tier[2:]] for p in _programs(platform) if p.notes or not notes
                    for tier in GRID_TIERS]
            _write_sheet(wb, sheet, grid_header, [[r[0], r[1], r[2], r[3], r[4], r[5]] for r in rows])

        def band_rows(programs, skip=(), only=None):
            rows = []
            for p in programs:
                if p.name in skip or (only is not None and p.name not in only):
                    continue
                rows.append([p.name] + [p.name if low >= p.comap_min else None for low, _ in BANDS])
            return rows

        band_header = ["Applied Program"] + [label for _, label in BANDS]
        sfy, prime = _programs("sfy"), _programs("prime")
        notes = [p for p in PROGRAMS if p.notes]
        current_skip = (NOT_IN_GRID_PROGRAM, SECOND_SHEET_PROGRAM)
        sheets = {
            "Notes CoMAP": band_rows(notes),
            "SFY COMAP-Oct25": band_rows(sfy, skip=current_skip),
            "SFY COMAP-Oct25-2": band_rows(sfy, only=(SECOND_SHEET_PROGRAM,)),
            "SFY COMAP": band_rows(sfy, skip=(NOT_IN_GRID_PROGRAM,)),
            "SFY COMAP2": band_rows(sfy, only=(NOT_IN_GRID_PROGRAM,)),
            "Prime CoMAP-Oct25": band_rows(prime),
            "Prime CoMAP-Oct25-2": band_rows(prime, only=("Prime New Roof 96",)),
            "Prime CoMAP - New": band_rows(prime),
        }
        for name, rows in sheets.items():
            _write_sheet(wb, name, band_header, rows)
        # The oldest PRIME era comes in the list layout.
        _write_sheet(wb, "Prime COMAP", ["loan program", "Min FICO"], [[p.name, p.comap_min] for p in prime])


def _pick_programs(rng, n: int, platform: str) -> np.ndarray:
    programs = _programs(platform)
    weights = np.array([p.weight for p in programs])
    return rng.choice(len(programs), size=n, p=weights / weights.sum())


def _loan_attributes(rng, n: int, platform: str) -> pd.DataFrame:
    programs = _programs(platform)
    idx = _pick_programs(rng, n, platform)
    fico_mean = 755 if platform == "prime" else 735
    fico = np.clip(np.round(rng.normal(fico_mean, 38, n)), 640, 850)
    balance = np.round(np.clip(rng.lognormal(9.45, 0.6, n), 1500, 70000), 2)
    income = np.round(np.clip(rng.lognormal(11.35, 0.4, n), 36000, 600000), 0)
    lender_price = np.round(rng.choice([97.5, 98.0, 98.75, 99.25, 100.0, 100.5, 101.0], size=n,
                                       p=[0.15, 0.2, 0.25, 0.15, 0.1, 0.1, 0.05]), 2)
    return pd.DataFrame(
        {
            "program": np.array([p.name for p in programs])[idx],
            "type": np.array([p.type for p in programs])[idx],
            "new": np.array([p.new for p in programs])[idx],
            "term": np.array([p.term for p in programs])[idx].astype(float),
            "promo": np.array([p.promo for p in programs])[idx].astype(float),
            "fico": fico,
            "balance": balance,
            "income": income,
            "dti": np.round(rng.uniform(0.08, 0.44, n), 4),
            "pti": np.round(rng.uniform(0.02, 0.11, n), 4),
            "apr": np.round(rng.uniform(5.99, 19.99, n), 2),
            "lender_price": lender_price,
            "dealer_fee": np.round(rng.uniform(2.0, 8.0, n), 2),
            "state": rng.choice(STATES, size=n, p=STATE_WEIGHTS / STATE_WEIGHTS.sum()),
        }
    )


def write_existing(inbox: Path, rng, n: int, batch: dt.date) -> pd.DataFrame:
    """`current_assets.csv`: the portfolio bought in earlier batches."""
    n_sfy = n // 2
    parts = []
    for platform, count in (("sfy", n_sfy), ("prime", n - n_sfy)):
        attrs = _loan_attributes(rng, count, platform)
        attrs["platform"] = platform.upper()
        parts.append(attrs)
    a = pd.concat(parts, ignore_index=True)
    days_back = rng.integers(7, 900, len(a))
    purchase = pd.Timestamp(batch) - pd.to_timedelta(days_back, unit="D")
    modeled = a["lender_price"] / 100
    in_period_bad = rng.random(len(a)) < 0.001
    modeled = modeled.where(~in_period_bad, modeled - 0.0025)
    frame = pd.DataFrame(
        {
            "SELLER Loan #": "SFC_" + pd.Series(np.arange(1_000_000, 1_000_000 + len(a))).astype(str),
            "platform": a["platform"],
            "loan program": a["program"],
            "type": a["type"],
            "Orig. Balance": a["balance"],
            "Lender Price(%)": a["lender_price"],
            "FICO Borrower": a["fico"].astype(int),
            "Term": a["term"].astype(int),
            "APR": a["apr"],
            "Property State": a["state"],
            "Dealer Fee": (a["dealer_fee"] / 100).round(4),
            "Purchase_Date": purchase.strftime("%Y-%m-%d"),
            "Repurchase": np.where(rng.random(len(a)) < 0.002, "TRUE", "FALSE"),
            "promo_term": a["promo"].astype(int),
            "new_programs": np.where(a["new"], "TRUE", "FALSE"),
            "Excess_Asset": np.where(rng.random(len(a)) < 0.003, "TRUE", "FALSE"),
            "modeled_purchase_price": modeled.round(6),
        }
    )
    frame.to_csv(inbox / REFERENCE_FILES["existing"], index=False)
    return frame


def _exhibit_frame(rng, n: int, platform: str, batch: dt.date, start: int, stress: bool) -> pd.DataFrame:
    a = _loan_attributes(rng, n, platform)
    rate = 0.19 if stress else 0.012  # per failure kind
    u = rng.random((n, 6))
    program = a["program"].astype(object).copy()
    program[u[:, 0] < rate / 2] = UNKNOWN_PROGRAM
    modeled = a["lender_price"] / 100
    modeled = modeled.where(u[:, 1] >= rate, (a["lender_price"] - 0.5) / 100)
    dti = a["dti"].where(u[:, 2] >= rate, 0.62)
    # Below every CoMAP band the program is listed in, yet above the grid floor.
    fico = a["fico"].where(u[:, 3] >= rate * 2, 660.0)
    submit = pd.Series(pd.Timestamp(batch) - pd.to_timedelta(rng.integers(3, 60, n), unit="D"))
    old_era = rng.random(n) < 0.03
    older = pd.Series(pd.Timestamp("2025-09-15") - pd.to_timedelta(rng.integers(0, 400, n), unit="D"))
    submit = submit.where(~old_era, older)
    notes = (rng.random(n) < 0.05) & np.isin(a["program"], [p.name for p in PROGRAMS if p.notes])
    frame = pd.DataFrame(
        {
            "SELLER Loan #": "SFC_" + pd.Series(np.arange(start, start + n)).astype(str),
            "Loan Program": program,
            "Application Type": np.where(notes, "HD NOTE", rng.choice(["Individual", "Joint"], size=n)),
            "Property State": a["state"],
            "Orig. Balance": a["balance"],
            "Stamp fee": np.where(rng.random(n) < 0.1, 25.0, 0.0),
            "Income": a["income"],
            "FICO Borrower": fico,
            "DTI": dti,
            "PTI": a["pti"],
            "Term": a["term"],
            "APR": a["apr"],
            "Lender Price(%)": a["lender_price"],
            "modeled_purchase_price": modeled.round(6),
            "Dealer Fee": a["dealer_fee"],
            "Submit Date": submit.dt.date,
            "promo_term": a["promo"],
            "Dealer Name": rng.choice(["Sunrise Solar", "=Acme Roofing", "Bright Pools", "@Home Remodel"], size=n),
        }
    )
    if platform == "sfy":
        frame["TU 144"] = (rng.random(n) < 0.02).astype(int)
    invalid = rng.random(n) < rate / 2
    blank_fico = invalid & (rng.random(n) < 0.5)
    frame["FICO Borrower"] = frame["FICO Borrower"].astype(object)
    frame.loc[blank_fico, "FICO Borrower"] = None
    frame.loc[invalid & ~blank_fico, "FICO Borrower"] = 900.0
    return frame


def write_exhibit(inbox: Path, frame: pd.DataFrame, platform: str, batch: dt.date, offcycle: bool = False) -> Path:
    suffix = " - Off-Cycle" if offcycle else ""
    name = f"{platform.upper()}_{batch:%m-%d-%Y}_ExhibitAtoFormofSaleNotice - Pre-Funding{suffix}.xlsx"
    path = inbox / name
    title = [["Exhibit A to Form of Sale Notice"], [f"Platform: {platform.upper()}"],
             [f"Sale Notice Date: {batch:%m/%d/%Y}"], []]
    rows = frame.astype(object).where(frame.notna(), None).itertuples(index=False, name=None)
    with xlsxwriter.Workbook(str(path), WORKBOOK_OPTIONS) as wb:
        _write_sheet(wb, "Exhibit A", list(frame.columns), rows, title=title)
    return path


def write_tape(inbox: Path, rng, existing: pd.DataFrame, buy: pd.DataFrame, tape_date: dt.date) -> Path:
    """The servicer's tape: the portfolio and most offered loans, a few
    existing assets marked repurchased."""
    numbers = pd.concat([existing["SELLER Loan #"], buy["SELLER Loan #"]], ignore_index=True)
    platform = pd.concat([existing["platform"].str.lower(), buy["platform"]], ignore_index=True)
    keep = np.ones(len(numbers), dtype=bool)
    keep[len(existing):] = rng.random(len(buy)) >= 0.005  # a few offered loans not boarded yet
    status = np.where(rng.random(len(numbers)) < 0.9, "ACTIVE;AUTOPAY", "ACTIVE")
    repurchased = np.zeros(len(numbers), dtype=bool)
    repurchased[: len(existing)] = rng.random(len(existing)) < 0.004
    status = np.where(repurchased, np.where(rng.random(len(numbers)) < 0.5, "ACTIVE; Repurchase", "REPURCHASE"), status)
    tape = pd.DataFrame(
        {
            "Account Number": numbers.str.removeprefix("SFC_").astype(np.int64),
            "Loan Group": np.where(platform == "sfy", rng.choice(["FX3-A", "FX1-B"], size=len(numbers)), "PRM-2"),
            "Status Codes": status,
        }
    )[keep]
    path = inbox / f"Tape20Loans_{tape_date:%m-%d-%Y}.csv"
    tape.to_csv(path, index=False)
    return path


def generate_inbox(
    inbox: str | Path, *, batch: dt.date | None = None, loans: int = 2000, existing: int = 10000,
    seed: int = 7, stress: bool = False,
) -> dict[str, Path]:
    """Write a complete inbox for one batch; the same seed gives the same files."""
    inbox = Path(inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    batch = batch or default_batch_date()
    rng = np.random.default_rng(seed)
    write_reference(inbox)
    portfolio = write_existing(inbox, rng, existing, batch)
    n_sfy = loans // 2
    frames = {}
    for platform, count, start in (("sfy", n_sfy, 5_000_000), ("prime", loans - n_sfy, 6_000_000)):
        frame = _exhibit_frame(rng, count, platform, batch, start, stress)
        if count >= 4:  # the seller offers one loan twice, across lines
            frame.loc[frame.index[-1], "SELLER Loan #"] = frame.loc[frame.index[0], "SELLER Loan #"]
        frames[platform] = frame
    paths = {p: write_exhibit(inbox, f, p, batch) for p, f in frames.items()}
    buy = pd.concat([f[["SELLER Loan #"]].assign(platform=p) for p, f in frames.items()], ignore_index=True)
    paths["tape"] = write_tape(inbox, rng, portfolio, buy.drop_duplicates("SELLER Loan #"), batch - dt.timedelta(days=1))
    for role, name in REFERENCE_FILES.items():
        paths[role] = inbox / name
    return paths
