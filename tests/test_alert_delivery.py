"""Alerts get out: a webhook that trickles or is down, a results database that
is unreachable when a failure is reported. Real local servers on 127.0.0.1,
real failed runs in a real instance."""

import datetime as dt
import socket
import threading
import time

import dagster as dg
import pytest

from loan_engine_dagster.adapters import database
from loan_engine_dagster.adapters.alerts import WEEKDAYS, AlertPolicy
from loan_engine_dagster.adapters.notifications import WebhookError, post_webhook
from loan_engine_dagster.orchestration import assets
from loan_engine_dagster.orchestration.failures import loan_engine_failure_sensor, pending_incidents_sensor
from loan_engine_dagster.orchestration.jobs import loan_engine_job
from loan_engine_dagster.orchestration.resources import (
    InboxResource, Notifier, OutputsResource, ResultsDatabase, RulesResource,
)
from loan_engine_dagster.orchestration.run_records import INCIDENT_TAG, KIND_TAG, PHASE_TAG
from loan_engine_dagster.orchestration.sensors import missing_batch_alert_sensor
from test_sensors import Hook

BATCH = "2026-02-19"
UNREACHABLE_DB = "postgresql+psycopg2://postgres@127.0.0.1:9/nowhere"  # nothing listens on port 9
# Long enough that only a total deadline ends the call early: a per-read
# timeout never trips on a server that sends a byte every TRICKLE_SECONDS.
TRICKLE_SECONDS = 1.5
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"  # 40 bytes: a minute of trickling


class TrickleServer:
    """Reads a request, then answers one byte every TRICKLE_SECONDS."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.stopped = threading.Event()
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        return self

    def _serve(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn):
        with conn:
            conn.recv(65536)
            self.requests += 1
            for byte in ANSWER:
                if self.stopped.wait(TRICKLE_SECONDS):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return  # the client gave up

    def __exit__(self, *exc):
        self.stopped.set()
        self.sock.close()


def down_url() -> str:
    """A port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def test_trickling_webhook_is_cut_at_the_deadline():
    with TrickleServer() as server:
        start = time.monotonic()
        # 3 s, not 1: on a loaded CI machine the request must surely reach the
        # server before the deadline, or the test would not be about trickling.
        with pytest.raises(WebhookError, match=r"no complete answer within 3s"):
            post_webhook(server.url, {"text": "hello"}, deadline_seconds=3)
        elapsed = time.monotonic() - start
        assert server.requests == 1
    # A whole answer takes a minute; the call ended near its 3 s deadline.
    assert elapsed < len(ANSWER) * TRICKLE_SECONDS / 4, elapsed


def test_webhook_that_is_down_or_refuses_raises_a_clear_error():
    with pytest.raises(WebhookError, match="ConnectionRefusedError"):
        post_webhook(down_url(), {"text": "hello"}, deadline_seconds=2)
    with pytest.raises(WebhookError, match="must be an http"):
        post_webhook("ftp://example/hook", {"text": "hello"})


def _failed_run(instance, tmp_path, name):
    """A real loan_engine_job run that fails in its first phase (empty inbox)."""
    inbox = tmp_path / f"inbox_{name}"
    inbox.mkdir()
    instance.add_dynamic_partitions("batches", [BATCH])
    resources = {"inbox": InboxResource(path=str(inbox)), "outputs": OutputsResource(root=str(tmp_path / "out")),
                 "results_db": ResultsDatabase(url=f"sqlite:///{tmp_path / 'results.db'}"), "rules": RulesResource(),
                 "notifier": Notifier()}
    defs = dg.Definitions(assets=dg.load_assets_from_modules([assets]), jobs=[loan_engine_job], resources=resources)
    result = defs.resolve_job_def("loan_engine_job").execute_in_process(
        instance=instance, partition_key=BATCH, raise_on_error=False)
    assert not result.success
    return result.run_id


def _report(instance, run_id, results_url, notifier):
    [failure] = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name="loan_engine_failure_sensor", dagster_event=failure.dagster_event, dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run_id),
        resources={"results_db": ResultsDatabase(url=results_url), "notifier": notifier},
    ).for_run_failure()
    loan_engine_failure_sensor(context)
    return instance.get_run_by_id(run_id).tags


