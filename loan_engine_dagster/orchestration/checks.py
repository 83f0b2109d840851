"""Asset checks: one per concentration limit, plus data-quality checks. All
are warnings: a breach is for the reviewer to judge, not a reason to stop."""


import math

import dagster as dg
import pandas as pd

from loan_engine_dagster.rules.config import default_rules, limit_check_name

TOP_CONTRIBUTORS = 10


def _limit_specs() -> list[dg.AssetCheckSpec]:
    rules = default_rules()
    specs = []
    for platform, checks in (("prime", rules.eligibility.prime), ("sfy", rules.eligibility.sfy)):
        for check in checks:
            if check.limit is None:
                continue  # informational metrics have nothing to breach
            specs.append(
                dg.AssetCheckSpec(
                    name=limit_check_name(platform, check.id),
                    asset="eligibility",
                    description=f"{platform.upper()} {check.id}: {check.description} ({check.metric} {check.op} {check.limit:g})",
                    blocking=False,
                )
            )
    return specs


LIMIT_CHECK_SPECS = _limit_specs()


def declared_limit_ids() -> frozenset[str]:
    """The limit checks this code location shows; a run's rules file must have exactly these."""
    return frozenset(spec.name for spec in LIMIT_CHECK_SPECS)


def _number(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def limit_check_results(checks: pd.DataFrame):
    """Yield one warning-severity result per limit the rules file defines."""
    for row in checks.to_dict("records"):
        if _number(row["limit"]) is None:
            continue  # informational metrics have nothing to breach
        name = limit_check_name(row["platform"], row["check_id"])
        top = row["contributors"][:TOP_CONTRIBUTORS]
        table = "\n".join(
            ["| SELLER Loan # | Orig. Balance |", "|---|---:|"]
            + [f"| {c['seller_loan_number']} | {c['orig_balance']:,.2f} |" for c in top]
        )
        metadata = {
            "status": row["status"],
            "metric": row["metric"],
            "op": row["op"],
            "limit": float(row["limit"]),
            "value": _number(row["value"]),
            "before": _number(row["before"]),
            "to_purchase": _number(row["to_purchase"]),
            "excess_balance": _number(row["excess_balance"]),
            "headroom_balance": _number(row.get("headroom_balance")),
            "contributors": len(row["contributors"]),
            "top_contributors": dg.MetadataValue.md(table if top else "none"),
        }
        yield dg.AssetCheckResult(
            asset_key="eligibility",
            check_name=name,
            passed=row["status"] != "fail",
            severity=dg.AssetCheckSeverity.WARN,
            metadata={k: v for k, v in metadata.items() if v is not None},
            description=None if row["status"] != "no_data" else "no loans of this platform in the base",
        )


def _invalid_rows(loans):
    return loans["invalid"]


def _unknown_programs(loans):
    return ~loans["invalid"] & ~loans["known_program"]


def _not_on_tape(loans):
    return ~loans["invalid"] & ~loans["on_tape"]


def _duplicates(loans):
    return loans["row_problems"].str.contains("appears more than once", regex=False)


def _not_in_grid(loans):
    return loans["comap_status"] == "not_in_grid"


_QUALITY = {
    "normalized_loans": {
        "invalid_rows": ("Offered loans rejected as invalid_data (empty or unreadable fields, FICO or balance out of range).", _invalid_rows),
        "unknown_programs": ("Offered loans whose program is not in the master sheet of their kind.", _unknown_programs),
        "buy_loans_missing_from_tape": ("Offered loans the servicer tape does not list.", _not_on_tape),
        "duplicate_loan_numbers": ("SELLER Loan # offered more than once in the batch.", _duplicates),
    },
    "comap": {
        "not_in_grid": ("Price-checked loans whose program appears in no applicable CoMAP sheet.", _not_in_grid),
    },
}
DATA_QUALITY_CHECKS = {
    asset: [dg.AssetCheckSpec(name=name, asset=asset, description=desc, blocking=False) for name, (desc, _) in checks.items()]
    for asset, checks in _QUALITY.items()
}


def data_quality_results(asset: str, loans: pd.DataFrame):
    for name, (_, select) in _QUALITY[asset].items():
        mask = select(loans)
        flagged = loans.loc[mask, ["seller_loan_number", "source_file", "source_row"]].head(TOP_CONTRIBUTORS)
        sample = "\n".join(
            ["| SELLER Loan # | file | row |", "|---|---|---:|"]
            + [f"| {r.seller_loan_number} | {r.source_file} | {r.source_row} |" for r in flagged.itertuples()]
        )
        yield dg.AssetCheckResult(
            asset_key=asset,
            check_name=name,
            passed=not mask.any(),
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"loans": int(mask.sum()), "examples": dg.MetadataValue.md(sample if len(flagged) else "none")},
        )


# An exhibit with a header and no loan rows is legal but almost always a
# seller's mistake (the wrong tab, an export that failed): say so loudly.
EMPTY_EXHIBITS_CHECK = dg.AssetCheckSpec(
    name="exhibits_have_loans", asset="batch_inputs", blocking=False,
    description="Each exhibit of the batch lists at least one loan.",
)


def empty_exhibits_result(empty_files: list[str]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key="batch_inputs",
        check_name=EMPTY_EXHIBITS_CHECK.name,
        passed=not empty_files,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"empty_exhibits": ", ".join(empty_files) or "none"},
        description="exhibit with no loan rows: " + ", ".join(empty_files) if empty_files else None,
    )
