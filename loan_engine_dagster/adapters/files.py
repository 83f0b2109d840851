"""Reading workbooks and CSV files into raw frames, with structural errors
that name the file and sheet."""

from __future__ import annotations

import codecs
import csv
import os
import re
import threading
import zipfile
from xml.etree import ElementTree
from xml.sax.saxutils import unescape
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from python_calamine import CalamineWorkbook, SheetTypeEnum, SheetVisibleEnum

from loan_engine_dagster.rules.errors import StructuralError
from loan_engine_dagster.rules.parsing import REPEATED_HEADERS, column_letters

from .inbox import is_input_file, open_input

# Files are read side by side on threads of our own (the read-ahead, the
# loading steps). Arrow's CSV reader adding a thread per core on top of them
# left more busy threads than cores, and the run's main thread waited for a
# core (0.25-0.35 s of a 100k run on 2 cores, README Performance).
pa.set_cpu_count(max(1, (os.cpu_count() or 2) - 1))


def open_workbook(path: Path) -> CalamineWorkbook:
    if not is_input_file(path):
        raise StructuralError("the file is missing", file=path.name)
    try:
        return CalamineWorkbook.from_path(str(path))
    except Exception as exc:  # calamine raises several error types for bad files
        _may_read(path)
        raise StructuralError(f"not a readable workbook ({type(exc).__name__}: {exc})", file=path.name) from None


def _may_read(path: Path) -> None:
    """`InboxUnreadable` (kind infra) naming a file this process may not read.
    Asked once a reader failed: calamine reports a refused file as a bare
    OSError without its name (read as a broken workbook), pandas as a
    PermissionError, and either way the run blamed the seller's file (data)."""
    open_input(path).close()


def read_sheet(workbook: CalamineWorkbook, path: Path, sheet: str | None = None) -> tuple[str, pd.DataFrame]:
    """One sheet as an object frame aligned to A1 (index 0 = row 1); the first
    visible sheet when `sheet` is None. Sheet names match case-insensitively."""
    names = workbook.sheet_names
    if sheet is None:
        if not names:
            raise StructuralError("the workbook has no sheets", file=path.name)
        name = _first_visible(workbook, path)
    else:
        by_key = {n.strip().casefold(): n for n in names}
        name = by_key.get(sheet.strip().casefold())
        if name is None:
            raise StructuralError(
                f"sheet missing (the workbook has: {', '.join(names)})", file=path.name, sheet=sheet
            )
    ahead = _taken(path, name)
    return name, ahead if ahead is not None else _sheet_frame(workbook, path, name)


def _first_visible(workbook: CalamineWorkbook, path: Path) -> str:
    """The first worksheet of the tab bar that a person opening the file sees. A
    hidden first sheet (an earlier version kept out of sight, a lookup list)
    was read as the exhibit or the master sheet, rows nobody reviewing the
    file could see."""
    shown = [sheet.name for sheet in workbook.sheets_metadata
             if sheet.visible == SheetVisibleEnum.Visible and sheet.typ == SheetTypeEnum.WorkSheet]  # not a chart tab
    if not shown:
        raise StructuralError(
            f"no visible worksheet ({', '.join(workbook.sheet_names)}: hidden, or charts); unhide the one to read "
            "and save the workbook again",
            file=path.name,
        )
    return shown[0]


def _sheet_frame(workbook: CalamineWorkbook, path: Path, name: str) -> pd.DataFrame:
    _refuse_huge_sheet(path, name)
    try:
        rows = workbook.get_sheet_by_name(name).to_python(skip_empty_area=False)
    except Exception as exc:
        raise StructuralError(f"sheet cannot be read ({exc})", file=path.name, sheet=name) from None
    return pd.DataFrame(rows, dtype=object)


# Calamine holds a sheet as one block from A1 to its last value: a single
# stray value at XFD1048576 asks for 512 GiB and aborts the process, and one
# at the bottom of column S (20 million cells) takes over a gigabyte. Sixteen
# million cells is 2.5 times a 200,000-loan exhibit.
MAX_SHEET_CELLS = 16_000_000
# Elements may carry a prefix (`<x:c r="A1">`, as .NET's Open XML SDK writes
# them); the cells are searched with the dimension's own, a literal start the
# regex engine skips to fast.
_DIMENSION = re.compile(rb'<(\w+:)?dimension ref="(?:[A-Z]+[0-9]+:)?([A-Z]+)([0-9]+)"')


