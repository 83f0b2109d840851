"""From inbox files to the typed inputs of the rules."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pandas as pd

from loan_engine_dagster.rules import parsing
from loan_engine_dagster.rules.config import Rules
from loan_engine_dagster.rules.errors import StructuralError
from loan_engine_dagster.rules.pipeline import BatchInputs, ReferenceData

from .files import CellNotes, file_identity, open_workbook, read_csv, read_sheet
from .inbox import PLATFORMS, REFERENCE_FILES, BatchFiles, InboxChanged, describe_file


def load_reference(reference: dict[str, Path], rules: Rules) -> ReferenceData:
    """Master sheets, existing assets and grids. Any problem is structural."""
    missing = [name for role, name in REFERENCE_FILES.items() if role not in reference]
    if missing:
        raise StructuralError("reference file missing from the inbox", file=", ".join(missing))
    rows = rules.inbox.header_search_rows
    existing_path = reference["existing"]
    seen = _identities(reference)
    # The existing assets (500k rows) are read in the background, mostly by
    # pyarrow without the GIL, while the small master and grid sheets are
    # parsed. Problems are still raised in the order the files were read
    # before (masters, assets, grids): a grid problem waits for the assets.
    with ThreadPoolExecutor(max_workers=1) as pool:
        existing_frame = pool.submit(read_csv, existing_path)
        masters = {}
        for role in ("master", "notes_master"):
            path = reference[role]
            sheet, raw = read_sheet(open_workbook(path), path)
            masters[role] = parsing.parse_master(raw, file=path.name, sheet=sheet, max_rows=rows, aliases=rules.column_aliases("master"))
        try:
            grids, comap = _grid_tables(reference["grids"], rules)
        except Exception as exc:  # raised below, once the assets file has had its say
            grids_problem = exc
        else:
            grids_problem = None
        existing = parsing.parse_existing(existing_frame.result(), file=existing_path.name, aliases=rules.column_aliases("existing"))
    if grids_problem is not None:
        raise grids_problem
    return ReferenceData(
        master=masters["master"],
        notes_master=masters["notes_master"],
        existing=existing,
        grids=grids,
        comap=comap,
        files=_described(dict(sorted(reference.items())), seen),
    )


def _identities(files: dict[str, Path]) -> dict[str, tuple[int, ...] | None]:
    return {role: file_identity(path) for role, path in files.items()}


def _described(files: dict[str, Path], seen: dict[str, tuple[int, ...] | None]) -> list[dict]:
    """The audit-trail entries of files read since `seen` was taken, or
    InboxChanged when one is no longer the file that was read: hashed again
    by its name, a file re-delivered mid-run was recorded with the new
    delivery's hash and size beside the loans of the old one."""
    described = [describe_file(role, path) for role, path in files.items()]
    changed = [path.name for role, path in files.items() if file_identity(path) != seen[role]]
    if changed:
        raise InboxChanged(
            f"{', '.join(changed)} changed while this run read {'it' if len(changed) == 1 else 'them'} (a new "
            "delivery?): nothing of this run is saved; run the batch again on the files as they are now"
        )
    return described


def _grid_tables(grids_path: Path, rules: Rules) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The underwriting grids and the CoMAP tables, all from one workbook."""
    rows = rules.inbox.header_search_rows
    workbook = open_workbook(grids_path)
    underwriting = []
    for name in rules.sheets.underwriting.model_dump().values():
        sheet, raw = read_sheet(workbook, grids_path, name)
        grid = parsing.parse_underwriting_grid(raw, file=grids_path.name, sheet=sheet, max_rows=rows, aliases=rules.column_aliases("grid"))
        underwriting.append(grid.assign(sheet=name))
    comap = []
    for name in rules.comap_sheets():
        sheet, raw = read_sheet(workbook, grids_path, name)
        table = parsing.parse_comap_sheet(raw, file=grids_path.name, sheet=sheet, max_rows=rows, aliases=rules.column_aliases("comap"))
        comap.append(table.assign(sheet=name))
    return pd.concat(underwriting, ignore_index=True), pd.concat(comap, ignore_index=True)


def load_batch_inputs(batch: BatchFiles, rules: Rules) -> BatchInputs:
    """Both exhibits and the tape of one batch."""
    missing = [m for m in batch.missing if m not in REFERENCE_FILES.values()]
    if missing:
        raise StructuralError(f"batch {batch.key} is incomplete: missing {', '.join(missing)}")
    own = {role: path for role, path in batch.files.items() if role not in REFERENCE_FILES}
    seen = _identities(own)
    # The files are read side by side: calamine and pyarrow's CSV reader do
    # most of their work without the GIL, so on two cores the exhibits and the
    # tape take little more than the largest alone. Each file is parsed as
    # soon as it is read (the tape, read ahead first, while the exhibits are
    # still being read), but the error raised for a bad batch is the one
    # raised when they were parsed one after the other: the first file in
    # PLATFORMS order, then the tape.
    with ThreadPoolExecutor(max_workers=len(PLATFORMS) + 1) as pool:
        reads = {pool.submit(_first_sheet, batch.exhibits[platform]): platform for platform in PLATFORMS}
        reads[pool.submit(read_csv, batch.tape)] = "tape"
        parsed: dict[str, object] = {}
        problems: dict[str, Exception] = {}
        for read in as_completed(reads):
            name = reads[read]
            try:
                parsed[name] = _parsed(name, read.result(), batch, rules)
            except Exception as exc:
                problems[name] = exc
    for name in (*PLATFORMS, "tape"):
        if name in problems:
            raise problems[name]
    files = _described(own, seen)
    return BatchInputs(
        batch_key=batch.key,
        notice_date=batch.notice_date,
        exhibits=pd.concat([parsed[platform] for platform in PLATFORMS], ignore_index=True),
        tape=parsed["tape"],
        files=files,
    )


def _parsed(name: str, read, batch: BatchFiles, rules: Rules) -> pd.DataFrame:
    """One batch file's parse: an exhibit (its platform's name) or the tape."""
    if name == "tape":
        return parsing.parse_tape(read, file=batch.tape.name, aliases=rules.column_aliases("tape"))
    sheet, raw = read
    path = batch.exhibits[name]
    return parsing.parse_exhibit(raw, platform=name, file=path.name, sheet=sheet, rules=rules,
                                 cell_notes=CellNotes(path, sheet))


def _first_sheet(path: Path) -> tuple[str, pd.DataFrame]:
    return read_sheet(open_workbook(path), path)
