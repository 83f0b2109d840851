"""The doors to the outside world. Each setting left empty falls back, when
the run starts, to its environment variable and then to a local default, so
definitions load on any machine and nothing is read at import time."""


import atexit
import contextlib
import threading
import time
from pathlib import Path

import dagster as dg
import sqlalchemy.exc
from pydantic import PrivateAttr
from sqlalchemy.engine import Connection, Engine

from loan_engine_dagster.adapters import database, leases, preflight
from loan_engine_dagster.adapters.batch import reconcile_reports
from loan_engine_dagster.adapters.inbox import (
    BatchFiles, find_batch, reference_files, require_inbox, resolve_inbox, scan_inbox,
)
from loan_engine_dagster.adapters.notifications import WEBHOOK_DEADLINE_SECONDS, post_webhook
from loan_engine_dagster.adapters.settings import setting
from loan_engine_dagster.rules.config import Rules, RulesFileError, default_rules, load_rules, refuse_other_limits

from .checks import declared_limit_ids
from .run_records import PARTITION_TAG, RULES_TAG, dead_worker_seconds


class InboxResource(dg.ConfigurableResource):
    """The folder where the seller's and the buyer's files land."""

    path: str | None = None

    @property
    def root(self) -> Path:
        return resolve_inbox(Path(setting(self.path, "LOAN_ENGINE_INBOX")))

    def batch(self, key: str, rules: Rules) -> BatchFiles:
        """The files a run of the batch reads, from an inbox folder that exists
        (`InboxUnreadable` otherwise, kind infra, naming the folder)."""
        return find_batch(require_inbox(self.root), key, rules.inbox.tape_lookback_days)

    def expected(self, key: str, rules: Rules) -> BatchFiles:
        """What the inbox holds of a batch that is due, even when the folder is
        not there: the missing-batch alert goes out all the same, naming it."""
        return find_batch(self.root, key, rules.inbox.tape_lookback_days)

    def batches(self, rules: Rules) -> dict[str, BatchFiles]:
        return scan_inbox(self.root, rules.inbox.tape_lookback_days)

    def reference(self) -> dict[str, Path]:
        return reference_files(self.root)


class OutputsResource(dg.ConfigurableResource):
    """Where each batch's reports are published."""

    root: str | None = None

    @property
    def path(self) -> Path:
        return Path(setting(self.root, "LOAN_ENGINE_OUTPUT_DIR"))

    def check_writable(self) -> None:
        preflight.check_output_root(self.path)


