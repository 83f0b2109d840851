"""Where each phase's result is kept between steps.

Every output is pickled under the instance's `storage/<asset>/<batch>`, as
Dagster's default filesystem IO manager does, so the UI and the daemon can
re-execute a run from its failed step in a new process. Within the run that
wrote it, the same object is also handed straight to the later steps of the
same process instead of being read back: the 500k-row portfolio used to be
unpickled four times per batch. An entry is dropped once its last consumer
has taken it, so memory holds no more than the steps still need.

The pickles are written on a background thread while the next step works.
The run's last step (the one whose result nothing in the run reads) takes
its inputs only once every pickle is on disk, and fails if one could not be
written, before it commits anything; a run that fails earlier waits for them
as it closes. Steps never change an upstream object in place, which the
shared objects already required. A worker killed in the moment between a
step's success and its pickle leaves a result that is not on disk: the
daemon's retries run every step again (the job's `dagster/retry_strategy`),
and a re-execution from the failed step says to re-run the batch.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import dagster as dg

from loan_engine_dagster.adapters.outputs import naming_the_file

# Pickle 5 writes pandas' and Arrow's buffers without extra copies.
PICKLE_PROTOCOL = 5


class _Memo:
    """Objects written by the current run of this process, by path, with how
    many loads they still await."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], list] = {}

    def keep(self, run_id: str, path: str, obj: object, consumers: int) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] != run_id]:  # an earlier run's leftovers
                del self._entries[key]
            if consumers > 0:
                self._entries[(run_id, path)] = [obj, consumers]

    def take(self, run_id: str, path: str) -> tuple[bool, object]:
        with self._lock:
            entry = self._entries.get((run_id, path))
            if entry is None:
                return False, None
            entry[1] -= 1
            if entry[1] <= 0:
                del self._entries[(run_id, path)]
            return True, entry[0]


_MEMO = _Memo()


def _write_pickle(path: Path, obj: object, run_id: str) -> None:
    # Written aside and renamed: a worker killed mid-write leaves no
    # truncated pickle for a re-execution to trip over. One that fails
    # (a full disk) takes its part-written file with it, which would
    # otherwise keep the disk full, and names the file.
    partial = path.with_name(f".{path.name}.{run_id}.partial")
    try:
        with naming_the_file(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with partial.open("wb") as file:
                pickle.dump(obj, file, PICKLE_PROTOCOL)
            os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise


class StoredResultMissing(Exception):
    """A phase's result that its run reported but never wrote (the worker died)."""


class _Writes:
    """One run's pickles, written in order on one thread."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-pickles")
        self._pending: list[Future] = []

    def submit(self, path: Path, obj: object, run_id: str) -> None:
        self._pending.append(self._executor.submit(_write_pickle, path, obj, run_id))

    def wait(self) -> None:
        """Every write submitted so far is on disk; raises the first that failed."""
        pending, self._pending = self._pending, []
        errors = [future.exception() for future in pending]
        first = next((error for error in errors if error is not None), None)
        if first is not None:
            raise first

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._executor.shutdown()


class BatchPickleIOManager(dg.IOManager):
    """`storage/<asset>/<batch>` under the instance's storage folder, the
    layout of Dagster's filesystem IO manager. A plain IO manager rather than
    `UPathIOManager`: that one writes two or three debug lines to the event
    log per input and output, about fifty events a run that each cost a
    write to the instance's storage."""

    def __init__(self, base_path: Path, consumers: Counter, last_steps: frozenset[str]) -> None:
        self._base_path = base_path
        self._consumers = consumers  # steps of this run reading each asset
        self._last_steps = last_steps  # ops of this run whose result no step of it reads
        self._writes = _Writes()

    def _path(self, context: dg.InputContext | dg.OutputContext) -> Path:
        path = self._base_path.joinpath(*context.asset_key.path)
        return path / context.asset_partition_key if context.has_asset_partitions else path

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        path = self._path(context)
        consumers = self._consumers[context.asset_key]
        if consumers:
            self._writes.submit(path, obj, context.run_id)
        else:
            _write_pickle(path, obj, context.run_id)
        _MEMO.keep(context.run_id, str(path), obj, consumers)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def close(self) -> None:
        """Waits for this run's pickles; the run's end, failed or not."""
        self._writes.close()

    def load_input(self, context: dg.InputContext) -> object:
        if context.op_def.name in self._last_steps:
            self._writes.wait()
        path = self._path(context)
        upstream = context.upstream_output
        if upstream is not None:
            found, obj = _MEMO.take(upstream.run_id, str(path))
            if found:
                return obj
        self._writes.wait()
        try:
            file = path.open("rb")
        except FileNotFoundError:
            raise StoredResultMissing(
                f"{context.asset_key.to_user_string()} for batch {context.asset_partition_key} is not in {path}: "
                "the run that computed it ended before writing it (its worker died). Run the whole batch again."
            ) from None
        with file:
            return pickle.load(file)


def batch_io_manager(assets_defs: Iterable[dg.AssetsDefinition]) -> dg.IOManagerDefinition:
    """The IO manager for these assets, knowing how many of them read each one."""
    assets_defs = list(assets_defs)

    @dg.io_manager(description="Pickles under the instance's storage folder; same-run steps share the object.")
    def io_manager(init_context: dg.InitResourceContext) -> Iterator[BatchPickleIOManager]:
        run = init_context.run
        selected = run.asset_selection if run is not None else None  # None: the whole job
        in_run = [a for a in assets_defs if selected is None or not selected.isdisjoint(a.keys)]
        consumers = Counter(key for a in in_run for key in a.keys_by_input_name.values())
        last_steps = frozenset(a.op.name for a in in_run if not any(consumers[key] for key in a.keys))
        manager = BatchPickleIOManager(Path(init_context.instance.storage_directory()), consumers, last_steps)
        try:
            yield manager
        finally:
            manager.close()

    return io_manager
