"""What a run says about itself where people look: the batch and delivery it
read (as tags, however it was started) and, when the files are at fault, a
failure whose first line is the cause."""

from contextlib import contextmanager

import dagster as dg

from loan_engine_dagster.adapters.inbox import BatchFiles
from loan_engine_dagster.adapters.watch import batch_fingerprint
from loan_engine_dagster.rules.errors import StructuralError

from .run_records import BATCH_TAG, FINGERPRINT_TAG, batch_tags


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
