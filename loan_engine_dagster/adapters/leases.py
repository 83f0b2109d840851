"""One writer per batch, enforced in the results database itself.

Each batch has one row in `batch_leases`: the run allowed to write the
batch's results, a fencing token that grows at every hand-over, and the time
of the holder's last heartbeat. Whatever starts runs (terminal, sensor, UI,
another host), a run takes the lease before its first phase and renews it
while it lives; its write transaction checks the token first, so a run that
lost the lease (declared dead, taken over) can never write afterwards.
Times come from the database's clock, so workers on other hosts agree."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy.exc
from sqlalchemy import select, text, update
from sqlalchemy.engine import Connection, Engine

from .database import batch_leases
from .preflight import shown_url

# How long a lease operation waits for the batch's lease row on PostgreSQL.
# A worker frozen inside its save (a paused VM, a host cut off) keeps that
# row locked in its open transaction: without a bound, every later run of
# the batch and the dead-worker sensor's revocation waited for it forever.
LOCK_WAIT_SECONDS = 10
# Each run's connections carry this name and the run id (`application_name`),
# so that the sessions of a run declared dead can be found and ended.
SESSION_NAME = "loan-engine run "


class BatchLeaseHeld(RuntimeError):
    """Another live run holds the batch."""

    def __init__(self, batch_key: str, holder: str, age: float):
        self.batch_key, self.holder, self.age = batch_key, holder, age
        super().__init__(
            f"Batch {batch_key} is being written by run {holder} (last heartbeat {age:.0f}s ago); "
            f"this run stops without writing anything. Wait for run {holder} to finish, "
            f"or if it is stuck: loan-engine runs mark {holder} --as failed (with the DAGSTER_HOME that started "
            "it; from another one, wait for its heartbeat to go stale)"
        )


class BatchLeaseLost(RuntimeError):
    """This run may no longer write the batch."""


@dataclass(frozen=True)
class Lease:
    batch_key: str
    run_id: str
    token: int


@dataclass(frozen=True)
class Holder:
    batch_key: str
    run_id: str
    age: float  # seconds since the last heartbeat
    host: str | None
    pid: int | None


def db_now(conn: Connection) -> float:
    """Seconds since the epoch by the database's clock."""
    if conn.dialect.name == "postgresql":
        return float(conn.execute(text("SELECT extract(epoch from clock_timestamp())")).scalar_one())
    if conn.dialect.name == "sqlite":
        return float(conn.execute(text("SELECT (julianday('now') - 2440587.5) * 86400.0")).scalar_one())
    raise NotImplementedError(f"batch leases need PostgreSQL or SQLite, not {conn.dialect.name}")


