import dagster as dg

# In-process: one batch is one process; steps share it instead of paying
# seconds of Python start-up each.
loan_engine_job = dg.define_asset_job(
    "loan_engine_job",
    selection=dg.AssetSelection.all(),
    executor_def=dg.in_process_executor,
    description="Weekly pre-funding review of one batch, from the inbox files to reports and the results database.",
    # Shown in the launchpad so the two per-run overrides are visible; empty
    # means the rule's default (first Tuesday after the notice; the rules file's IRR target).
    config={"ops": {"normalized_loans": {"config": {"pdate": None, "irr_target": None}}}},
    # A retry after a dead worker runs every phase again from the files: the
    # dead worker may have reported a phase whose pickle it never finished
    # (pickles are written behind the steps, see io_manager).
    tags={"dagster/retry_strategy": "ALL_STEPS"},
)
