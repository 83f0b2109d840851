"""Materialization metadata a reviewer reads in the UI."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from loan_engine_dagster.rules.limit_display import dollars_exact
from loan_engine_dagster.rules.reports import rejections_by_criteria

_REASON_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("reason", "string"),
        dg.TableColumn("loans", "int"),
        dg.TableColumn("balance", "string"),
    ]
)


def rejections_table(loans: pd.DataFrame) -> dg.TableMetadataValue:
    """Rejected loans by their first reason, most loans first: the same
    figures as the CLI summary, adding up to the rejected count."""
    totals = sorted(rejections_by_criteria(loans).items(), key=lambda item: (-item[1]["loans"], item[0]))
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"reason": r, "loans": t["loans"], "balance": dollars_exact(t["balance"])}) for r, t in totals],
        schema=_REASON_SCHEMA,
    )


def warnings_table(exceptions: pd.DataFrame, loans: pd.DataFrame) -> dg.TableMetadataValue:
    """Warnings (which do not reject a loan) by reason, most loans first."""
    warned = exceptions[exceptions["severity"] == "warning"]
    balance = loans["orig_balance"].fillna(0.0).reindex(warned["loan"]).to_numpy()
    table = (
        warned.assign(balance=balance).groupby("reason").agg(loans=("loan", "size"), balance=("balance", "sum"))
        .sort_values(["loans"], ascending=False, kind="stable")
    )
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"reason": str(r), "loans": int(row.loans), "balance": dollars_exact(row.balance)})
                 for r, row in table.iterrows()],
        schema=_REASON_SCHEMA,
    )


def files_markdown(files: list[dict]) -> str:
    lines = ["| role | file | bytes | sha256 |", "|---|---|---:|---|"]
    lines += [f"| {f['role']} | {f['name']} | {f['size']} | `{f['sha256']}` |" for f in files]
    return "\n".join(lines)


def balance_total(frame: pd.DataFrame) -> float:
    return round(float(frame["orig_balance"].fillna(0.0).sum()), 2)


def plan_metadata(plans: dict[str, dict]) -> dict:
    """The purchase plan per platform: status, bought and held-back balance,
    loans held back and the limits that bind."""
    out = {}
    for platform, plan in plans.items():
        out[f"{platform}_status"] = plan["status"]
        out[f"{platform}_bought_balance"] = plan["bought_balance"]
        out[f"{platform}_held_back_balance"] = plan["held_back_balance"]
        out[f"{platform}_held_back_loans"] = plan["held_back_loans"]
        out[f"{platform}_binding_checks"] = ", ".join(plan["binding_checks"]) or "none"
        if plan["upper_bound_balance"] is not None:
            out[f"{platform}_upper_bound_balance"] = plan["upper_bound_balance"]
        if plan["gap_balance"] is not None:
            out[f"{platform}_gap_balance"] = plan["gap_balance"]
        if plan["not_curable_checks"]:
            out[f"{platform}_not_curable_checks"] = ", ".join(plan["not_curable_checks"])
        if plan["conflicting_checks"]:
            out[f"{platform}_conflicting_checks"] = ", ".join(plan["conflicting_checks"])
    return out
