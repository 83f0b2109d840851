"""Materialization metadata a reviewer reads in the UI."""

from __future__ import annotations

import pandas as pd


def reasons_markdown(exceptions: pd.DataFrame, loans: pd.DataFrame) -> str:
    """Rejections (and warnings) by reason with loan counts and balances."""
    if exceptions.empty:
        return "No rejections or warnings."
    balance = loans["orig_balance"].fillna(0.0)
    frame = exceptions.assign(balance=balance.reindex(exceptions["loan"]).to_numpy())
    table = frame.groupby(["severity", "reason"], sort=False).agg(loans=("loan", "size"), balance=("balance", "sum"))
    lines = ["| severity | reason | loans | balance |", "|---|---|---:|---:|"]
    lines += [f"| {s} | {r} | {int(row.loans)} | {row.balance:,.2f} |" for (s, r), row in table.iterrows()]
    return "\n".join(lines)


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
