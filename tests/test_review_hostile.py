"""A hostile second read of the intake, run options, column spellings and
the purchase plan: each test pins a fault found by feeding the engine what a
tired operator or an odd seller file would, and failed before its fix."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from loan_engine_dagster.adapters.incidents import classify
from loan_engine_dagster.orchestration import assets
from loan_engine_dagster.orchestration.assets import BatchRunConfig
from loan_engine_dagster.orchestration.partitions import batches
from loan_engine_dagster.orchestration.resources import InboxResource, Notifier, OutputsResource, ResultsDatabase, RulesResource
from loan_engine_dagster.orchestration.run_records import stop_point
from loan_engine_dagster.rules.run_options import RunOptionError

BATCH = "2026-02-19"
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- run options

@pytest.mark.parametrize("value", ["9999-12-31", "0001-01-01", "2262-04-12"])
def test_a_pdate_the_engine_cannot_hold_is_refused_at_the_door(value):
    # Past bug: accepted at launch, then the whole batch failed in `exports`
    # with OutOfBoundsDatetime, classified `code`.
    with pytest.raises(RunOptionError, match=f"run option pdate: '{value}' is out of range"):
        BatchRunConfig(pdate=value)
    assert BatchRunConfig(pdate="2262-04-11").pdate == "2262-04-11"


def test_launchpad_pdate_out_of_range_fails_first_as_data(sample_inbox, tmp_path):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(batches.name, [BATCH])
        result = dg.materialize(
            dg.load_assets_from_modules([assets]), instance=instance, partition_key=BATCH, raise_on_error=False,
            resources={
                "inbox": InboxResource(path=str(sample_inbox)),
                "outputs": OutputsResource(root=str(tmp_path / "outputs")),
                "results_db": ResultsDatabase(url=f"sqlite:///{tmp_path / 'results.db'}"),
                "rules": RulesResource(),
                "notifier": Notifier(),
            },
            run_config={"ops": {"normalized_loans": {"config": {"pdate": "9999-12-31"}}}},
        )
        assert not result.success
        stop = stop_point(instance, result.run_id)
        assert (stop.phase, stop.error_type) == ("normalized_loans", "RunOptionError")
        assert "'9999-12-31' is out of range" in stop.message
        assert classify(stop.phase, stop.error_type, stop.message) == "data"
        assert not (tmp_path / "outputs" / BATCH).exists()


def test_cli_refuses_a_pdate_out_of_range_saying_so(sample_inbox, tmp_path):
    result = subprocess.run([str(BIN / "loan-engine"), "run", BATCH, "--inbox", str(sample_inbox),
                             "--output-dir", str(tmp_path / "out"), "--pdate", "9999-12-31"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert "Invalid value for '--pdate': '9999-12-31' is out of range (a date must fall between" in result.stderr
    assert not (tmp_path / "out").exists()