class ResultsDatabase(dg.ConfigurableResource):
    """SQLAlchemy URL of the results database (SQLite file or PostgreSQL).

    In a run of a batch it also holds the batch's writer lease from before
    the first phase to the end of the run, renewed every `heartbeat_seconds`:
    one writer per batch, and the heartbeat that tells the dead-worker sensor
    this run's worker lives, wherever it runs."""

    url: str | None = None
    connect_retries: int = 3  # step retries when the database cannot be reached
    retry_wait_seconds: float = 10.0
    heartbeat_seconds: float = 5.0

    _lease: leases.Lease | None = PrivateAttr(default=None)
    _lease_engine: Engine | None = PrivateAttr(default=None)
    _run_id: str | None = PrivateAttr(default=None)
    _closed: str | None = PrivateAttr(default=None)  # why this run may write nothing, though it holds no lease

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.run
        batch_key = run.tags.get(PARTITION_TAG) if run is not None else None
        if batch_key is None or context.instance is None:
            return  # a sensor, or a run that is not about one batch: nothing to hold
        current = context.instance.get_run_by_id(run.run_id)
        if current is not None and current.is_finished:
            # Dagster reopening a finished run's resources to read its result;
            # or a run marked failed in the moment between its start and this
            # set-up, whose worker goes on: it went on without a lease and
            # overwrote the batch's next run (hostile pass). Either way no write.
            marked = {"FAILURE": "failed", "CANCELED": "canceled"}.get(current.status.value, "finished")
            self._closed = (f"Run {run.run_id} was marked {marked} before it took batch "
                            f"{batch_key}: it writes nothing; the batch's rows and reports are still those of its "
                            "holder")
            return

        def finished(run_id: str) -> bool:
            holder = context.instance.get_run_by_id(run_id)
            return holder is not None and holder.is_finished

        self._run_id = run.run_id
        grace = dead_worker_seconds()
        preflight.check_sqlite_folder(self.resolved_url)  # no retries for a folder that is not there
        for attempt in range(self.connect_retries + 1):
            try:
                engine = self.engine()
                try:
                    self._lease = leases.acquire(engine, batch_key, run.run_id, stale_after=grace,
                                                 holder_finished=finished)
                except BaseException:
                    engine.dispose()  # each try has its own: none is left open behind a failed one
                    raise
                self._lease_engine = engine
                break
            except leases.BatchLeaseHeld as exc:
                context.log.error(str(exc))
                raise
            except sqlalchemy.exc.OperationalError as exc:
                if not database.connection_lost(exc):
                    # Full or read-only: it answered, and would answer the same
                    # after every retry ("unreachable" was said three times).
                    raise database.named(exc, self.resolved_url) from None
                if attempt == self.connect_retries:
                    # Fail fast, before any phase, naming the database (password hidden).
                    if database.locked_by_another(exc):
                        raise preflight.locked(self.resolved_url) from None
                    preflight.check_database(self.resolved_url)
                    raise
                context.log.warning(
                    f"results database {'locked by another program' if database.locked_by_another(exc) else 'unreachable'}"
                    f", retry {attempt + 1} of {self.connect_retries} "
                    f"in {self.retry_wait_seconds:g}s: {str(exc).splitlines()[0]}"
                )
                time.sleep(self.retry_wait_seconds)
            except sqlalchemy.exc.DatabaseError as exc:
                # Reached, but not a database it can use (a SQLite URL naming some
                # other file, a database of another schema): the setup, not the code.
                raise preflight.PreflightError(
                    f"results database {preflight.shown_url(self.resolved_url)} is not usable "
                    f"({type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__}: "
                    f"{str(exc.orig or exc).splitlines()[0]})"
                ) from None
        # A worker process that ends (the terminal's `loan-engine run`, a run
        # worker) hands the batch back at once; a killed one leaves it to go stale.
        atexit.register(_hand_back, self.resolved_url, self._lease)
        # At least four beats within the grace, so one slow beat never looks like death.
        interval = min(self.heartbeat_seconds, grace / 4)
        threading.Thread(target=self._beat, args=(context.instance, interval), name=f"lease-heartbeat-{batch_key}",
                         daemon=True).start()

    def _beat(self, instance: dg.DagsterInstance, interval: float) -> None:
        """Renew the lease until the run is over (then hand the batch back) or
        the lease is lost (then the fence refuses this run's writes). A daemon
        thread, so it never keeps a finished process alive; no teardown hook,
        which keeps this resource usable in sensors as a plain value."""
        lease, engine = self._lease, self._lease_engine
        try:
            while True:
                time.sleep(interval)
                try:
                    run = instance.get_run_by_id(lease.run_id)
                except Exception:
                    run = None  # the instance was closed: the process is ending
                if run is None or run.is_finished:
                    leases.release(engine, lease)
                    return
                try:
                    if not leases.renew(engine, lease):
                        return
                except sqlalchemy.exc.SQLAlchemyError:
                    continue  # a missed beat; the next one may get through
        except Exception:
            return  # the lease lapses; the next run of the batch takes it over once it is stale
        finally:
            engine.dispose()

    @property
    def lease(self) -> leases.Lease | None:
        return self._lease

    def under_lease(self, action):
        """`action()`, only while this run provably holds its batch (lease row locked, token checked)."""
        if self._lease is None:
            self._refuse_if_closed()
            return action()
        with self.named_errors():
            engine = self.engine()
            try:
                with engine.begin() as conn:
                    leases.check(conn, self._lease)
                    return action()
            finally:
                engine.dispose()

    @contextlib.contextmanager
    def named_errors(self):
        """The database's refusals and lost connections with the database
        named (the drivers' own words name none), raised in their place: a
        failed run is told by its innermost error. A bug's error stays whole."""
        try:
            yield
        except sqlalchemy.exc.DBAPIError as exc:
            if database.refused(exc) or database.connection_lost(exc):
                raise database.named(exc, self.resolved_url) from None
            raise

    def reconcile_reports(self, output_root: Path, batch_key: str) -> str | None:
        """The batch folder brought back to the reports of the rows, while this
        run holds the batch (adapters.batch.reconcile_reports); what was done.
        On the lease's own engine (its tables already checked) when there is one."""
        with self.named_errors():
            engine = self._lease_engine or self.engine()
            try:
                with engine.begin() as conn:
                    self.fence(conn)
                    return reconcile_reports(conn, output_root, batch_key)
            finally:
                if engine is not self._lease_engine:
                    engine.dispose()

    def fence(self, conn: Connection) -> None:
        """Inside a write transaction: refuse the write unless this run still holds the batch."""
        if self._lease is not None:
            leases.check(conn, self._lease)
        self._refuse_if_closed()

    def _refuse_if_closed(self) -> None:
        if self._closed is not None:
            raise leases.BatchLeaseLost(self._closed)

    @property
    def resolved_url(self) -> str:
        url = setting(self.url, "LOAN_ENGINE_DATABASE_URL")
        file = preflight.sqlite_file(url)
        if file is not None and not file.is_absolute():  # data/results.db: made beside the project, as the default
            file.parent.mkdir(parents=True, exist_ok=True)
        return url

    def engine(self) -> Engine:
        """An engine on the results database; inside a run, its sessions carry the run id."""
        return database.engine_for(self.resolved_url, self._run_id and leases.SESSION_NAME + self._run_id)

    def check_reachable(self) -> None:
        preflight.check_database(self.resolved_url)


