"""The report tables and documents of a batch (business_rules.md section 10), as frames and
dicts. Writing them to disk is the adapters' job."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from .parsing import EXHIBIT_FIELDS, SELLER_COLUMN_PREFIX, TU144

DECISION_COLUMNS = [
    "seller_loan_number", "platform", "loan_program", "application_type", "loan_kind", "type",
    "purchase_price_check", "underwriting_status", "comap_status", "disposition",
    "rejection_criteria", "rejection_reasons", "message",
]
SHARE_COLUMN_LIMIT = 30

_EXHIBIT_HEADERS = {f.name: f.header for f in EXHIBIT_FIELDS + (TU144,)}
# Decision first, then what the loan looked like on the exhibit.
_LOAN_REPORT = [
    ("seller_loan_number", "SELLER Loan #"), ("platform", "platform"), ("loan_program", "Loan Program"),
    ("application_type", "Application Type"), ("loan_kind", "loan_kind"), ("type", "type"),
    ("disposition", "disposition"), ("rejection_criteria", "rejection_criteria"),
    ("rejection_reasons", "rejection_reasons"), ("underwriting_status", "underwriting_status"),
    ("underwriting_sheet", "underwriting_grid"), ("comap_status", "comap_status"), ("comap_sheet", "comap_sheet"),
    ("comap_min_fico", "comap_min_fico"), ("fico", "FICO Borrower"), ("orig_balance", "Orig. Balance"),
    ("stamp_fee", "Stamp fee"), ("income", "Income"), ("dti", "DTI"), ("pti", "PTI"), ("term", "Term"),
    ("apr", "APR"), ("lender_price", "Lender Price(%)"), ("modeled_purchase_price", "modeled_purchase_price"),
    ("dealer_fee", "Dealer Fee (fraction)"), ("submit_date", "Submit Date"), ("promo_term", "promo_term"),
    ("tu144", "TU144"), ("property_state", "Property State"), ("new_programs", "new_programs"),
    ("message", "message"), ("purchase_date", "Purchase_Date"), ("purchase_price", "Purchase Price"),
    ("monthly_payment_date", "Monthly Payment Date"), ("source_file", "source_file"), ("source_row", "source_row"),
]


def decisions_table(loans: pd.DataFrame) -> pd.DataFrame:
    """`loan_decisions.csv`: one row per buy loan, in exhibit order."""
    out = loans[DECISION_COLUMNS].copy()
    out["purchase_price_check"] = np.where(out["purchase_price_check"], "true", "false")
    return out


def loan_report(loans: pd.DataFrame) -> pd.DataFrame:
    """A person's view of some buy loans: the decision, then the exhibit
    fields, then any extra columns the seller sent."""
    headers = [header for _, header in _LOAN_REPORT]
    extras = [c for c in loans.columns if c.startswith(SELLER_COLUMN_PREFIX)]
    shown = [c.removeprefix(SELLER_COLUMN_PREFIX) for c in extras]
    out = loans[[name for name, _ in _LOAN_REPORT] + extras].copy()
    # A seller's column named like one of the report's own is marked as the exhibit's.
    out.columns = headers + [f"{h} (exhibit)" if h in headers else h for h in shown]
    return out.sort_values("Orig. Balance", ascending=False, kind="stable")


def price_mismatch_report(loans: pd.DataFrame, existing_mismatches: pd.DataFrame) -> pd.DataFrame:
    buy = loans[~loans["invalid"] & ~loans["purchase_price_check"]]
    frames = [
        pd.DataFrame(
            {
                "source": source,
                "SELLER Loan #": part["seller_loan_number"],
                "platform": part["platform"],
                "Loan Program": part["loan_program"],
                "Lender Price(%)": part["lender_price"],
                "modeled_purchase_price": part["modeled_purchase_price"],
                "modeled price (%)": (part["modeled_purchase_price"] * 100).round(2),
                "difference (%)": (part["lender_price"].round(2) - (part["modeled_purchase_price"] * 100).round(2)).round(2),
                "Orig. Balance": part["orig_balance"],
                "Purchase_Date": part["purchase_date"],
            }
        )
        for source, part in (("buy loan", buy), ("existing asset", existing_mismatches))
    ]
    return pd.concat(frames, ignore_index=True)


def exception_reports(
    loans: pd.DataFrame, existing_mismatches: pd.DataFrame, rules_version: str
) -> dict[str, pd.DataFrame]:
    """Every exception workbook by file name, each ending with the rules
    version it was decided under; each is written even when empty."""
    failed_uw = loans["underwriting_status"] == "fail"
    notes = loans["loan_kind"] == "notes"
    special = ~loans["invalid"] & loans["new_programs"]
    reports = {
        "purchase_price_mismatch.xlsx": price_mismatch_report(loans, existing_mismatches),
        "flagged_loans.xlsx": loan_report(loans[failed_uw & ~notes]),
        "notes_flagged_loans.xlsx": loan_report(loans[failed_uw & notes]),
        "comap_not_passed.xlsx": loan_report(loans[loans["comap_status"] == "fail"]),
        "special_asset_prime.xlsx": loan_report(loans[special & (loans["platform"] == "prime")]),
        "special_asset_sfy.xlsx": loan_report(loans[special & (loans["platform"] == "sfy")]),
    }
    return {name: frame.assign(rules_version=rules_version) for name, frame in reports.items()}


SHARED_REPORTS = (
    "purchase_price_mismatch.xlsx", "flagged_loans.xlsx", "notes_flagged_loans.xlsx", "comap_not_passed.xlsx"
)


def share_copies(reports: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """What the seller sees: the four exception reports, first 30 columns
    (the buyer's rules version is the buyer's own)."""
    return {f"share/{name}": reports[name].drop(columns="rules_version").iloc[:, :SHARE_COLUMN_LIMIT]
            for name in SHARED_REPORTS}


CHECK_FIELDS = ["platform", "check_id", "description", "metric", "op", "limit", "value", "before", "to_purchase",
                "status", "excess_balance", "contributors", "headroom_balance", "plan_value", "plan_status"]


def eligibility_document(
    checks: pd.DataFrame, summary: dict, *, batch: str, pdate: dt.date, rules_version: str, plan: dict
) -> dict:
    """`eligibility_checks.json`: the checks with their headroom and their
    value on the purchase plan, and the plan per platform."""
    records = checks[CHECK_FIELDS].astype(object).where(checks[CHECK_FIELDS].notna(), None).to_dict("records")
    return {"batch": batch, "pdate": pdate.isoformat(), "rules_version": rules_version, "checks": records,
            "summary": summary, "plan": plan}


def plan_lines(platform: str, plan: dict) -> tuple[str, str]:
    """One platform's plan in two lines an analyst reads: what to buy, then
    why (the binding limits, the proof, what cannot be cured)."""
    name = f"plan {platform.upper()}:"
    if plan["status"] == "infeasible":
        first = f"{name:<15} infeasible: the limits cannot all hold together; every loan stays buy"
        second = f"{'':<15} conflicting limits: {', '.join(plan['conflicting_checks']) or 'not identified'}"
    else:
        first = (f"{name:<15} {plan['status']}: buy {plan['bought_balance']:,.2f}, hold back "
                 f"{plan['held_back_loans']:,} loans ({plan['held_back_balance']:,.2f})")
        why = [f"binding: {', '.join(plan['binding_checks']) or 'none'}"]
        if plan["status"] == "feasible":
            why.append(f"within {plan['gap_balance']:,.2f} of the bound {plan['upper_bound_balance']:,.2f}")
        second = f"{'':<15} " + "; ".join(why)
    if plan["not_curable_checks"]:
        second += f"; not curable from this batch: {', '.join(plan['not_curable_checks'])}"
    return first, second


def plan_line(platform: str, plan: dict) -> str:
    return " ".join(" ".join(line.split()) for line in plan_lines(platform, plan))


def eligibility_sheet(checks: pd.DataFrame, plan: dict, rules_version: str) -> pd.DataFrame:
    """The limits as an analyst reads them: one row per check, breaches first,
    with the purchase plan's value and status beside each, the platform's
    plan in words and the rules version the limits come from."""
    sheet = checks.drop(columns="contributors").copy()
    for column in ("value", "plan_value"):
        sheet[column] = sheet[column].map(
            lambda v: "; ".join(f"{k} {s:.2%}" for k, s in v.items()) if isinstance(v, dict) else v
        )
    sheet["contributors"] = checks["contributors"].map(len)
    sheet["platform_plan"] = sheet["platform"].map(lambda p: plan_line(p, plan[p]))
    sheet["rules_version"] = rules_version
    order = sheet["status"].map({"fail": 0, "no_data": 1, "pass": 2, "info": 3})
    return sheet.assign(_o=order).sort_values(["_o", "platform"], kind="stable").drop(columns="_o")


def _totals(frame: pd.DataFrame, by: str) -> dict:
    grouped = frame.groupby(by)["orig_balance"].agg(["size", "sum"])
    return {str(k): {"loans": int(r["size"]), "balance": round(float(r["sum"]), 2)} for k, r in grouped.iterrows() if k != ""}


def empty_exhibits(loans: pd.DataFrame, input_files: list[dict]) -> list[str]:
    """Exhibit files of the batch that list no loan at all (header only)."""
    offered = set(loans["platform"].unique())  # not the 100,000 cells one by one
    return [f["name"] for f in input_files if f["role"].endswith("_exhibit") and f["role"].removesuffix("_exhibit") not in offered]


def rejections_by_criteria(loans: pd.DataFrame) -> dict:
    """Rejected loans and balance by their first reason (`rejection_criteria`):
    each rejected loan counted once, so the figures add up to the rejected total."""
    return _totals(loans.assign(orig_balance=loans["orig_balance"].fillna(0.0)), "rejection_criteria")


def run_summary(
    loans: pd.DataFrame, exceptions: pd.DataFrame, checks: pd.DataFrame, *, batch: str, pdate: dt.date,
    rules_version: str, input_files: list[dict], plan: dict,
) -> dict:
    balance = loans["orig_balance"].fillna(0.0)
    reason_counts = exceptions.groupby(["severity", "reason"]).size()
    errors = exceptions[exceptions["severity"] == "error"]
    # A loan rejected for two reasons counts in both: these overlap, unlike by_rejection_criteria.
    reason_balances = pd.Series(balance.loc[errors["loan"]].to_numpy()).groupby(errors["reason"].to_numpy()).sum()
    return {
        "batch": batch,
        "pdate": pdate.isoformat(),
        "rules_version": rules_version,
        "input_files": input_files,
        "loans_offered": int(len(loans)),
        "balance_offered": round(float(balance.sum()), 2),
        "by_platform": _totals(loans.assign(orig_balance=balance), "platform"),
        "by_disposition": _totals(loans.assign(orig_balance=balance), "disposition"),
        "by_rejection_criteria": rejections_by_criteria(loans),
        "reasons": {str(r): int(n) for (s, r), n in reason_counts.items() if s == "error"},
        "reason_balances": {str(r): round(float(b), 2) for r, b in reason_balances.items()},
        "warnings": {str(r): int(n) for (s, r), n in reason_counts.items() if s == "warning"},
        "empty_exhibits": empty_exhibits(loans, input_files),
        "eligibility": {
            "failed": [f"{r.platform}:{r.check_id}" for r in checks[checks["status"] == "fail"].itertuples()],
            "no_data": [f"{r.platform}:{r.check_id}" for r in checks[checks["status"] == "no_data"].itertuples()],
        },
        "plan": plan,
    }
