"""Underwriting against the grids (business_rules.md section 6)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .config import Rules

# DTI 0.55 is 55.000000000000007 once multiplied by 100; bounds are inclusive.
TOLERANCE = 1e-9
INCOME_WAIVER_FICO = 700


def grid_sheet(loans: pd.DataFrame, rules: Rules) -> pd.Series:
    """Loans bought as HD notes are underwritten on the notes grid of their platform."""
    sheet = pd.Series("", index=loans.index, dtype=object)
    for platform in ("sfy", "prime"):
        for kind in ("regular", "notes"):
            mask = (loans["platform"] == platform) & (loans["loan_kind"] == kind)
            sheet[mask] = rules.underwriting_sheet(platform, kind)
    return sheet


def underwrite(loans: pd.DataFrame, grids: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    """Status per loan: pass, pass_income_waived, fail, exempt_tu144 or not_checked.

    A loan passes on the first pass when one grid row of its program admits its
    income, FICO, balance net of stamp fee and DTI. Borrowers above FICO 700 may
    instead pass with income waived when a row admits their PTI.
    """
    sheet = grid_sheet(loans, rules)
    exempt = ~loans["invalid"] & (loans["platform"] == "sfy") & (loans["tu144"] == 1)
    subject = ~loans["invalid"] & ~exempt

    applicant = pd.DataFrame(
        {
            "loan": loans.index[subject],
            "sheet": sheet[subject].to_numpy(),
            "program_key": loans.loc[subject, "program_key"].to_numpy(),
            "balance": (loans["orig_balance"] - loans["stamp_fee"])[subject].to_numpy(),
            "monthly_income": (loans["income"] / 12.0)[subject].to_numpy(),
            "fico": loans.loc[subject, "fico"].to_numpy(),
            "dti": (loans["dti"] * 100.0)[subject].to_numpy(),
            "pti": loans.loc[subject, "pti"].to_numpy(),
        }
    )
    rows = applicant.merge(grids, on=["sheet", "program_key"], how="inner")
    common = (
        (rows["fico_min"] <= rows["fico"] + TOLERANCE)
        & (rows["balance"] <= rows["approval_high"] + TOLERANCE)
        & (rows["dti"] <= rows["dti_max"] + TOLERANCE)
    )
    first = common & (rows["monthly_income_min"] <= rows["monthly_income"] + TOLERANCE)
    waived = common & (rows["fico"] > INCOME_WAIVER_FICO) & (rows["pti"] <= rows["pti_ratio"] + TOLERANCE)
    by_loan = pd.DataFrame({"loan": rows["loan"], "first": first, "waived": waived}).groupby("loan").any()
    has_rows = pd.Series(loans.index.isin(rows["loan"]), index=loans.index)

    passed = by_loan["first"].reindex(loans.index, fill_value=False)
    passed_waived = by_loan["waived"].reindex(loans.index, fill_value=False)
    status = np.select(
        [loans["invalid"], exempt, passed, passed_waived],
        ["not_checked", "exempt_tu144", "pass", "pass_income_waived"],
        default="fail",
    )
    reason = np.where(
        loans["loan_kind"] == "notes", "underwriting_notes", "underwriting_" + loans["platform"]
    )
    return pd.DataFrame(
        {
            "underwriting_status": status,
            "underwriting_sheet": sheet,
            "underwriting_grid_rows": has_rows,
            "underwriting_reason": np.where(status == "fail", reason, ""),
        },
        index=loans.index,
    )
