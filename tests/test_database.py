import pandas as pd
import pytest
from sqlalchemy import select

from conftest import loan, run_rules
from loan_engine_dagster.adapters import database


def _decisions():
    return run_rules([loan("SFC_1"), loan("SFC_2", **{"FICO Borrower": 600}), loan("SFC_3", **{"FICO Borrower": 900})])


def _save(engine, decisions, run_id="r1", batch="2026-02-19"):
    return database.save_batch(engine, batch_key=batch, run_id=run_id, rules_version="v", loans=decisions.loans,
                               exceptions=decisions.exceptions, checks=decisions.checks)


def _exercise(url):
    engine = database.engine_for(url)
    decisions = _decisions()
    counts = _save(engine, decisions)
    assert counts["loan_facts"] == 3
    assert counts["eligibility_results"] == 3 * len(decisions.checks)
    assert database.batch_row_counts(engine, "2026-02-19") == counts
    # A re-run replaces, never duplicates; other batches are untouched.
    _save(engine, decisions, batch="2026-02-26")
    _save(engine, decisions, run_id="r2")
    assert database.batch_row_counts(engine, "2026-02-19") == counts
    with engine.connect() as conn:
        facts = pd.DataFrame(conn.execute(select(database.loan_facts).where(database.loan_facts.c.batch_key == "2026-02-19")).mappings().all())
        exc = pd.DataFrame(conn.execute(select(database.loan_exceptions).where(database.loan_exceptions.c.batch_key == "2026-02-19")).mappings().all())
    assert set(facts["run_id"]) == {"r2"}
    row = facts.set_index("seller_loan_number").loc["SFC_3"]
    assert row["rejection_criteria"] == "invalid_data" and bool(row["purchase_price_check"]) is False
    assert set(exc.loc[exc["seller_loan_number"] == "SFC_2", "reason"]) >= {"underwriting_sfy"}
    assert set(exc["severity"]) <= {"error", "warning"}

    # A write that fails halfway leaves the previous rows intact.
    broken = decisions.exceptions.copy()
    broken["reason"] = None  # NOT NULL violated after facts were already inserted
    with pytest.raises(Exception):
        database.save_batch(engine, batch_key="2026-02-19", run_id="r3", rules_version="v", loans=decisions.loans,
                            exceptions=broken, checks=decisions.checks)
    assert database.batch_row_counts(engine, "2026-02-19") == counts
    with engine.connect() as conn:
        run_ids = set(conn.execute(select(database.loan_facts.c.run_id).where(database.loan_facts.c.batch_key == "2026-02-19")).scalars())
    assert run_ids == {"r2"}
    engine.dispose()


def test_sqlite_file(tmp_path):
    _exercise(f"sqlite:///{tmp_path / 'results.db'}")


@pytest.mark.postgres
def test_postgresql(postgres_url):
    _exercise(postgres_url)


def _read_back(engine, table, batch):
    with engine.connect() as conn:
        rows = conn.execute(select(table).where(table.c.batch_key == batch).order_by(table.c.id)).mappings().all()
    return [{k: v for k, v in row.items() if k not in ("id", "batch_key")} for row in rows]


def _bulk_matches_sqlalchemy_insert(url):
    """The bulk path (COPY / executemany) stores what SQLAlchemy's own typed
    insert stores: same values, same NULLs, empty text kept empty."""
    engine = database.engine_for(url)
    decisions = run_rules([
        loan("SFC_1"), loan("SFC_2", **{"FICO Borrower": 600, "Submit Date": None}),
        loan("SFC_3", **{"FICO Borrower": 900, "Orig. Balance": None, "Loan Program": 'say "hi",\nthere'}),
    ])
    _save(engine, decisions, batch="bulk")
    stamp = {"batch_key": "typed", "run_id": "r1"}
    frames = {
        database.loan_facts: database.fact_rows(decisions.loans).assign(**stamp, rules_version="v"),
        database.loan_exceptions: decisions.exceptions[["seller_loan_number", "platform", "reason", "severity", "message"]].assign(**stamp),
        database.eligibility_results: database.eligibility_rows(decisions.checks).assign(**stamp, rules_version="v"),
    }
    with engine.begin() as conn:
        for table, frame in frames.items():
            conn.execute(table.insert(), frame.astype(object).where(frame.notna(), None).to_dict("records"))
    for table in database.BATCH_TABLES:
        bulk, typed = _read_back(engine, table, "bulk"), _read_back(engine, table, "typed")
        assert bulk and bulk == typed, table.name
    facts = {r["seller_loan_number"]: r for r in _read_back(engine, database.loan_facts, "bulk")}
    assert facts["SFC_3"]["orig_balance"] is None and facts["SFC_1"]["message"] == ""
    engine.dispose()


