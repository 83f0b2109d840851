"""Deciding, tick by tick, which batches in the inbox are ready to run.

A file counts only once it kept the same size and change time across two
looks (a seller's upload may still be copying). The change time (ctime), not
the modification time: a copy that keeps the old modification time (`cp -p`,
`rsync -t`, an SFTP client preserving times) over a file of the same size
was no change at all, and a corrected tape was never run (hostile pass). A ready batch is
identified by its key plus a fingerprint of its files' contents, so identical
files never run twice while a corrected re-delivery runs again."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .inbox import REFERENCE_FILES, BatchFiles, InboxUnreadable, input_stat, sha256_file

FINGERPRINT_RUN_KEY_CHARS = 16
ALREADY_RUN_SHOWN = 3


@dataclass
class WatchState:
    """What the previous look saw; kept as the sensor cursor."""

    observed: dict[str, list] = field(default_factory=dict)  # name -> [size, ctime_ns]
    hashes: dict[str, list] = field(default_factory=dict)  # name -> [size, ctime_ns, sha256]
    requested: dict[str, str] = field(default_factory=dict)  # batch -> fingerprint (run key part) last requested
    reference: str | None = None  # fingerprint (short) of the reference files

    @classmethod
    def from_cursor(cls, cursor: str | None) -> "WatchState":
        if not cursor:
            return cls()
        data = json.loads(cursor)
        if "files" not in data:  # the earlier, longer cursor
            return cls(**{k: data.get(k, v) for k, v in cls().__dict__.items()})
        files = data["files"]
        return cls(
            observed={name: entry[:2] for name, entry in files.items()},
            hashes={name: entry for name, entry in files.items() if len(entry) == 3},
            requested=dict(data.get("runs", {})),
            reference=data.get("ref"),
        )

    def to_cursor(self) -> str:
        """One short line (the UI shows the cursor on the sensor's page): each
        file once, with its digest when it was hashed at that size and change time."""
        files = {name: list(seen) for name, seen in self.observed.items()}
        for name, (size, changed, digest) in self.hashes.items():
            if files.get(name, [size, changed]) == [size, changed]:
                files[name] = [size, changed, digest]
        document = {"files": files, "runs": {k: short(v) for k, v in self.requested.items()}, "ref": short(self.reference)}
        return json.dumps(document, sort_keys=True, separators=(",", ":"))


def short(fingerprint: str | None) -> str | None:
    """The part of a fingerprint that names a delivery (run keys, tags, the cursor)."""
    return fingerprint[:FINGERPRINT_RUN_KEY_CHARS] if fingerprint else fingerprint


@dataclass
class ReadyBatch:
    key: str
    fingerprint: str
    files: BatchFiles
    attempt: int = 1  # the runs of the same files so far, this one included

    @property
    def run_key(self) -> str:
        return f"{self.key}:{short(self.fingerprint)}" + (f":{self.attempt}" if self.attempt > 1 else "")


@dataclass
class WatchResult:
    ready: list[ReadyBatch]
    pending: dict[str, str]  # batch -> what it waits for
    already_run: list[str]
    reference_changed: list[str]
    state: WatchState
    # Files this process may not read (InboxUnreadable): the tick goes on
    # with every other batch instead of failing for all of them.
    unreadable: list[str] = field(default_factory=list)
    # Whole deliveries a run was already asked for (the sensor looks at how that went).
    asked_before: list[ReadyBatch] = field(default_factory=list)

    def skip_message(self) -> str:
        lines = [f"{key}: {why}" for key, why in self.pending.items()] + self.unreadable
        if self.already_run:
            # The tick list shows this line: name the newest batches, count the rest.
            done = sorted(self.already_run)
            shown = ", ".join(done[-ALREADY_RUN_SHOWN:]) + (f" and {len(done) - ALREADY_RUN_SHOWN} earlier" if len(done) > ALREADY_RUN_SHOWN else "")
            lines.append(f"already run with these exact files: {shown}")
        if self.reference_changed:
            lines.append(
                "reference files replaced (" + ", ".join(self.reference_changed)
                + "): nothing re-runs on its own; re-run a batch with `loan-engine run BATCH_KEY`"
            )
        return "; ".join(lines) if lines else "no batch in the inbox"


def _stat(path: Path) -> list:
    info = input_stat(path)
    return [info.st_size, info.st_ctime_ns]


def _sha(path: Path, previous: WatchState, state: WatchState) -> str:
    size, changed = _stat(path)
    cached = previous.hashes.get(path.name)
    digest = cached[2] if cached and cached[:2] == [size, changed] else sha256_file(path)
    state.hashes[path.name] = [size, changed, digest]
    return digest


def fingerprint(digests: dict[str, str]) -> str:
    """One digest for a batch's own files (role -> SHA-256), reference files excluded."""
    return hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest()


def own_files(batch: BatchFiles) -> dict[str, Path]:
    """The files that make a delivery: exhibits, tape, servicing files; not the buyer's reference files."""
    return {role: path for role, path in batch.files.items() if role not in REFERENCE_FILES}


def batch_fingerprint(batch: BatchFiles) -> str:
    """The fingerprint the inbox sensor computes, for runs started another way."""
    return fingerprint({role: sha256_file(path) for role, path in own_files(batch).items()})


def evaluate(batches: dict[str, BatchFiles], reference: dict[str, Path], previous: WatchState) -> WatchResult:
    state = WatchState(requested=dict(previous.requested), reference=previous.reference)
    watched = {p.name: p for b in batches.values() for p in b.files.values()}
    watched.update({p.name: p for p in reference.values()})
    denied: dict[str, InboxUnreadable] = {}  # files this process may not look at, told by name below
    for name, path in watched.items():
        try:
            state.observed[name] = _stat(path)
        except FileNotFoundError:
            continue
        except InboxUnreadable as exc:
            denied[name] = exc
    stable = {name for name, seen in state.observed.items() if previous.observed.get(name) == seen}

    reference_changed: list[str] = []
    unreadable: list[str] = []
    ref_digests = None
    ref_problem = next((denied[p.name] for p in reference.values() if p.name in denied), None)
    if ref_problem is None and set(reference) == set(REFERENCE_FILES) and all(p.name in stable for p in reference.values()):
        try:
            ref_digests = {role: _sha(path, previous, state) for role, path in reference.items()}
        except InboxUnreadable as exc:
            ref_problem = exc
    if ref_problem is not None:  # told on every tick until it is readable
        unreadable.append(f"reference files: {ref_problem}")
    if ref_digests is not None:
        ref_fp = fingerprint(ref_digests)
        if previous.reference and short(previous.reference) != short(ref_fp):
            reference_changed = [
                p.name for role, p in reference.items() if previous.hashes.get(p.name, [None] * 3)[2] != ref_digests[role]
            ]
        state.reference = ref_fp
    else:
        state.hashes.update({p.name: previous.hashes[p.name] for p in reference.values() if p.name in previous.hashes})

    ready, pending, already, asked = [], {}, [], []
    for key, batch in batches.items():
        if batch.missing:
            pending[key] = "waiting for " + ", ".join(batch.missing)
            continue
        blocked = next((denied[p.name] for p in own_files(batch).values() if p.name in denied), None)
        if blocked is not None:  # not started: its run could not read the file either
            unreadable.append(f"{key}: {blocked}")
            continue
        if ref_problem is not None:  # a run would fail at once, and not start again by itself once fixed
            pending[key] = "waiting for reference files this process can read"
            continue
        copying = sorted(p.name for p in batch.files.values() if p.name not in stable)
        if copying:
            pending[key] = "waiting for files to finish copying: " + ", ".join(copying)
            continue
        try:
            fp = fingerprint({role: _sha(path, previous, state) for role, path in own_files(batch).items()})
        except InboxUnreadable as exc:  # not started: its run could not read the file either
            unreadable.append(f"{key}: {exc}")
            continue
        if short(state.requested.get(key)) == short(fp):
            already.append(key)
            asked.append(ReadyBatch(key=key, fingerprint=fp, files=batch))
            continue
        state.requested[key] = fp
        ready.append(ReadyBatch(key=key, fingerprint=fp, files=batch))
    return WatchResult(ready=ready, pending=pending, already_run=already, reference_changed=reference_changed,
                       state=state, unreadable=unreadable, asked_before=asked)
