"""The inbox sensor, tick by tick, on a real instance and real files."""

import datetime as dt
import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import pytest

from loan_engine_dagster.adapters.alerts import AlertPolicy, due_batch
from loan_engine_dagster.orchestration.resources import InboxResource, Notifier, OutputsResource, RulesResource
from loan_engine_dagster.orchestration.sensors import inbox_sensor, missing_batch_alert_sensor

BATCH = "2026-02-19"
SFY = "SFY_02-19-2026_ExhibitAtoFormofSaleNotice - Pre-Funding.xlsx"
PRIME = "PRIME_02-19-2026_ExhibitAtoFormofSaleNotice - Pre-Funding.xlsx"
TAPE = "Tape20Loans_02-18-2026.csv"


@pytest.fixture
def inbox(sample_inbox, tmp_path):
    folder = tmp_path / "inbox"
    shutil.copytree(sample_inbox, folder)
    return folder


class Ticker:
    """Evaluates the sensor the way the daemon does, handing the cursor on."""

    def __init__(self, instance, inbox):
        self.instance, self.inbox, self.cursor = instance, inbox, None

    def tick(self):
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor,
            resources={"inbox": InboxResource(path=str(self.inbox)), "rules": RulesResource(),
                       "outputs": OutputsResource(root=str(self.inbox.parent / "published"))},
        )
        result = inbox_sensor(context)
        self.cursor = result.cursor
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.DeleteDynamicPartitionsRequest):
                for key in request.partition_keys:
                    self.instance.delete_dynamic_partition(request.partitions_def_name, key)
            else:
                new = [k for k in request.partition_keys if not self.instance.has_dynamic_partition(request.partitions_def_name, k)]
                self.instance.add_dynamic_partitions(request.partitions_def_name, new)
        return result


def skip(result):
    return result.skip_reason.skip_message if result.skip_reason else None


def bump(path, data: bytes | None = None):
    """Change a file and make sure its modification time moves too."""
    if data is not None:
        path.write_bytes(data)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_complete_batch_runs_once_files_are_stable(inbox):
    with dg.instance_for_test() as instance:
        ticker = Ticker(instance, inbox)
        first = ticker.tick()
        assert not first.run_requests
        assert skip(first).startswith(f"{BATCH}: waiting for files to finish copying")
        second = ticker.tick()
        [request] = second.run_requests
        assert request.partition_key == BATCH
        assert request.run_key.startswith(f"{BATCH}:") and len(request.run_key) == len(BATCH) + 17
        assert request.tags["loan_engine/batch"] == BATCH and request.tags["loan_engine/inbox"] == str(inbox)
        assert instance.has_dynamic_partition("batches", BATCH)
        third = ticker.tick()
        assert not third.run_requests and "already run with these exact files: 2026-02-19" in skip(third)


def test_missing_file_says_what_it_waits_for(inbox):
    (inbox / PRIME).unlink()
    with dg.instance_for_test() as instance:
        ticker = Ticker(instance, inbox)
        ticker.tick()
        assert skip(ticker.tick()) == f"{BATCH}: waiting for PRIME exhibit"


def test_growing_file_is_not_started(inbox):
    with dg.instance_for_test() as instance:
        ticker = Ticker(instance, inbox)
        ticker.tick()
        with open(inbox / TAPE, "ab") as handle:  # still being copied
            handle.write(b"123,FX3,ACTIVE\n")
        result = ticker.tick()
        assert not result.run_requests
        assert skip(result) == f"{BATCH}: waiting for files to finish copying: {TAPE}"
        assert ticker.tick().run_requests


def test_redelivery_starts_a_new_run_identical_files_do_not(inbox):
    with dg.instance_for_test() as instance:
        ticker = Ticker(instance, inbox)
        ticker.tick()
        first_key = ticker.tick().run_requests[0].run_key
        # Same bytes copied again (new mtime): no new run.
        bump(inbox / SFY, (inbox / SFY).read_bytes())
        ticker.tick()
        assert not ticker.tick().run_requests
        # A corrected exhibit: a new run with a new key.
        bump(inbox / SFY, (inbox / PRIME).read_bytes())
        ticker.tick()
        [request] = ticker.tick().run_requests
        assert request.run_key != first_key and request.partition_key == BATCH


