import json
import re
import shutil

import dagster as dg
import pandas as pd
import pytest

from loan_engine_dagster.adapters import database
from loan_engine_dagster.orchestration import assets
from loan_engine_dagster.orchestration.partitions import batches
from loan_engine_dagster.orchestration.resources import (
    InboxResource, Notifier, OutputsResource, ResultsDatabase, RulesResource,
)

BATCH = "2026-02-19"
ASSETS = dg.load_assets_from_modules([assets])  # each asset evaluates its own checks


def resources_for(inbox, tmp_path):
    return {
        "inbox": InboxResource(path=str(inbox)),
        "outputs": OutputsResource(root=str(tmp_path / "outputs")),
        "results_db": ResultsDatabase(url=f"sqlite:///{tmp_path / 'results.db'}"),
        "rules": RulesResource(),
        "notifier": Notifier(),
    }


def materialize(inbox, tmp_path, instance, run_config=None):
    instance.add_dynamic_partitions(batches.name, [BATCH])
    return dg.materialize(ASSETS, instance=instance, partition_key=BATCH, resources=resources_for(inbox, tmp_path),
                          run_config=run_config, raise_on_error=False)


def metadata(result, asset):
    [mat] = [m for m in result.asset_materializations_for_node(asset)]
    return {k: v.value for k, v in mat.metadata.items()}


@pytest.mark.slow
def test_materialize_whole_batch(sample_inbox, tmp_path, rules):
    with dg.instance_for_test() as instance:
        result = materialize(sample_inbox, tmp_path, instance, {"ops": {"normalized_loans": {"config": {"pdate": "2026-02-25", "irr_target": 9.1}}}})
        assert result.success
        elig = metadata(result, "eligibility")
        assert elig["loans"] == 600 and elig["to_purchase"] + elig["rejected"] == 600
        reasons = {r.data["reason"]: r.data for r in elig["rejected_by_first_reason"].records}
        assert "invalid_data" in reasons and sum(r["loans"] for r in reasons.values()) == elig["rejected"]
        loans_order = [r.data["loans"] for r in elig["rejected_by_first_reason"].records]
        assert loans_order == sorted(loans_order, reverse=True)
        assert elig["to_purchase_balance"].startswith("$") and "," in elig["to_purchase_balance"]
        assert elig["rules_version"] == rules.version and elig["elapsed_seconds"] >= 0
        ref = metadata(result, "reference_data")
        assert "current_assets.csv" in ref["input_files"] and len(ref["input_files"].split("`")[1]) == 64
        norm = metadata(result, "normalized_loans")
        assert norm["pdate"] == "2026-02-25" and norm["irr_target"] == 9.1
        exports = metadata(result, "exports")
        folder = tmp_path / "outputs" / BATCH
        assert exports["output_folder"] == str(folder.resolve())
        summary = json.loads((folder / "run_summary.json").read_text())
        assert summary["pdate"] == "2026-02-25"
        # the UI's per-reason figures are the CLI summary's
        assert {r: v["loans"] for r, v in summary["by_rejection_criteria"].items()} == {r: v["loans"] for r, v in reasons.items()}
        db = metadata(result, "results_database")
        assert db["rows_loan_facts"] == 600
        engine = database.engine_for(f"sqlite:///{tmp_path / 'results.db'}")
        assert database.batch_row_counts(engine, BATCH)["loan_facts"] == 600
        with engine.connect() as conn:
            irr = conn.exec_driver_sql("select distinct run_id from loan_facts").scalars().all()
        assert irr == [result.run_id]
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert len(checks) == 51  # 44 limits, 6 loan data-quality checks, exhibits_have_loans
        assert checks["invalid_rows"].passed is False and checks["invalid_rows"].severity == dg.AssetCheckSeverity.WARN
        assert checks["duplicate_loan_numbers"].metadata["loans"].value == 4  # one number offered twice per platform


