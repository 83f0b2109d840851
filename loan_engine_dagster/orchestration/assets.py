"""One asset per phase of the weekly review, partitioned by batch. Each body
reads its inputs, calls one phase of `loan_engine_dagster.rules`, and returns
the result with what a reviewer wants to see in the UI.

Every phase takes `results_db`, even those that never write: a run holds its
batch's writer lease (and sends its heartbeat) from before its first phase,
whichever phases it runs."""


import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import sqlalchemy.exc
from pydantic import Field, field_validator

from loan_engine_dagster.adapters import database, preflight
from loan_engine_dagster.adapters.batch import delivered, stage_batch_outputs
from loan_engine_dagster.adapters.outputs import clear_leftovers, require_staged
from loan_engine_dagster.adapters.loading import load_batch_inputs, load_reference
from loan_engine_dagster.rules import pipeline
from loan_engine_dagster.rules.reports import empty_exhibits
from loan_engine_dagster.rules.config import Rules
from loan_engine_dagster.rules.limit_display import dollars_exact
from loan_engine_dagster.rules.purchase_plan import PurchasePlan
from loan_engine_dagster.rules.run_options import check_irr_target, parse_pdate

from .checks import CHECK_SPECS, data_quality_results, empty_exhibits_result, limit_check_results, limits_table
from .metadata import balance_total, files_markdown, plan_metadata, rejections_table, warnings_table
from .partitions import batches
from .resources import InboxResource, OutputsResource, ResultsDatabase, RulesResource
from .run_tags import CommitGuard, as_failure, require_started_delivery, tag_run_with_batch

INTAKE, REVIEW, DELIVERY = "intake", "review", "delivery"  # business stages


class BatchRunConfig(dg.Config):
    """Per-run overrides, settable from the launchpad."""

    pdate: str | None = Field(
        default=None,
        description="Purchase date YYYY-MM-DD; empty: the first Tuesday after the notice, business-day adjusted.",
    )
    irr_target: float | None = Field(
        default=None, description="IRR Support Target written on the buy loans; empty: the rules file's value."
    )

    # A bad value raises RunOptionError (a data problem naming the option) as
    # soon as the config is built, before it can reach the rules.
    @field_validator("pdate")
    @classmethod
    def _pdate_is_a_real_date(cls, value: str | None) -> str | None:
        parse_pdate(value)
        return value

    @field_validator("irr_target")
    @classmethod
    def _irr_target_is_a_percentage(cls, value: float | None) -> float | None:
        return check_irr_target(value)


def _check_destinations(outputs: OutputsResource, results_db: ResultsDatabase) -> None:
    """Both intake phases start here: a batch whose reports or rows could not
    be delivered fails before reading a file, not after the whole review."""
    outputs.check_writable()
    results_db.check_reachable()


def _elapsed(start: float) -> dict:
    return {"elapsed_seconds": round(time.perf_counter() - start, 3)}


def _with_irr(rules: Rules, irr_target: float | None) -> Rules:
    if irr_target is None:
        return rules
    return rules.model_copy(update={"normalization": rules.normalization.model_copy(update={"irr_target": irr_target})})


@dg.asset(partitions_def=batches, group_name=INTAKE, kinds={"pandas"})
def reference_data(
    context: dg.AssetExecutionContext, inbox: InboxResource, rules: RulesResource, outputs: OutputsResource,
    results_db: ResultsDatabase,
) -> dg.Output:
    """Master sheets, underwriting and CoMAP grids, and the current portfolio.

    The buyer's own files, read fresh for every batch so that each review
    records exactly which versions it used."""
    start = time.perf_counter()
    _check_destinations(outputs, results_db)
    loaded = rules.load()
    with as_failure():
        data = load_reference(inbox.batch(context.partition_key, loaded).reference, loaded)
    return dg.Output(
        data,
        metadata={
            "programs": len(data.master),
            "notes_programs": len(data.notes_master),
            "existing_assets": len(data.existing),
            "existing_balance": dollars_exact(balance_total(data.existing)),
            "underwriting_grid_rows": len(data.grids),
            "comap_entries": len(data.comap),
            "input_files": dg.MetadataValue.md(files_markdown(data.files)),
            "rules_version": loaded.version,
            **_elapsed(start),
        },
    )


