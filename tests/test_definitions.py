import ast
import subprocess
import sys
from pathlib import Path

import dagster as dg

from loan_engine_dagster.definitions import defs

PACKAGE = Path(__file__).resolve().parents[1] / "loan_engine_dagster"


def test_asset_keys():
    keys = sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys())
    assert keys == ["batch_inputs", "comap", "eligibility", "exports", "normalized_loans", "purchase_plan",
                    "reference_data", "results_database", "underwriting"]


def test_groups_are_business_stages():
    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups == {"reference_data": "intake", "batch_inputs": "intake", "normalized_loans": "review",
                      "underwriting": "review", "comap": "review", "eligibility": "review",
                      "purchase_plan": "delivery", "exports": "delivery", "results_database": "delivery"}


def test_asset_checks_one_per_limit_plus_data_quality(rules):
    names = sorted(k.name for k in defs.resolve_asset_graph().asset_check_keys)
    limits = [f"{p}_{c.id}" for p, cs in (("prime", rules.eligibility.prime), ("sfy", rules.eligibility.sfy))
              for c in cs if c.limit is not None]
    assert len(limits) == 44
    assert names == sorted(limits + ["invalid_rows", "unknown_programs", "buy_loans_missing_from_tape", "offered_loans_already_held",
                                     "duplicate_loan_numbers", "not_in_grid", "exhibits_have_loans"])


def test_job_and_sensors():
    job = defs.resolve_job_def("loan_engine_job")
    # the launchpad opens with the per-run overrides written out
    assert job.partitioned_config.get_run_config_for_partition_key("2026-02-19") == {
        "ops": {"normalized_loans": {"config": {"pdate": None, "irr_target": None}}}}
    assert job.executor_def.name == "in_process"
    assert job.partitions_def.name == "batches"
    for name in ("inbox_sensor", "missing_batch_alert_sensor", "loan_engine_failure_sensor", "loan_engine_timeout_sensor",
                 "dead_worker_sensor", "pending_incidents_sensor"):
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING


def test_package_exposes_defs_lazily():
    code = "import sys, loan_engine_dagster.rules.pipeline, loan_engine_dagster.adapters.batch, loan_engine_dagster.cli; print('dagster' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    code = "import loan_engine_dagster as p; print(type(p.defs).__name__, 'defs' in dir(p))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "Definitions True"


def test_domain_layer_never_imports_dagster():
    offenders = []
    for layer in ("rules", "adapters"):
        for path in (PACKAGE / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "dagster"
                              or "orchestration" in n or n.endswith("definitions")]
    assert offenders == []


def test_dagster_definitions_validate():
    exe = Path(sys.executable).parent / "dagster"
    result = subprocess.run([str(exe), "definitions", "validate", "-m", "loan_engine_dagster"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
