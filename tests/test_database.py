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