@dg.asset(partitions_def=batches, group_name=INTAKE, kinds={"pandas"}, check_specs=CHECK_SPECS["batch_inputs"])
def batch_inputs(
    context: dg.AssetExecutionContext, inbox: InboxResource, rules: RulesResource, outputs: OutputsResource,
    results_db: ResultsDatabase,
) -> Iterator:
    """The seller's SFY and PRIME exhibits and the servicer tape of this batch."""
    start = time.perf_counter()
    _check_destinations(outputs, results_db)
    # Only this phase: a folder is never renamed by two phases at once.
    repaired = results_db.reconcile_reports(outputs.path, context.partition_key)
    if repaired:
        context.log.warning(f"batch folder: {repaired}")
    loaded = rules.load()
    files = inbox.batch(context.partition_key, loaded)
    tag_run_with_batch(context, files, str(inbox.root))
    with as_failure():
        data = load_batch_inputs(files, loaded)
    require_started_delivery(context, data.files)
    invalid = int((data.exhibits["row_problems"] != "").sum())
    empty = empty_exhibits(data.exhibits, data.files)
    yield dg.Output(
        data,
        metadata={
            "loans_offered": len(data.exhibits),
            "sfy_loans": int((data.exhibits["platform"] == "sfy").sum()),
            "prime_loans": int((data.exhibits["platform"] == "prime").sum()),
            "rows_with_problems": invalid,
            "tape_loans": len(data.tape),
            "tape_repurchases": int(data.tape["repurchased"].sum()),
            "empty_exhibits": ", ".join(empty) or "none",
            "input_files": dg.MetadataValue.md(files_markdown(data.files)),
            "rules_version": loaded.version,
            **_elapsed(start),
        },
    )
    yield empty_exhibits_result(empty)


@dg.asset(partitions_def=batches, group_name=REVIEW, kinds={"pandas"}, check_specs=CHECK_SPECS["normalized_loans"])
def normalized_loans(
    config: BatchRunConfig, reference_data: pipeline.ReferenceData, batch_inputs: pipeline.BatchInputs, rules: RulesResource,
    results_db: ResultsDatabase,
) -> Iterator:
    """Offered loans joined to their program type, with the purchase date set.

    Loans bought as HD notes are looked up in the notes master sheet; existing
    assets the tape reports repurchased leave the portfolio base."""
    start = time.perf_counter()
    loaded = _with_irr(rules.load(), config.irr_target)
    pdate = pipeline.resolve_pdate(batch_inputs.notice_date, parse_pdate(config.pdate))
    data = pipeline.normalize(reference_data, batch_inputs, loaded, pdate)
    loans = data.loans
    yield dg.Output(
        data,
        metadata={
            "loans": len(loans),
            "balance": dollars_exact(balance_total(loans)),
            "invalid_rows": int(loans["invalid"].sum()),
            "unknown_programs": int((~loans["invalid"] & ~loans["known_program"]).sum()),
            "notes_loans": int((loans["loan_kind"] == "notes").sum()),
            "pdate": pdate.isoformat(),
            "irr_target": loaded.normalization.irr_target,
            "existing_repurchased": int(data.repurchase.sum()),
            "rules_version": loaded.version,
            **_elapsed(start),
        },
    )
    yield from data_quality_results("normalized_loans", loans)


@dg.asset(partitions_def=batches, group_name=REVIEW, kinds={"pandas"})
def underwriting(
    reference_data: pipeline.ReferenceData, normalized_loans: pipeline.NormalizedBatch, rules: RulesResource,
    results_db: ResultsDatabase,
) -> dg.Output:
    """Purchase-price check and underwriting on the grid of each loan's platform and kind."""
    start = time.perf_counter()
    loaded = rules.load()
    loans = pipeline.run_underwriting(normalized_loans.loans, reference_data.grids, loaded)
    counts = loans["underwriting_status"].value_counts()
    return dg.Output(
        loans,
        metadata={
            **{f"underwriting_{k}": int(v) for k, v in counts.items()},
            "purchase_price_mismatch": int((~loans["invalid"] & ~loans["purchase_price_check"]).sum()),
            "rules_version": loaded.version,
            **_elapsed(start),
        },
    )


