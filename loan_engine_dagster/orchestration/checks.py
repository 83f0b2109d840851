"""Asset checks: one per concentration limit, plus data-quality checks, each
recorded against its batch partition. All are warnings: a breach is for the
reviewer to judge, not a reason to stop.

Each asset declares its checks (`check_specs=`) and yields their results
after its output. Every spec carries the `batches` partitions: without it
Dagster records a partitioned asset's check results with no partition, and
the UI could only ever show the latest batch's results."""


import warnings

import dagster as dg
import pandas as pd

from loan_engine_dagster.rules.config import default_rules, limit_check_name
from loan_engine_dagster.rules.limit_display import (
    check_title, dollars_exact, limit_text, metric_phrase, result_line, unit_of,
)

from .partitions import batches

TOP_CONTRIBUTORS = 10

# Per-partition check specs are a Dagster preview feature; we rely on it on
# purpose (it is what records each batch's results), so its notice is noise
# on every start of the UI and the CLI.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning)


def _limit_specs() -> list[dg.AssetCheckSpec]:
    rules = default_rules()
    specs = []
    for platform, checks in (("prime", rules.eligibility.prime), ("sfy", rules.eligibility.sfy)):
        for check in checks:
            if check.limit is None:
                continue  # informational metrics have nothing to breach
            unit = unit_of(check.metric, check.column)
            specs.append(
                dg.AssetCheckSpec(
                    name=limit_check_name(platform, check.id),
                    asset="eligibility",
                    description=f"{check_title(platform, check.id, check.description)} "
                    f"({metric_phrase(check.metric, check.column)} {limit_text(check.op, check.limit, unit)})",
                    blocking=False,
                    partitions_def=batches,
                )
            )
    return specs


LIMIT_CHECK_SPECS = _limit_specs()


def declared_limit_ids() -> frozenset[str]:
    """The limit checks this code location shows; a run's rules file must have exactly these."""
    return frozenset(spec.name for spec in LIMIT_CHECK_SPECS)

_CONTRIBUTOR_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("loan", "string", description="SELLER Loan #"),
        dg.TableColumn("program", "string", description="Loan Program"),
        dg.TableColumn("balance", "string", description="Orig. Balance"),
    ]
)


def _programs_of(loans: pd.DataFrame, numbers: set[str]) -> dict[str, str]:
    """The program of each of these loans (its first valid row): only the few
    a breach names, not the whole batch."""
    if not numbers:
        return {}
    valid = loans.loc[~loans["invalid"] & loans["seller_loan_number"].isin(numbers), ["seller_loan_number", "loan_program"]]
    valid = valid.drop_duplicates("seller_loan_number")
    return dict(zip(valid["seller_loan_number"], valid["loan_program"], strict=True))


def _contributors_table(contributors: list[dict], programs: dict[str, str]) -> dg.TableMetadataValue:
    top = contributors[:TOP_CONTRIBUTORS]
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord({"loan": str(c["seller_loan_number"]), "program": str(programs.get(c["seller_loan_number"], "")),
                            "balance": dollars_exact(c["orig_balance"])})
            for c in top
        ],
        schema=_CONTRIBUTOR_SCHEMA,
    )


_LIMITS_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("status", "string"),
        dg.TableColumn("limit", "string", description="platform, check and what it limits"),
        dg.TableColumn("result", "string", description="value vs limit; excess or headroom"),
    ]
)
_STATUS_ORDER = {"fail": 0, "no_data": 1, "pass": 2}


def limits_table(checks: pd.DataFrame) -> dg.TableMetadataValue:
    """Every limit of one batch on one screen, breaches first: the batch view
    of the eligibility partition."""
    limited = checks[checks["limit"].notna()]
    rows = sorted(limited.to_dict("records"), key=lambda r: _STATUS_ORDER.get(r["status"], 3))
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord({
                "status": r["status"],
                "limit": check_title(r["platform"], r["check_id"], r["description"]),
                "result": result_line(r, unit_of(r["metric"], r["column"])),
            })
            for r in rows
        ],
        schema=_LIMITS_SCHEMA,
    )


