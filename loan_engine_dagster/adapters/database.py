"""The results database (business_rules.md section 11): loan facts, exceptions and
eligibility results per batch, replaced whole in one transaction."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy.exc
from sqlalchemy import (
    Boolean, Column, Date, DateTime, Float, Integer, MetaData, String, Table, Text, UniqueConstraint, create_engine,
    delete, event, func, select, text,
)
from sqlalchemy.engine import Connection, Engine

from .preflight import shown_url

metadata = MetaData()

loan_facts = Table(
    "loan_facts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("batch_key", String(32), nullable=False),  # indexed by uq_loan_facts_batch_row, which starts with it
    Column("run_id", String(64), nullable=False),
    Column("rules_version", String(32), nullable=False),
    Column("seller_loan_number", String(64), nullable=False),
    Column("platform", String(8), nullable=False),
    Column("loan_program", String(200)),
    Column("application_type", String(64)),
    Column("loan_kind", String(16)),
    Column("type", String(32)),
    Column("purchase_price_check", Boolean),
    Column("underwriting_status", String(32)),
    Column("comap_status", String(32)),
    Column("disposition", String(16)),
    Column("rejection_criteria", String(64)),
    Column("rejection_reasons", Text),
    Column("message", Text),
    Column("orig_balance", Float),
    Column("fico", Float),
    Column("dti", Float),
    Column("pti", Float),
    Column("term", Float),
    Column("apr", Float),
    Column("lender_price", Float),
    Column("modeled_purchase_price", Float),
    Column("dealer_fee", Float),
    Column("income", Float),
    Column("submit_date", Date),
    Column("purchase_date", Date),
    Column("source_file", String(255)),
    Column("source_row", Integer),
    # Each spreadsheet row of a batch is saved once: two runs' rows can never pile up.
    UniqueConstraint("batch_key", "source_file", "source_row", name="uq_loan_facts_batch_row"),
)

loan_exceptions = Table(
    "loan_exceptions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("batch_key", String(32), nullable=False, index=True),
    Column("run_id", String(64), nullable=False),
    Column("seller_loan_number", String(64), nullable=False),
    Column("platform", String(8), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("message", Text),
)

eligibility_results = Table(
    "eligibility_results", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("batch_key", String(32), nullable=False, index=True),
    Column("run_id", String(64), nullable=False),
    Column("rules_version", String(32), nullable=False),
    Column("platform", String(8), nullable=False),
    Column("check_id", String(64), nullable=False),
    Column("population", String(16), nullable=False),
    Column("metric", String(32)),
    Column("op", String(4)),
    Column("limit", Float),
    Column("value", Float),
    Column("value_json", Text),
    Column("status", String(16)),
    Column("excess_balance", Float),
    UniqueConstraint("batch_key", "platform", "check_id", "population", name="uq_eligibility_results_batch_check"),
)

incidents = Table(
    "incidents", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False, index=True),
    Column("batch_key", String(32), nullable=False),
    Column("phase", String(64), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("error_type", String(128), nullable=False),
    Column("cause", Text, nullable=False),
    Column("run_url", String(500), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# One row per batch: which run may write the batch's results (see leases.py).
batch_leases = Table(
    "batch_leases", metadata,
    Column("batch_key", String(32), primary_key=True),
    Column("run_id", String(64)),
    Column("token", Integer, nullable=False),  # fencing token: grows by one at every hand-over
    Column("released", Boolean, nullable=False),
    Column("acquired_at", Float),  # seconds since the epoch, by the database's clock
    Column("heartbeat_at", Float),
    Column("host", String(255)),
    Column("pid", Integer),
)

SQLITE_BUSY_TIMEOUT_SECONDS = 60
SCHEMA_LOCK_KEY = 0x10A7E5  # PostgreSQL advisory lock held while the tables are created

BATCH_TABLES = (loan_facts, loan_exceptions, eligibility_results)
FACT_COLUMNS = [c.name for c in loan_facts.columns if c.name not in ("id", "batch_key", "run_id", "rules_version")]


def engine_for(url: str, session_name: str | None = None) -> Engine:
    """`session_name`: the PostgreSQL `application_name` of its connections (a
    run's, so that the sessions of a run declared dead can be ended)."""
    sqlite = url.startswith("sqlite")
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS} if sqlite else {}
    if session_name and url.startswith("postgresql"):
        connect_args["application_name"] = session_name[:63]
    engine = create_engine(url, future=True, pool_pre_ping=True, connect_args=connect_args)
    if sqlite:
        _serialize_sqlite_writers(engine)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # Two first runs creating the tables at once would collide in PostgreSQL's catalog.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            metadata.create_all(conn)
    except BaseException:
        engine.dispose()  # a caller given no engine cannot close it
        raise
    return engine