@dg.asset(partitions_def=batches, group_name=REVIEW, kinds={"pandas"}, check_specs=CHECK_SPECS["comap"])
def comap(
    reference_data: pipeline.ReferenceData, underwriting: pd.DataFrame, rules: RulesResource, results_db: ResultsDatabase
) -> Iterator:
    """CoMAP: whether each price-checked loan's program may be bought at its FICO."""
    start = time.perf_counter()
    loaded = rules.load()
    loans = pipeline.run_comap(underwriting, reference_data.comap, loaded)
    counts = loans["comap_status"].value_counts()
    yield dg.Output(
        loans,
        metadata={**{f"comap_{k}": int(v) for k, v in counts.items()}, "rules_version": loaded.version, **_elapsed(start)},
    )
    yield from data_quality_results("comap", loans)


@dg.asset(partitions_def=batches, group_name=REVIEW, kinds={"pandas"}, check_specs=CHECK_SPECS["eligibility"])
def eligibility(
    comap: pd.DataFrame, normalized_loans: pipeline.NormalizedBatch, reference_data: pipeline.ReferenceData,
    rules: RulesResource, results_db: ResultsDatabase,
) -> Iterator:
    """Each loan's disposition, then the portfolio concentration limits.

    A breached limit does not stop the purchase by itself: it shows as a
    warning check with the excess balance and the loans that make it up."""
    start = time.perf_counter()
    loaded = rules.load()
    decisions = pipeline.run_eligibility(comap, pipeline.portfolio(reference_data, normalized_loans), loaded)
    loans = decisions.loans
    to_buy = loans["disposition"] == "to_purchase"
    failed = decisions.checks[decisions.checks["status"] == "fail"]
    yield dg.Output(
        decisions,
        metadata={
            "loans": len(loans),
            "to_purchase": int(to_buy.sum()),
            "to_purchase_balance": dollars_exact(balance_total(loans.loc[to_buy, ["orig_balance"]])),
            "rejected": int((~to_buy).sum()),
            "rejected_balance": dollars_exact(balance_total(loans.loc[~to_buy, ["orig_balance"]])),
            "limits_failed": len(failed),
            "limits_failed_ids": ", ".join(failed["platform"] + ":" + failed["check_id"]) or "none",
            # the batch view: every limit of this batch, breaches first
            "limits": limits_table(decisions.checks),
            "rejected_by_first_reason": rejections_table(loans),
            "warnings_by_reason": warnings_table(decisions.exceptions, loans),
            "rules_version": loaded.version,
            **_elapsed(start),
        },
    )
    yield from limit_check_results(decisions.checks, loans)


@dg.asset(partitions_def=batches, group_name=DELIVERY, kinds={"scipy"})
def purchase_plan(
    eligibility: pipeline.Decisions, normalized_loans: pipeline.NormalizedBatch, reference_data: pipeline.ReferenceData,
    rules: RulesResource, results_db: ResultsDatabase,
) -> dg.Output:
    """Which loans to hold back so that every limit holds, losing the least balance.

    Per platform, the largest purchase among the loans to buy that keeps every
    curable limit, checked by evaluating the limits again on the plan."""
    start = time.perf_counter()
    loaded = rules.load()
    plan = pipeline.run_purchase_plan(eligibility, pipeline.portfolio(reference_data, normalized_loans), loaded)
    return dg.Output(plan, metadata={**plan_metadata(plan.platforms), "rules_version": loaded.version, **_elapsed(start)})


