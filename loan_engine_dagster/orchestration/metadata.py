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