def _cell_pattern(prefix: bytes, escape: bool = True) -> re.Pattern:
    return re.compile(b"<" + (re.escape(prefix) if escape else prefix) + rb'c r="([A-Z]+)([0-9]+)"[^>]*?(/?)>')


def _column_number(letters: bytes) -> int:
    number = 0
    for letter in letters:
        number = number * 26 + letter - 64
    return number


def _sheet_part(archive: zipfile.ZipFile, name: str) -> str | None:
    """The sheet's XML file inside an .xlsx, by the sheet's name. Elements are
    matched by their local names: a workbook saved as Strict Open XML names
    them under other namespaces (and calamine reads it), and the guards on
    its sheets were skipped."""
    book = ElementTree.fromstring(archive.read("xl/workbook.xml"))
    ids = [_attribute(s, "id") for s in book.iter() if _local(s.tag) == "sheet" and s.get("name") == name]
    rels = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
    targets = [r.get("Target") for r in rels.iter() if _local(r.tag) == "Relationship" and ids and r.get("Id") == ids[0]]
    if not targets:
        return None
    return targets[0].lstrip("/") if targets[0].startswith("/") else f"xl/{targets[0]}"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attribute(element: ElementTree.Element, local: str) -> str | None:
    """An attribute by its local name, whatever its namespace (r:id)."""
    return next((value for key, value in element.attrib.items() if key.startswith("{") and _local(key) == local), None)


def _refuse_huge_sheet(path: Path, name: str) -> None:
    """A structural error, naming the far cell, for a sheet whose values
    reach further than MAX_SHEET_CELLS from A1. The sheet's declared range
    is read first (a few bytes); only when it is that large, or missing, are
    its cells scanned, since cells with a format and no value widen the
    declared range but not what calamine reads."""
    try:
        with zipfile.ZipFile(path) as archive:
            part = _sheet_part(archive, name)
            if part is None:
                return
            with archive.open(part) as xml:
                found = _DIMENSION.search(xml.read(4096))
                if found is None:
                    # The range is optional and some streaming writers leave it
                    # out: then the cells say how far they reach (a rare file).
                    cells = _cell_pattern(rb"(?:\w+:)?", escape=False)
                elif _column_number(found[2]) * int(found[3]) <= MAX_SHEET_CELLS:
                    return
                else:
                    cells = _cell_pattern(found[1] or b"")
            rows = columns = 0
            far_row = far_column = ""
            with archive.open(part) as xml:
                tail = b""
                while True:
                    chunk = xml.read(1 << 22)
                    text = tail + chunk
                    # A tag cut in two by the chunk waits for the next one.
                    cut = text.rfind(b"<") if chunk else -1
                    text, tail = (text[:cut], text[cut:]) if cut > 0 else (text, b"")
                    if not text:
                        break
                    for cell in cells.finditer(text):
                        if cell[3]:  # <c .../>: a format, no value
                            continue
                        row, column = int(cell[2]), _column_number(cell[1])
                        if row > rows:
                            rows, far_row = row, (cell[1] + cell[2]).decode()
                        if column > columns:
                            columns, far_column = column, (cell[1] + cell[2]).decode()
    except (OSError, KeyError, zipfile.BadZipFile, ElementTree.ParseError):
        return  # not an .xlsx as expected: calamine reports what is wrong with it
    if rows * columns > MAX_SHEET_CELLS:
        far = far_row if far_row == far_column else f"{far_row} and {far_column}"
        raise StructuralError(
            f"values reach cell {far}, far outside the table: reading A1 to there is {rows * columns:,} cells "
            f"(at most {MAX_SHEET_CELLS:,}); delete what lies outside the table and save the workbook again",
            file=path.name, sheet=name,
        )


