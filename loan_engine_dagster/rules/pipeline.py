"""The phases of one batch review, composed from the rules. Each function is
one pipeline phase; the Dagster assets and the benchmark call the same ones."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pandas as pd

from .calendar import purchase_date
from .comap import check_comap
from .config import Rules
from .disposition import dispose, exceptions
from .eligibility import build_population, evaluate_checks
from .normalization import already_owned, mark_repurchases, normalize_buy_loans
from .parsing import flag_duplicate_loan_numbers
from .purchase_plan import PurchasePlan, make_plan
from .purchase_price import check_buy_loans, existing_mismatches
from .underwriting import underwrite


@dataclass
class ReferenceData:
    master: pd.DataFrame
    notes_master: pd.DataFrame
    existing: pd.DataFrame
    grids: pd.DataFrame  # underwriting rows of all four sheets, with `sheet`
    comap: pd.DataFrame  # (sheet, program_key, min_fico)
    files: list[dict] = field(default_factory=list)


@dataclass
class BatchInputs:
    batch_key: str
    notice_date: dt.date
    exhibits: pd.DataFrame  # both platforms, parsed, with row_problems
    tape: pd.DataFrame
    files: list[dict] = field(default_factory=list)


@dataclass
class NormalizedBatch:
    loans: pd.DataFrame
    # Per existing asset of the reference data, in its order: out of the base
    # as repurchased (its own flag or the tape's). Flags, not the assets
    # themselves, so the 500k-row portfolio is stored once per batch.
    repurchase: pd.Series
    pdate: dt.date
    input_files: list[dict] = field(default_factory=list)  # the reference and batch files, as the reports list them


def portfolio(reference: ReferenceData, normalized: NormalizedBatch) -> pd.DataFrame:
    """The existing assets as the limits see them: repurchases marked."""
    if len(normalized.repurchase) != len(reference.existing):
        raise ValueError(
            f"the normalized batch marks {len(normalized.repurchase):,} existing assets but the reference data "
            f"holds {len(reference.existing):,}: they come from different runs; re-run the whole batch"
        )
    return reference.existing.assign(repurchase=normalized.repurchase.array)


def resolve_pdate(notice_date: dt.date, override: dt.date | None = None) -> dt.date:
    return override or purchase_date(notice_date)


def normalize(reference: ReferenceData, batch: BatchInputs, rules: Rules, pdate: dt.date) -> NormalizedBatch:
    exhibits = flag_duplicate_loan_numbers(batch.exhibits)
    loans = normalize_buy_loans(exhibits, reference.master, reference.notes_master, batch.tape, pdate=pdate, rules=rules)
    marked = mark_repurchases(reference.existing, batch.tape)
    loans["already_owned"] = already_owned(loans, marked)
    return NormalizedBatch(loans=loans, repurchase=marked["repurchase"], pdate=pdate,
                           input_files=reference.files + batch.files)


def run_underwriting(loans: pd.DataFrame, grids: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    """Adds the purchase-price check (it gates CoMAP) and the underwriting status."""
    out = loans.copy()
    out["purchase_price_check"] = check_buy_loans(out)
    return out.join(underwrite(out, grids, rules))


def run_comap(loans: pd.DataFrame, comap: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    return loans.join(check_comap(loans, loans["purchase_price_check"], comap, rules))


@dataclass
class Decisions:
    loans: pd.DataFrame
    exceptions: pd.DataFrame
    checks: pd.DataFrame
    price_mismatch_existing: pd.DataFrame


def run_eligibility(loans: pd.DataFrame, existing: pd.DataFrame, rules: Rules) -> Decisions:
    """Dispose every loan, then test the portfolio limits on the three populations."""
    exc = exceptions(loans)
    decided = loans.join(dispose(loans, exc))
    checks = evaluate_checks(build_population(decided, existing), rules)
    return Decisions(
        loans=decided,
        exceptions=exc,
        checks=checks,
        price_mismatch_existing=existing_mismatches(existing, rules.normalization.facility_period_start),
    )


def run_purchase_plan(decisions: Decisions, existing: pd.DataFrame, rules: Rules) -> PurchasePlan:
    """Which loans to hold back so that every curable limit holds, per platform,
    proven by evaluating the limits again on the plan."""
    return make_plan(decisions.loans, existing, decisions.checks, rules)