def _typed(table: Table, frame: pd.DataFrame, *, dates_as_text: bool = False) -> pd.DataFrame:
    """The frame's columns in the table's order and its column types' kinds:
    dates as dates (ISO text, as SQLAlchemy keeps them in SQLite, when
    `dates_as_text`), nullable booleans and integers, floats, text."""
    out = {}
    for column in table.columns:
        if column.name not in frame.columns:
            continue
        values = frame[column.name]
        if isinstance(column.type, Date):
            values = pd.to_datetime(values)
            values = values.dt.strftime("%Y-%m-%d") if dates_as_text else values.dt.date
        elif isinstance(column.type, Boolean):
            values = values.astype("boolean")
        elif isinstance(column.type, Integer):
            values = values.astype("Int64")
        elif isinstance(column.type, Float):
            values = values.astype("float64")
        else:
            values = values.astype("string")
        out[column.name] = values
    return pd.DataFrame(out)


def _bulk_insert(conn: Connection, table: Table, frame: pd.DataFrame) -> None:
    """Insert a frame in one statement inside the caller's transaction: COPY
    on PostgreSQL, one prepared executemany elsewhere. Values are stored as
    SQLAlchemy's typed insert stores them (a test compares the two)."""
    typed = _typed(table, frame, dates_as_text=conn.dialect.name == "sqlite")
    names = list(typed.columns)
    if conn.dialect.name == "postgresql":
        # Every present value quoted, a missing one left bare: COPY reads the
        # bare empty field as NULL and "" as an empty text.
        buffer = pa.BufferOutputStream()
        # One chunk per column: Arrow's CSV writer pads a column of many chunks
        # (a frame built by concatenation) with NUL bytes, which COPY refuses.
        pa_csv.write_csv(pa.Table.from_pandas(typed, preserve_index=False).combine_chunks(), buffer,
                         pa_csv.WriteOptions(include_header=False, quoting_style="all_valid"))
        quote = conn.dialect.identifier_preparer.quote
        cursor = conn.connection.dbapi_connection.cursor()
        statement = f"COPY {quote(table.name)} ({', '.join(quote(n) for n in names)}) FROM STDIN WITH (FORMAT csv)"
        try:
            cursor.copy_expert(statement, io.BytesIO(buffer.getvalue().to_pybytes()))
        except conn.dialect.loaded_dbapi.Error as exc:
            # The raw cursor bypasses SQLAlchemy: wrap as its execute would, so
            # callers see IntegrityError / OperationalError as on every other path.
            raise sqlalchemy.exc.DBAPIError.instance(statement, None, exc, conn.dialect.loaded_dbapi.Error) from exc
        finally:
            cursor.close()
        return
    # One Python list per column (numpy's tolist, in C; a missing value is
    # None), zipped into rows in C: no Python work per row.
    columns = [typed[n].to_numpy(dtype=object, na_value=None).tolist() for n in names]
    statement = str(table.insert().compile(dialect=conn.dialect, column_keys=names))
    if conn.dialect.name != "sqlite":
        conn.exec_driver_sql(statement, list(zip(*columns)))
        return
    # SQLite's executemany takes the rows as an iterator: each row is built as
    # it is bound and freed right after. SQLAlchemy wants them all in one list
    # first, and holding 100,000 row tuples at once cost a third of the insert.
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.executemany(statement, zip(*columns))
    except conn.dialect.loaded_dbapi.Error as exc:
        # Wrapped as SQLAlchemy's own executemany wraps it, rows and all, so
        # callers see the same IntegrityError / OperationalError and message.
        raise sqlalchemy.exc.DBAPIError.instance(
            statement, list(zip(*columns)), exc, conn.dialect.loaded_dbapi.Error,
            hide_parameters=conn.engine.hide_parameters, dialect=conn.dialect, ismulti=True,
        ) from exc
    finally:
        cursor.close()