class CellNotes:
    """What a person sees in Excel where calamine reads an empty cell: an
    error value (#N/A, #REF!) or a formula whose value the program that wrote
    the file never saved (openpyxl writes `=A2*2` without computing it).
    "FICO Borrower is empty" sent the seller looking for a blank cell that
    shows 720 in Excel. Called by the parsing of an exhibit only for cells it
    already rejects as empty, so the sheet's XML (36 MB for 100,000 loans) is
    read again only for a file that is failing anyway, once."""

    def __init__(self, path: Path, sheet: str) -> None:
        self.path, self.sheet = path, sheet
        self._notes: dict[tuple[int, int], str] | None = None
        self._merged: list[tuple[int, int, int, int]] = []

    def __call__(self, rows: pd.Series, column: int) -> pd.Series:
        """The note of each cell (spreadsheet `rows`, 1-based `column`), None where none."""
        if self._notes is None:
            self._notes, self._merged = _marked_cells(self.path, self.sheet)
        out = pd.Series(None, index=rows.index, dtype=object)
        # A cell inside merged cells (not their first) shows the first one's
        # value in Excel, but holds none: "is empty" named no cell to fill.
        # Merged ranges do not overlap: each row's is found by its top row
        # (a report merging two cells on every row has 100,000 of them).
        ranges = sorted(m for m in self._merged if m[1] <= column <= m[3])
        if ranges:
            top, left, bottom, right = (np.array(side) for side in zip(*ranges, strict=True))
            at = rows.to_numpy(dtype=np.int64)
            which = np.clip(np.searchsorted(top, at, side="right") - 1, 0, None)
            inside = (top[which] <= at) & (at <= bottom[which]) & ~((at == top[which]) & (left[which] == column))
            notes = np.array([f"is empty: the cell is part of the merged cells {column_letters(l)}{t}:"
                              f"{column_letters(r)}{b}, whose value belongs to {column_letters(l)}{t} alone; "
                              "unmerge them and fill in each loan's value" for t, l, b, r in ranges], dtype=object)
            out = out.mask(pd.Series(inside, index=rows.index), pd.Series(notes[which], index=rows.index))
        found = {row: note for (row, col), note in self._notes.items() if col == column}
        return out.mask(rows.isin(list(found)), rows.map(found))


# In a sheet's XML a formula is an <f> element of its cell, an error value
# is the cell's type "e". Searched for as bytes, so only those cells are
# looked at; a prefix (`<x:c>`, as some .NET writers put it) is allowed.
# One pattern per literal start: Python's regex engine skips to a literal
# prefix at memchr speed, where an alternation tries every byte (0.5 s
# instead of 0.1 s on 36 MB).
_MARKS = (re.compile(rb'<f[\s>/]'), re.compile(rb':f[\s>/]'), re.compile(rb' t="e"'))
_FORMULA_TAG = re.compile(rb'<(?:\w+:)?f[\s>/]')
_REFERENCE = re.compile(rb'\sr="([A-Z]+)([0-9]+)"')
_TYPE = re.compile(rb'\st="(\w+)"')
_VALUE = re.compile(rb'<(?:\w+:)?v>([^<]*)</(?:\w+:)?v>')
_FORMULA = re.compile(rb'<(?:\w+:)?f(?:\s[^>]*)?>([^<]*)</(?:\w+:)?f>')
_UNCOMPUTED = re.compile(rb'<(?:\w+:)?calcPr\s[^>]*fullCalcOnLoad="(?:1|true)"')
_NEVER_SAVED = "whose value was never saved: open the file in Excel and save it again"
_SAVED_AS_0 = ("whose value was never computed (the program that wrote the file saved 0 in its place): open the file "
               "in Excel and save it again")


_QUOTES = {"&quot;": '"', "&apos;": "'"}  # XML's entities beyond the three unescape knows


def _shown(formula: re.Match | None) -> str:
    return f" (={unescape(formula[1].decode(), _QUOTES)})" if formula and formula[1] else ""


_MERGED = re.compile(rb'<(?:\w+:)?mergeCell\s[^>]*ref="([A-Z]+)([0-9]+):([A-Z]+)([0-9]+)"')


