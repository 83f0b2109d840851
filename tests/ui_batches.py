"""Three batches in one Dagster instance, as an analyst would find them in the
UI: one passing, one with a breached limit, one that failed on a corrupt
exhibit. Used by the browser test; each batch runs as a real Dagster run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pandas as pd

from loan_engine_dagster.adapters.sample import generate_inbox

PASSING, BREACHED, FAILED = "2026-02-19", "2026-02-26", "2026-03-05"


def _inbox(root: Path, batch: str, seed: int) -> Path:
    folder = root / f"inbox-{batch}"
    generate_inbox(folder, batch=dt.date.fromisoformat(batch), loans=200, existing=2000, seed=seed)
    return folder


def _breach_hybrid(inbox: Path) -> None:
    """The SFY portfolio becomes all hybrid: SFY check_a1 (Hybrid < 85%) fails."""
    path = inbox / "current_assets.csv"
    existing = pd.read_csv(path, dtype=str, keep_default_na=False)
    existing.loc[existing["platform"] == "SFY", "type"] = "hybrid"
    existing.to_csv(path, index=False)


def _corrupt_exhibit(inbox: Path) -> None:
    next(inbox.glob("SFY_*.xlsx")).write_bytes(b"this is not a workbook")


def run_batch(instance: dg.DagsterInstance, batch: str, inbox: Path, out: Path, db_url: str) -> dg.ExecuteInProcessResult:
    from loan_engine_dagster.definitions import defs
    from loan_engine_dagster.orchestration.partitions import register_batches

    register_batches(instance, [batch])
    run_config = {"resources": {
        "inbox": {"config": {"path": str(inbox)}},
        "outputs": {"config": {"root": str(out)}},
        "results_db": {"config": {"url": db_url}},
    }}
    return defs.resolve_job_def("loan_engine_job").execute_in_process(
        run_config=run_config, instance=instance, partition_key=batch, raise_on_error=False
    )


def build(instance: dg.DagsterInstance, root: Path) -> dict[str, dg.ExecuteInProcessResult]:
    """Runs the three batches, newest last, and returns each run's result."""
    out, db_url = root / "out", f"sqlite:///{root / 'results.db'}"
    passing = _inbox(root, PASSING, seed=3)
    breached = _inbox(root, BREACHED, seed=4)
    _breach_hybrid(breached)
    failed = _inbox(root, FAILED, seed=5)
    _corrupt_exhibit(failed)
    return {batch: run_batch(instance, batch, inbox, out, db_url)
            for batch, inbox in ((PASSING, passing), (BREACHED, breached), (FAILED, failed))}