def test_junk_files_are_ignored(inbox):
    with dg.instance_for_test() as instance:
        ticker = Ticker(instance, inbox)
        ticker.tick()
        ticker.tick()
        for junk in ("~$" + SFY, ".hidden.xlsx", SFY + ".part", "readme.txt", "Tape20Loans_99-99-2026.csv"):
            (inbox / junk).write_bytes(b"junk")
        result = ticker.tick()
        assert not result.run_requests and "already run" in skip(result)


def test_cursor_survives_restart(inbox):
    with dg.instance_for_test() as instance:
        ticker = Ticker(instance, inbox)
        ticker.tick()
        ticker.tick()
        restarted = Ticker(instance, inbox)
        restarted.cursor = json.loads(json.dumps(ticker.cursor))  # what the daemon stored
        assert not restarted.tick().run_requests


def test_a_delivery_whose_run_failed_is_tried_once_more_and_no_more(inbox):
    # Past bug (hostile pass): the sensor never asked again for files it had
    # asked a run for, whatever became of the run; Dagster would not have
    # started one anyway, since the run key was taken. An exhibit briefly gone
    # when the run started, or a tape still being written, left the delivery
    # unrun for good.
    from dagster._core.utils import make_new_run_id

    from loan_engine_dagster.orchestration.run_records import JOB_NAME, KIND_TAG

    with dg.instance_for_test() as instance:
        ticker = Ticker(instance, inbox)
        ticker.tick()
        [request] = ticker.tick().run_requests

        def ran(status):
            return instance.add_run(dg.DagsterRun(job_name=JOB_NAME, run_id=make_new_run_id(), status=status,
                                                  tags=request.tags))

        failed = ran(dg.DagsterRunStatus.FAILURE)
        assert not ticker.tick().run_requests  # until the failure sensor has explained the failure
        instance.add_run_tags(failed.run_id, {KIND_TAG: "infra"})
        assert [r.run_key for r in ticker.tick().run_requests] == [f"{request.run_key}:2"]
        ran(dg.DagsterRunStatus.FAILURE)  # the daemon started it, and it failed too
        result = ticker.tick()
        assert not result.run_requests and skip(result).endswith(f"already run with these exact files: {BATCH}")


def test_a_failed_run_that_dagster_retries_is_not_started_twice(inbox):
    # Second read: a lost worker's run is retried by Dagster's run retries;
    # the sensor starting it too made two runs race for the batch.
    from dagster._core.utils import make_new_run_id

    from loan_engine_dagster.orchestration.run_records import JOB_NAME, WILL_RETRY_TAG

    with dg.instance_for_test() as instance:
        ticker = Ticker(instance, inbox)
        ticker.tick()
        [request] = ticker.tick().run_requests
        instance.add_run(dg.DagsterRun(job_name=JOB_NAME, run_id=make_new_run_id(), status=dg.DagsterRunStatus.FAILURE,
                                       tags={**request.tags, WILL_RETRY_TAG: "true"}))
        result = ticker.tick()
        assert not result.run_requests and skip(result).endswith(f"already run with these exact files: {BATCH}")


def test_a_delivery_with_a_run_going_or_done_is_not_tried_again(inbox):
    from dagster._core.utils import make_new_run_id

    from loan_engine_dagster.orchestration.run_records import JOB_NAME

    for status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.SUCCESS):
        with dg.instance_for_test() as instance:
            ticker = Ticker(instance, inbox)
            ticker.tick()
            [request] = ticker.tick().run_requests
            for then in (dg.DagsterRunStatus.FAILURE, status):
                instance.add_run(dg.DagsterRun(job_name=JOB_NAME, run_id=make_new_run_id(), status=then, tags=request.tags))
            assert not ticker.tick().run_requests