def _marked_cells(path: Path, sheet: str) -> tuple[dict[tuple[int, int], str], list[tuple[int, int, int, int]]]:
    """{(row, column): note} for the sheet's error cells and formulas without
    a saved value, and its merged ranges (top, left, bottom, right)."""
    try:
        with zipfile.ZipFile(path) as archive:
            part = _sheet_part(archive, sheet)
            xml = archive.read(part) if part is not None else b""
            # Set by writers that save formulas without computing them
            # (XlsxWriter saves 0 in place of the value): Excel computes them
            # on opening. Excel itself clears it when it saves the file.
            uncomputed = _UNCOMPUTED.search(archive.read("xl/workbook.xml")) is not None
    except (OSError, KeyError, zipfile.BadZipFile, ElementTree.ParseError):
        return {}, []  # not an .xlsx as expected: the cells keep their plain message
    start, end = max(xml.find(b"<sheetData"), 0), xml.rfind(b"</sheetData>")
    merged = [(int(m[2]), _column_number(m[1]), int(m[4]), _column_number(m[3]))
              for m in _MERGED.finditer(xml, max(end, 0))]
    notes: dict[tuple[int, int], str] = {}
    last = -1
    end = end if end > 0 else len(xml)
    for mark in sorted(m.start() for pattern in _MARKS for m in pattern.finditer(xml, start, end)):
        # The cell's opening tag is just before: its attributes, or inside it.
        # (Searched back to the start of the data, a column of formulas took a minute.)
        near = max(start, mark - 1024)
        at = max(xml.rfind(b"<c ", near, mark), xml.rfind(b":c ", near, mark))
        if at < 0:
            continue
        if at <= last:  # the same cell again (a formula whose value is an error)
            continue
        last = at
        tag_end = xml.find(b">", at)
        reference = _REFERENCE.search(xml, at, tag_end)
        if reference is None or xml[tag_end - 1:tag_end] == b"/":
            continue  # no reference (its place is not written down), or no content
        close = xml.find(b"c>", tag_end, tag_end + (1 << 16))  # a longer cell keeps its plain message
        if close < 0:
            continue
        cell = xml[tag_end:close]
        kind, value, formula = _TYPE.search(xml, at, tag_end), _VALUE.search(cell), _FORMULA.search(cell)
        if kind is not None and kind[1] == b"e":
            note = f"holds the error {unescape(value[1].decode(), _QUOTES) if value else ''}".rstrip()
        elif not _FORMULA_TAG.search(cell):
            continue
        elif not (value and value[1]) and not (kind and kind[1] == b"str" and value):
            # (A formula whose saved value is empty text, type "str", is empty in Excel too.)
            note = f"holds a formula{_shown(formula)} {_NEVER_SAVED}"
        elif uncomputed and kind is None and value[1] == b"0":
            note = f"holds a formula{_shown(formula)} {_SAVED_AS_0}"
        else:
            continue
        notes[(int(reference[2]), _column_number(reference[1]))] = note
    return notes, merged


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV file with its header row; every cell kept as text so parsing
    decides types and can name the rows it cannot read."""
    ahead = _taken(path, None)
    return ahead if ahead is not None else _csv_frame(path)


def _csv_frame(path: Path) -> pd.DataFrame:
    if not is_input_file(path):
        raise StructuralError("the file is missing", file=path.name)
    encoding = _marked_encoding(path)
    try:
        frame = _read_csv_fast(path) if encoding != UTF16 else None
        uneven = encoding == UTF16
    except _ArrowRefused:
        frame, uneven = None, True
    if frame is None:
        frame, encoding = _read_csv_decoded(path, encoding)
        if uneven:  # pyarrow refuses lines longer than the header; pandas reads them without the rest
            _refuse_values_past_the_header(path, encoding, len(frame.columns))
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame.columns) == 1 and "\t" in frame.columns[0]:
        # Excel's "Unicode Text" (and other tab-separated exports): read as
        # one column, it failed as a header to map in the rules file.
        raise StructuralError("the file is tab-separated, not comma-separated: save it again as CSV UTF-8",
                              file=path.name)
    return _without_renamed_repeats(frame, path, encoding or "utf-8-sig")


# A CSV file is UTF-8 unless it says otherwise. Excel saves "CSV (Comma
# delimited)" on Windows in Windows-1252, and "Unicode Text" as UTF-16 with
# a byte-order mark: a servicer's tape with one accented name in it failed
# the batch. A file that is not UTF-8 and has no mark is read as
# Windows-1252, in which nearly every byte is text; one that is text in
# neither is refused, naming its line.
UTF16 = "utf-16"
WINDOWS = "cp1252"


def _marked_encoding(path: Path) -> str | None:
    try:
        with path.open("rb") as file:
            start = file.read(3)
    except OSError:
        return None  # the reader meets the same problem and reports it
    if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return UTF16
    return "utf-8-sig" if start.startswith(codecs.BOM_UTF8) else None


def _read_csv_decoded(path: Path, encoding: str | None) -> tuple[pd.DataFrame, str]:
    """pandas' reader, which gives the results and error messages the rest of
    the engine expects, in the file's encoding."""
    tries = [encoding] if encoding else ["utf-8", WINDOWS]
    for name in tries:
        try:
            # The header's columns only: rows with one field more than the
            # header (a delimiter at the end of each data line, as some
            # exporters write) made pandas take the first column as the row
            # index and read every column as the one before it, without a word.
            # What lies past the header is _refuse_values_past_the_header's.
            with path.open(newline="", encoding=name) as handle:
                width = len(next(csv.reader(handle, skipinitialspace=True), []))
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True,
                                skip_blank_lines=False, encoding=name, index_col=False,
                                usecols=range(width) if width else None)
        except UnicodeDecodeError as exc:
            if name != tries[-1]:
                continue
            raise StructuralError(_not_text(path, tries, exc), file=path.name) from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise StructuralError(f"not a readable CSV file ({exc})", file=path.name) from None
        except OSError:
            _may_read(path)
            raise
        return frame, name
    raise AssertionError("unreachable")


