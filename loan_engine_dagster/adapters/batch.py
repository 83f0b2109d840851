"""One batch end to end without any orchestrator: the phases in order. The
Dagster assets call the same phase functions one by one; the benchmark and
the tests use this to time and check the whole."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from loan_engine_dagster.rules import pipeline, reports
from loan_engine_dagster.rules.config import Rules
from loan_engine_dagster.rules.eligibility import summarize_checks
from loan_engine_dagster.rules.purchase_plan import PurchasePlan
from loan_engine_dagster.rules.limit_display import share_limits

from . import database
from .inbox import REFERENCE_FILES, find_batch
from .loading import load_batch_inputs, load_reference
from .outputs import (
    clear_leftovers, in_the_way, retire, stage_batch, swapped_in, write_concurrently, write_csv, write_json, write_workbook,
)
from .watch import fingerprint


SUMMARY_FILE = "run_summary.json"


def stage_batch_outputs(
    output_root: Path, decisions: pipeline.Decisions, plan: PurchasePlan, *, batch: str, pdate: dt.date, rules: Rules,
    input_files: list[dict], run_id: str = "local",
) -> tuple[Path, dict]:
    """Every report of section 10 (and the purchase plan) into the run's
    hidden staging folder, not yet published. Returns the staging folder and
    the run summary."""
    summary = reports.run_summary(
        decisions.loans, decisions.exceptions, decisions.checks, batch=batch, pdate=pdate,
        rules_version=rules.version, input_files=input_files, plan=plan.platforms,
    )
    summary["run_id"] = run_id
    eligibility = reports.eligibility_document(
        plan.checks, summarize_checks(decisions.checks), batch=batch, pdate=pdate, rules_version=rules.version,
        plan=plan.platforms,
    )
    workbooks = reports.exception_reports(decisions.loans, decisions.price_mismatch_existing, rules.version)
    workbooks.update(reports.share_copies(workbooks))

    def write(folder: Path) -> None:
        (folder / "share").mkdir()
        # Every file is independent of the others: written two at a time, with
        # each one's size in cells to start the big ones first.
        write_concurrently([
            (decisions.loans.shape[0] * len(reports.DECISION_COLUMNS),
             lambda: write_csv(reports.decisions_table(decisions.loans), folder / "loan_decisions.csv")),
            (plan.loans.size, lambda: write_csv(plan.loans, folder / "purchase_plan.csv")),
            *((frame.size, partial(write_workbook, frame, folder / name)) for name, frame in workbooks.items()),
            (plan.checks.size, lambda: write_workbook(
                reports.eligibility_sheet(plan.checks, plan.platforms, rules.version), folder / "eligibility_checks_summary.xlsx",
                "checks", charts={p.upper(): share_limits(plan.checks, p) for p in ("prime", "sfy")})),
            (0, partial(write_json, eligibility, folder / "eligibility_checks.json")),
            (0, partial(write_json, summary, folder / SUMMARY_FILE)),
        ])

    return stage_batch(output_root, batch, run_id, write), summary


def _summary_run(folder: Path) -> str | None:
    try:
        return json.loads((folder / SUMMARY_FILE).read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def published_delivery(output_root: Path, batch_key: str) -> str | None:
    """The fingerprint of the batch's own files that its published reports
    were made from (their audit trail in run_summary.json), if any."""
    try:
        entries = json.loads((output_root / batch_key / SUMMARY_FILE).read_text())["input_files"]
        return fingerprint({e["role"]: e["sha256"] for e in entries if e["role"] not in REFERENCE_FILES})
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no reports, or none this release wrote


def reconcile_reports(conn, output_root: Path, batch_key: str) -> str | None:
    """Put the reports that go with the batch's rows back in the batch folder,
    and say what was done (None when they already match).

    Reports and rows cannot be committed as one. A worker killed after its
    reports were swapped in but before its rows were committed leaves its
    reports beside the previous run's rows (whose reports wait, set aside,
    in a hidden folder), and one that lost the commit's answer leaves its
    rows beside the previous reports (its own staged beside them). The rows
    decide; called by the batch's next run while it holds the batch, inside
    its fenced transaction."""
    target = output_root / batch_key
    rows_run = database.rows_run(conn, batch_key)
    shown_run = _summary_run(target) if target.is_dir() else None
    if shown_run == rows_run:
        return None
    if rows_run is None:
        retire(target)
        return (f"the reports of run {shown_run} had no rows in the results database (its worker died before the "
                "commit): set aside, so that no reports show without their rows")
    found = sorted(p for p in output_root.glob(f".{batch_key}.*") if p.is_dir() and _summary_run(p) == rows_run)
    if not found:
        return (f"the batch's rows are run {rows_run}'s but its reports are gone; the folder holds run {shown_run}'s "
                "reports until this run replaces both")
    if in_the_way(target):
        retire(target)
    found[0].rename(target)
    was = f"run {shown_run}'s" if shown_run else "no"
    return f"put back the reports of run {rows_run}, whose rows the results database holds (the folder held {was} reports)"


@contextlib.contextmanager
def delivered(staging: Path, target: Path, run_id: str):
    """Publish staged reports as `run_id`'s (a re-execution publishes reports
    its parent run staged): the folder names the run whose rows go with it.
    Called inside the fenced save transaction, so only the batch's writer
    ever removes leftovers or swaps folders."""
    clear_leftovers(target.parent, target.name, keep=staging)  # killed runs' staging folders
    summary_path = staging / SUMMARY_FILE
    summary = json.loads(summary_path.read_text())
    if summary.get("run_id") != run_id:
        summary["run_id"] = run_id
        write_json(summary, summary_path)
    with swapped_in(staging, target) as folder:
        yield folder


def write_batch_outputs(
    output_root: Path, decisions: pipeline.Decisions, plan: PurchasePlan, *, batch: str, pdate: dt.date, rules: Rules,
    input_files: list[dict], run_id: str = "local",
) -> tuple[Path, dict]:
    """Every report into `<output_root>/<batch>/` at once, for callers without a database."""
    staging, summary = stage_batch_outputs(output_root, decisions, plan, batch=batch, pdate=pdate, rules=rules,
                                           input_files=input_files, run_id=run_id)
    with delivered(staging, output_root / batch, run_id) as folder:
        return folder, summary


@dataclass
class PhaseTimer:
    seconds: dict[str, float] = field(default_factory=dict)

    def __call__(self, name: str, fn: Callable, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - start
        return result


def process_batch(
    inbox: Path, batch_key: str, *, output_root: Path, database_url: str, rules: Rules,
    pdate: dt.date | None = None, run_id: str = "local", timer: PhaseTimer | None = None,
) -> dict:
    timer = timer or PhaseTimer()
    files = find_batch(inbox, batch_key, rules.inbox.tape_lookback_days)
    reference = timer("reference_data", load_reference, files.reference, rules)
    inputs = timer("batch_inputs", load_batch_inputs, files, rules)
    purchase_date = pipeline.resolve_pdate(inputs.notice_date, pdate)
    normalized = timer("normalized_loans", pipeline.normalize, reference, inputs, rules, purchase_date)
    underwritten = timer("underwriting", pipeline.run_underwriting, normalized.loans, reference.grids, rules)
    comap = timer("comap", pipeline.run_comap, underwritten, reference.comap, rules)
    existing = pipeline.portfolio(reference, normalized)
    decisions = timer("eligibility", pipeline.run_eligibility, comap, existing, rules)
    plan = timer("purchase_plan", pipeline.run_purchase_plan, decisions, existing, rules)
    staging, summary = timer(
        "exports", stage_batch_outputs, output_root, decisions, plan, batch=batch_key, pdate=purchase_date, rules=rules,
        input_files=normalized.input_files, run_id=run_id,
    )
    folder = output_root / batch_key
    engine = database.engine_for(database_url)
    try:
        timer("save_db", database.save_batch, engine, batch_key=batch_key, run_id=run_id, rules_version=rules.version,
              loans=decisions.loans, exceptions=decisions.exceptions, checks=decisions.checks,
              publish=lambda: delivered(staging, folder, run_id))
    finally:
        engine.dispose()
    return {"output_dir": str(folder), "summary": summary, "seconds": dict(timer.seconds)}