def test_bulk_insert_sqlite(tmp_path):
    _bulk_matches_sqlalchemy_insert(f"sqlite:///{tmp_path / 'results.db'}")


@pytest.mark.postgres
def test_bulk_insert_postgresql(postgres_url):
    _bulk_matches_sqlalchemy_insert(postgres_url)


@pytest.mark.postgres
def test_a_connection_killed_during_copy_is_a_lost_connection_and_keeps_the_old_rows(postgres_url):
    # Past bug: the COPY's AdminShutdown surfaced as the InterfaceError of the
    # rollback after it ("connection already closed"), which the save step
    # did not take for a lost connection: no retry, the run failed at once.
    import threading
    import time

    import sqlalchemy

    engine = database.engine_for(postgres_url)
    decisions = _decisions()
    before = _save(engine, decisions)
    with engine.begin() as conn:  # a COPY slow enough to be caught in the act: its trigger sleeps
        conn.exec_driver_sql("CREATE FUNCTION slow() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(5); RETURN NULL; END $$"
                             " LANGUAGE plpgsql")
        conn.exec_driver_sql("CREATE TRIGGER slow BEFORE INSERT ON eligibility_results FOR EACH STATEMENT EXECUTE FUNCTION slow()")
    killed = []

    def terminate_the_copy():
        admin = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)
        deadline = time.monotonic() + 30
        with admin.connect() as conn:
            while not killed and time.monotonic() < deadline:
                killed.extend(conn.execute(sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()")).scalars())
                time.sleep(0.05)
        admin.dispose()

    terminator = threading.Thread(target=terminate_the_copy)
    terminator.start()
    with pytest.raises(sqlalchemy.exc.DBAPIError) as err:
        _save(engine, decisions, run_id="r2")
    terminator.join()
    assert killed and database.connection_lost(err.value), repr(err.value)
    engine.dispose()
    engine = database.engine_for(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER slow ON eligibility_results")
    assert database.batch_row_counts(engine, "2026-02-19") == before
    with engine.connect() as conn:
        assert set(conn.execute(select(database.loan_facts.c.run_id)).scalars()) == {"r1"}
    engine.dispose()


def test_only_the_databases_refusals_are_reworded(tmp_path):
    """A full or read-only database, or a file that is no database, is named
    (the driver's words name none); any other error, a bug's, keeps the
    driver's whole message (its SQL, PostgreSQL's DETAIL line) for the run's
    log. Past bug: a UNIQUE violation came out as one reworded line."""
    import sqlite3

    import sqlalchemy.exc

    url = f"sqlite:///{tmp_path / 'r.db'}"
    full = sqlalchemy.exc.OperationalError("INSERT ...", {}, sqlite3.OperationalError("database or disk is full"))
    full.orig.sqlite_errorcode = sqlite3.SQLITE_FULL
    assert database.refused(full)
    assert str(database.named(full, url)) == f"results database {url}: database or disk is full"
    clash = sqlalchemy.exc.IntegrityError("INSERT INTO t ...", {}, sqlite3.IntegrityError("UNIQUE constraint failed: t.a"))
    clash.orig.sqlite_errorcode = sqlite3.SQLITE_CONSTRAINT_UNIQUE
    assert not database.refused(clash)
