"""Writing a batch's reports: whole or not at all."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import rustpy_xlsxwriter
import xlsxwriter
import xlsxwriter.exceptions

from .preflight import unreachable_output

# Text is written as text: a seller-typed "=HYPERLINK(...)" must never run.
# Only for the rare sheet the columnar writer cannot take (see _columnar).
_WORKBOOK_OPTIONS = {
    "constant_memory": True,
    "strings_to_formulas": False,
    "strings_to_numbers": False,
    "strings_to_urls": False,
    "nan_inf_to_errors": True,
}


def write_workbook(
    frame: pd.DataFrame, path: Path, sheet: str = "loans", charts: dict[str, pd.DataFrame] | None = None
) -> None:
    """One sheet, header row first (bold, with a filter); an empty frame still
    gets its header. Text is always stored as text; a column holding text that
    starts like a formula has Excel's quote prefix on its cells, so that even a
    cell edited later in Excel stays text. `charts`: more sheets, each its
    table with a column chart beside it (small: written by XlsxWriter)."""
    # Zipped in memory, then written to the file: on a full disk the writers'
    # own files were left to complain on the terminal (the Rust writer's
    # `ZipWriter::drop: failed to finalize archive`, glued to the line that
    # says what failed; XlsxWriter's zip file, closed by the garbage
    # collector later with a traceback).
    zipped = io.BytesIO()
    prepared = None if charts else _columnar(frame)
    with naming_the_file(path):
        if prepared is None:
            _write_cell_by_cell(frame, zipped, sheet, charts or {})
        else:
            body, text_columns, date_columns = prepared
            quoted = rustpy_xlsxwriter.Format().set_quote_prefix()
            dates = rustpy_xlsxwriter.Format().set_num_format(DATE_FORMAT)
            formats = {c: quoted for c in text_columns} | {c: dates for c in date_columns}
            rustpy_xlsxwriter.write_worksheet(
                body, zipped, sheet_name=sheet, bold_headers=True, autofilter=True, column_formats=formats,
            )
        path.write_bytes(zipped.getbuffer())


@contextlib.contextmanager
def naming_the_file(path: Path):
    """The writers' errors ("Failed to save workbook: No such file or
    directory", "[Errno 28] No space left on device") name no file; on-call
    needs to know which one. Raised in their place (`from None`), since a
    failed run is told by its innermost error: chained, the writer's own
    message was still the one shown."""
    try:
        yield
    except (OSError, RuntimeError, xlsxwriter.exceptions.FileCreateError) as exc:
        raise type(exc)(f"writing {path}: {exc}") from None


DATE_FORMAT = "yyyy-mm-dd"
# The most characters an Excel cell holds (UTF-16 units: an emoji is two).
# Longer text is cut there, as XlsxWriter (the cell-by-cell writer) cuts
# it; the Rust writer refused the whole workbook instead, failing the
# batch's exports over one cell. The full text stays in loan_decisions.csv
# and the results database.
EXCEL_CELL_CHARS = 32_767
# Text Excel would read as a formula (or a formula's sign) if typed into a cell.
_FORMULA_STARTS = ("=", "+", "-", "@")
_FORMULA_START = "^(?:" + "|".join(re.escape(start) for start in _FORMULA_STARTS) + ")"  # for Arrow's regex kernel
_EXCEL_EPOCH = pd.Timestamp("1899-12-30")


def _excel_cut(text: str) -> str:
    """Text cut to what an Excel cell holds, counted as Excel and XlsxWriter
    count (UTF-16 units); a character cut in half is dropped."""
    units = text.encode("utf-16-le")
    if len(units) <= 2 * EXCEL_CELL_CHARS:
        return text
    return units[: 2 * EXCEL_CELL_CHARS].decode("utf-16-le", errors="ignore")


def _excel_serial(values: pd.Series) -> pd.Series:
    """Dates as Excel stores them (days since 1899-12-30); missing stays missing.
    The Rust writer refuses a missing datetime, so dates go in as numbers
    under a date format, which is what an .xlsx date is anyway."""
    return (pd.to_datetime(values) - _EXCEL_EPOCH) / pd.Timedelta(days=1)


def _kind(column: pd.Series) -> str | None:
    """'text', 'number', 'bool', 'date', or None for a column that mixes kinds."""
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "bool" if not column.isna().any() else None
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "date" if not isinstance(dtype, pd.DatetimeTZDtype) else None
    if pd.api.types.is_numeric_dtype(dtype):
        return "number"
    if pd.api.types.is_string_dtype(dtype) and dtype != object:
        return "text"
    if dtype != object:  # categories, durations, periods: the cell-by-cell writer
        return None
    # The usual object column holds text only: pandas' C type scan says so
    # without a Python call per cell (str subclasses pass too, written as text
    # either way); anything else is looked at value by value below.
    if pd.api.types.infer_dtype(column, skipna=True) == "string":
        return "text"
    values = column.dropna()
    if values.empty:
        return "text"
    kinds = set(values.map(type))
    if kinds <= {str}:
        return "text"
    if kinds <= {dt.date, dt.datetime, pd.Timestamp}:
        return "date"
    return None


def _columnar(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]] | None:
    """The frame ready for the columnar writer, with its text and date columns;
    None when a column mixes kinds of value (a seller's free-form column) or
    holds an infinity, which the cell-by-cell writer handles value by value."""
    if frame.columns.has_duplicates:
        return None
    body = frame.reset_index(drop=True)
    text, dates = [], []
    for name in body.columns:
        kind = _kind(body[name])
        if kind is None:
            return None
        if kind == "number" and np.isinf(body[name].to_numpy(dtype=float, na_value=np.nan)).any():
            return None
        if kind == "date":
            body[name] = _excel_serial(body[name])
            dates.append(name)
        elif kind == "text":
            # Asked of the column's Arrow array, one kernel each: through the
            # string accessor, these two questions cost 0.4 ms a column, 0.2 s
            # of every run's reports (about 400 columns, most of them short).
            cells = body[name].astype("string")
            values = pa.array(cells)
            # Only text over half the limit can pass it: Excel counts UTF-16 units, two for an emoji.
            if (pc.max(pc.utf8_length(values)).as_py() or 0) > EXCEL_CELL_CHARS // 2:
                long = (cells.str.len() > EXCEL_CELL_CHARS // 2).fillna(False).astype(bool)
                body[name] = cells = cells.where(~long, cells[long].map(_excel_cut))
                values = pa.array(cells)
            if pc.any(pc.match_substring_regex(values, _FORMULA_START)).as_py():
                text.append(name)  # the prefix costs a third of the writing time: only where a cell needs it
    body.columns = [str(c) for c in body.columns]
    return body, [str(c) for c in text], [str(c) for c in dates]


def _write_cell_by_cell(frame: pd.DataFrame, zipped: io.BytesIO, sheet: str, charts: dict[str, pd.DataFrame]) -> None:
    workbook = xlsxwriter.Workbook(zipped, _WORKBOOK_OPTIONS)
    try:
        _write_sheet(workbook, frame, sheet)
        for name, table in charts.items():
            _write_sheet(workbook, table, name)
            _limit_chart(workbook, workbook.get_worksheet_by_name(name), name, table)
    finally:
        workbook.close()


# The Rust writers build and compress a file with the GIL released (about
# two thirds of a workbook's time), so two files written at once overlap on
# two cores; more threads would only queue for the GIL.
WRITER_THREADS = 2


def write_concurrently(writes: list[tuple[int, Callable[[], None]]]) -> None:
    """Run independent file writers, each given with its size (cells), on
    WRITER_THREADS threads, the biggest first so that no big file is left
    alone at the end. Fails as running them one after another in the listed
    order would: with the error of the first listed writer that failed. It
    returns or raises only once no writer runs any more, so a caller that
    removes the folder on failure never races a writer still in it."""
    biggest_first = sorted(range(len(writes)), key=lambda i: -writes[i][0])
    with ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="report-writer") as pool:
        futures = {i: pool.submit(writes[i][1]) for i in biggest_first}
        try:
            for i in range(len(writes)):
                futures[i].result()
        except BaseException:
            for future in futures.values():
                future.cancel()  # not started yet; the running ones are awaited by the with-block
            raise


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """The frame as pandas' `to_csv(index=False)` writes it, byte for byte.
    Text and float columns go through the Rust writer (16x faster on
    `loan_decisions.csv`); any other kind of column, or the Rust writer's one
    difference (quoting a lone carriage return), sends the frame to pandas."""
    body = _csv_text(frame)
    with naming_the_file(path):
        if body is not None:
            rustpy_xlsxwriter.write_csv(body, str(path))
        else:
            frame.to_csv(path, index=False)


def _csv_text(frame: pd.DataFrame) -> pd.DataFrame | None:
    """The frame with each float column as the text pandas writes for it, or
    None where only pandas' writer gives pandas' bytes."""
    if frame.columns.has_duplicates:
        return None
    body = frame.reset_index(drop=True)
    for name in body.columns:
        column = body[name]
        if isinstance(column.dtype, np.dtype) and column.dtype.kind == "f":
            # pandas' own conversion in to_csv: numpy's text of each float, missing cells empty
            values = column.to_numpy()
            text = values.astype(str).astype(object)
            text[np.isnan(values)] = ""
            body[name] = pd.array(text, dtype="string")
        elif _kind(column) != "text" or pc.any(pc.match_substring(pa.array(column.astype("string")), "\r")).as_py():
            return None  # (asked of the Arrow array: 0.15 s through the string accessor on the decisions)
    return body


def _limit_chart(workbook, worksheet, name: str, table: pd.DataFrame) -> None:
    """Value, before and to-purchase as columns, the limit as a marker, per check."""
    if table.empty:
        worksheet.write_string(len(table) + 2, 0, "no share limits to chart")
        return
    last = len(table)
    categories = [name, 1, 0, last, 0]
    columns = list(table.columns)
    chart = workbook.add_chart({"type": "column"})
    for series in ("value (%)", "before (%)", "to_purchase (%)"):
        col = columns.index(series)
        chart.add_series({"name": [name, 0, col], "categories": categories, "values": [name, 1, col, last, col]})
    limit = workbook.add_chart({"type": "line"})
    col = columns.index("limit (%)")
    limit.add_series({
        "name": [name, 0, col], "categories": categories, "values": [name, 1, col, last, col],
        "line": {"none": True}, "marker": {"type": "dash", "size": 14, "border": {"color": "#C00000"}, "fill": {"color": "#C00000"}},
    })
    chart.combine(limit)
    chart.set_title({"name": f"{name}: share limits (%)"})
    chart.set_y_axis({"name": "% of the platform's base", "num_format": "0"})
    chart.set_legend({"position": "bottom"})
    chart.set_size({"width": 960, "height": 420})
    worksheet.insert_chart(0, len(columns) + 1, chart)


def _write_sheet(workbook, frame: pd.DataFrame, sheet: str) -> None:
    worksheet = workbook.add_worksheet(sheet)
    bold = workbook.add_format({"bold": True})
    dates = workbook.add_format({"num_format": DATE_FORMAT})
    # Leading = + - @ cells also get Excel's quote prefix, so even a cell
    # edited later in Excel stays text.
    quoted = workbook.add_format({"quote_prefix": True})
    worksheet.write_row(0, 0, [str(c) for c in frame.columns], bold)
    body = frame.astype(object).where(frame.notna(), None)
    for r, row in enumerate(body.itertuples(index=False, name=None), start=1):
        for c, value in enumerate(row):
            if value is None:
                continue
            if isinstance(value, str):
                worksheet.write_string(r, c, value, quoted if value.startswith(_FORMULA_STARTS) else None)
            elif isinstance(value, (bool, np.bool_)):
                worksheet.write_boolean(r, c, bool(value))
            elif isinstance(value, (int, float, np.integer, np.floating)):
                worksheet.write_number(r, c, float(value))
            elif hasattr(value, "year"):
                worksheet.write_datetime(r, c, pd.Timestamp(value).to_pydatetime(), dates)
            else:
                worksheet.write_string(r, c, str(value))
    if len(frame.columns):
        worksheet.autofilter(0, 0, max(len(frame), 1), len(frame.columns) - 1)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, (pd.Timestamp,)):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _finite(value):
    """JSON has no NaN: a missing number is null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def write_json(document: dict, path: Path) -> None:
    text = json.dumps(_finite(document), indent=2, default=_json_default, allow_nan=False) + "\n"
    with naming_the_file(path):
        path.write_text(text)


class StagedReportsMissing(Exception):
    """The reports a run staged are gone before it could publish them: the
    output folder was deleted or unmounted, or the staging folder removed.
    The machine or a person, not the code: kind `infra`."""


def require_staged(staging: Path, batch_key: str) -> None:
    """Raise StagedReportsMissing, saying what went, unless `staging` is there."""
    root = staging.parent
    try:
        if staging.is_dir():
            return
    except OSError as exc:  # a share whose server is gone
        raise StagedReportsMissing(unreachable_output(root, exc)) from None
    if root.exists() and not root.is_dir():
        raise StagedReportsMissing(
            f"output folder {root} was replaced by a file during the run, and the reports staged in it are gone; "
            "put the folder back, then re-run the whole batch")
    if not root.is_dir():
        raise StagedReportsMissing(
            f"output folder {root} is gone (deleted, or its share unmounted, during the run), and with it the reports "
            "staged in it; restore or mount it, then re-run the whole batch")
    raise StagedReportsMissing(
        f"the staged reports {staging} are gone (removed during the run, or by a later run of batch {batch_key}); "
        "re-run the whole batch")


def staging_folder(output_root: Path, batch_key: str, run_id: str) -> Path:
    """Where a run writes the batch's reports before they are published:
    hidden, beside the batch folder (a rename never crosses file systems)."""
    return output_root / f".{batch_key}.staging-{run_id}"


def clear_leftovers(output_root: Path, batch_key: str, keep: Path | None = None) -> list[Path]:
    """Remove the batch's hidden staging and retired folders left by runs that
    were killed. Only the run holding the batch calls this, so none of them
    belongs to a live run."""
    removed = []
    for path in output_root.glob(f".{batch_key}.*"):
        if path != keep:
            _remove(path)
            removed.append(path)
    return removed


def _remove(path: Path) -> None:
    """Remove a retired batch folder or whatever stood in its place. A link
    goes, never what it points to (a share, someone's folder); a file too,
    which rmtree would have left behind for good."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def stage_batch(output_root: Path, batch_key: str, run_id: str, write) -> Path:
    """Call `write(folder)` on the run's staging folder, flushed to disk.
    A failed write leaves no staging folder."""
    output_root.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(output_root, batch_key, run_id)
    shutil.rmtree(staging, ignore_errors=True)  # this same run's earlier attempt (a step retry)
    staging.mkdir()
    try:
        write(staging)
        for path in staging.rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def in_the_way(target: Path) -> bool:
    """Whether something stands where a batch folder is renamed in: a folder,
    a file, or a link to nothing (which `exists` does not see)."""
    return target.exists() or target.is_symlink()


def _folder_identity(path: Path) -> tuple[int, int] | None:
    """Which folder stands at `path` (device, inode); None when none does."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def retire(folder: Path) -> Path:
    """Move a batch folder aside, hidden beside it, where clear_leftovers finds it."""
    retired = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex}"
    try:
        folder.rename(retired)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        # A share mounted on the batch folder: the kernel's bare "Device or
        # resource busy" named a hidden path nobody made and read as a bug.
        raise OSError(f"batch folder {folder} cannot be replaced: it is a mount point, or in use "
                      f"({exc.strerror}); unmount it (reports are published by renaming the batch folder), "
                      "then re-run") from None
    return retired


