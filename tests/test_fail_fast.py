"""A batch whose results cannot be delivered fails before it reads a file:
results database unreachable, output folder not writable. Real runs, a real
unreachable PostgreSQL port, a real `loan-engine run`."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from loan_engine_dagster.adapters.incidents import classify, one_line
from loan_engine_dagster.orchestration import assets
from loan_engine_dagster.orchestration.jobs import loan_engine_job
from loan_engine_dagster.orchestration.resources import (
    InboxResource, Notifier, OutputsResource, ResultsDatabase, RulesResource,
)
from loan_engine_dagster.orchestration.run_records import stop_point

BIN = Path(sys.executable).parent
BATCH = "2026-02-19"
INTAKE = ("batch_inputs", "reference_data")  # the two first phases; the executor picks which runs first
UNREACHABLE_DB = "postgresql+psycopg2://postgres:hunter2@127.0.0.1:9/nowhere"  # nothing listens on port 9


def _run(instance, inbox, output_root, results_url):
    instance.add_dynamic_partitions("batches", [BATCH])
    resources = {"inbox": InboxResource(path=str(inbox)), "outputs": OutputsResource(root=str(output_root)),
                 "results_db": ResultsDatabase(url=results_url, connect_retries=0), "rules": RulesResource(),
                 "notifier": Notifier()}
    defs = dg.Definitions(assets=dg.load_assets_from_modules([assets]), jobs=[loan_engine_job], resources=resources)
    return defs.resolve_job_def("loan_engine_job").execute_in_process(
        instance=instance, partition_key=BATCH, raise_on_error=False)


def _stopped(instance, result, failed_phases=("reference_data", "batch_inputs")):
    assert not result.success
    events = instance.all_logs(result.run_id)
    succeeded = [e.dagster_event.step_key for e in events if e.dagster_event and e.dagster_event.is_step_success]
    assert succeeded == []  # no phase read its files to the end
    failed = [e.dagster_event.step_key for e in events if e.dagster_event and e.dagster_event.is_step_failure]
    assert set(failed) == set(failed_phases)  # the intake phases stop at their first line
    stop = stop_point(instance, result.run_id)
    return dataclasses.replace(stop, message=one_line(stop.message, stop.error_type)), classify(stop.phase, stop.error_type, stop.message)


def test_unreachable_database_fails_the_first_phase_as_infra(sample_inbox, tmp_path):
    with dg.instance_for_test() as instance:
        # The run takes its batch's lease in the results database before any phase.
        stop, kind = _stopped(instance, _run(instance, sample_inbox, tmp_path / "out", UNREACHABLE_DB), failed_phases=())
    assert (stop.phase, stop.error_type, kind) == (None, "PreflightError", "infra")  # before any phase: shown as `run`
    assert stop.message.startswith(
        "results database postgresql+psycopg2://postgres:***@127.0.0.1:9/nowhere cannot be reached (OperationalError: ")
    assert "hunter2" not in stop.message
    assert not (tmp_path / "out").exists()  # no report, not even the folder the write check made


def test_a_database_url_naming_some_other_file_fails_as_infra_naming_it(sample_inbox, tmp_path):
    # Past bug: reported as a code bug, `file is not a database`, without the URL.
    (tmp_path / "notes.sqlite").write_text("not a database")
    url = f"sqlite:///{tmp_path / 'notes.sqlite'}"
    with dg.instance_for_test() as instance:
        stop, kind = _stopped(instance, _run(instance, sample_inbox, tmp_path / "out", url), failed_phases=())
    assert (stop.phase, stop.error_type, kind) == (None, "PreflightError", "infra")
    assert stop.message == f"results database {url} is not usable (DatabaseError: file is not a database)"


def test_output_folder_that_cannot_be_written_fails_the_first_phase_as_infra(sample_inbox, tmp_path):
    (tmp_path / "taken").write_text("a file where the output folder should be")
    root = tmp_path / "taken" / "outputs"
    with dg.instance_for_test() as instance:
        stop, kind = _stopped(instance, _run(instance, sample_inbox, root, f"sqlite:///{tmp_path / 'r.db'}"))
    assert (stop.phase in INTAKE, stop.error_type, kind) == (True, "PreflightError", "infra")
    assert stop.message.startswith(f"output folder {root} is not writable (")


def test_a_run_whose_inbox_is_missing_fails_as_infra_naming_it(tmp_path):
    # A run launched from the UI or a schedule with a wrong or unmounted inbox:
    # past bug, `reference file missing from the inbox` (data), naming four files.
    inbox = tmp_path / "unmounted" / "inbox"
    with dg.instance_for_test() as instance:
        stop, kind = _stopped(instance, _run(instance, inbox, tmp_path / "out", f"sqlite:///{tmp_path / 'r.db'}"))
    assert (stop.phase in INTAKE, stop.error_type, kind) == (True, "InboxUnreadable", "infra")
    assert stop.message.startswith(f"inbox folder {inbox} does not exist; ")


@pytest.mark.slow
def test_loan_engine_run_says_so_at_once(sample_inbox, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_"))}
    env["DAGSTER_HOME"] = str(home)
    result = subprocess.run(
        [str(BIN / "loan-engine"), "run", BATCH, "--inbox", str(sample_inbox), "--output-dir", str(tmp_path / "out"),
         "--database-url", UNREACHABLE_DB], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [l for l in result.stderr.splitlines() if "FAILED" in l]
    assert (" FAILED in phase run [infra]: results database postgresql+psycopg2://postgres:***@127.0.0.1:9/nowhere"
            " cannot be reached (OperationalError: ") in line, line
    assert "Traceback" not in result.stderr and "hunter2" not in result.stdout + result.stderr
