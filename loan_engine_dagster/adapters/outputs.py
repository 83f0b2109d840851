"""Writing a batch's reports: whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import xlsxwriter

# Text is written as text: a seller-typed "=HYPERLINK(...)" must never run.
_WORKBOOK_OPTIONS = {
    "constant_memory": True,
    "strings_to_formulas": False,
    "strings_to_numbers": False,
    "strings_to_urls": False,
    "nan_inf_to_errors": True,
}


def write_workbook(frame: pd.DataFrame, path: Path, sheet: str = "loans", charts: dict[str, pd.DataFrame] | None = None) -> None:
    """One sheet, header row first; an empty frame still gets its header.
    `charts`: more sheets, each its table with a column chart beside it."""
    workbook = xlsxwriter.Workbook(str(path), _WORKBOOK_OPTIONS)
    try:
        _write_sheet(workbook, frame, sheet)
        for name, table in (charts or {}).items():
            _write_sheet(workbook, table, name)
            _limit_chart(workbook, workbook.get_worksheet_by_name(name), name, table)
    finally:
        workbook.close()


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
    dates = workbook.add_format({"num_format": "yyyy-mm-dd"})
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
                worksheet.write_string(r, c, value, quoted if value[:1] in "=+-@" and value else None)
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
    path.write_text(json.dumps(_finite(document), indent=2, default=_json_default, allow_nan=False) + "\n")


def publish_batch(output_root: Path, batch_key: str, write) -> Path:
    """Call `write(folder)` on a hidden temporary folder, then swap it in for
    `<output_root>/<batch_key>` by rename: readers see the old batch or the
    new one, never half of one. A failed write leaves the old batch alone."""
    output_root.mkdir(parents=True, exist_ok=True)
    target = output_root / batch_key
    staging = output_root / f".{batch_key}.tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        write(staging)
        for path in staging.rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        if target.exists():
            retired = output_root / f".{batch_key}.old-{uuid.uuid4().hex}"
            target.rename(retired)
            staging.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
