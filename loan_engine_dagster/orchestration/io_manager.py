"""Where each phase's result is kept between steps.

Every output is pickled under the instance's `storage/<asset>/<batch>`, as
Dagster's default filesystem IO manager does, so the UI and the daemon can
re-execute a run from its failed step in a new process. Within the run that
wrote it, the same object is also handed straight to the later steps of the
same process instead of being read back: the 500k-row portfolio used to be
unpickled four times per batch. An entry is dropped once its last consumer
has taken it, so memory holds no more than the steps still need.
"""

from __future__ import annotations

import os
import pickle
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import dagster as dg

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


class BatchPickleIOManager(dg.IOManager):
    """`storage/<asset>/<batch>` under the instance's storage folder, the
    layout of Dagster's filesystem IO manager. A plain IO manager rather than
    `UPathIOManager`: that one writes two or three debug lines to the event
    log per input and output, about fifty events a run that each cost a
    write to the instance's storage."""

    def __init__(self, base_path: Path, consumers: Counter) -> None:
        self._base_path = base_path
        self._consumers = consumers

    def _path(self, context: dg.InputContext | dg.OutputContext) -> Path:
        path = self._base_path.joinpath(*context.asset_key.path)
        return path / context.asset_partition_key if context.has_asset_partitions else path

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        path = self._path(context)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: a worker killed mid-write leaves no
        # truncated pickle for a re-execution to trip over.
        partial = path.with_name(f".{path.name}.{context.run_id}.partial")
        with partial.open("wb") as file:
            pickle.dump(obj, file, PICKLE_PROTOCOL)
        os.replace(partial, path)
        _MEMO.keep(context.run_id, str(path), obj, self._consumers[context.asset_key])
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> object:
        path = self._path(context)
        upstream = context.upstream_output
        if upstream is not None:
            found, obj = _MEMO.take(upstream.run_id, str(path))
            if found:
                return obj
        with path.open("rb") as file:
            return pickle.load(file)


def batch_io_manager(assets_defs: Iterable[dg.AssetsDefinition]) -> dg.IOManagerDefinition:
    """The IO manager for these assets, knowing how many of them read each one."""
    consumers = Counter(key for a in assets_defs for key in a.keys_by_input_name.values())

    @dg.io_manager(description="Pickles under the instance's storage folder; same-run steps share the object.")
    def io_manager(init_context: dg.InitResourceContext) -> BatchPickleIOManager:
        return BatchPickleIOManager(Path(init_context.instance.storage_directory()), consumers)

    return io_manager