@pytest.mark.slow
def test_limit_breach_shows_in_asset_checks(sample_inbox, tmp_path):
    inbox = tmp_path / "inbox"
    shutil.copytree(sample_inbox, inbox)
    existing = pd.read_csv(inbox / "current_assets.csv", dtype=str, keep_default_na=False)
    existing.loc[existing["platform"] == "SFY", "type"] = "hybrid"  # the portfolio becomes all hybrid
    existing.to_csv(inbox / "current_assets.csv", index=False)
    with dg.instance_for_test() as instance:
        result = materialize(inbox, tmp_path, instance)
        assert result.success  # a breach warns; it does not stop the batch
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        a1 = checks["sfy_check_a1"]
        assert a1.passed is False and a1.severity == dg.AssetCheckSeverity.WARN
        meta = {k: v.value for k, v in a1.metadata.items()}
        assert meta["limit"] == "< 85.0%" and meta["value (%)"] > 85
        assert meta["before (%)"] > 85 and float(meta["excess_balance"].strip("$").replace(",", "")) > 0
        assert meta["contributing_loans"] > 0
        assert re.fullmatch(r"\d+\.\d% vs < 85\.0%: fail, excess \$[\d.,]+[KMB]?", a1.description)
        assert meta["result"] == a1.description
        rows = [r.data for r in meta["top_contributors"].records]
        assert rows and all(r["loan"].startswith("SFC_") and r["program"] and r["balance"].startswith("$") for r in rows)
        assert checks["prime_check_d"].passed is True
        assert "sfy:check_a1" in metadata(result, "eligibility")["limits_failed_ids"]


@pytest.mark.slow
def test_purchase_plan_asset_holds_back_what_a_breached_limit_needs(sample_inbox, tmp_path):
    import yaml
    from importlib import resources

    inbox = tmp_path / "inbox"
    shutil.copytree(sample_inbox, inbox)
    existing = pd.read_csv(inbox / "current_assets.csv", dtype=str, keep_default_na=False)
    existing.loc[existing["platform"] == "SFY", "type"] = "standard"  # no hybrid in the portfolio yet
    existing.to_csv(inbox / "current_assets.csv", index=False)
    raw = yaml.safe_load(resources.files("loan_engine_dagster.rules").joinpath("rules.yaml").read_text())
    [a1] = [c for c in raw["eligibility"]["sfy"] if c["id"] == "check_a1"]
    a1.update(op="<=", limit=0.01)  # hybrid at most 1%: this batch's hybrids breach it
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(raw))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(batches.name, [BATCH])
        result = dg.materialize(ASSETS, instance=instance, partition_key=BATCH, raise_on_error=False,
                                resources={**resources_for(inbox, tmp_path), "rules": RulesResource(path=str(rules_file))})
        assert result.success
        meta = metadata(result, "purchase_plan")
        assert meta["sfy_status"] in ("optimal", "feasible") and meta["sfy_held_back_loans"] > 0
        assert meta["sfy_held_back_balance"] > 0 and "check_a1" in meta["sfy_binding_checks"]
        assert meta["prime_status"] == "not_needed" and meta["prime_held_back_loans"] == 0
        folder = tmp_path / "outputs" / BATCH
        plan = pd.read_csv(folder / "purchase_plan.csv", keep_default_na=False)
        assert int((plan["plan"] == "hold_back").sum()) == meta["sfy_held_back_loans"]
        doc = json.loads((folder / "eligibility_checks.json").read_text())
        [row] = [c for c in doc["checks"] if (c["platform"], c["check_id"]) == ("sfy", "check_a1")]
        assert row["status"] == "fail" and row["plan_status"] == "pass" and row["plan_value"] <= 0.01
        assert doc["plan"]["sfy"]["held_back_loans"] == meta["sfy_held_back_loans"]


@pytest.mark.slow
def test_structural_error_fails_in_its_phase_and_writes_nothing(sample_inbox, tmp_path):
    inbox = tmp_path / "inbox"
    shutil.copytree(sample_inbox, inbox)
    tape = next(inbox.glob("Tape20Loans_*.csv"))
    pd.read_csv(tape, dtype=str).drop(columns=["Status Codes"]).to_csv(tape, index=False)
    with dg.instance_for_test() as instance:
        result = materialize(inbox, tmp_path, instance)
        assert not result.success
        [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert failure.step_key == "batch_inputs"
        assert "Status Codes" in str(failure.event_specific_data.error.cause.message)
        # The run's own failure message leads with the cause, not a wrapper.
        [run_failure] = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        first_line = run_failure.dagster_event.event_specific_data.error.message.splitlines()[0]
        assert "Data problem in file 'Tape20Loans_02-18-2026.csv', column 'Status Codes'" in first_line
        assert failure.event_specific_data.user_failure_data.metadata["columns"].value == "Status Codes"
        # and the run says which batch and files it read, though launched with only its partition
        tags = instance.get_run_by_id(result.run_id).tags
        assert tags["loan_engine/batch"] == BATCH and len(tags["loan_engine/fingerprint"]) == 16
    assert not (tmp_path / "outputs").exists()
    engine = database.engine_for(f"sqlite:///{tmp_path / 'results.db'}")
    assert database.batch_row_counts(engine, BATCH) == {"loan_facts": 0, "loan_exceptions": 0, "eligibility_results": 0}