@dg.asset(partitions_def=batches, group_name=DELIVERY)
def exports(
    context: dg.AssetExecutionContext,
    eligibility: pipeline.Decisions,
    purchase_plan: PurchasePlan,
    normalized_loans: pipeline.NormalizedBatch,
    outputs: OutputsResource,
    rules: RulesResource,
    results_db: ResultsDatabase,
) -> dg.Output:
    """The batch's reports: decisions CSV, exception workbooks, limits, purchase plan, run summary.

    Written to a hidden staging folder; `results_database` publishes them
    together with the database rows, so a failed save never replaces the
    previous run's reports."""
    start = time.perf_counter()
    # Checked again: the folder checked by the intake phases may have been
    # replaced, unmounted or made read-only since (minutes, on a large batch).
    outputs.check_writable()
    loaded = rules.load()
    # Staging folders of killed runs go first, only while this run provably holds the batch.
    results_db.under_lease(lambda: clear_leftovers(outputs.path, context.partition_key))
    try:
        folder, summary = stage_batch_outputs(
            outputs.path, eligibility, purchase_plan, batch=context.partition_key, pdate=normalized_loans.pdate,
            rules=loaded, input_files=normalized_loans.input_files, run_id=context.run.run_id,
        )
    except OSError:
        # A run that took the batch over clears this one's staging folder as a
        # killed run's leftover: the files then fail to be written, and the
        # bare "No such file or directory" read as a bug. Lost, it says so.
        results_db.under_lease(lambda: None)
        raise
    # Only the root is resolved: a batch folder that is a link is replaced as a
    # link, never published through (which deleted the folder it pointed to).
    target = outputs.path.resolve() / context.partition_key
    return dg.Output(
        {"folder": str(folder.resolve()), "target": str(target), "summary": summary},
        metadata={
            "output_folder": dg.MetadataValue.path(str(target)),  # where results_database publishes them
            "staging_folder": dg.MetadataValue.path(str(folder.resolve())),
            "files": dg.MetadataValue.md("\n".join(f"- {p.relative_to(folder)}" for p in sorted(folder.rglob("*")) if p.is_file())),
            "to_purchase": summary["by_disposition"].get("to_purchase", {}).get("loans", 0),
            "rejected": summary["by_disposition"].get("rejected", {}).get("loans", 0),
            "rules_version": loaded.version,
            **_elapsed(start),
        },
    )


@dg.asset(partitions_def=batches, group_name=DELIVERY, kinds={"sqlalchemy"})
def results_database(
    context: dg.AssetExecutionContext, eligibility: pipeline.Decisions, exports: dict, results_db: ResultsDatabase,
    rules: RulesResource,
) -> dg.MaterializeResult:
    """Loan facts, exceptions and limit results of the batch, saved to the results database,
    and the batch's reports published with them.

    The batch's earlier rows are replaced in one transaction that first checks
    this run still holds the batch; the staged reports are swapped into the
    output folder just before the commit and swapped back if it fails. A re-run
    never duplicates, and a failed save leaves the previous run's rows and
    reports in place, together."""
    start = time.perf_counter()
    loaded = rules.load()
    staging, target = Path(exports["folder"]), Path(exports["target"])
    require_staged(staging, context.partition_key)
    guard = CommitGuard(context)
    try:
        engine = results_db.engine()
        try:
            counts = database.save_batch(
                engine, batch_key=context.partition_key, run_id=context.run.run_id, rules_version=loaded.version,
                loans=eligibility.loans, exceptions=eligibility.exceptions, checks=eligibility.checks,
                fence=results_db.fence,
                publish=lambda: guard.around_commit(delivered(staging, target, context.run.run_id)),
            )
        finally:
            engine.dispose()
    except sqlalchemy.exc.DBAPIError as exc:
        if database.refused(exc):
            raise database.named(exc, results_db.resolved_url) from None
        if not database.connection_lost(exc):
            raise  # a bug's error, whole
        # A database that is down, restarting or that dropped us is worth another try; the write is transactional.
        lost = database.named(exc, results_db.resolved_url)
        cause = preflight.locked(results_db.resolved_url) if database.locked_by_another(exc) else lost
        raise dg.RetryRequested(max_retries=results_db.connect_retries, seconds_to_wait=results_db.retry_wait_seconds) from cause
    finally:
        guard.release()
    return dg.MaterializeResult(
        metadata={
            **{f"rows_{k}": v for k, v in counts.items()},
            "database": engine.url.render_as_string(hide_password=True),
            "output_folder": dg.MetadataValue.path(str(target)),
            "rules_version": loaded.version,
            **_elapsed(start),
        }
    )
