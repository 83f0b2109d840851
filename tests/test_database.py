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