def test_a_withdrawn_correction_gives_way_to_the_first_files_put_back(inbox):
    # Past bug (hostile pass): the seller withdrew a corrected exhibit and put
    # the first one back; those files had run once, so the sensor said
    # "already run" while the batch kept showing the withdrawn correction.
    from dagster._core.utils import make_new_run_id

    from loan_engine_dagster.orchestration.run_records import JOB_NAME

    sfy = next(inbox.glob("SFY_*"))
    first = sfy.read_bytes()
    with dg.instance_for_test() as instance:
        ticker = Ticker(instance, inbox)

        def started():
            ticker.tick()
            requests = ticker.tick().run_requests
            for request in requests:  # the daemon's part: each request a run, which succeeds
                instance.add_run(dg.DagsterRun(job_name=JOB_NAME, run_id=make_new_run_id(),
                                               status=dg.DagsterRunStatus.SUCCESS, tags=request.tags))
            return [r.run_key for r in requests]

        [original] = started()
        bump(sfy, first + b"corrected")
        [correction] = started()
        bump(sfy, first)
        assert started() == [f"{original}:2"]
        assert started() == []


@pytest.mark.parametrize("own", [True, False], ids=["its-own-results", "a-tag-inherited-from-its-parent"])
def test_a_correction_whose_worker_died_after_saving_it_is_not_run_again(inbox, own):
    # Past bug (review): a run killed after its commit is failed without a
    # retry, and the sensor then started the same correction itself (`:2`),
    # computing and saving the batch a second time. The saved-results tag
    # counts only on the run it names: a re-execution copies its parent's tags.
    from dagster._core.utils import make_new_run_id

    from loan_engine_dagster.orchestration.run_records import (
        JOB_NAME, KIND_TAG, RESULTS_SAVED_TAG, report_dead_run_failed,
    )

    sfy = next(inbox.glob("SFY_*"))
    with dg.instance_for_test() as instance:
        ticker = Ticker(instance, inbox)
        ticker.tick()
        [first] = ticker.tick().run_requests
        instance.add_run(dg.DagsterRun(job_name=JOB_NAME, run_id=make_new_run_id(), status=dg.DagsterRunStatus.SUCCESS,
                                       tags=first.tags))
        bump(sfy, sfy.read_bytes() + b"corrected")
        ticker.tick()
        [correction] = ticker.tick().run_requests
        run = instance.add_run(dg.DagsterRun(job_name=JOB_NAME, run_id=make_new_run_id(), status=dg.DagsterRunStatus.STARTED,
                                             tags=correction.tags))
        if own:
            report_dead_run_failed(instance, run, "Run worker disappeared", saved=True)
        else:
            instance.add_run_tags(run.run_id, {RESULTS_SAVED_TAG: make_new_run_id()})
            report_dead_run_failed(instance, instance.get_run_by_id(run.run_id), "Run worker disappeared", saved=False)
        instance.add_run_tags(run.run_id, {KIND_TAG: "infra"})  # the failure sensor's part
        again = [r.run_key for r in ticker.tick().run_requests]
        assert again == ([] if own else [f"{correction.run_key}:2"])

def test_a_new_instance_does_not_run_again_what_the_reports_were_made_from(inbox, rules):
    # Past bug (hostile pass): a new Dagster instance (moved to PostgreSQL, a
    # home wiped) knows no runs, and its sensor ran every batch kept in the
    # inbox again, each against today's portfolio, over published results.
    from loan_engine_dagster.adapters.batch import process_batch

    published = inbox.parent / "published"
    process_batch(inbox, BATCH, output_root=published, database_url=f"sqlite:///{inbox.parent / 'r.db'}", rules=rules)
    with dg.instance_for_test() as instance:
        ticker = Ticker(instance, inbox)
        ticker.tick()
        result = ticker.tick()
        assert not result.run_requests and skip(result).endswith(f"already run with these exact files: {BATCH}")
        bump(next(inbox.glob("Tape20Loans_*")), b"Account Number,Loan Group,Status Codes\n1,FX3,\n")
        ticker.tick()
        assert [r.partition_key for r in ticker.tick().run_requests] == [BATCH]  # a new delivery runs


