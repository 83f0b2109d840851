"""The code location: every Dagster object of the loan engine."""

import dagster as dg

from loan_engine_dagster.orchestration import assets
from loan_engine_dagster.orchestration.failures import (
    dead_worker_sensor,
    loan_engine_failure_sensor,
    loan_engine_timeout_sensor,
    pending_incidents_sensor,
)
from loan_engine_dagster.orchestration.io_manager import batch_io_manager
from loan_engine_dagster.orchestration.jobs import loan_engine_job
from loan_engine_dagster.orchestration.resources import default_resources
from loan_engine_dagster.orchestration.sensors import inbox_sensor, missing_batch_alert_sensor

all_assets = dg.load_assets_from_modules([assets])

defs = dg.Definitions(
    assets=all_assets,
    jobs=[loan_engine_job],
    sensors=[inbox_sensor, missing_batch_alert_sensor, loan_engine_failure_sensor, loan_engine_timeout_sensor, dead_worker_sensor,
             pending_incidents_sensor],
    resources={**default_resources(), "io_manager": batch_io_manager(all_assets)},
)
