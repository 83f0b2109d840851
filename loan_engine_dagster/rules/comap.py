"""CoMAP: which programs may be bought at which FICO (business_rules.md section 7)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .config import Rules


def applicable_sheets(loans: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    """Long table (loan, order, sheet): the CoMAP sheets that apply to each
    loan, in the order they are consulted. Regular loans pick their era by
    Submit Date; a loan submitted on a cut-off day belongs to the earlier era."""
    parts = []
    notes = loans["loan_kind"] == "notes"
    parts.append(pd.DataFrame({"loan": loans.index[notes], "order": 0, "sheet": rules.sheets.notes_comap}))
    for platform, eras in (("prime", rules.comap_eras.prime), ("sfy", rules.comap_eras.sfy)):
        regular = ~notes & (loans["platform"] == platform)
        submit = loans["submit_date"]
        assigned = pd.Series(False, index=loans.index)
        for era in eras:
            in_era = regular & ~assigned
            if era.after is not None:
                in_era &= submit > pd.Timestamp(era.after)
            assigned |= in_era
            for order, sheet in enumerate(era.sheets):
                parts.append(pd.DataFrame({"loan": loans.index[in_era], "order": order, "sheet": sheet}))
    return pd.concat(parts, ignore_index=True)


def check_comap(loans: pd.DataFrame, price_ok: pd.Series, comap: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    """Status per loan: pass, fail, not_in_grid or not_checked.

    Only loans whose purchase price checked out are looked up. The first
    applicable sheet that lists the program sets the minimum FICO.
    """
    checked = price_ok & ~loans["invalid"]
    wanted = applicable_sheets(loans[checked], rules)
    wanted["program_key"] = loans.loc[wanted["loan"], "program_key"].to_numpy()
    found = wanted.merge(comap, on=["sheet", "program_key"], how="inner").sort_values(["loan", "order"])
    first = found.drop_duplicates("loan").set_index("loan")
    min_fico = first["min_fico"].reindex(loans.index)
    sheet = first["sheet"].reindex(loans.index).fillna("")
    in_grid = min_fico.notna()
    status = np.select(
        [~checked, ~in_grid, loans["fico"] >= min_fico],
        ["not_checked", "not_in_grid", "pass"],
        default="fail",
    )
    reason = np.where(loans["loan_kind"] == "notes", "comap_notes", "comap_" + loans["platform"])
    return pd.DataFrame(
        {
            "comap_status": status,
            "comap_sheet": sheet,
            "comap_min_fico": min_fico,
            "comap_reason": np.where(status == "fail", reason, ""),
        },
        index=loans.index,
    )