def test_a_correction_copied_with_the_old_files_size_and_time_runs(inbox):
    # Past bug (hostile pass): `cp -p`, `rsync -t` or an SFTP client keeping
    # times wrote a corrected tape of the same size with the old modification
    # time; the sensor saw no change, and the correction never ran.
    with dg.instance_for_test() as instance:
        ticker = Ticker(instance, inbox)
        ticker.tick()
        assert ticker.tick().run_requests
        tape = next(inbox.glob("Tape20Loans_*"))
        before = tape.stat()
        text = tape.read_bytes()
        tape.write_bytes(text.replace(b"REPURCHASE", b"REPURCHASF", 1) if b"REPURCHASE" in text else text[:-2] + b"9\n")
        os.utime(tape, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert tape.stat().st_size == before.st_size and tape.stat().st_mtime_ns == before.st_mtime_ns
        ticker.tick()
        assert [r.partition_key for r in ticker.tick().run_requests] == [BATCH]


def test_reference_replaced_reruns_nothing_but_says_so(inbox):
    with dg.instance_for_test() as instance:
        ticker = Ticker(instance, inbox)
        ticker.tick()
        ticker.tick()
        bump(inbox / "MASTER_SHEET.xlsx", (inbox / "MASTER_SHEET.xlsx").read_bytes() + b"\0")
        ticker.tick()
        result = ticker.tick()
        assert not result.run_requests
        assert "reference files replaced (MASTER_SHEET.xlsx): nothing re-runs on its own" in skip(result)


def test_empty_inbox(tmp_path):
    with dg.instance_for_test() as instance:
        assert skip(Ticker(instance, tmp_path).tick()) == "no batch in the inbox"


def test_missing_inbox_folder_leaves_the_sensor_quiet(tmp_path):
    # A tick is no run: a folder not mounted yet says only that it holds no batch.
    with dg.instance_for_test() as instance:
        assert skip(Ticker(instance, tmp_path / "not_mounted").tick()) == "no batch in the inbox"


# A tick evaluated in a process that may not read the file (tests run as root,
# who reads any file: the `unreadable` fixture's prefix drops that power).
_TICKS = """
import json, sys
import dagster as dg
from loan_engine_dagster.orchestration.resources import InboxResource, OutputsResource, RulesResource
from loan_engine_dagster.orchestration.sensors import inbox_sensor
cursor, out = None, []
with dg.instance_for_test() as instance:
    for _ in range(2):
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={
            "inbox": InboxResource(path=sys.argv[1]), "rules": RulesResource(), "outputs": OutputsResource(root=sys.argv[1] + "-published")})
        result = inbox_sensor(context)
        cursor = result.cursor
        out.append({"runs": [r.partition_key for r in result.run_requests],
                    "skip": result.skip_reason.skip_message if result.skip_reason else None})
print(json.dumps(out))
"""


@pytest.mark.parametrize("linked", [False, True], ids=["file", "link into a private folder"])
@pytest.mark.parametrize("name", [TAPE, "MASTER_SHEET.xlsx"], ids=["tape", "reference"])
def test_a_file_the_sensor_may_not_read_is_told_and_the_tick_goes_on(inbox, tmp_path, unreadable, name, linked):
    """Past bug: hashing a file the daemon's account may not read, or looking
    at a link into a folder it may not enter, failed the whole tick, every
    other batch with it. The batch is not started (its run could not read the
    file either: for a reference file it would fail at once and not start
    again by itself once fixed); the tick says why, on every tick until the
    file can be read."""
    import subprocess
    import sys

    if linked:
        private = tmp_path / "private"
        private.mkdir()
        (inbox / name).rename(private / name)
        (inbox / name).symlink_to(private / name)
    unreadable.make(private if linked else inbox / name)
    done = subprocess.run([*unreadable.prefix, sys.executable, "-c", _TICKS, str(inbox)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = json.loads(done.stdout.strip().splitlines()[-1])
    said = (f"file '{name}' cannot be read: permission denied to this process's account ({inbox / name}); "
            "give it read access (and search access to the folders it is in) and re-run")
    assert first["runs"] == second["runs"] == []
    if name == TAPE:
        assert second["skip"] == f"{BATCH}: {said}"
    else:
        assert second["skip"] == f"{BATCH}: waiting for reference files this process can read; reference files: {said}"


_BOTH_SENSORS = """
import json, sys
import dagster as dg
from loan_engine_dagster.orchestration.resources import InboxResource, Notifier, OutputsResource, RulesResource
from loan_engine_dagster.orchestration.sensors import inbox_sensor, missing_batch_alert_sensor
with dg.instance_for_test() as instance:
    resources = {"inbox": InboxResource(path=sys.argv[1]), "rules": RulesResource(), "outputs": OutputsResource(root=sys.argv[1] + "-published"),
             "notifier": Notifier()}
    ticks = [sensor(dg.build_sensor_context(instance=instance, resources=resources))
             for sensor in (inbox_sensor, missing_batch_alert_sensor)]
print(json.dumps([t.skip_reason.skip_message for t in ticks]))
"""


def _alert_due_now(monkeypatch, now):
    """The missing-batch alert due for the batch of `now`'s date, from midnight on."""
    days = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    monkeypatch.setenv("LOAN_ENGINE_NOTICE_WEEKDAY", days[now.weekday()])
    monkeypatch.setenv("LOAN_ENGINE_ALERT_TIME", "00:00")


def test_an_inbox_folder_the_sensors_may_not_read_is_told_not_a_failed_tick(inbox, unreadable, monkeypatch):
    """Past bug: both sensors' ticks failed with a bare PermissionError, so the
    missing-batch alert never went out."""
    import subprocess
    import sys

    now = dt.datetime.now(AlertPolicy().zone)
    _alert_due_now(monkeypatch, now)
    unreadable.make(inbox)
    done = subprocess.run([*unreadable.prefix, sys.executable, "-c", _BOTH_SENSORS, str(inbox)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    watching, alert = json.loads(done.stdout.strip().splitlines()[-1])
    said = f"inbox folder {inbox} cannot be read: permission denied to this process's account"
    assert watching.startswith(said)
    assert alert.startswith(f"ALERT: Batch {now.date().isoformat()} is not complete") and said in alert


def test_a_share_whose_server_is_gone_is_told_by_both_sensors(dead_share, monkeypatch):
    now = dt.datetime.now(AlertPolicy().zone)
    _alert_due_now(monkeypatch, now)
    said = (f"inbox folder {dead_share} cannot be read (Transport endpoint is not connected); "
            "if it is a network share, check that it is mounted and that its server answers")
    with dg.instance_for_test() as instance:
        resources = {"inbox": InboxResource(path=str(dead_share)), "rules": RulesResource(), "outputs": OutputsResource(root=str(dead_share.parent / "published")), "notifier": Notifier()}
        watching = inbox_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        alert = missing_batch_alert_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert skip(watching) == said
    assert skip(alert).startswith(f"ALERT: Batch {now.date().isoformat()} is not complete") and said in skip(alert)


def test_a_due_batch_that_is_there_but_cannot_be_read_is_alerted(inbox, unreadable, monkeypatch):
    """A batch complete in the inbox whose file the account may not read was
    "complete" to the alert, while no run of it could start: no alert."""
    import subprocess
    import sys

    now = dt.datetime.now(AlertPolicy().zone)
    _alert_due_now(monkeypatch, now)
    due = now.date()
    for path in list(inbox.iterdir()):  # the sample batch, renamed to the batch due today
        name = path.name.replace("02-19-2026", due.strftime("%m-%d-%Y")).replace(
            "02-18-2026", (due - dt.timedelta(days=1)).strftime("%m-%d-%Y"))
        path.rename(inbox / name)
    tape = inbox / TAPE.replace("02-18-2026", (due - dt.timedelta(days=1)).strftime("%m-%d-%Y"))
    unreadable.make(tape)
    done = subprocess.run([*unreadable.prefix, sys.executable, "-c", _BOTH_SENSORS, str(inbox)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _, alert = json.loads(done.stdout.strip().splitlines()[-1])
    assert alert.startswith(f"ALERT: Batch {due.isoformat()} is in the inbox at ") and "but cannot be read" in alert
    assert f"file '{tape.name}' cannot be read: permission denied" in alert


# ---------------------------------------------------------------- missing-batch alert

@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (dt.datetime(2026, 2, 19, 14, 59), "2026-02-12"),  # Thursday before the alert time: last week's
        (dt.datetime(2026, 2, 19, 15, 0), "2026-02-19"),
        (dt.datetime(2026, 2, 23, 9, 0), "2026-02-19"),  # the next Monday still looks at last Thursday
        (dt.datetime(2026, 2, 26, 10, 0), "2026-02-19"),
        (dt.datetime(2026, 2, 26, 16, 0), "2026-02-26"),
    ],
)
def test_due_batch(now, expected):
    policy = AlertPolicy()
    assert due_batch(now.replace(tzinfo=policy.zone), policy) == expected


def test_alert_policy_from_env_names_bad_variable():
    with pytest.raises(ValueError, match="LOAN_ENGINE_NOTICE_WEEKDAY"):
        AlertPolicy.from_env({"LOAN_ENGINE_NOTICE_WEEKDAY": "funday"})
    with pytest.raises(ValueError, match="LOAN_ENGINE_ALERT_TIME"):
        AlertPolicy.from_env({"LOAN_ENGINE_ALERT_TIME": "25:99"})
    assert AlertPolicy.from_env({"LOAN_ENGINE_NOTICE_WEEKDAY": "Monday", "LOAN_ENGINE_ALERT_TIME": "09:30"}).notice_weekday == 0


class Hook:
    """A local webhook receiver on 127.0.0.1."""

    def __enter__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_missing_batch_alert_once_with_webhook(tmp_path, monkeypatch):
    (tmp_path / "SFY_02-19-2026_ExhibitAtoFormofSaleNotice - Pre-Funding.xlsx").write_bytes(b"x")
    now = dt.datetime.now(AlertPolicy().zone)
    _alert_due_now(monkeypatch, now)
    expected = now.date().isoformat()
    with Hook() as hook, dg.instance_for_test() as instance:
        resources = {"inbox": InboxResource(path=str(tmp_path)), "rules": RulesResource(), "outputs": OutputsResource(root=str(tmp_path / "published")), "notifier": Notifier(webhook_url=hook.url)}
        result = missing_batch_alert_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert result.skip_reason.skip_message.startswith(f"ALERT: Batch {expected} is not complete")
        assert "SFY exhibit" in result.skip_reason.skip_message  # everything missing is named
        [observation] = result.asset_events
        assert observation.partition == expected and "PRIME exhibit" in observation.metadata["missing"].value
        assert [m["batch"] for m in hook.received] == [expected]
        assert "missing" in hook.received[0]["text"]
        # alerted, not registered: no phantom batch in the partitions list
        assert result.dynamic_partitions_requests is None or list(result.dynamic_partitions_requests) == []
        assert instance.get_dynamic_partitions("batches") == []
        again = missing_batch_alert_sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor, resources=resources))
        assert again.skip_reason.skip_message == "no alert due" and len(hook.received) == 1


def test_missing_batch_alert_goes_out_when_the_inbox_folder_is_not_there(tmp_path, monkeypatch):
    now = dt.datetime.now(AlertPolicy().zone)
    _alert_due_now(monkeypatch, now)
    gone = tmp_path / "not_mounted"
    with dg.instance_for_test() as instance:
        resources = {"inbox": InboxResource(path=str(gone)), "rules": RulesResource(), "outputs": OutputsResource(root=str(tmp_path / "published")), "notifier": Notifier()}
        result = missing_batch_alert_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert result.skip_reason.skip_message.startswith(f"ALERT: Batch {now.date().isoformat()} is not complete")
    assert f"(inbox {gone}); inbox folder {gone} does not exist;" in result.skip_reason.skip_message
    gone.mkdir()  # a share not mounted: its mount point, empty
    with dg.instance_for_test() as instance:
        result = missing_batch_alert_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert result.skip_reason.skip_message.endswith("; the inbox folder is empty: if the files land on a share, check that it is mounted"
                                                    " (no LOAN_ENGINE_WEBHOOK_URL set)")


def test_registering_an_earlier_batch_never_removes_a_later_one(inbox, tmp_path, monkeypatch):
    # Past bug (hostile pass): batches were kept in date order by removing
    # the later keys and adding them again; a run of such a batch that looked
    # its partition up in that moment failed ("Partition range ... is not
    # valid", as a bug). Batches now list in the order they first came.
    from loan_engine_dagster.orchestration.partitions import register_batches

    with dg.instance_for_test() as instance:
        def refused(*args, **kwargs):
            raise AssertionError("a registered batch was removed")

        monkeypatch.setattr(instance, "delete_dynamic_partition", refused)
        register_batches(instance, ["2026-03-05"])  # the CLI ran a later batch first
        ticker = Ticker(instance, inbox)
        ticker.tick()
        assert ticker.tick().run_requests  # the sensor finds the earlier one
        assert instance.get_dynamic_partitions("batches") == ["2026-03-05", "2026-02-19"]
        register_batches(instance, ["2026-02-26", "2026-02-19"])
        register_batches(instance, ["2026-02-26-offcycle"])
        assert instance.get_dynamic_partitions("batches") == ["2026-03-05", "2026-02-19", "2026-02-26", "2026-02-26-offcycle"]


def test_cursor_is_one_short_line_and_reads_the_earlier_form(inbox):
    with dg.instance_for_test() as instance:
        ticker = Ticker(instance, inbox)
        ticker.tick()
        ticker.tick()
        cursor = ticker.cursor
        assert "\n" not in cursor and ", " not in cursor
        data = json.loads(cursor)
        assert set(data) == {"files", "runs", "ref"} and len(data["runs"][BATCH]) == 16
        assert len(cursor) < 1200, len(cursor)  # about 1,000 characters for one batch; 1,600 in the earlier form
        # A cursor stored by the earlier release still knows these files ran.
        from loan_engine_dagster.adapters.watch import WatchState

        state = WatchState.from_cursor(cursor)
        earlier = json.dumps({"observed": state.observed, "hashes": state.hashes,
                              "requested": {BATCH: state.requested[BATCH] + "0" * 48}, "reference": state.reference})
        restarted = Ticker(instance, inbox)
        restarted.cursor = earlier
        result = restarted.tick()
        assert not result.run_requests and "already run with these exact files: 2026-02-19" in skip(result)


def test_a_broken_rules_file_gives_a_readable_tick_not_a_traceback(tmp_path):
    """Found by the hostile pass: the tick raised, and the UI showed a stack trace."""
    broken = tmp_path / "rules.yaml"
    broken.write_text("version: [unclosed\n")
    resources = {"inbox": InboxResource(path=str(tmp_path)), "rules": RulesResource(path=str(broken)), "outputs": OutputsResource(root=str(tmp_path / "published")), "notifier": Notifier()}
    with dg.instance_for_test() as instance:
        for sensor in (inbox_sensor, missing_batch_alert_sensor):
            result = sensor(dg.build_sensor_context(instance=instance, cursor="kept", resources=resources))
            assert result.skip_reason.skip_message.startswith("rules file refused, nothing checked: ")
            assert "rules.yaml" in result.skip_reason.skip_message and result.cursor == "kept"
