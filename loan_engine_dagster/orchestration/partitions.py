from collections.abc import Iterable, Sequence

import dagster as dg
import sqlalchemy.exc

# One partition per batch; the key is the batch key (2026-02-19, or
# 2026-02-19-offcycle). Partitions are added by the inbox sensor and the CLI,
# only for batches whose files are there: an expected batch that is missing
# is alerted, never registered.
batches = dg.DynamicPartitionsDefinition(name="batches")


def registration(existing: Sequence[str], new: Iterable[str]) -> list[str]:
    """The keys to add, in date order, after those already registered.

    Batches list in the order they were first registered: a late or off-cycle
    delivery of an earlier date comes after the later ones. Keeping the list
    in date order meant removing the later keys and adding them again, and a
    run of one of them that looked its partition up in that moment failed
    (`Partition range ... is not valid`, as a bug)."""
    known = set(existing)
    return sorted({k for k in new if k not in known})


def register_batches(instance: dg.DagsterInstance, keys: Iterable[str], attempts: int = 5) -> None:
    """Register batches (the CLI's path; the sensor sends the same change as
    partition requests). Two terminals registering the same batch at once
    race here: the one that finds its key just added looks again."""
    keys = list(keys)
    for attempt in range(attempts):
        add = registration(instance.get_dynamic_partitions(batches.name), keys)
        try:
            if add:
                instance.add_dynamic_partitions(batches.name, add)
            return
        except sqlalchemy.exc.IntegrityError:
            if attempt == attempts - 1:
                raise


def registration_requests(instance: dg.DagsterInstance, keys: Iterable[str]) -> list:
    add = registration(instance.get_dynamic_partitions(batches.name), keys)
    return [batches.build_add_request(add)] if add else []
