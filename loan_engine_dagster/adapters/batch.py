"""One batch end to end without any orchestrator: the phases in order. The
Dagster assets call the same phase functions one by one; the benchmark and
the tests use this to time and check the whole."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loan_engine_dagster.rules import pipeline, reports
from loan_engine_dagster.rules.config import Rules
from loan_engine_dagster.rules.eligibility import summarize_checks
from loan_engine_dagster.rules.limit_display import share_limits

from . import database
from .inbox import find_batch
from .loading import load_batch_inputs, load_reference
from .outputs import publish_batch, write_json, write_workbook


def write_batch_outputs(
    output_root: Path, decisions: pipeline.Decisions, *, batch: str, pdate: dt.date, rules: Rules, input_files: list[dict]
) -> tuple[Path, dict]:
    """Every report of section 10 into `<output_root>/<batch>/`, atomically.
    Returns the folder and the run summary."""
    summary = reports.run_summary(
        decisions.loans, decisions.exceptions, decisions.checks, batch=batch, pdate=pdate,
        rules_version=rules.version, input_files=input_files,
    )
    eligibility = reports.eligibility_document(
        decisions.checks, summarize_checks(decisions.checks), batch=batch, pdate=pdate, rules_version=rules.version
    )
    workbooks = reports.exception_reports(decisions.loans, decisions.price_mismatch_existing)
    workbooks.update(reports.share_copies(workbooks))

    def write(folder: Path) -> None:
        reports.decisions_table(decisions.loans).to_csv(folder / "loan_decisions.csv", index=False)
        (folder / "share").mkdir()
        for name, frame in workbooks.items():
            write_workbook(frame, folder / name)
        write_workbook(reports.eligibility_sheet(decisions.checks), folder / "eligibility_checks_summary.xlsx", "checks",
                       charts={p.upper(): share_limits(decisions.checks, p) for p in ("prime", "sfy")})
        write_json(eligibility, folder / "eligibility_checks.json")
        write_json(summary, folder / "run_summary.json")

    return publish_batch(output_root, batch, write), summary


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
    decisions = timer("eligibility", pipeline.run_eligibility, comap, normalized.existing, rules)
    folder, summary = timer(
        "exports", write_batch_outputs, output_root, decisions, batch=batch_key, pdate=purchase_date, rules=rules,
        input_files=reference.files + inputs.files,
    )
    engine = database.engine_for(database_url)
    try:
        timer("save_db", database.save_batch, engine, batch_key=batch_key, run_id=run_id, rules_version=rules.version,
              loans=decisions.loans, exceptions=decisions.exceptions, checks=decisions.checks)
    finally:
        engine.dispose()
    return {"output_dir": str(folder), "summary": summary, "seconds": dict(timer.seconds)}
