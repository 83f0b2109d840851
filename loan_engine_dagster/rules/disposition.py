"""Reasons, disposition and the messages a person reads (business_rules.md section 8)."""

from __future__ import annotations

import numpy as np
import pandas as pd

REASON_ORDER = (
    "invalid_data",
    "unknown_program",
    "purchase_price_mismatch",
    "underwriting_sfy",
    "underwriting_prime",
    "underwriting_notes",
    "comap_sfy",
    "comap_prime",
    "comap_notes",
)
# Never a reason to reject (business rules, section 8), but listed with the
# loan's exceptions: a loan CoMAP has no sheet for, one the servicer tape does
# not list, and one the buyer already holds (a second sale of the same loan).
WARNINGS = ("not_in_grid", "not_on_tape", "already_owned")
MASTER_FILES = {"regular": "MASTER_SHEET.xlsx", "notes": "MASTER_SHEET - Notes.xlsx"}


def _num(series: pd.Series, fmt: str = "%g") -> pd.Series:
    # Formatted once per distinct value (FICO, DTI and prices repeat a lot);
    # distinct by bit pattern, so -0.0 and each NaN keep their own text.
    values = series.to_numpy(dtype=float)
    codes, uniques = pd.factorize(values.view(np.int64))
    text = np.char.mod(fmt, uniques.view(np.float64))
    return pd.Series(text[codes], index=series.index).astype("string")


def _messages(m: pd.DataFrame) -> dict:
    """Human text per reason, built only for the loans that carry it."""
    return {
        "invalid_data": lambda: m["source_file"] + " row " + m["source_row"].astype("string") + ": " + m["row_problems"],
        "unknown_program": lambda: "Loan Program '" + m["loan_program"] + "' is not listed for "
        + m["platform"].str.upper() + " in " + m["loan_kind"].map(MASTER_FILES),
        "purchase_price_mismatch": lambda: "Lender Price(%) " + _num(m["lender_price"].round(2))
        + " differs from modeled_purchase_price x 100 = " + _num((m["modeled_purchase_price"] * 100).round(2)),
        "underwriting": lambda: pd.Series(
            np.where(
                m["underwriting_grid_rows"],
                "no row of grid '" + m["underwriting_sheet"] + "' admits FICO " + _num(m["fico"])
                + ", monthly income " + _num(m["income"] / 12, "%.2f") + ", balance "
                + _num(m["orig_balance"] - m["stamp_fee"], "%.2f") + ", DTI " + _num(m["dti"]) + ", PTI " + _num(m["pti"]),
                "program '" + m["loan_program"] + "' has no rows in grid '" + m["underwriting_sheet"] + "'",
            ),
            index=m.index,
        ),
        "comap": lambda: "FICO " + _num(m["fico"]) + " is below the CoMAP minimum " + _num(m["comap_min_fico"])
        + " in sheet '" + m["comap_sheet"] + "'",
        "not_in_grid": lambda: "program '" + m["loan_program"] + "' appears in no applicable CoMAP sheet",
        "not_on_tape": lambda: pd.Series("SELLER Loan # is not on the servicer tape", index=m.index),
        "already_owned": lambda: pd.Series(
            "SELLER Loan # is already held: current_assets.csv lists it, not repurchased", index=m.index),
    }


_MESSAGE_COLUMNS = [
    "seller_loan_number", "platform", "invalid", "known_program", "purchase_price_check", "on_tape", "already_owned",
    "source_file", "source_row", "row_problems", "loan_program", "loan_kind", "lender_price", "modeled_purchase_price",
    "fico", "income", "orig_balance", "stamp_fee", "dti", "pti",
    "underwriting_status", "underwriting_sheet", "underwriting_grid_rows", "underwriting_reason",
    "comap_status", "comap_sheet", "comap_min_fico", "comap_reason",
]


def exceptions(loans: pd.DataFrame) -> pd.DataFrame:
    """One row per loan and reason: rejection reasons as errors, WARNINGS as warnings."""
    valid = ~loans["invalid"]
    loans = loans[_MESSAGE_COLUMNS]  # each subset below copies only what the messages read
    flags = [
        ("invalid_data", loans["invalid"], "invalid_data"),
        ("unknown_program", valid & ~loans["known_program"], "unknown_program"),
        ("purchase_price_mismatch", valid & ~loans["purchase_price_check"], "purchase_price_mismatch"),
        ("underwriting", loans["underwriting_status"] == "fail", loans["underwriting_reason"]),
        ("comap", loans["comap_status"] == "fail", loans["comap_reason"]),
        ("not_in_grid", loans["comap_status"] == "not_in_grid", "not_in_grid"),
        ("not_on_tape", valid & ~loans["on_tape"], "not_on_tape"),
        ("already_owned", valid & loans["already_owned"], "already_owned"),
    ]
    frames = []
    for key, mask, reason in flags:
        subset = loans[mask]
        text = _messages(subset)[key]()
        frames.append(
            pd.DataFrame(
                {
                    "loan": subset.index,
                    "seller_loan_number": subset["seller_loan_number"].to_numpy(),
                    "platform": subset["platform"].to_numpy(),
                    "reason": reason[mask].to_numpy() if isinstance(reason, pd.Series) else reason,
                    "message": text.astype(object).to_numpy(),
                }
            )
        )
    out = pd.concat(frames, ignore_index=True)
    out["severity"] = np.where(out["reason"].isin(REASON_ORDER), "error", "warning")
    rank = {r: i for i, r in enumerate(REASON_ORDER + WARNINGS)}
    out["rank"] = out["reason"].map(rank)
    return out.sort_values(["loan", "rank"], kind="stable").drop(columns="rank").reset_index(drop=True)


def dispose(loans: pd.DataFrame, exc: pd.DataFrame) -> pd.DataFrame:
    """A loan with any reason is rejected for the first; otherwise it is bought."""
    errors = exc[exc["severity"] == "error"]
    nth = errors.groupby("loan", sort=False).cumcount()
    reasons = _join_per_loan(errors["reason"], errors["loan"], nth, ";", loans.index)
    messages = _join_per_loan(errors["message"], errors["loan"], nth, " | ", loans.index)
    first = errors[nth == 0].set_index("loan")["reason"].reindex(loans.index, fill_value="")
    return pd.DataFrame(
        {
            "disposition": np.where(reasons == "", "to_purchase", "rejected"),
            "rejection_criteria": first,
            "rejection_reasons": reasons,
            "message": messages,
        },
        index=loans.index,
    )


def _join_per_loan(values: pd.Series, loan: pd.Series, nth: pd.Series, sep: str, index: pd.Index) -> pd.Series:
    """Each loan's values joined in order, "" for a loan with none. One pass
    per position (a loan has a handful of reasons), not one per loan."""
    out = pd.Series("", index=index, dtype=object)
    for k in range(int(nth.max()) + 1 if len(nth) else 0):
        pick = (nth == k).to_numpy()
        where = loan.to_numpy()[pick]
        part = values.to_numpy(dtype=object)[pick]
        out.loc[where] = part if k == 0 else out.loc[where].to_numpy() + sep + part
    return out.astype("str")
