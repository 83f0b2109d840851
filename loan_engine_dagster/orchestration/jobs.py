import dagster as dg

# In-process: one batch is one process; steps share it instead of paying
# seconds of Python start-up each.
loan_engine_job = dg.define_asset_job(
    "loan_engine_job",
    selection=dg.AssetSelection.all(),
    executor_def=dg.in_process_executor,
    description="Weekly pre-funding review of one batch, from the inbox files to reports and the results database.",
)
