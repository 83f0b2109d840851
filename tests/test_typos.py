"""Typos stop at the door: batch keys, run options, and exhibits with no loans."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from test_assets import resources_for

from loan_engine_dagster.adapters.files import open_workbook, read_sheet
from loan_engine_dagster.adapters.inbox import BatchFiles, BatchKeyError, parse_batch_key
from loan_engine_dagster.adapters.incidents import classify
from loan_engine_dagster.cli import print_summary
from loan_engine_dagster.orchestration import assets
from loan_engine_dagster.orchestration.assets import BatchRunConfig
from loan_engine_dagster.orchestration.partitions import batches
from loan_engine_dagster.orchestration.resources import InboxResource, OutputsResource, RulesResource
from loan_engine_dagster.orchestration.run_records import stop_point
from loan_engine_dagster.orchestration.sensors import inbox_sensor
from loan_engine_dagster.rules.run_options import RunOptionError, check_irr_target, parse_pdate

BATCH = "2026-02-19"
ASSETS = dg.load_assets_from_modules([assets])  # each asset evaluates its own checks
BIN = Path(sys.executable).parent
BAD_KEYS = ["20260219", "2026-W08-4", "2026-02-30", "2026-2-19", "2026-02-19-Offcycle", "2026-02-19-offcycle-2", " 2026-02-19"]


@pytest.mark.parametrize("key", ["2026-02-19", "2026-02-19-offcycle", "2024-02-29"])
def test_batch_keys_that_are_real_dates(key):
    day, offcycle = parse_batch_key(key)
    assert day.isoformat() == key[:10] and offcycle == key.endswith("-offcycle")


@pytest.mark.parametrize("key", BAD_KEYS)  # 20260219 and 2026-W08-4 were accepted, then reported "not complete"
def test_batch_keys_that_are_not(key):
    with pytest.raises(BatchKeyError, match=f"batch key '{key}' is not YYYY-MM-DD or YYYY-MM-DD-offcycle"):
        parse_batch_key(key)


@pytest.mark.parametrize("key", ["20260219", "2026-W08-4"])
def test_cli_refuses_bad_batch_keys_before_looking_for_files(key, sample_inbox, tmp_path):
    result = subprocess.run([str(BIN / "loan-engine"), "run", key, "--inbox", str(sample_inbox)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert f"batch key '{key}' is not YYYY-MM-DD or YYYY-MM-DD-offcycle" in result.stderr
    assert "not complete" not in result.stderr


class TypoInbox(InboxResource):
    """An inbox whose scan reports a batch under a key that is no date."""

    def batches(self, rules):
        found = super().batches(rules)
        found["20260219"] = BatchFiles(key="20260219", notice_date=found[BATCH].notice_date)
        return found


def test_sensor_refuses_bad_batch_keys_with_the_same_words(sample_inbox, tmp_path):
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={
            "inbox": TypoInbox(path=str(sample_inbox)), "rules": RulesResource(), "outputs": OutputsResource(root=str(tmp_path / "published"))})
        result = inbox_sensor(context)
        assert not result.run_requests  # first look: files not yet known to be stable
        assert "batch key '20260219' is not YYYY-MM-DD or YYYY-MM-DD-offcycle" in result.skip_reason.skip_message
        context = dg.build_sensor_context(instance=instance, cursor=result.cursor, resources={
            "inbox": TypoInbox(path=str(sample_inbox)), "rules": RulesResource(), "outputs": OutputsResource(root=str(tmp_path / "published"))})
        result = inbox_sensor(context)
        assert [r.partition_key for r in result.run_requests] == [BATCH]
        assert [list(r.partition_keys) for r in result.dynamic_partitions_requests] == [[BATCH]]


@pytest.mark.parametrize("value", ["2026-02-30", "20260225", "2026-02-25T00:00", "next tuesday"])
def test_pdate_must_be_a_real_date(value):
    with pytest.raises(RunOptionError, match=f"run option pdate: '{value}' is not a real date in YYYY-MM-DD form"):
        BatchRunConfig(pdate=value)
    assert BatchRunConfig(pdate="2026-02-25").pdate == "2026-02-25"
    assert parse_pdate("2026-02-25").isoformat() == "2026-02-25"


@pytest.mark.parametrize("value", [805.0, 0.0, -1.0, float("nan"), float("inf")])
def test_irr_target_must_be_a_percentage(value):
    with pytest.raises(RunOptionError, match="run option irr_target: .* is not a percentage between 0 and 100"):
        BatchRunConfig(irr_target=value)
    assert check_irr_target(8.05) == 8.05


def test_cli_refuses_bad_run_options(sample_inbox, tmp_path):
    for option, value in (("--pdate", "2026-02-30"), ("--irr-target", "805")):
        result = subprocess.run([str(BIN / "loan-engine"), "run", BATCH, "--inbox", str(sample_inbox), option, value],
                                capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert result.returncode == 2 and f"Invalid value for '{option}'" in result.stderr, result.stderr


def _materialize(instance, inbox, tmp_path, key=BATCH, run_config=None):
    instance.add_dynamic_partitions(batches.name, [key])
    return dg.materialize(ASSETS, instance=instance, partition_key=key, resources=resources_for(inbox, tmp_path),
                          run_config=run_config, raise_on_error=False)


def test_launchpad_pdate_typo_is_data_naming_the_field(sample_inbox, tmp_path):
    with dg.instance_for_test() as instance:
        result = _materialize(instance, sample_inbox, tmp_path,
                              run_config={"ops": {"normalized_loans": {"config": {"pdate": "2026-02-30"}}}})
        assert not result.success
        stop = stop_point(instance, result.run_id)
        assert (stop.phase, stop.error_type) == ("normalized_loans", "RunOptionError")
        assert "run option pdate: '2026-02-30' is not a real date" in stop.message
        assert classify(stop.phase, stop.error_type, stop.message) == "data"  # it was `code` (a ValueError)


def test_partition_with_a_bad_key_fails_as_data_not_as_missing_files(sample_inbox, tmp_path):
    with dg.instance_for_test() as instance:
        result = _materialize(instance, sample_inbox, tmp_path, key="20260219")
        assert not result.success
        stop = stop_point(instance, result.run_id)
        assert stop.error_type == "BatchKeyError" and "is not YYYY-MM-DD" in stop.message
        assert classify(stop.phase, stop.error_type, stop.message) == "data"


def _empty_exhibit(path: Path) -> None:
    """Keep the title block and the header row; drop every loan."""
    _, raw = read_sheet(open_workbook(path), path)
    header = raw.index[raw.apply(lambda row: row.astype(str).str.strip().eq("SELLER Loan #").any(), axis=1)][0]
    raw.iloc[: header + 1].to_excel(path, header=False, index=False, engine="xlsxwriter")


def test_exhibit_without_loans_warns_in_checks_summary_and_cli(sample_inbox, tmp_path, capsys):
    inbox = tmp_path / "inbox"
    shutil.copytree(sample_inbox, inbox)
    [sfy] = inbox.glob("SFY_*.xlsx")
    _empty_exhibit(sfy)
    with dg.instance_for_test() as instance:
        result = _materialize(instance, inbox, tmp_path)
        assert result.success  # an empty exhibit is legal, but never silent
        check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "exhibits_have_loans")
        assert check.passed is False and check.severity == dg.AssetCheckSeverity.WARN
        assert check.metadata["empty_exhibits"].value == sfy.name
    folder = tmp_path / "outputs" / BATCH
    summary = json.loads((folder / "run_summary.json").read_text())
    assert summary["empty_exhibits"] == [sfy.name]
    assert summary["by_platform"].keys() == {"prime"}
    print_summary(summary, str(folder))
    assert f"warning: exhibit with no loan rows: {sfy.name}" in capsys.readouterr().out


def test_exhibits_with_loans_pass_the_check(sample_inbox, tmp_path):
    with dg.instance_for_test() as instance:
        result = _materialize(instance, sample_inbox, tmp_path)
        check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "exhibits_have_loans")
        assert check.passed is True
    assert json.loads((tmp_path / "outputs" / BATCH / "run_summary.json").read_text())["empty_exhibits"] == []
