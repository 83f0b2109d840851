from collections.abc import Iterable, Sequence

import dagster as dg
import sqlalchemy.exc

# One partition per batch; the key is the batch key (2026-02-19, or
# 2026-02-19-offcycle). Partitions are added by the inbox sensor and the CLI,
# only for batches whose files are there: an expected batch that is missing
# is alerted, never registered.
batches = dg.DynamicPartitionsDefinition(name="batches")


def registration(existing: Sequence[str], new: Iterable[str]) -> tuple[list[str], list[str]]:
    """(keys to delete, keys to add, in order) so that the batches list in date
    order. Dagster lists dynamic partitions in the order they were added, so a
    batch that arrives after a later one (a late re-delivery, an off-cycle
    batch) is added together with the later keys, which are first removed and
    then re-added after it. Removing a key drops no history: materializations
    and check results stay attached to the key."""
    known = set(existing)
    fresh = sorted({k for k in new if k not in known})
    if not fresh:
        return [], []
    later = sorted(k for k in existing if k > fresh[0])
    return later, sorted(fresh + later)


def register_batches(instance: dg.DagsterInstance, keys: Iterable[str], attempts: int = 5) -> None:
    """Register batches in date order (the CLI's path; the sensor sends the same
    change as partition requests). Two terminals registering the same batch
    at once race here: the one that finds its key just added looks again."""
    keys = list(keys)
    for attempt in range(attempts):
        remove, add = registration(instance.get_dynamic_partitions(batches.name), keys)
        try:
            for key in remove:
                instance.delete_dynamic_partition(batches.name, key)
            if add:
                instance.add_dynamic_partitions(batches.name, add)
            return
        except sqlalchemy.exc.IntegrityError:
            if attempt == attempts - 1:
                raise


def registration_requests(instance: dg.DagsterInstance, keys: Iterable[str]) -> list:
    remove, add = registration(instance.get_dynamic_partitions(batches.name), keys)
    requests = [batches.build_delete_request(remove)] if remove else []
    return requests + ([batches.build_add_request(add)] if add else [])