def _refuse_values_past_the_header(path: Path, encoding: str, width: int) -> None:
    """Lines with more fields than the header are read without them; that is
    right only when the fields past the header are empty (a delimiter at the
    end of the line). A value there belongs to no column, and a structural
    error names its lines."""
    with path.open(newline="", encoding=encoding, errors="replace") as handle:
        lines = [number for number, fields in enumerate(csv.reader(handle, skipinitialspace=True), start=1)
                 if number > 1 and any(field.strip() for field in fields[width:])]
    if lines:
        raise StructuralError(
            f"values past the header's last column (it names {width}): a value under no header cannot be read; "
            "remove it, or name its column",
            file=path.name, rows=lines,
        )


_ENCODING_NAMES = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8 (as its byte-order mark says)", WINDOWS: "Windows-1252"}


def _not_text(path: Path, tried: list[str], exc: UnicodeDecodeError) -> str:
    if tried == [UTF16]:
        return f"not a readable CSV file: its byte-order mark says UTF-16, but it is not ({exc.reason}); save it again as CSV UTF-8"
    names = " nor ".join(_ENCODING_NAMES[e] for e in tried)
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            line.decode(tried[-1])
        except UnicodeDecodeError as bad:
            what = f"text in neither {names}" if len(tried) > 1 else f"not text in {names}"
            return f"line {number} holds a byte (0x{line[bad.start]:02X}) that is {what}: save it again as CSV UTF-8"
    return f"not a readable CSV file ({exc})"


