"""Failed runs, told apart the way the on-call person needs: was it the
seller's data, our code, or the machine? (Dagster-free; the failure sensor
feeds it what the run's event log says.)"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass

from sqlalchemy import delete
from sqlalchemy.engine import Engine

from loan_engine_dagster.rules.config import RulesFileError
from loan_engine_dagster.rules.errors import StructuralError
from loan_engine_dagster.rules.run_options import RunOptionError

from .database import incidents
from .inbox import BatchKeyError, InboxChanged, InboxUnreadable
from .preflight import quick_engine

# Errors that always mean the inputs are wrong (files, rules file, run options), wherever raised.
DATA_ERROR_TYPES = {StructuralError.__name__, RulesFileError.__name__, RunOptionError.__name__, BatchKeyError.__name__}
# Phases that read files: whatever breaks there is a problem with the files.
DATA_PHASES = {"reference_data", "batch_inputs"}
INFRA_ERROR_TYPES = {
    "OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError", "ConnectionError",
    "ConnectionRefusedError", "ConnectionResetError", "BrokenPipeError", "MemoryError",
    "DagsterExecutionInterruptedError", "DeadWorker", "PreflightError",
    "BatchLeaseHeld", "BatchLeaseLost",  # another run holds the batch, or this run was declared dead
    "StoredResultMissing",  # a re-execution needs a result its dead worker never wrote
    "StagedReportsMissing",  # the output folder (or the run's staged reports in it) went away before the save
    InboxUnreadable.__name__,  # the inbox, or a file in it, this process cannot reach: the setup, not the seller
    InboxChanged.__name__,  # a new delivery replaced a file while the run read it: run again
    "PermissionError",  # the account may not read or write where the run works: the setup, in any phase
}
INFRA_MARKERS = (
    "run worker", "worker disappeared", "maximum runtime", "max_runtime", "timed out", "timeout expired",
    "could not connect", "connection refused", "server closed the connection", "out of memory", "sigkill",
    # The machine refused a read or a write (Python's, SQLite's, PostgreSQL's
    # and the Rust writers' words for it): a full disk is no bug to hand to
    # the developers, whichever phase met it.
    "no space left on device", "disk quota exceeded", "database or disk is full", "read-only file system",
    "permission denied", "input/output error", "stale file handle", "transport endpoint is not connected",
    # A results database file swapped for another file under a run, or a
    # database that takes no writes (a standby after a fail-over): the setup.
    "file is not a database", "read-only transaction",
    "device or resource busy",  # a share mounted where a folder is renamed
)
DEAD_WORKER_MARKER = "worker disappeared"


@dataclass(frozen=True)
class Incident:
    run_id: str
    batch_key: str
    phase: str
    kind: str  # data | code | infra
    error_type: str
    cause: str  # one line
    run_url: str

    def text(self) -> str:
        return (
            f"loan_engine_job FAILED for batch {self.batch_key} in phase {self.phase} [{self.kind}]: "
            f"{self.error_type}: {self.cause} {self.run_url}"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def classify(phase: str | None, error_type: str | None, message: str | None) -> str:
    """data, code or infra, following the old troubleshooting table."""
    text = (message or "").casefold()
    if error_type in DATA_ERROR_TYPES:
        return "data"
    if error_type is None:
        return "infra"  # no step raised: the run died around its steps (worker killed, timeout, launcher)
    if error_type in INFRA_ERROR_TYPES or any(marker in text for marker in INFRA_MARKERS):
        return "infra"
    if phase in DATA_PHASES:
        return "data"
    return "code"


# Errors whose own message is only their class name.
_SAID_PLAINLY = {"DagsterExecutionInterruptedError": "interrupted (Ctrl-C, or a signal to stop its worker)"}


def one_line(message: str | None, error_type: str | None = None) -> str:
    if error_type in _SAID_PLAINLY and (message or "").strip().split(".")[-1].split(":")[0] == error_type:
        return _SAID_PLAINLY[error_type]
    lines = [line.strip() for line in (message or "").strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    if error_type:  # "StructuralError: ..." or "loan_engine_dagster.adapters.preflight.PreflightError: ..."
        line = re.sub(rf"^(?:[\w.]+\.)?{re.escape(error_type)}: ", "", line)
    for prefix in ("loan_engine_dagster.rules.errors.StructuralError: ",):
        line = line.removeprefix(prefix)
    if len(line) > CAUSE_LENGTH:  # cut between words, and say so
        line = line[: CAUSE_LENGTH - 2].rsplit(" ", 1)[0] + " …"
    return line


# A cause is one line of a terminal, an alert or a UI table; the list of
# headers a file holds fits, the rest of a long message is in the run's log.
CAUSE_LENGTH = 1000


def save_incident(url: str, incident: Incident) -> None:
    """Write the incident row to the results database at `url`, giving up
    after a few seconds when the database does not answer: the other failed
    runs are waiting to be reported too."""
    engine = quick_engine(url)
    try:
        incidents.create(engine, checkfirst=True)
        record_incident(engine, incident)
    finally:
        engine.dispose()


def record_incident(engine: Engine, incident: Incident) -> None:
    """One row per failed run; processing the same failure again replaces it."""
    with engine.begin() as conn:
        conn.execute(delete(incidents).where(incidents.c.run_id == incident.run_id))
        conn.execute(incidents.insert(), [{**incident.as_dict(), "created_at": dt.datetime.now(dt.timezone.utc)}])
