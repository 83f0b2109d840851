"""Finding batches in the inbox (business_rules.md section 2)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

REFERENCE_FILES = {
    "master": "MASTER_SHEET.xlsx",
    "notes_master": "MASTER_SHEET - Notes.xlsx",
    "existing": "current_assets.csv",
    "grids": "Underwriting_Grids_COMAP.xlsx",
}
PLATFORMS = ("sfy", "prime")
_EXHIBIT = re.compile(
    r"^(?P<platform>SFY|PRIME)_(?P<m>\d{2})-(?P<d>\d{2})-(?P<y>\d{4})_ExhibitAtoFormofSaleNotice - Pre-Funding"
    # Spacing varies: `-  Off-cycle`, `Off Cycle`, a space before `.xlsx`.
    r"(?P<off> ?- ?off[- ]?cycle)? ?\.xlsx$",
    re.IGNORECASE,
)
_TAPE = re.compile(r"^Tape20Loans_(?P<m>\d{2})-(?P<d>\d{2})-(?P<y>\d{4})\.csv$", re.IGNORECASE)
_SERVICING = re.compile(r"^(?P<kind>FX[34])_(?P<y>\d{4})_(?P<m>\d{3})_(?P<d>\d{2})\.xlsx$", re.IGNORECASE)
OFFCYCLE = "-offcycle"


class InboxUnreadable(Exception):
    """The inbox folder, or a file in it, that this process cannot reach: a
    wrong path, a mount that is not there, permissions. The deployment's
    problem, never the seller's data: kind `infra`."""

    kind = "infra"


class InboxChanged(Exception):
    """A file the run read was replaced or rewritten before the run had
    recorded what it read (a new delivery landing mid-run). Nothing of the
    run is saved; the files as they are now need a run of their own: kind
    `infra`, like an unreadable inbox, not the seller's data."""

    kind = "infra"


def require_inbox(path: str | Path) -> Path:
    """The inbox folder, or `InboxUnreadable` naming it in full (a run's
    working folder is not the reader's). Read as an empty folder, a wrong or
    unmounted path reported all seven files of the batch missing, and
    on-call asked the seller for files that were there."""
    path = Path(path)
    try:
        if not path.exists():
            problem = "does not exist"
        elif not path.is_dir():
            problem = "is not a folder"
        else:
            return path
    except OSError as exc:
        raise _folder_unreadable(path, exc) from None
    raise InboxUnreadable(
        f"inbox folder {path.absolute()} {problem}; point --inbox, LOAN_ENGINE_INBOX or the inbox resource's path at the folder the files land in"
    )


# A share whose server is gone answers neither "there" nor "not there":
# ENOTCONN (sshfs, rclone), ESTALE, EIO or EHOSTDOWN (NFS, CIFS).
_SHARE_HINT = "if it is a network share, check that it is mounted and that its server answers"


def _cannot_read(named: str, where: str, exc: OSError, fix: str) -> InboxUnreadable:
    """`named` cannot be read: denied (and `fix`), or its share is gone."""
    if isinstance(exc, PermissionError):
        return InboxUnreadable(f"{named} cannot be read: permission denied to this process's account{where}; {fix}")
    return InboxUnreadable(f"{named} cannot be read ({exc.strerror or exc}){where}; {_SHARE_HINT}")


def _folder_unreadable(folder: Path, exc: OSError) -> InboxUnreadable:
    return _cannot_read(f"inbox folder {folder.absolute()}", "", exc,
                        "give it read and search access to the folder (and search access to the folders above it)")


def _file_unreadable(path: Path, exc: OSError) -> InboxUnreadable:
    return _cannot_read(f"file '{path.name}'", f" ({path})", exc,
                        "give it read access (and search access to the folders it is in) and re-run")


def _listing(root: Path) -> list[Path] | None:
    """The inbox folder's entries; None when there is no such folder (the
    sensors stay quiet about a folder not mounted yet)."""
    try:
        return list(root.iterdir()) if root.is_dir() else None
    except OSError as exc:
        raise _folder_unreadable(root, exc) from None