def _serialize_sqlite_writers(engine: Engine) -> None:
    """SQLite transactions take the write lock when they begin (BEGIN IMMEDIATE),
    so two writers queue instead of both reading a batch's lease as free."""

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _records(frame: pd.DataFrame) -> list[dict]:
    clean = frame.astype(object).where(frame.notna(), None)
    return clean.to_dict("records")


def fact_rows(loans: pd.DataFrame) -> pd.DataFrame:
    facts = loans[FACT_COLUMNS].copy()
    for column in ("submit_date", "purchase_date"):
        facts[column] = pd.to_datetime(facts[column]).dt.date
    facts["purchase_price_check"] = facts["purchase_price_check"].astype(bool)
    return facts


def eligibility_rows(checks: pd.DataFrame) -> pd.DataFrame:
    """One row per check and population; a distribution keeps its shares as JSON."""
    parts = []
    for population in ("value", "before", "to_purchase"):
        values = checks[population]
        is_doc = values.map(lambda v: isinstance(v, dict))
        parts.append(
            pd.DataFrame(
                {
                    "platform": checks["platform"],
                    "check_id": checks["check_id"],
                    "population": population,
                    "metric": checks["metric"],
                    "op": checks["op"],
                    "limit": checks["limit"],
                    "value": values.where(~is_doc, None).astype(float),
                    "value_json": values.where(is_doc, None).map(lambda v: json.dumps(v) if isinstance(v, dict) else None),
                    "status": checks["status"] if population == "value" else None,
                    "excess_balance": checks["excess_balance"].astype(float) if population == "value" else np.nan,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def save_batch(
    engine: Engine, *, batch_key: str, run_id: str, rules_version: str,
    loans: pd.DataFrame, exceptions: pd.DataFrame, checks: pd.DataFrame,
    fence: Callable[[Connection], None] | None = None,
    publish: Callable[[], AbstractContextManager] | None = None,
) -> dict[str, int]:
    """Replace the batch's rows in one transaction; on any error nothing changes.

    `fence(conn)` runs first inside that transaction and raises when this run
    may no longer write the batch (its lease was taken or revoked).
    `publish()` runs last, still inside it: the reports folder is swapped in
    just before the commit and swapped back if the commit fails, so the
    folder and the rows always come from the same run."""
    stamp = {"batch_key": batch_key, "run_id": run_id}
    facts = fact_rows(loans).assign(**stamp, rules_version=rules_version)
    exc = exceptions[["seller_loan_number", "platform", "reason", "severity", "message"]].assign(**stamp)
    elig = eligibility_rows(checks).assign(**stamp, rules_version=rules_version)
    with contextlib.ExitStack() as after_commit, engine.begin() as conn:
        # 1. fencing: this run still holds the batch
        if fence is not None:
            fence(conn)
        # 2. the batch's rows, replaced
        for table in BATCH_TABLES:
            conn.execute(delete(table).where(table.c.batch_key == batch_key))
        for table, frame in ((loan_facts, facts), (loan_exceptions, exc), (eligibility_results, elig)):
            if len(frame):
                _bulk_insert(conn, table, frame)
        # 3. the reports, swapped in; undone by the ExitStack if the commit fails
        if publish is not None:
            after_commit.enter_context(publish())
    return {"loan_facts": len(facts), "loan_exceptions": len(exc), "eligibility_results": len(elig)}


def locked_by_another(exc: BaseException) -> bool:
    """SQLite's busy timeout ran out: another connection kept the file locked."""
    return isinstance(exc, sqlalchemy.exc.OperationalError) and "database is locked" in str(exc.orig or exc)


# The database refusing to store more (full, read-only; PostgreSQL's
# disk_full): the same answer on every try, so no reason to try again.
_SQLITE_REFUSALS = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY}
_POSTGRES_REFUSALS = {"53100"}
# ... and the setup's other refusals, named like them: a file that is no
# database, a PostgreSQL standby that takes no writes (read_only_sql_transaction).
_SQLITE_SETUP = _SQLITE_REFUSALS | {sqlite3.SQLITE_NOTADB}
_POSTGRES_SETUP = _POSTGRES_REFUSALS | {"25006"}
SQLITE_READONLY_DBMOVED = 1032  # the file was unlinked or renamed under an open connection


def _sqlite_code(exc: BaseException) -> int | None:
    code = getattr(getattr(exc, "orig", None), "sqlite_errorcode", None)
    return None if code is None else code & 0xFF  # extended codes keep the primary one in their low byte


def _postgres_code(exc: BaseException) -> str | None:
    return getattr(getattr(exc, "orig", None), "pgcode", None)


def refused(exc: BaseException) -> bool:
    """Whether the database refused the write for a reason of the machine or
    the setup (full, read-only, not a database): worth naming the database,
    not a bug's error, whose whole message (SQL, DETAIL) the log keeps."""
    return _sqlite_code(exc) in _SQLITE_SETUP or _postgres_code(exc) in _POSTGRES_SETUP


def connection_lost(exc: BaseException) -> bool:
    """Whether a failed save lost its database rather than met bad data: worth
    another try, since the write is one transaction. A connection killed in
    the middle of a COPY surfaces as the InterfaceError of the rollback that
    followed ("connection already closed"), not as an OperationalError.
    A full or read-only database is no lost connection: retried, it cost
    the run its retry waits (30 s by default) for the same refusal."""
    if _sqlite_code(exc) in _SQLITE_REFUSALS or _postgres_code(exc) in _POSTGRES_REFUSALS:
        return False
    return isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or (
        isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated
    )


def named(exc: sqlalchemy.exc.DBAPIError, url: str) -> Exception:
    """The driver's error with the database named in its message: "database
    or disk is full" or "file is not a database" does not say which disk or
    file. Its class is kept, since a failed run's kind is told by it (and by
    its words); raised in the original's place, because a failed run is told
    by its innermost error."""
    orig = exc.orig if exc.orig is not None else exc
    reason = next((line.strip() for line in str(orig).splitlines() if line.strip()), type(orig).__name__)
    if getattr(orig, "sqlite_errorcode", None) == SQLITE_READONLY_DBMOVED:  # "readonly" sent people to the permissions
        reason = f"its file was deleted or replaced while the run was using it ({reason})"
    message = f"results database {shown_url(url)}: {reason}"
    try:
        return type(orig)(message)
    except Exception:  # a driver error class that cannot be built from a message
        return RuntimeError(f"{type(orig).__name__}: {message}")


def rows_run(conn: Connection, batch_key: str) -> str | None:
    """The run whose rows the database holds for the batch (None: no rows).
    A save replaces all of a batch's rows at once, so every row names the same run."""
    return conn.execute(
        select(eligibility_results.c.run_id).where(eligibility_results.c.batch_key == batch_key).limit(1)
    ).scalar()


def batch_row_counts(engine: Engine, batch_key: str) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table.name: conn.execute(select(func.count()).select_from(table).where(table.c.batch_key == batch_key)).scalar_one()
            for table in BATCH_TABLES
        }


