"""What a run says about itself where people look: the batch and delivery it
read (as tags, however it was started) and, when the files are at fault, a
failure whose first line is the cause."""

from contextlib import contextmanager

import dagster as dg

from loan_engine_dagster.adapters.inbox import BatchFiles, InboxChanged
from loan_engine_dagster.adapters.watch import batch_fingerprint, fingerprint
from loan_engine_dagster.rules.errors import StructuralError

from .run_records import BATCH_TAG, FINGERPRINT_TAG, batch_tags, short_fingerprint


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