def empty_inbox_note(inbox: str | Path) -> str:
    """What to add when a batch is reported incomplete from a folder that holds
    nothing at all: most often a share not mounted (its mount point is an
    empty folder), not a seller who sent nothing."""
    root = resolve_inbox(inbox)
    try:
        empty = not any(p for p in (_listing(root) or []) if not p.name.startswith("."))
    except InboxUnreadable:
        return ""
    if not empty:
        return ""
    if root != Path(inbox):
        return f"; {root} is empty, and an inbox holding a files_required folder is read from there: put the files in it, or remove it"
    return "; the inbox folder is empty: if the files land on a share, check that it is mounted"


def _is_file(path: Path) -> bool:
    """Whether an inbox entry is a file. One this account may not even look
    at (a link into a folder it may not enter) counts as one: ignored when
    its name is no input's, and named (InboxUnreadable) by whatever looks at
    it next when it is (input_stat, open_input)."""
    try:
        return is_input_file(path)
    except InboxUnreadable:
        return True


def input_stat(path: Path) -> os.stat_result:
    """An input file's status; `InboxUnreadable` naming it when this process
    may not look at it (FileNotFoundError when it is gone)."""
    try:
        return path.stat()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _file_unreadable(path, exc) from None


def is_input_file(path: Path) -> bool:
    """Whether an input file is there; `InboxUnreadable` when this process may
    not even look (a bare PermissionError here made a run blame the seller)."""
    try:
        return stat.S_ISREG(input_stat(path).st_mode)
    except FileNotFoundError:
        return False


def resolve_inbox(path: str | Path) -> Path:
    """An inbox holding `files_required/` keeps its files there."""
    path = Path(path)
    nested = path / "files_required"
    try:
        return nested if nested.is_dir() else path
    except OSError:  # `path` itself cannot be entered or reached: listing it says so
        return path


def _date(match: re.Match) -> dt.date | None:
    try:
        return dt.date(int(match["y"]), int(match["m"]), int(match["d"]))
    except ValueError:
        return None


def batch_key(notice_date: dt.date, offcycle: bool) -> str:
    return notice_date.isoformat() + (OFFCYCLE if offcycle else "")


class BatchKeyError(ValueError):
    """A batch key that names no possible batch (a typo, not missing files)."""

    kind = "data"


_BATCH_KEY = re.compile(r"(?P<date>\d{4}-\d{2}-\d{2})(?P<off>" + OFFCYCLE + ")?")


def parse_batch_key(key: str) -> tuple[dt.date, bool]:
    """'2026-02-19' or '2026-02-19-offcycle' -> (date, offcycle); BatchKeyError
    otherwise. The one check of batch keys, for the CLI, the sensors and the
    assets alike: Python's own date parser also takes '20260219' and '2026-W08-4'."""
    match = _BATCH_KEY.fullmatch(key or "")
    try:
        if match is None:
            raise ValueError
        return dt.date.fromisoformat(match["date"]), bool(match["off"])
    except ValueError:
        raise BatchKeyError(
            f"batch key {key!r} is not YYYY-MM-DD or YYYY-MM-DD-offcycle with a real date (e.g. 2026-02-19)"
        ) from None


def window_start(notice_date: dt.date, lookback_days: int) -> dt.date:
    """The first day a batch's tape may be dated. A file named for the first
    days of year 1 made the subtraction overflow, and every tick of both
    inbox sensors failed with a bare OverflowError (hostile pass)."""
    return max(notice_date, dt.date.min + dt.timedelta(days=lookback_days)) - dt.timedelta(days=lookback_days)