def _bounded_lock_wait(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SET LOCAL lock_timeout = '{int(LOCK_WAIT_SECONDS * 1000)}ms'"))


def _lock_timed_out(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", None), "pgcode", None) == "55P03"  # lock_not_available


def _ensure_row(conn: Connection, batch_key: str) -> None:
    """The batch's lease row exists (free) before anyone locks it; two first
    runs of a batch cannot both insert it."""
    values = {"batch_key": batch_key, "token": 0, "released": True}
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    conn.execute(dialect_insert(batch_leases).values(**values).on_conflict_do_nothing(index_elements=["batch_key"]))


def _locked_row(conn: Connection, batch_key: str):
    # FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE already holds the write lock.
    return conn.execute(select(batch_leases).where(batch_leases.c.batch_key == batch_key).with_for_update()).mappings().one_or_none()


def acquire(
    engine: Engine, batch_key: str, run_id: str, *, stale_after: float,
    holder_finished: Callable[[str], bool] = lambda run_id: False,
) -> Lease:
    """Take the batch for `run_id`. A lease held by another run is taken over
    only when its holder is known to be finished or has not renewed it for
    `stale_after` seconds; otherwise BatchLeaseHeld names the holder (also
    when the holder's open transaction keeps the row locked)."""
    try:
        return _acquire(engine, batch_key, run_id, stale_after, holder_finished)
    except sqlalchemy.exc.OperationalError as exc:
        if not _lock_timed_out(exc):
            raise
        with engine.connect() as conn:  # a plain read is not held up by the row lock
            row = conn.execute(select(batch_leases).where(batch_leases.c.batch_key == batch_key)).mappings().one()
            age = db_now(conn) - (row["heartbeat_at"] or 0.0)
        raise BatchLeaseHeld(batch_key, row["run_id"], age) from None


def _acquire(engine: Engine, batch_key: str, run_id: str, stale_after: float, holder_finished) -> Lease:
    with engine.begin() as conn:
        _bounded_lock_wait(conn)
        _ensure_row(conn, batch_key)
        row = _locked_row(conn, batch_key)
        now = db_now(conn)
        if not row["released"] and row["run_id"] not in (None, run_id):
            age = now - (row["heartbeat_at"] or 0.0)
            if age <= stale_after and not holder_finished(row["run_id"]):
                raise BatchLeaseHeld(batch_key, row["run_id"], age)
        token = row["token"] + 1
        conn.execute(
            update(batch_leases).where(batch_leases.c.batch_key == batch_key).values(
                run_id=run_id, token=token, released=False, acquired_at=now, heartbeat_at=now,
                host=socket.gethostname()[:255], pid=os.getpid(),
            )
        )
    return Lease(batch_key, run_id, token)


def _held(lease: Lease):
    return (
        (batch_leases.c.batch_key == lease.batch_key) & (batch_leases.c.run_id == lease.run_id)
        & (batch_leases.c.token == lease.token) & (batch_leases.c.released == False)  # noqa: E712
    )


def renew(engine: Engine, lease: Lease) -> bool:
    """The heartbeat. False when the lease is no longer this run's."""
    with engine.begin() as conn:
        return conn.execute(update(batch_leases).where(_held(lease)).values(heartbeat_at=db_now(conn))).rowcount == 1


def release(engine: Engine, lease: Lease) -> None:
    with engine.begin() as conn:
        conn.execute(update(batch_leases).where(_held(lease)).values(released=True))


def check(conn: Connection, lease: Lease) -> None:
    """The fence, inside a write transaction: lock the batch's lease row and
    make sure it is still this run's, else raise BatchLeaseLost."""
    row = _locked_row(conn, lease.batch_key)
    if row is not None and not row["released"] and row["run_id"] == lease.run_id and row["token"] == lease.token:
        conn.execute(update(batch_leases).where(_held(lease)).values(heartbeat_at=db_now(conn)))
        return
    if row is None:  # taken at the run's start and never deleted: the database is not the one the run began with
        why = (f"the results database {shown_url(conn.engine.url.render_as_string(hide_password=False))} has no lease "
               "of the batch any more (emptied, or replaced by another copy, during the run)")
    elif row["run_id"] in (None, lease.run_id):
        why = "its lease was revoked (the run was marked failed)"
    else:
        why = f"run {row['run_id']} took the batch over"
    raise BatchLeaseLost(
        f"Run {lease.run_id} no longer holds batch {lease.batch_key}: {why}. "
        "Nothing was written; the batch's rows and reports are still those of the holder."
    )


def revoke(engine: Engine, batch_key: str, run_id: str) -> bool:
    """Void `run_id`'s lease on the batch (its run was declared dead), so that
    the worker, should it still live, cannot write afterwards. A worker
    frozen inside its write transaction keeps the lease row locked: its
    database sessions are ended (PostgreSQL), which rolls that transaction
    back, and the lease is voided then."""
    try:
        return _revoke(engine, batch_key, run_id)
    except sqlalchemy.exc.OperationalError as exc:
        if not _lock_timed_out(exc):
            raise
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name"),
                     {"name": SESSION_NAME + run_id})
    return _revoke(engine, batch_key, run_id)


def _revoke(engine: Engine, batch_key: str, run_id: str) -> bool:
    with engine.begin() as conn:
        _bounded_lock_wait(conn)
        result = conn.execute(
            update(batch_leases)
            .where((batch_leases.c.batch_key == batch_key) & (batch_leases.c.run_id == run_id) & (batch_leases.c.released == False))  # noqa: E712
            .values(released=True, token=batch_leases.c.token + 1)
        )
        return result.rowcount == 1


def holders(engine: Engine, run_ids: list[str]) -> dict[str, Holder]:
    """The live leases held by these runs, with the age of their last heartbeat."""
    if not run_ids:
        return {}
    with engine.begin() as conn:
        now = db_now(conn)
        rows = conn.execute(
            select(batch_leases).where(batch_leases.c.run_id.in_(run_ids) & (batch_leases.c.released == False))  # noqa: E712
        ).mappings().all()
    return {
        r["run_id"]: Holder(r["batch_key"], r["run_id"], now - (r["heartbeat_at"] or 0.0), r["host"], r["pid"])
        for r in rows
    }


__all__ = ["BatchLeaseHeld", "BatchLeaseLost", "Holder", "Lease", "acquire", "check", "holders", "release", "renew",
           "revoke"]
