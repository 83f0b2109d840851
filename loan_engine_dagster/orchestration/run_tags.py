"""What a run says about itself where people look: the batch and delivery it
read (as tags, however it was started) and, when the files are at fault, a
failure whose first line is the cause."""

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import dagster as dg

from loan_engine_dagster.adapters.inbox import BatchFiles, InboxChanged
from loan_engine_dagster.adapters.watch import batch_fingerprint, fingerprint
from loan_engine_dagster.rules.errors import StructuralError

from .run_records import (
    BATCH_TAG, FINGERPRINT_TAG, MAX_RETRIES_TAG, RESULTS_SAVED_TAG, RETRIES_HELD_TAG, batch_tags, short_fingerprint,
    usual_retries,
)


def tag_run_with_batch(context: dg.AssetExecutionContext, files: BatchFiles, inbox_root: str) -> None:
    """Runs from the sensor and the CLI arrive tagged; a run launched from the
    UI or a backfill gets the same batch and fingerprint tags here, so the
    sensor knows those exact files already ran."""
    tags = context.run.tags
    if tags.get(BATCH_TAG) and tags.get(FINGERPRINT_TAG):
        return
    fingerprint = batch_fingerprint(files) if files.complete else None
    missing = {k: v for k, v in batch_tags(files.key, inbox_root, fingerprint).items() if k not in tags}
    if missing:
        context.instance.add_run_tags(context.run.run_id, missing)


def require_started_delivery(context: dg.AssetExecutionContext, read: list[dict]) -> None:
    """InboxChanged unless the files read (`read`: their audit-trail entries,
    the hashes of the bytes parsed) are the delivery the run was started for.
    The sensor checks that a delivery is whole (the same on two looks) when it
    asks for a run, and the run read the files by name when it started: a
    tape an upload tool was writing again by then was read half written, and
    the run succeeded, tagged as the whole delivery (hostile pass).

    A re-execution (from a failed step, after the seller fixed a file) is
    asked for the files as they are now: it takes their fingerprint as its
    own, so that its record names what it read."""
    expected = context.run.tags.get(FINGERPRINT_TAG)
    found = short_fingerprint(fingerprint({entry["role"]: entry["sha256"] for entry in read}))
    if expected and found != expected and context.run.parent_run_id is not None:
        context.log.warning(f"the batch's files changed since run {context.run.parent_run_id} (fingerprint {expected}): "
                            f"this re-execution read {found}, and is tagged so")
        context.instance.add_run_tags(context.run.run_id, {FINGERPRINT_TAG: found})
    elif expected and found != expected:
        raise InboxChanged(
            f"the batch's files are not the delivery this run was started for (fingerprint {expected}, the files "
            f"read {found}): changed or still being written since; nothing of this run is saved, and the inbox sensor "
            "starts a run for the files once they stay the same"
        )


@contextmanager
def as_failure():
    """A data problem fails the step with its one-line cause first (file,
    sheet, column, rows) instead of a wrapper and a stack trace; the original
    error stays chained for the failure sensor's data/code/infra verdict."""
    try:
        yield
    except StructuralError as exc:
        metadata = {k: v for k, v in {
            "file": exc.file, "sheet": exc.sheet, "columns": ", ".join(exc.columns) or None,
            "rows": ", ".join(str(r) for r in exc.rows[:50]) or None, "problem": exc.problem,
        }.items() if v}
        raise dg.Failure(description=str(exc), metadata=metadata) from exc


class CommitGuard:
    """A run's save, as Dagster's run retries see it. From just before the
    batch's commit until the step ends, the run's `dagster/max_retries` is
    0: a worker lost in that moment may have committed, and a retry would
    compute and save the same batch again. Whoever reports the lost worker
    (the code server that launched it, within half a second; the dead-worker
    sensor; `runs mark`), Dagster then decides no retry from the run's tags.
    Once committed the run is tagged with its own id as having saved its
    results. `release()` puts the retry setting back when the step ends, so
    that a re-execution started from the run by hand inherits the usual one;
    for a worker lost before that, the setting held is kept in a tag, and
    whoever reports the loss puts it back once Dagster has decided."""

    def __init__(self, context: dg.AssetExecutionContext) -> None:
        self._instance, self._run_id = context.instance, context.run.run_id
        self._retries = usual_retries(context.instance, context.run)
        self._held = False

    @contextmanager
    def around_commit(self, publish: AbstractContextManager) -> Iterator:
        """`publish` (entered last in the save's transaction, left after its
        commit), with the run's retries held around the commit."""
        self._instance.add_run_tags(self._run_id, {MAX_RETRIES_TAG: "0", RETRIES_HELD_TAG: self._retries})
        self._held = True
        try:
            with publish as published:
                yield published
        except BaseException:
            self.release()  # nothing committed: the run's retries are its own again
            raise
        self._instance.add_run_tags(self._run_id, {RESULTS_SAVED_TAG: self._run_id})

    def release(self) -> None:
        if self._held:
            self._instance.add_run_tags(self._run_id, {MAX_RETRIES_TAG: self._retries})
            self._held = False