def _read_csv_fast(path: Path) -> pd.DataFrame | None:
    """pyarrow's multithreaded reader, about twice as fast on the 500k-row
    files. It has no `skipinitialspace`, so any file where that could matter
    (a cell starting with white space, e.g. after `, `: None) and any file it
    cannot read (_ArrowRefused) go back to pandas' own reader, which gives the
    result and the error messages the rest of the engine expects."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, engine="pyarrow", skip_blank_lines=False)
    except Exception:  # pyarrow raises its own error types; the fallback names the problem
        raise _ArrowRefused from None
    return None if _starts_with_space(frame) else frame


class _ArrowRefused(Exception):
    """pyarrow could not read the file (uneven lines among the causes)."""


def _starts_with_space(frame: pd.DataFrame) -> bool:
    """Whether a cell starts with a space or a tab. The Arrow-held columns are
    asked all at once, in a handful of Arrow calls: each call lets go of the
    GIL, and taking it back while another thread holds it costs up to a
    switch interval (5 ms). Asked per column and per Arrow chunk (about a
    thousand on the 500k-row file), the check took 1.4 s of the read-ahead
    beside Dagster's start-up instead of 0.04 s. A column not held in Arrow
    is tested as text."""
    by_type: dict[pa.DataType, list[pa.Array]] = {}
    for name in frame.columns:
        column = frame[name]
        values = pa.array(column.array) if isinstance(column.dtype, pd.StringDtype) and column.dtype.storage == "pyarrow" else None
        if values is None or not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            if column.str.startswith((" ", "\t")).any():
                return True
            continue
        for chunk in values.chunks if isinstance(values, pa.ChunkedArray) else [values]:
            by_type.setdefault(chunk.type, []).append(chunk)
    for kind, chunks in by_type.items():
        values = pa.chunked_array(chunks, type=kind)
        if any(pc.any(pc.starts_with(values, pattern)).as_py() for pattern in (" ", "\t")):
            return True
    return False


def _without_renamed_repeats(frame: pd.DataFrame, path: Path, encoding: str) -> pd.DataFrame:
    """pandas renames a header written twice (`Status Codes.1`), which would
    let the first column be used without a word. Keep the first under its own
    name and mark the header as repeated, as for workbooks, so that parsing
    refuses it when it names a field."""
    with path.open(newline="", encoding="utf-8-sig" if encoding == "utf-8" else encoding, errors="replace") as handle:
        names = [h.strip() for h in next(csv.reader(handle, skipinitialspace=True), [])]
    repeated = pd.Index(names).duplicated()
    if len(names) != frame.shape[1] or not repeated.any():
        return frame
    out = frame.iloc[:, ~repeated].copy()
    out.columns = [n for n, r in zip(names, repeated, strict=True) if not r]
    out.attrs[REPEATED_HEADERS] = sorted(set(pd.Index(names)[repeated]))
    return out


# `loan-engine run` knows a batch's files about two seconds before its first
# step: Python, Dagster and the run's records come first. The files are read
# in those seconds, on other threads; calamine parses a sheet and pyarrow a
# CSV without holding the GIL, so the start-up slows by less than the reading
# steps gain (README, Performance). A file read ahead
# is used once, and only while it is the same file (device, inode, size,
# modification time); a read that failed is simply done again by the step,
# which reports the problem as it always does.
_AHEAD: dict[Path, tuple[tuple[int, ...], Future]] = {}
_AHEAD_LOCK = threading.Lock()


def read_ahead(paths: Iterable[Path]) -> None:
    """Start reading these workbooks and CSV files in the background."""
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="read-ahead")
    found = [(path, file_identity(path)) for path in map(_key, paths)]
    for path, identity in sorted((f for f in found if f[1] is not None), key=lambda f: -f[1][2]):  # biggest first
        reader = _csv_ahead if path.suffix.lower() == ".csv" else _sheets_ahead
        with _AHEAD_LOCK:
            _AHEAD[path] = (identity, pool.submit(reader, path))
    pool.shutdown(wait=False)


def _key(path: Path) -> Path:
    return Path(os.path.abspath(path))


def file_identity(path: Path) -> tuple[int, ...] | None:
    """Which file stands at `path` as it is now (device, inode, size, modification and change times)."""
    try:
        st = path.stat()
    except OSError:
        return None
    # ctime too: a copy over the file that keeps its size and modification
    # time (`cp -p`, `rsync -t`) still moves it.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _csv_ahead(path: Path) -> dict[None, pd.DataFrame]:
    return {None: _csv_frame(path)}


def _sheets_ahead(path: Path) -> dict[str, pd.DataFrame]:
    workbook = open_workbook(path)
    return {name: _sheet_frame(workbook, path, name) for name in workbook.sheet_names}


def _taken(path: Path, sheet: str | None) -> pd.DataFrame | None:
    """The frame read ahead for this file (and sheet), if it is still valid."""
    path = _key(path)
    with _AHEAD_LOCK:
        entry = _AHEAD.get(path)
    if entry is None:
        return None
    identity, future = entry
    try:
        frames = future.result()
    except Exception:
        frames = {}
    with _AHEAD_LOCK:
        frame = frames.pop(sheet, None)
        if not frames and _AHEAD.get(path) is entry:
            del _AHEAD[path]
    return frame if frame is not None and file_identity(path) == identity else None