def _incident_run_ids(url):
    engine = database.engine_for(url)
    with engine.connect() as conn:
        ids = [r.run_id for r in conn.execute(database.incidents.select())]
    engine.dispose()
    return ids


def test_alert_goes_out_when_the_database_is_down_and_the_incident_follows(tmp_path):
    later_db = f"sqlite:///{tmp_path / 'incidents.db'}"
    with dg.instance_for_test() as instance, Hook() as hook:
        run_id = _failed_run(instance, tmp_path, "a")
        notifier = Notifier(webhook_url=hook.url)
        tags = _report(instance, run_id, UNREACHABLE_DB, notifier)  # no exception: the tick does not fail
        [note] = hook.received
        assert note["run_id"] == run_id and note["kind"] == "data"
        assert tags[INCIDENT_TAG] == "pending" and tags[KIND_TAG] == "data" and PHASE_TAG in tags

        def tick(url):
            context = dg.build_sensor_context(instance=instance, resources={
                "results_db": ResultsDatabase(url=url), "notifier": notifier})
            return pending_incidents_sensor(context).skip_reason.skip_message

        assert tick(UNREACHABLE_DB) == f"still pending: {run_id}"
        assert instance.get_run_by_id(run_id).tags[INCIDENT_TAG] == "pending"
        assert tick(later_db) == f"written: {run_id}"
        assert _incident_run_ids(later_db) == [run_id]
        assert instance.get_run_by_id(run_id).tags[INCIDENT_TAG] == "written"
        assert tick(later_db) == "no pending incidents"
        assert len(hook.received) == 1  # on-call was told once


def test_trickling_webhook_does_not_hold_up_other_runs_reports(tmp_path):
    results_url = f"sqlite:///{tmp_path / 'results.db'}"
    with dg.instance_for_test() as instance, TrickleServer() as server:
        runs = [_failed_run(instance, tmp_path, name) for name in ("a", "b")]
        notifier = Notifier(webhook_url=server.url, deadline_seconds=1)
        start = time.monotonic()
        for run_id in runs:
            tags = _report(instance, run_id, results_url, notifier)
            assert tags[INCIDENT_TAG] == "written" and tags[KIND_TAG] == "data"
        elapsed = time.monotonic() - start
        assert server.requests == 2
    assert sorted(_incident_run_ids(results_url)) == sorted(runs)
    assert elapsed < len(ANSWER) * TRICKLE_SECONDS / 2, elapsed  # one whole answer would take a minute


def _due_today(monkeypatch, inbox):
    (inbox / "SFY_02-19-2026_ExhibitAtoFormofSaleNotice - Pre-Funding.xlsx").write_bytes(b"x")
    now = dt.datetime.now(AlertPolicy().zone)
    monkeypatch.setenv("LOAN_ENGINE_NOTICE_WEEKDAY", WEEKDAYS[now.weekday()])
    monkeypatch.setenv("LOAN_ENGINE_ALERT_TIME", "00:00")
    return now.date().isoformat()


@pytest.mark.parametrize("broken", ["down", "trickle"])
def test_missing_batch_alert_is_recorded_when_the_webhook_fails_and_sent_later(tmp_path, monkeypatch, broken):
    expected = _due_today(monkeypatch, tmp_path)
    with dg.instance_for_test() as instance, TrickleServer() as server, Hook() as hook:
        def tick(url, cursor=None):
            resources = {"inbox": InboxResource(path=str(tmp_path)), "rules": RulesResource(),
                         "notifier": Notifier(webhook_url=url, deadline_seconds=1)}
            return missing_batch_alert_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))

        first = tick(down_url() if broken == "down" else server.url)
        [observation] = first.asset_events  # recorded in the UI all the same
        assert observation.partition == expected
        assert observation.metadata["webhook"].value.startswith("failed (")
        assert first.skip_reason.skip_message.startswith(f"ALERT: Batch {expected} is not complete")
        assert "webhook failed" in first.skip_reason.skip_message

        second = tick(hook.url, first.cursor)  # the webhook is back: it gets the alert, the UI no second copy
        assert not second.asset_events and [m["batch"] for m in hook.received] == [expected]
        assert second.skip_reason.skip_message.startswith("ALERT (already recorded)")
        third = tick(hook.url, second.cursor)
        assert third.skip_reason.skip_message == "no alert due" and len(hook.received) == 1
