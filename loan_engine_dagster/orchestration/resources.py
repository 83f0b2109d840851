"""The doors to the outside world. Each setting left empty falls back, when
the run starts, to its environment variable and then to a local default, so
definitions load on any machine and nothing is read at import time."""


from pathlib import Path

import dagster as dg
from sqlalchemy.engine import Engine

from loan_engine_dagster.adapters import database, preflight
from loan_engine_dagster.adapters.inbox import BatchFiles, find_batch, reference_files, resolve_inbox, scan_inbox
from loan_engine_dagster.adapters.notifications import WEBHOOK_DEADLINE_SECONDS, post_webhook
from loan_engine_dagster.adapters.settings import setting
from loan_engine_dagster.rules.config import Rules, default_rules, load_rules

class InboxResource(dg.ConfigurableResource):
    """The folder where the seller's and the buyer's files land."""

    path: str | None = None

    @property
    def root(self) -> Path:
        return resolve_inbox(Path(setting(self.path, "LOAN_ENGINE_INBOX")))

    def batch(self, key: str, rules: Rules) -> BatchFiles:
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
    """SQLAlchemy URL of the results database (SQLite file or PostgreSQL)."""

    url: str | None = None
    connect_retries: int = 3  # step retries when the database cannot be reached
    retry_wait_seconds: float = 10.0

    @property
    def resolved_url(self) -> str:
        url = setting(self.url, "LOAN_ENGINE_DATABASE_URL")
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return url

    def engine(self) -> Engine:
        return database.engine_for(self.resolved_url)

    def check_reachable(self) -> None:
        preflight.check_database(self.resolved_url)


class RulesResource(dg.ConfigurableResource):
    """The rules file; the one packaged with this release unless a path is given."""

    path: str | None = None

    def load(self) -> Rules:
        path = setting(self.path, "LOAN_ENGINE_RULES_FILE")
        return load_rules(path) if path else default_rules()


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