def limit_check_results(checks: pd.DataFrame, loans: pd.DataFrame):
    """One warning-severity result per limit the rules file defines. Only the
    numbers that move from batch to batch (value, before, to_purchase, the
    contributing loans) are numeric metadata, so the Plots tab shows them
    over batches; the limit and the verdict are text."""
    named = {c["seller_loan_number"] for row in checks.get("contributors", []) for c in row[:TOP_CONTRIBUTORS]}
    programs = _programs_of(loans, named)
    for row in checks.to_dict("records"):
        if row["limit"] is None or pd.isna(row["limit"]):
            continue  # informational metrics have nothing to breach
        name = limit_check_name(row["platform"], row["check_id"])
        unit = unit_of(row["metric"], row["column"])
        line = result_line(row, unit)
        metadata = {
            "result": line,
            "limit": limit_text(row["op"], row["limit"], unit),
            f"value{unit.label}": unit.number(row["value"]),
            f"before{unit.label}": unit.number(row["before"]),
            f"to_purchase{unit.label}": unit.number(row["to_purchase"]),
        }
        if row["contributors"]:
            metadata["excess_balance"] = dollars_exact(row["excess_balance"]) if unit.number(row["excess_balance"]) is not None else None
            metadata["contributing_loans"] = len(row["contributors"])
            metadata["top_contributors"] = _contributors_table(row["contributors"], programs)
        headroom = unit.number(row.get("headroom_balance")) if "headroom_balance" in row else None
        if headroom is not None:
            metadata["headroom_balance"] = dollars_exact(row["headroom_balance"])
        yield dg.AssetCheckResult(
            asset_key="eligibility",
            check_name=name,
            passed=row["status"] != "fail",
            severity=dg.AssetCheckSeverity.WARN,
            metadata={k: v for k, v in metadata.items() if v is not None},
            description=line,
        )


def _invalid_rows(loans):
    return loans["invalid"]


def _unknown_programs(loans):
    return ~loans["invalid"] & ~loans["known_program"]


def _not_on_tape(loans):
    return ~loans["invalid"] & ~loans["on_tape"]


def _already_held(loans):
    return ~loans["invalid"] & loans["already_owned"]


def _duplicates(loans):
    return loans["row_problems"].str.contains("appears more than once", regex=False)


def _not_in_grid(loans):
    return loans["comap_status"] == "not_in_grid"


_QUALITY = {
    "normalized_loans": {
        "invalid_rows": ("Offered loans rejected as invalid_data (empty or unreadable fields, FICO or balance out of range).", _invalid_rows),
        "unknown_programs": ("Offered loans whose program is not in the master sheet of their kind.", _unknown_programs),
        "buy_loans_missing_from_tape": ("Offered loans the servicer tape does not list.", _not_on_tape),
        "offered_loans_already_held": (
            "Offered loans the buyer already holds: current_assets.csv lists them, not repurchased.", _already_held),
        "duplicate_loan_numbers": ("SELLER Loan # offered more than once in the batch.", _duplicates),
    },
    "comap": {
        "not_in_grid": ("Price-checked loans whose program appears in no applicable CoMAP sheet.", _not_in_grid),
    },
}
DATA_QUALITY_CHECKS = {
    asset: [
        dg.AssetCheckSpec(name=name, asset=asset, description=desc, blocking=False, partitions_def=batches)
        for name, (desc, _) in checks.items()
    ]
    for asset, checks in _QUALITY.items()
}
_EXAMPLE_SCHEMA = dg.TableSchema(
    columns=[dg.TableColumn("loan", "string"), dg.TableColumn("file", "string"), dg.TableColumn("row", "int")]
)


def data_quality_results(asset: str, loans: pd.DataFrame):
    for name, (_, select) in _QUALITY[asset].items():
        mask = select(loans)
        flagged = loans.loc[mask, ["seller_loan_number", "source_file", "source_row"]].head(TOP_CONTRIBUTORS)
        count = int(mask.sum())
        metadata = {"loans": count}
        if count:
            metadata["examples"] = dg.MetadataValue.table(
                records=[dg.TableRecord({"loan": str(r.seller_loan_number), "file": str(r.source_file), "row": int(r.source_row)})
                         for r in flagged.itertuples()],
                schema=_EXAMPLE_SCHEMA,
            )
        yield dg.AssetCheckResult(
            asset_key=asset,
            check_name=name,
            passed=not count,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=metadata,
            description=f"{count:,} loan{'s' if count != 1 else ''}" if count else "none",
        )


# An exhibit with a header and no loan rows is legal but almost always a
# seller's mistake (the wrong tab, an export that failed): say so loudly.
EMPTY_EXHIBITS_CHECK = dg.AssetCheckSpec(
    name="exhibits_have_loans", asset="batch_inputs", blocking=False, partitions_def=batches,
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


# Each asset's checks, evaluated in the asset's own step: separate check
# steps cost the run their own events and input loads.
CHECK_SPECS = {
    "batch_inputs": [EMPTY_EXHIBITS_CHECK],
    "normalized_loans": DATA_QUALITY_CHECKS["normalized_loans"],
    "comap": DATA_QUALITY_CHECKS["comap"],
    "eligibility": LIMIT_CHECK_SPECS,
}
