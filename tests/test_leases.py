"""The batch lease in the results database: who may write a batch, and the
fence that refuses a write from a run that lost it (SQLite and PostgreSQL)."""

import contextlib
import threading

import pandas as pd
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from conftest import PG_ADMIN_URL, loan, run_rules  # noqa: F401  (the postgres_url fixture lives there)
from loan_engine_dagster.adapters import database, leases

BATCH = "2026-02-19"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = database.engine_for(url)
    yield engine
    engine.dispose()


def _save(engine, run_id, **kwargs):
    decisions = run_rules([loan("SFC_1"), loan("SFC_2", **{"FICO Borrower": 600})])
    return database.save_batch(engine, batch_key=BATCH, run_id=run_id, rules_version="v", loans=decisions.loans,
                               exceptions=decisions.exceptions, checks=decisions.checks, **kwargs)


def _fact_run_ids(engine):
    with engine.connect() as conn:
        return set(conn.execute(select(database.loan_facts.c.run_id).where(database.loan_facts.c.batch_key == BATCH)).scalars())


def test_a_live_holder_keeps_the_batch(engine):
    first = leases.acquire(engine, BATCH, "run-a", stale_after=60)
    with pytest.raises(leases.BatchLeaseHeld, match="Batch 2026-02-19 is being written by run run-a"):
        leases.acquire(engine, BATCH, "run-b", stale_after=60)
    assert leases.renew(engine, first)
    assert set(leases.holders(engine, ["run-a", "run-b"])) == {"run-a"}
    leases.release(engine, first)
    second = leases.acquire(engine, BATCH, "run-b", stale_after=60)  # free again
    assert second.token == first.token + 1


def test_a_silent_or_finished_holder_is_taken_over_and_fenced_out(engine):
    old = leases.acquire(engine, BATCH, "run-a", stale_after=60)
    # Finished in run storage (failed by hand, say): taken over at once.
    new = leases.acquire(engine, BATCH, "run-b", stale_after=60, holder_finished=lambda run_id: run_id == "run-a")
    assert not leases.renew(engine, old)
    with pytest.raises(leases.BatchLeaseLost, match="run run-b took the batch over"):
        _save(engine, "run-a", fence=lambda conn: leases.check(conn, old))
    assert _fact_run_ids(engine) == set()
    # Silent for longer than stale_after: taken over too.
    newest = leases.acquire(engine, BATCH, "run-c", stale_after=-1)
    assert newest.token == new.token + 1
    _save(engine, "run-c", fence=lambda conn: leases.check(conn, newest))
    assert _fact_run_ids(engine) == {"run-c"}


def test_a_revoked_run_writes_nothing_and_publishes_nothing(engine):
    lease = leases.acquire(engine, BATCH, "run-a", stale_after=60)
    _save(engine, "run-a", fence=lambda conn: leases.check(conn, lease))
    assert leases.revoke(engine, BATCH, "run-a")  # the dead-worker sensor declared it dead
    published = []

    @contextlib.contextmanager
    def publish():
        published.append(True)
        yield

    with pytest.raises(leases.BatchLeaseLost, match="its lease was revoked"):
        _save(engine, "run-a-late", fence=lambda conn: leases.check(conn, lease), publish=publish)
    assert published == [] and _fact_run_ids(engine) == {"run-a"}
    assert not leases.renew(engine, lease)


def test_reports_are_published_inside_the_transaction_only_when_the_rows_went_in(engine):
    calls = []

    @contextlib.contextmanager
    def publish():
        calls.append("in")
        try:
            yield
        except BaseException:
            calls.append("undone")
            raise
        calls.append("kept")

    _save(engine, "run-a", publish=publish)
    assert calls == ["in", "kept"]
    calls.clear()
    decisions = run_rules([loan("SFC_1")])
    bad_exceptions = pd.DataFrame({"seller_loan_number": ["SFC_1"], "platform": ["sfy"], "reason": [None],
                                   "severity": ["error"], "message": [""]})  # NOT NULL violated after the facts went in
    with pytest.raises(IntegrityError):
        database.save_batch(engine, batch_key=BATCH, run_id="run-b", rules_version="v", loans=decisions.loans,
                            exceptions=bad_exceptions, checks=decisions.checks, publish=publish)
    assert calls == [] and _fact_run_ids(engine) == {"run-a"}


def test_two_first_runs_of_a_batch_cannot_both_take_it(engine):
    """Many runs race for a batch nobody held before: exactly one wins."""
    winners, losers, errors = [], [], []
    barrier = threading.Barrier(6)

    def contend(name):
        barrier.wait()
        try:
            winners.append(leases.acquire(engine, BATCH, name, stale_after=60))
        except leases.BatchLeaseHeld as exc:
            losers.append(exc.holder)
        except Exception as exc:  # pragma: no cover - shown on failure
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(f"run-{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(winners) == 1 and set(losers) == {winners[0].run_id} and len(losers) == 5


def test_a_batch_row_cannot_be_saved_twice(engine):
    _save(engine, "run-a")
    with engine.connect() as conn:
        row = dict(conn.execute(select(database.loan_facts).limit(1)).mappings().one())
    row.pop("id")
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(database.loan_facts.insert(), [{**row, "run_id": "run-b"}])
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from loan_facts")).scalar_one() == 2


@pytest.mark.postgres
def test_a_worker_frozen_in_its_save_neither_blocks_the_batch_nor_the_revocation(postgres_url, monkeypatch):
    # Past bug: a worker frozen inside its save transaction (SIGSTOP, a paused
    # VM) kept the lease row locked: the next run of the batch waited in
    # acquire for over 11 minutes, and the dead-worker sensor's revocation
    # blocked on every tick.
    import time

    monkeypatch.setattr(leases, "LOCK_WAIT_SECONDS", 1)
    frozen_engine = database.engine_for(postgres_url, leases.SESSION_NAME + "run-a")
    lease = leases.acquire(frozen_engine, BATCH, "run-a", stale_after=60)
    frozen = frozen_engine.connect()
    transaction = frozen.begin()
    leases.check(frozen, lease)  # the save's fence: the lease row stays locked until the commit that never comes
    engine = database.engine_for(postgres_url)
    try:
        started = time.monotonic()
        with pytest.raises(leases.BatchLeaseHeld, match="being written by run run-a"):
            leases.acquire(engine, BATCH, "run-b", stale_after=0)
        assert time.monotonic() - started < 10
        assert leases.revoke(engine, BATCH, "run-a")  # ends the frozen session, then voids the lease
        assert leases.acquire(engine, BATCH, "run-b", stale_after=60).run_id == "run-b"
        with pytest.raises(Exception):
            transaction.commit()  # the frozen worker's session is gone: it can write nothing
    finally:
        with contextlib.suppress(Exception):
            frozen.close()
        frozen_engine.dispose()
        engine.dispose()