@dataclass
class BatchFiles:
    """What the inbox holds for one batch, and what it still waits for."""

    key: str
    notice_date: dt.date
    exhibits: dict[str, Path] = field(default_factory=dict)
    tape: Path | None = None
    servicing: list[Path] = field(default_factory=list)
    reference: dict[str, Path] = field(default_factory=dict)
    lookback_days: int = 4
    # Inputs that more than one file matches (names differing in case or
    # spacing): nobody can tell which one the seller meant.
    ambiguous: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        waiting = [f"{p.upper()} exhibit" for p in PLATFORMS if p not in self.exhibits]
        if self.tape is None:
            start = window_start(self.notice_date, self.lookback_days)
            waiting.append(f"a tape dated {start.isoformat()}..{self.notice_date.isoformat()}")
        waiting += [name for role, name in REFERENCE_FILES.items() if role not in self.reference]
        waiting += [
            f"a single {what} ({len(paths)} files match: {', '.join(repr(p.name) for p in paths)}; keep one)"
            for what, paths in self.ambiguous.items()
        ]
        return waiting

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def files(self) -> dict[str, Path]:
        """Every input the batch reads, by role."""
        roles = dict(self.reference)
        roles.update({f"{p}_exhibit": path for p, path in self.exhibits.items()})
        if self.tape is not None:
            roles["tape"] = self.tape
        roles.update({f"servicing_{i}": path for i, path in enumerate(self.servicing)})
        return roles


def reference_files(inbox: str | Path) -> dict[str, Path]:
    """The buyer's reference files present in the inbox, by role."""
    root = resolve_inbox(inbox)
    return {role: root / name for role, name in REFERENCE_FILES.items() if _is_file(root / name)}


def scan_inbox(inbox: str | Path, lookback_days: int) -> dict[str, BatchFiles]:
    """Every batch with at least one exhibit in the inbox, keyed by batch key.
    Files that match no pattern are ignored."""
    root = resolve_inbox(inbox)
    lookback = lookback_days
    entries = _listing(root)
    if entries is None:
        return {}
    names = sorted(p for p in entries if not p.name.startswith((".", "~$")) and _is_file(p))
    reference = reference_files(root)
    batches: dict[str, BatchFiles] = {}
    exhibits: dict[tuple[str, str], list[Path]] = {}
    tapes: dict[dt.date, list[Path]] = {}
    servicing: list[tuple[dt.date, Path]] = []
    for path in names:
        name = re.sub(r"\s+", " ", path.name)
        if (m := _EXHIBIT.match(name)) and (day := _date(m)):
            key = batch_key(day, bool(m["off"]))
            batch = batches.setdefault(key, BatchFiles(key=key, notice_date=day, reference=reference, lookback_days=lookback))
            batch.exhibits[m["platform"].lower()] = path
            exhibits.setdefault((key, m["platform"].lower()), []).append(path)
        elif (m := _TAPE.match(name)) and (day := _date(m)):
            tapes.setdefault(day, []).append(path)
        elif (m := _SERVICING.match(name)) and (day := _date(m)):
            servicing.append((day, path))
    for (key, platform), paths in exhibits.items():
        if len(paths) > 1:
            batches[key].ambiguous[f"{platform.upper()} exhibit"] = paths
    for batch in batches.values():
        window = [d for d in tapes if window_start(batch.notice_date, lookback) <= d <= batch.notice_date]
        if window:
            batch.tape = tapes[max(window)][-1]
            if len(tapes[max(window)]) > 1:
                batch.ambiguous[f"tape dated {max(window).isoformat()}"] = tapes[max(window)]
        batch.servicing = [
            p for d, p in servicing if window_start(batch.notice_date, lookback) <= d <= batch.notice_date
        ]
    return dict(sorted(batches.items()))


def find_batch(inbox: str | Path, key: str, lookback_days: int) -> BatchFiles:
    """The batch's files; a batch with no exhibit at all still gets an entry
    so that the caller can say what is missing."""
    notice_date, _ = parse_batch_key(key)
    found = scan_inbox(inbox, lookback_days).get(key)
    if found is None:
        found = BatchFiles(key=key, notice_date=notice_date, reference=reference_files(inbox), lookback_days=lookback_days)
    return found


def open_input(path: Path) -> BinaryIO:
    """An input file opened for reading, or `InboxUnreadable` naming it when
    this process may not read it: the service account's access, not the
    seller's file, is what on-call has to fix."""
    try:
        return open(path, "rb")
    except (FileNotFoundError, IsADirectoryError):
        raise
    except OSError as exc:
        raise _file_unreadable(path, exc) from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open_input(path) as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_file(role: str, path: Path) -> dict:
    """The audit-trail entry of one input file."""
    return {"role": role, "name": path.name, "size": input_stat(path).st_size, "sha256": sha256_file(path)}