@contextlib.contextmanager
def swapped_in(staging: Path, target: Path):
    """Put `staging` in place of `target` by renames: readers see the old batch
    or the new one, never half. If the with-block fails (the database commit
    that goes with the reports), the old folder comes back and the staged one
    is kept for a re-execution.

    The undo moves only what this call put there: a worker frozen before its
    commit (a paused machine), marked failed meanwhile, can resume long after
    a later run published the batch and cleared the old folder away; undoing
    blindly, it hid that run's reports under its own staging name and left
    no batch folder at all."""
    had_old = in_the_way(target)
    if had_old:
        retired = retire(target)
    try:
        staging.rename(target)
    except BaseException:
        if had_old:
            retired.rename(target)
        raise
    ours = _folder_identity(target)
    try:
        yield target
    except BaseException:
        if _folder_identity(target) == ours:
            target.rename(staging)
            if had_old and not in_the_way(target) and in_the_way(retired):
                retired.rename(target)
        raise
    if had_old:
        _remove(retired)


def publish_batch(output_root: Path, batch_key: str, write, run_id: str = "local") -> Path:
    """Stage the reports and swap them in at once, for callers without a database."""
    clear_leftovers(output_root, batch_key)
    staging = stage_batch(output_root, batch_key, run_id, write)
    with swapped_in(staging, output_root / batch_key) as target:
        return target
