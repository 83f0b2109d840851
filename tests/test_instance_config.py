"""The two instance configs load and say what the docs promise."""

import shutil
from pathlib import Path

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _check(instance):
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    limits = instance.run_coordinator.inst_data.config_dict["tag_concurrency_limits"]
    assert limits == [{"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]
    assert instance.run_monitoring_enabled and instance.run_monitoring_max_runtime_seconds == 7200
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
    assert instance.run_retries_retry_on_asset_or_op_failure is False
    assert isinstance(instance.run_launcher, dg.DefaultRunLauncher)


def test_local_sqlite_instance(tmp_path, monkeypatch):
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        _check(instance)
        assert "Sqlite" in type(instance.run_storage).__name__


@pytest.mark.postgres
def test_production_postgres_instance(tmp_path, monkeypatch, postgres_url):
    shutil.copy(ROOT / "deploy" / "dagster-postgres.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_PG_URL", postgres_url)
    with dg.DagsterInstance.get() as instance:
        _check(instance)
        assert "Postgres" in type(instance.run_storage).__name__
        assert "Postgres" in type(instance.event_log_storage).__name__
        assert "Postgres" in type(instance.schedule_storage).__name__