def _hand_back(url: str, lease: leases.Lease) -> None:
    # Never to a SQLite file that is gone (deleted under the run): opening it
    # made a new, empty results database there, and the next run saved into
    # it as if no batch had ever been saved.
    file = preflight.sqlite_file(url)
    if file is not None and not file.exists():
        return
    try:
        engine = database.engine_for(url)
        try:
            leases.release(engine, lease)
        finally:
            engine.dispose()
    except Exception:
        pass  # the lease goes stale instead


class RulesResource(dg.ConfigurableResource):
    """The rules file; the one packaged with this release unless a path is given.

    Read and validated once when a run starts, so every phase of the run uses
    the same rules even if the file is edited meanwhile. A re-execution (from
    a failed step, or a retry) must find the rules its original run used:
    mixing phases computed under two rule sets would give a batch no rules
    file explains."""

    path: str | None = None
    _rules: Rules | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.run
        if run is None:
            return  # a sensor tick reads the file when it asks (`load`), so a broken file is its message, not a crash
        rules = self._read()
        if context.instance is not None:
            _pin_rules(context.instance, run, rules)
        self._rules = rules

    def load(self) -> Rules:
        """The run's rules (outside a run, e.g. in a sensor tick: the file as it is now)."""
        return self._rules if self._rules is not None else self._read()

    def _read(self) -> Rules:
        path = setting(self.path, "LOAN_ENGINE_RULES_FILE")
        rules = load_rules(path) if path else default_rules()
        refuse_other_limits(rules, declared_limit_ids(), source=f"'{path}'" if path else "rules.yaml (packaged)")
        return rules


def _pin_rules(instance: dg.DagsterInstance, run: dg.DagsterRun, rules: Rules) -> None:
    """Tag the run with its rules; refuse a re-execution whose rules differ from the original run's."""
    fingerprint = rules.fingerprint()
    if run.root_run_id:
        root = instance.get_run_by_id(run.root_run_id)
        pinned = root.tags.get(RULES_TAG) if root else None
        if pinned and pinned != fingerprint:
            raise RulesFileError(
                f"the rules file changed since run {run.root_run_id} of this batch (now version {rules.version}); "
                "re-executing part of that run would mix two sets of rules: launch a new run of the whole batch"
            )
    if RULES_TAG not in run.tags:  # the first read of the run is the one it used
        instance.add_run_tags(run.run_id, {RULES_TAG: fingerprint})


class Notifier(dg.ConfigurableResource):
    """The on-call channel: a webhook URL, only ever from the environment."""

    webhook_url: str | None = None
    webserver_url: str | None = None
    deadline_seconds: float = WEBHOOK_DEADLINE_SECONDS  # the whole post, however slowly the webhook answers

    @property
    def url(self) -> str | None:
        return setting(self.webhook_url, "LOAN_ENGINE_WEBHOOK_URL")

    @property
    def ui_base(self) -> str:
        return setting(self.webserver_url, "LOAN_ENGINE_UI_URL").rstrip("/")

    def send(self, text: str, **fields) -> bool:
        """True when a webhook took the message; False when none is set.
        Raises `WebhookError` when the webhook did not take it in time."""
        if not self.url:
            return False
        post_webhook(self.url, {"text": text, **fields}, self.deadline_seconds)
        return True


def default_resources() -> dict:
    return {
        "inbox": InboxResource(),
        "outputs": OutputsResource(),
        "results_db": ResultsDatabase(),
        "rules": RulesResource(),
        "notifier": Notifier(),
    }
