"""One rules file per run, and limits that match what the UI declares."""

import copy
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import dagster as dg
import pytest
import yaml

from loan_engine_dagster.adapters.incidents import classify
from loan_engine_dagster.definitions import defs
from loan_engine_dagster.orchestration import assets
from loan_engine_dagster.orchestration.checks import declared_limit_ids
from loan_engine_dagster.orchestration.partitions import batches
from loan_engine_dagster.orchestration.resources import (
    InboxResource, Notifier, OutputsResource, ResultsDatabase, RulesResource,
)
from loan_engine_dagster.orchestration.run_records import RULES_TAG, stop_point
from loan_engine_dagster.rules.config import RulesFileError, default_rules, parse_rules, refuse_other_limits

BATCH = "2026-02-19"
ASSETS = dg.load_assets_from_modules([assets])  # each asset evaluates its own checks
PHASES = ["reference_data", "batch_inputs", "normalized_loans", "underwriting", "comap", "eligibility", "exports",
          "results_database"]


def _packaged() -> dict:
    return yaml.safe_load(resources.files("loan_engine_dagster.rules").joinpath("rules.yaml").read_text())


def _write(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _check(data, platform, check_id):
    return next(c for c in data["eligibility"][platform] if c["id"] == check_id)


def _edited_limits() -> dict:
    data = copy.deepcopy(_packaged())
    _check(data, "sfy", "check_l2").update(op="<=", limit=0.2)  # informational becomes a limit
    data["eligibility"]["prime"] = [c for c in data["eligibility"]["prime"] if c["id"] != "check_a"]
    _check(data, "prime", "check_h1").pop("op")
    _check(data, "prime", "check_h1").pop("limit")  # a limit turned informational
    data["eligibility"]["sfy"].append({"id": "check_z9", "description": "New", "metric": "balance_share",
                                       "where": [["fico", "<", 600]], "op": "<", "limit": 0.01})
    return data


def test_declared_limits_are_those_of_the_packaged_file():
    assert declared_limit_ids() == default_rules().limit_ids()
    assert "prime_check_a" in declared_limit_ids() and "sfy_check_l2" not in declared_limit_ids()  # l2 is informational


def test_other_limits_are_named_added_and_removed():
    with pytest.raises(RulesFileError) as err:
        refuse_other_limits(parse_rules(_edited_limits()), declared_limit_ids(), source="'custom.yaml'")
    message = str(err.value)
    assert "rules file 'custom.yaml' does not have the limits the code location declares" in message
    assert "limits the file adds: sfy_check_l2, sfy_check_z9;" in message
    assert "declared limits the file removes or leaves without a limit: prime_check_a, prime_check_h1." in message


def test_other_limit_values_are_fine(tmp_path):
    data = copy.deepcopy(_packaged())
    _check(data, "prime", "check_a")["limit"] = 0.07
    rules = RulesResource(path=_write(tmp_path / "r.yaml", data)).load()
    assert _check(rules.model_dump(), "prime", "check_a")["limit"] == 0.07


def resources_for(inbox, tmp_path, rules=None, inbox_resource=None):
    return {
        "inbox": inbox_resource or InboxResource(path=str(inbox)),
        "outputs": OutputsResource(root=str(tmp_path / "outputs")),
        "results_db": ResultsDatabase(url=f"sqlite:///{tmp_path / 'results.db'}"),
        "rules": rules or RulesResource(),
        "notifier": Notifier(),
    }


def test_run_with_other_limits_is_refused_as_data(sample_inbox, tmp_path):
    custom = _write(tmp_path / "custom.yaml", _edited_limits())
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(batches.name, [BATCH])
        result = dg.materialize(ASSETS, instance=instance, partition_key=BATCH, raise_on_error=False,
                                resources=resources_for(sample_inbox, tmp_path, RulesResource(path=custom)))
        assert not result.success
        assert not result.get_asset_materialization_events()  # refused before any phase ran
        stop = stop_point(instance, result.run_id)
        assert stop.error_type == "RulesFileError"
        assert "limits the file adds: sfy_check_l2, sfy_check_z9" in stop.message
        assert classify(stop.phase, stop.error_type, stop.message) == "data"


class EditingInbox(InboxResource):
    """The inbox, plus an analyst who edits the rules file as soon as the run reads its first file."""

    rules_file: str

    def batch(self, key, rules):
        data = yaml.safe_load(Path(self.rules_file).read_text())
        if data["version"] != "edited":
            data["version"] = "edited"
            _check(data, "prime", "check_a")["limit"] = 0.99
            _write(Path(self.rules_file), data)
        return super().batch(key, rules)


def test_rules_edited_mid_run_do_not_reach_later_phases(sample_inbox, tmp_path):
    path = _write(tmp_path / "rules.yaml", _packaged())
    version = default_rules().version
    inbox = EditingInbox(path=str(sample_inbox), rules_file=path)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(batches.name, [BATCH])
        result = dg.materialize(ASSETS, instance=instance, partition_key=BATCH, raise_on_error=False,
                                resources=resources_for(sample_inbox, tmp_path, RulesResource(path=path), inbox))
        assert result.success
        assert yaml.safe_load(Path(path).read_text())["version"] == "edited"  # the edit did happen, during the run
        for phase in PHASES:
            [mat] = result.asset_materializations_for_node(phase)
            assert mat.metadata["rules_version"].value == version, phase
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert checks["prime_check_a"].metadata["limit"].value == "< 5.0%"  # not the edited 99.0%
        assert instance.get_run_by_id(result.run_id).tags[RULES_TAG] == default_rules().fingerprint()


def _job():
    return defs.resolve_job_def("loan_engine_job")


def test_reexecution_with_changed_rules_is_refused(sample_inbox, tmp_path):
    path = _write(tmp_path / "rules.yaml", _packaged())
    run_config = {"resources": {
        "inbox": {"config": {"path": str(sample_inbox)}},
        "outputs": {"config": {"root": str(tmp_path / "outputs")}},
        "results_db": {"config": {"url": f"sqlite:///{tmp_path / 'results.db'}"}},
        "rules": {"config": {"path": path}},
    }}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(batches.name, [BATCH])
        tags = {"dagster/partition": BATCH}
        with dg.execute_job(dg.reconstructable(_job), instance=instance, run_config=run_config, tags=tags) as first:
            assert first.success
        data = _packaged()
        _check(data, "sfy", "check_a1")["limit"] = 0.5
        _write(Path(path), data)
        again = dg.ReexecutionOptions(parent_run_id=first.run_id, step_selection=["exports"])
        with pytest.raises(dg.DagsterResourceFunctionError):  # the run fails before its first step
            with dg.execute_job(dg.reconstructable(_job), instance=instance, run_config=run_config, tags=tags,
                                reexecution_options=again):
                pass
        [refused] = instance.get_runs(limit=1)
        assert refused.parent_run_id == first.run_id and refused.status == dg.DagsterRunStatus.FAILURE
        stop = stop_point(instance, refused.run_id)
        assert stop.error_type == "RulesFileError" and f"changed since run {first.run_id}" in stop.message
        assert classify(stop.phase, stop.error_type, stop.message) == "data"
        _write(Path(path), _packaged())
        with dg.execute_job(dg.reconstructable(_job), instance=instance, run_config=run_config,
                            tags=tags, reexecution_options=again) as same_rules:
            assert same_rules.success


def test_cli_refuses_other_limits_before_starting_a_run(sample_inbox, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOAN_ENGINE_", "DAGSTER_HOME"))}
    env.update(LOAN_ENGINE_RULES_FILE=_write(tmp_path / "custom.yaml", _edited_limits()),
               DAGSTER_HOME=str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    result = subprocess.run([str(Path(sys.executable).parent / "loan-engine"), "run", BATCH, "--inbox", str(sample_inbox)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    assert "limits the file adds: sfy_check_l2, sfy_check_z9" in result.stderr
    assert not list((tmp_path / "home").iterdir())  # no run was recorded
