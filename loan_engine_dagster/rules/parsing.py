"""Turning raw sheets and CSV tables into typed frames (business_rules.md section 3).

Raw workbook sheets arrive as object frames aligned to cell A1 (raw index 0 is
spreadsheet row 1), so row numbers in messages are the ones a person sees.
Two kinds of bad input: structural problems raise `StructuralError`; row
problems of buy loans are collected in a `row_problems` column and become
`invalid_data` rejections downstream.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .config import Rules
from .errors import StructuralError

UNDERWRITING_TYPES = ("standard", "hybrid", "ninp", "epni", "wpdi", "standard_bd", "wpdi_bd")
EXCEL_EPOCH = pd.Timestamp("1899-12-30")


@dataclass(frozen=True)
class Field:
    header: str  # as sellers write it (business_rules.md section 3)
    name: str  # engine column name
    kind: str  # text | number | date | bool
    required: bool = True
    default: object = None


EXHIBIT_FIELDS = (
    Field("SELLER Loan #", "seller_loan_number", "text"),
    Field("Loan Program", "loan_program", "text"),
    Field("Application Type", "application_type", "text"),
    Field("Property State", "property_state", "text"),
    Field("Orig. Balance", "orig_balance", "number"),
    Field("Income", "income", "number"),
    Field("FICO Borrower", "fico", "number"),
    Field("DTI", "dti", "number"),
    Field("PTI", "pti", "number"),
    Field("Term", "term", "number"),
    Field("APR", "apr", "number"),
    Field("Lender Price(%)", "lender_price", "number"),
    Field("modeled_purchase_price", "modeled_purchase_price", "number"),
    Field("Dealer Fee", "dealer_fee", "number"),
    Field("Submit Date", "submit_date", "date"),
    Field("Stamp fee", "stamp_fee", "number", required=False, default=0.0),
    Field("promo_term", "promo_term", "number", required=False, default=0.0),
    Field("Purchase Price", "purchase_price", "carry", required=False),
    Field("Monthly Payment Date", "monthly_payment_date", "carry", required=False),
)
TU144 = Field("TU144", "tu144", "number", required=False, default=0.0)

TAPE_FIELDS = (
    Field("Account Number", "account_number", "number"),
    Field("Loan Group", "loan_group", "text"),
    Field("Status Codes", "status_codes", "text"),
)

MASTER_FIELDS = (
    Field("loan program", "loan_program", "text"),
    Field("platform", "platform", "text"),
    Field("type", "type", "text"),
    Field("new_programs", "new_programs", "bool", required=False, default=False),
)

EXISTING_FIELDS = (
    Field("SELLER Loan #", "seller_loan_number", "text"),
    Field("platform", "platform", "text"),
    Field("loan program", "loan_program", "text"),
    Field("type", "type", "text"),
    Field("Orig. Balance", "orig_balance", "number"),
    Field("Lender Price(%)", "lender_price", "number"),
    Field("FICO Borrower", "fico", "number"),
    Field("Term", "term", "number"),
    Field("APR", "apr", "number"),
    Field("Property State", "property_state", "text"),
    Field("Dealer Fee", "dealer_fee", "number"),
    Field("Purchase_Date", "purchase_date", "date"),
    Field("Repurchase", "repurchase", "bool"),
    Field("promo_term", "promo_term", "number", required=False, default=0.0),
    Field("new_programs", "new_programs", "bool", required=False, default=False),
    Field("Excess_Asset", "excess_asset", "bool", required=False, default=False),
    Field("modeled_purchase_price", "modeled_purchase_price", "number", required=False, default=np.nan),
    Field("Purchase Price", "purchase_price", "carry", required=False),
    Field("Submit Date", "submit_date", "date", required=False, default=pd.NaT),
    Field("Application Type", "application_type", "text", required=False, default=""),
)

GRID_FIELDS = (
    Field("finance_type_name_nls", "program", "text"),
    Field("monthly_income_min", "monthly_income_min", "number"),
    Field("fico_min", "fico_min", "number"),
    Field("approval_high", "approval_high", "number"),
    Field("dti_max", "dti_max", "number"),
    Field("pti_ratio", "pti_ratio", "number"),
)

COMAP_LIST_FIELDS = (
    Field("loan program", "program", "text"),
    Field("Min FICO", "min_fico", "number"),
)

# The file kinds whose headers the rules file may give other spellings for
# (`columns:` in rules.yaml), with the columns each one knows.
FIELDS_BY_KIND = {
    "exhibit": EXHIBIT_FIELDS + (TU144,),
    "tape": TAPE_FIELDS,
    "master": MASTER_FIELDS,
    "existing": EXISTING_FIELDS,
    "grid": GRID_FIELDS,
    "comap": COMAP_LIST_FIELDS,
}
# Number columns that hold a 0/1 flag, where a TRUE/FALSE cell is the same flag.
FLAG_NUMBERS = {"tu144"}
# Number columns of dollars, where text written as Excel shows an amount
# ($12,000.50) is that amount. Elsewhere a comma is as likely a decimal one
# (a DTI of 0,360) and reads as no number.
DOLLAR_NUMBERS = {"orig_balance", "income", "stamp_fee"}
# Headers sellers write in several ways (`TU144`, `TU 144`, `tu_144`): they
# also match once spaces and underscores are removed.
LOOSE_HEADERS = {"tu144"}
# A column the engine does not know is carried under this prefix and its own
# header: a seller's `type` or `message` column must not take the place of
# the engine's own column of that name.
SELLER_COLUMN_PREFIX = "seller:"
Aliases = Mapping[str, Sequence[str]]


# ---------------------------------------------------------------- helpers


def header_key(value: object) -> str:
    """How column names are matched: trimmed, case-insensitive, any run of
    white space inside (a line break typed with Alt+Enter, a non-breaking
    space, two spaces) read as one space."""
    return " ".join(str(value).split()).casefold()


def _loose_key(value: object) -> str:
    return header_key(value).replace(" ", "").replace("_", "")


def _header_keys(field: Field, aliases: Aliases) -> set[str]:
    """Every key that names `field`: its own header and the rules file's other spellings."""
    spellings = [field.header, *next((v for k, v in aliases.items() if header_key(k) == header_key(field.header)), ())]
    return {header_key(s) for s in spellings}


def _names_field(column: object, field: Field, keys: set[str]) -> bool:
    if header_key(column) in keys:
        return True
    return _loose_key(field.header) in LOOSE_HEADERS and _loose_key(column) in {_loose_key(k) for k in keys}


def alias_problems(columns: Mapping[str, Aliases]) -> list[str]:
    """What is wrong with the rules file's `columns:` map: a header that is not
    a column of its file kind, or a spelling that would name two columns."""
    problems = []
    for kind, by_header in columns.items():
        fields = FIELDS_BY_KIND[kind]
        own = {header_key(f.header): f.header for f in fields}
        named_by = dict(own)  # spelling key -> the column it names
        entries: dict[str, str] = {}  # column -> the entry that gave its spellings
        for header, spellings in by_header.items():
            target = own.get(header_key(header))
            if target is None:
                problems.append(
                    f"columns.{kind}: {header!r} is not a column of the {kind} file "
                    f"(its columns: {', '.join(repr(f.header) for f in fields)})"
                )
                continue
            if target in entries:  # only one entry would be read, the other silently ignored
                problems.append(f"columns.{kind}: {header!r} and {entries[target]!r} are the same column: "
                                "give its spellings in one entry")
                continue
            entries[target] = header
            if any(not header_key(s) for s in spellings):
                problems.append(f"columns.{kind}: {header!r} has a blank spelling")
            for spelling in spellings:
                owner = named_by.get(header_key(spelling))
                if owner is None and _loose_key(spelling) in LOOSE_HEADERS:
                    owner = next(h for h in own.values() if _loose_key(h) == _loose_key(spelling))
                if owner is not None and owner != target:
                    problems.append(
                        f"columns.{kind}: {spelling!r} cannot mean {target!r}: it already names {owner!r}"
                    )
                else:
                    named_by[header_key(spelling)] = target
    return problems


def text_key(series: pd.Series) -> pd.Series:
    """How program and type names are matched: trimmed, inner runs of spaces
    folded to one, case-insensitive. Sellers type program names by hand.
    Computed once per distinct name: a column holds few of them."""
    # Factorized as it is (Arrow text needs no Python string per row); only
    # the distinct names become Python objects, as they were before.
    return _map_per_distinct(
        series, lambda names: names.astype(object).astype("string").str.strip().str.replace(r"\s+", " ", regex=True).str.casefold()
    )


def _map_per_distinct(series: pd.Series, transform) -> pd.Series:
    """A text transform run once per distinct value of a column (a program
    or platform column of 500k rows holds a handful), spread back to every
    row; missing cells stay missing."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    mapped = transform(pd.Series(uniques, dtype=series.dtype))
    return pd.Series(mapped.array.take(codes, allow_fill=True), index=series.index)


# Kinds of workbook column (pandas' `infer_dtype`, missing cells skipped) that
# hold no text at all: only their missing cells can be blank.
_NUMBER_KINDS = frozenset({"floating", "integer", "mixed-integer-float"})
_NO_TEXT_KINDS = _NUMBER_KINDS | {"boolean", "datetime", "date", "timedelta", "time", "empty"}


def is_blank(series: pd.Series) -> pd.Series:
    """Empty or white space only."""
    if series.dtype != object:  # a CSV column: text throughout
        return _blank_text(series)
    # Workbook cells: only a text cell can be blank text, and turning every
    # number or date into text to find out is the slow part. A column of
    # numbers or dates (by far the most) needs no look at its cells' text.
    values = series.to_numpy()
    kind = pd.api.types.infer_dtype(values, skipna=True)
    out = pd.isna(values)
    if kind in _NO_TEXT_KINDS:
        return pd.Series(out, index=series.index)
    text = ~out if kind == "string" else series.map(type).to_numpy() == str
    if text.any():
        out[text] = _trimmed_empty(pa.array(values[text], type=pa.string()))
    return pd.Series(out, index=series.index)


def _blank_text(series: pd.Series) -> pd.Series:
    return pd.Series(_trimmed_empty(pa.array(series.astype("string").array)), index=series.index, dtype=bool)


def _trimmed_empty(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    # Arrow's trim is what pandas' .str.strip() runs on Arrow-backed text;
    # called directly it skips pandas' boxing of the intermediate results.
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(values), ""), True)
    return blank.to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _blank_among(series: pd.Series, maybe: pd.Series) -> pd.Series:
    """`is_blank` of the cells flagged in `maybe`, False elsewhere: a cell that
    converted to a number or a date is not blank, so only the others need a look."""
    out = np.zeros(len(series), dtype=bool)
    where = maybe.to_numpy(dtype=bool)
    if where.any():
        out[where] = is_blank(series[where]).to_numpy()
    return pd.Series(out, index=series.index)


def _arrow_text(series: pd.Series) -> pa.ChunkedArray | None:
    """The column as Arrow strings with empty cells as nulls, when it is a
    pyarrow-backed text column (a CSV column); None otherwise."""
    dtype = series.dtype
    if not (isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow"):
        return None
    values = pa.array(series.array)
    return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)


def _arrow_cast(series: pd.Series, to: pa.DataType) -> pa.ChunkedArray | None:
    """Arrow's cast of a text column when every non-empty cell converts
    (typically all of a clean file's); None to take the general path."""
    values = _arrow_text(series)
    if values is None:
        return None
    try:
        return pc.cast(values, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


# Beyond 2**53 a float no longer holds every whole number, and sums of such
# values drift towards infinity, which JSON cannot carry: no loan field is that
# large, so a cell like `1e400` or `inf` is a typo, not an amount.
LARGEST_NUMBER = float(2**53)
# pandas keeps dates in nanoseconds, 1677-09-22 to 2262-04-11; a cell outside
# (`9999-12-31`, serial 99999999) is no real submit or purchase date.
FIRST_DATE = pd.Timestamp.min.ceil("D")
LAST_DATE = pd.Timestamp.max.floor("D")
SERIAL_RANGE = tuple((d.to_pydatetime() - EXCEL_EPOCH.to_pydatetime()).days for d in (FIRST_DATE, LAST_DATE))
NUMBER_RANGE = f"a number must be finite and at most {LARGEST_NUMBER:.0f} in size"
DATE_RANGE = f"a date must fall between {FIRST_DATE:%Y-%m-%d} and {LAST_DATE:%Y-%m-%d}"


def to_number(series: pd.Series, *, flag: bool = False, dollars: bool = False) -> pd.Series:
    """Numbers; NaN for cells that are not numbers or are out of range. A
    TRUE/FALSE cell is a number only in a 0/1 `flag` column; text with a
    dollar sign or thousands separators only in a column of `dollars`."""
    cast = _arrow_cast(series, pa.float64())
    if cast is not None:
        values = pd.Series(cast.to_numpy(zero_copy_only=False), index=series.index, dtype="float64")
    elif (numbers := _workbook_numbers(series)) is not None:
        values = numbers
    else:
        values = pd.to_numeric(series, errors="coerce").astype("float64")
        if not flag:
            values = _without_true_or_false(series, values)
        values = _written_numbers(series, values, _US_AMOUNT if dollars else _PLAIN_NUMBER)
    return values.where(values.abs() <= LARGEST_NUMBER)


# An amount as Excel shows it in a number cell, stored as text (pasted from
# a web page, a PDF or another program): a dollar sign, US thousands
# separators in threes, any white space around it (a non-breaking space
# too). Anything else (`12,34`, `1.234,56`) stays not a number: whether its
# comma is a separator or a decimal point is not the engine's to guess.
_US_AMOUNT = r"(?:[-+]?\$?\s*[-+]?)(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\$?\s*\.\d+"
_PLAIN_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"


def _written_numbers(series: pd.Series, values: pd.Series, pattern: str) -> pd.Series:
    """`values` with the text cells that did not convert read where, white
    space of any kind around them aside, they match `pattern`."""
    # Only the cells that did not convert are looked at (an empty cell is
    # one, and a column with a few is common): their types, then their text.
    cells = series[values.isna().to_numpy()]
    cells = cells[cells.notna().to_numpy()]
    if series.dtype == object and len(cells):
        cells = cells[cells.map(type).eq(str).to_numpy()]
    text = cells.astype("string").str.strip()  # Unicode white space too: a non-breaking space
    text = text[(text != "").to_numpy(dtype=bool)]
    if text.empty:
        return values
    amount = text.where(text.str.fullmatch(pattern).fillna(False).astype(bool))
    read = pd.to_numeric(amount.str.replace(r"[\s$,]", "", regex=True), errors="coerce").astype("float64")
    return values.fillna(read)


def _without_true_or_false(cells: pd.Series, values: pd.Series) -> pd.Series:
    """`values` read from `cells`, missing where the cell is TRUE or FALSE.
    Only values of 0 or 1 are looked at: the only ones such a cell becomes."""
    ones_and_zeros = values.isin([0.0, 1.0]).to_numpy()
    if ones_and_zeros.any():
        values = values.copy()
        values[ones_and_zeros] = values[ones_and_zeros].mask(_true_or_false(cells[ones_and_zeros]))
    return values


def _true_or_false(series: pd.Series) -> pd.Series:
    """Workbook TRUE/FALSE cells. pandas reads them as 1 and 0, and an Orig.
    Balance of TRUE (a checkbox's linked cell, a comparison pasted as
    values) made a valid $1 loan; no amount or date is written so."""
    if series.dtype != object:  # a CSV column: text, where "TRUE" is no number anyway
        return pd.Series(False, index=series.index)
    return series.map(type).isin([bool, np.bool_])


def _workbook_numbers(series: pd.Series) -> pd.Series | None:
    """A workbook column of numbers throughout (missing cells aside) as
    floats, converted by numpy at C speed where pandas' to_numeric looks at
    cell after cell; None for any other column."""
    if series.dtype != object or pd.api.types.infer_dtype(series, skipna=True) not in _NUMBER_KINDS:
        return None
    cells = series.to_numpy()
    try:
        return pd.Series(np.where(pd.isna(cells), np.nan, cells).astype("float64"), index=series.index)
    except (OverflowError, TypeError, ValueError):  # an integer beyond any float: to_numeric decides
        return None


def number_out_of_range(series: pd.Series) -> pd.Series:
    """Cells that read as numbers but are infinite or too large (`inf`, `1e400`)."""
    values = pd.to_numeric(series, errors="coerce").astype("float64")
    return values.notna() & ~(values.abs() <= LARGEST_NUMBER)


# A date typed as text must name its day, month and year (the parser would
# take the rest from the clock: "now", "12:30 PM" or "2026-02" would become a
# date nobody wrote). A time and a time zone may follow; the date is the one
# written, whatever the zone.
_MONTH = r"[a-z]{3,9}\.?"
_ORDINAL = r"(?:st|nd|rd|th)?"
_WHOLE_DATES = (
    r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}",  # 2026-02-19, 2026/02/19
    r"\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})",  # 02/19/2026, 2/19/26, 19.02.2026
    rf"\d{{1,2}}{_ORDINAL}[- ]?{_MONTH}[-, ]*(?:\d{{4}}|\d{{2}})",  # 19-Feb-26, 19 February 2026
    rf"{_MONTH} ?\d{{1,2}}{_ORDINAL},? ?\d{{4}}",  # Feb 19, 2026
)
_TIME_AND_ZONE = r"(?:(?:T|\s+)\d{1,2}:\d{2}(?::\d{2}(?:\.\d*)?)?(?:\s*[ap]\.?m\.?)?(?:\s*(?:z|utc|gmt|[+-]\d{2}(?::?\d{2})?))?)?"
_WEEKDAY = r"(?:(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*\.?,?\s+)?"  # Thu, 19 Feb 2026
_SPACES = "[\\s\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+"
TEXT_DATE = rf"(?i)^\s*{_WEEKDAY}((?:{'|'.join(_WHOLE_DATES)})){_TIME_AND_ZONE}\s*$"


def _read_dates(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Each cell's date, unbounded, as datetime64[us] (NaT when unreadable),
    and the mask of Excel serial numbers too far out to be dates at all."""
    if series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) in ("date", "datetime"):
        # Workbook dates throughout (the usual column): no serial numbers or
        # text to look for, and asking each date whether it is a number is slow.
        parsed = pd.to_datetime(series, errors="coerce", format="mixed").astype("datetime64[us]")
        return parsed, pd.Series(False, index=series.index)
    serial = pd.to_numeric(series, errors="coerce").astype("float64")
    serial = _without_true_or_false(series, serial)  # no date either
    serial_ok = serial.between(*SERIAL_RANGE)
    textual = series.where(serial.isna())
    if textual.dtype == object:  # workbook cells: text among dates and numbers
        is_text = textual.map(type).eq(str)
    else:  # a CSV column: text throughout, or no text at all
        is_text = textual.notna() & pd.api.types.is_string_dtype(textual.dtype)
    if is_text.any():  # only the whole date of a text cell is parsed; NaN when it names none
        # Spaces of any kind read as one (a date copied from a web page or a
        # PDF holds non-breaking ones); Arrow's regex knows only ASCII \s.
        spaced = textual[is_text].astype("string").str.replace(_SPACES, " ", regex=True)
        textual = textual.where(~is_text, spaced.str.extract(TEXT_DATE, expand=False))
    parsed = pd.to_datetime(textual, errors="coerce", format="mixed").astype("datetime64[us]")
    from_serial = (EXCEL_EPOCH + pd.to_timedelta(serial.where(serial_ok), unit="D")).astype("datetime64[us]")
    beyond = serial.notna() & ~serial_ok
    if beyond.any():
        # 20260201 as a serial is 55,000 years away: a date written as
        # YYYYMMDD (core banking exports) is what it means, when it is one.
        whole = serial[beyond].where(serial[beyond].between(1e7, 1e8 - 1) & (serial[beyond] % 1 == 0))
        as_written = pd.to_datetime(whole.astype("Int64").astype("string"), format="%Y%m%d", errors="coerce")
        from_serial = from_serial.fillna(as_written.astype("datetime64[us]"))
        beyond = beyond & from_serial.isna()
    return parsed.where(serial.isna(), from_serial), beyond


def to_date(series: pd.Series) -> pd.Series:
    """Dates from Excel dates, ISO/US text, or Excel serial numbers; NaT for
    cells that are not dates or are out of range."""
    cast = _arrow_cast(series, pa.date32())  # ISO dates, as buyer's CSV files hold them
    if cast is not None:
        values = pd.Series(cast.to_numpy(zero_copy_only=False), index=series.index).astype("datetime64[us]")
    else:
        values, _ = _read_dates(series)
    return values.where(values.between(FIRST_DATE, LAST_DATE)).dt.normalize().astype("datetime64[ns]")


def date_out_of_range(series: pd.Series) -> pd.Series:
    """Cells that read as dates (or Excel serials) outside the range pandas keeps."""
    values, serial_out = _read_dates(series)
    return serial_out | (values.notna() & ~values.between(FIRST_DATE, LAST_DATE))


def to_text(series: pd.Series) -> pd.Series:
    """Trimmed text; a whole number typed into a text column loses its '.0'."""
    text = series.astype("string").str.strip().fillna("")
    if series.dtype == object:  # only workbook cells can hold numbers
        text = text.str.replace(r"^(\d+)\.0$", r"\1", regex=True)
    return text


_TRUE = ["true", "1", "1.0", "yes", "y", "t"]
_FALSE = ["false", "0", "0.0", "no", "n", "f", ""]


def _bool_key(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Trimmed, case-folded text of a flag column's distinct values (a flag
    column holds a handful), with "" last for missing cells, and each cell's
    index into them."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    keys = pd.Series(np.asarray(uniques, dtype=object), dtype=object).astype("string").str.strip().str.casefold().fillna("")
    return np.append(keys.to_numpy(dtype=object), ""), codes  # code -1 (missing) picks the trailing ""


def _read_bool(series: pd.Series, default: bool) -> tuple[pd.Series, pd.Series, pd.Series]:
    """A flag column's values, its unreadable cells and its blank ones, worked
    out once per distinct value."""
    keys, codes = _bool_key(series)
    truthy, falsy = np.isin(keys, _TRUE), np.isin(keys, _FALSE)
    empty = keys == ""
    value = np.where(truthy, True, np.where(falsy & ~empty, False, default))
    index = series.index
    return (pd.Series(value[codes], index=index, dtype=bool), pd.Series(~(truthy | falsy)[codes], index=index),
            pd.Series(empty[codes], index=index))


def _flag_words(raw: pd.Series, values: pd.Series) -> pd.Series:
    """A 0/1 flag written as a word (Y, yes, true; N, no, false) is that flag:
    "TU144 'Y' is not a number" rejected loans nobody doubted. Only the
    cells that are no number are looked at."""
    missed = values.isna()
    if not missed.any():
        return values
    flags, unreadable, empty = _read_bool(raw[missed], False)
    return values.fillna(flags.astype("float64").where(~unreadable & ~empty))


def to_bool(series: pd.Series, default: bool = False) -> pd.Series:
    return _read_bool(series, default)[0]


def bool_invalid(series: pd.Series) -> pd.Series:
    return _read_bool(series, False)[1]


def _header_keys_of(cells: pd.Series) -> pd.Series:
    """header_key of every cell of a text column."""
    return cells.str.replace(r"\s+", " ", regex=True).str.strip().str.casefold()


def find_header_row(
    raw: pd.DataFrame, *, marker: str | None, max_rows: int, file: str, sheet: str | None, aliases: Aliases | None = None
) -> int:
    """Index of the header row: the first row holding `marker` or one of its
    other spellings (or, with no marker, the first row with any content)
    within the first `max_rows`."""
    top = raw.iloc[:max_rows]
    if top.empty:
        raise StructuralError("the sheet is empty", file=file, sheet=sheet)
    if (top.dtypes == object).all():  # a workbook sheet: its cells keyed in one pass, not column by column
        cells = _header_keys_of(pd.Series(top.to_numpy().ravel(), dtype=object).astype("string"))
    else:
        cells = top.astype("string").apply(_header_keys_of)
    if marker is None:
        found = cells.fillna("") != ""
    else:
        found = cells.isin(_header_keys(Field(marker, "", "text"), aliases or {}))
    hits = found.to_numpy(dtype=bool).reshape(top.shape).any(axis=1)
    if not hits.any():
        others = sorted(_header_keys(Field(marker, "", "text"), aliases or {}) - {header_key(marker)}) if marker else []
        spelled = "".join(f" or '{o}'" for o in others)
        what = f"no header row with a cell reading '{marker}'{spelled}" if marker else "no header row"
        raise StructuralError(f"{what} in the first {max_rows} rows", file=file, sheet=sheet)
    return int(np.flatnonzero(hits)[0])


REPEATED_HEADERS = "repeated_headers"


def frame_below_header(raw: pd.DataFrame, header_row: int) -> pd.DataFrame:
    """Rows under the header, with `source_row` holding spreadsheet row numbers.
    Fully empty rows are dropped; columns with an empty header are dropped."""
    headers = [str(h).strip() if h is not None else "" for h in raw.iloc[header_row].tolist()]
    body = raw.iloc[header_row + 1 :].copy()
    body.columns = range(body.shape[1])
    keep = [i for i, h in enumerate(headers) if h and h.lower() != "nan"]
    body = body[keep]
    body.columns = [headers[i] for i in keep]
    repeated = pd.Index(body.columns).duplicated()
    body = body.loc[:, ~repeated]
    body["source_row"] = body.index.to_numpy() + 1
    out = _without_empty_rows(body)
    # A header written twice keeps its first column; `resolve_columns` refuses
    # it when it names a field, as it does for two spellings of one field.
    out.attrs[REPEATED_HEADERS] = sorted(set(pd.Index(headers)[keep][repeated]))
    return out


def _without_empty_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with at least one cell that is not blank. Column by column,
    only the rows still empty so far are looked at: after the first filled
    column of a real file (the loan number) hardly any are left."""
    empty = np.ones(len(frame), dtype=bool)
    for position in np.flatnonzero(frame.columns != "source_row"):
        rows = np.flatnonzero(empty)
        if not len(rows):
            break
        column = frame.iloc[:, position]
        # The first column is asked whole: picking all 500k rows of a text column copies it.
        empty[rows] = is_blank(column if len(rows) == len(frame) else column.iloc[rows]).to_numpy()
    # Selecting rows copies every column; a file without empty rows keeps its own.
    return (frame[~empty] if empty.any() else frame).reset_index(drop=True)


def resolve_columns(
    frame: pd.DataFrame, fields: Iterable[Field], *, file: str, sheet: str | None,
    aliases: Aliases | None = None, kind: str | None = None,
) -> dict[str, str]:
    """Map each field to the frame column that names it, by its header or one
    of the rules file's other spellings. Raise naming every missing required
    column at once, with the headers that are there and the closest one; a
    field named by two columns is ambiguous and refused."""
    fields = list(fields)
    found, missing = {}, []
    for field in fields:
        keys = _header_keys(field, aliases or {})
        columns = [c for c in frame.columns if c != "source_row" and _names_field(c, field, keys)]
        columns += [c for c in columns if c in frame.attrs.get(REPEATED_HEADERS, ())]
        if len(columns) > 1:
            raise StructuralError(
                f"{len(columns)} columns name {field.header!r} (its header or another spelling the rules file "
                "maps to it): keep one column, or change the rules file's columns map",
                file=file, sheet=sheet, columns=columns,
            )
        if columns:
            found[field.name] = columns[0]
        elif field.required:
            missing.append(field.header)
    if missing:
        raise StructuralError(_missing_problem(frame, missing, set(found.values()), kind), file=file, sheet=sheet, columns=missing)
    _refuse_near_misses(frame, [f for f in fields if f.name not in found], set(found.values()), file, sheet, kind)
    return found


def _bare(header: object) -> str:
    """A header with only its letters and digits, singular: how near misses are told."""
    bare = re.sub(r"[\W_]+", "", str(header).casefold())
    return bare.removesuffix("s")


# A note after a header: a unit, or anything in brackets (`Promo Term (months)`).
_HEADER_NOTE = re.compile(r"(?:\s*[(\[].*[)\]]|[\W_]+(?:months?|mos?|usd|dollars?|\$|%|percent|pct|y/?n))\s*$", re.IGNORECASE)


def _refuse_near_misses(frame, absent, used: set, file, sheet, kind) -> None:
    """An optional column missing while another column differs from its header
    only by punctuation, spacing, a plural or a note (`Promo Term`, `TU-144`,
    `Stamp Fees`, `Promo Term (months)`, `Stamp fee USD`) is refused rather
    than read as absent: its default (0 for a promo term, no TU144 exemption)
    would silently replace the seller's values."""
    candidates = [c for c in frame.columns if c != "source_row" and c not in used]
    others = {_bare(_HEADER_NOTE.sub("", str(c))): c for c in candidates} | {_bare(c): c for c in candidates}
    close = [(f.header, others[_bare(f.header)]) for f in absent if _bare(f.header) in others]
    if close:
        named = ", ".join(f"'{written}' for '{header}'" for header, written in close)
        raise StructuralError(
            f"column {named}: optional, but a column named so nearly like it is not read as absent; rename it to the "
            f"exact header" + (f", or map that spelling in the rules file under columns: {kind}" if kind else ""),
            file=file, sheet=sheet, columns=[written for _, written in close],
        )


def _missing_problem(frame: pd.DataFrame, missing: list[str], used: set, kind: str | None) -> str:
    """The message for missing columns: what is there, and the likeliest typo."""
    present = [str(c) for c in frame.columns if c != "source_row"]
    unused = {header_key(c): c for c in present if c not in used}
    guesses = []
    for header in missing:
        key = header_key(header)
        # A header with a note added (`Income (annual)`) is the likeliest; then plain typos.
        close = sorted((k for k in unused if k.startswith(key)), key=len)[:1]
        close = close or difflib.get_close_matches(key, list(unused), n=1, cutoff=0.6)
        if close:
            guesses.append((header, unused[close[0]]))
    problem = "required column missing"
    if len(guesses) == 1 and len(missing) == 1:
        problem += f" (did you mean '{guesses[0][1]}'?)"
    elif guesses:
        problem += " (did you mean " + ", ".join(f"'{g}' for '{h}'" for h, g in guesses) + "?)"
    problem += "; headers found: " + (", ".join(f"'{c}'" for c in present) or "none")
    if kind:
        problem += f"; another spelling can be mapped to a column in the rules file under columns: {kind}"
    return problem


def typed_frame(
    frame: pd.DataFrame, fields: Iterable[Field], mapping: dict[str, str]
) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """Convert mapped columns to their kinds. Returns the typed frame and, per
    field name, a mask of cells that were present but not convertible."""
    out = pd.DataFrame(index=frame.index)
    invalid: dict[str, pd.Series] = {}
    for field in fields:
        if field.name not in mapping:
            out[field.name] = field.default if field.kind != "carry" else None
            continue
        raw = frame[mapping[field.name]]
        # Each column is converted once; whether a cell is blank follows from
        # the conversion (an empty text, a flag's empty key), or is asked only
        # of the cells that did not convert.
        if field.kind == "text":
            values = to_text(raw)
            blank = pd.Series(pc.equal(pa.array(values.array), "").to_numpy(zero_copy_only=False), index=frame.index)
            out[field.name] = values
        elif field.kind == "number":
            values = to_number(raw, flag=field.name in FLAG_NUMBERS, dollars=field.name in DOLLAR_NUMBERS)
            if field.name in FLAG_NUMBERS:
                values = _flag_words(raw, values)
            blank = _blank_among(raw, values.isna())
            invalid[field.name] = values.isna() & ~blank
            out[field.name] = values.fillna(field.default) if not field.required and field.default is not None else values
        elif field.kind == "date":
            values = to_date(raw)
            blank = _blank_among(raw, values.isna())
            invalid[field.name] = values.isna() & ~blank
            out[field.name] = values
        elif field.kind == "bool":
            values, invalid[field.name], blank = _read_bool(raw, bool(field.default))
            out[field.name] = values
        else:
            blank = is_blank(raw)
            out[field.name] = raw.where(~blank, None)
        if field.required:
            invalid[field.name] = invalid.get(field.name, pd.Series(False, index=frame.index)) | blank
    return out, invalid


def _extra_columns(frame: pd.DataFrame, mapping: dict[str, str]) -> list[str]:
    used = set(mapping.values()) | {"source_row"}
    return [c for c in frame.columns if c not in used]


def _raise_on_invalid(invalid: dict[str, pd.Series], frame: pd.DataFrame, fields, mapping, *, file, sheet) -> None:
    """Reference files must be clean: any bad cell is structural."""
    headers = {f.name: mapping.get(f.name, f.header) for f in fields}
    for name, mask in invalid.items():
        if mask.any():
            rows = frame.loc[mask, "source_row"].tolist()
            raise StructuralError(
                "empty or unreadable values", file=file, sheet=sheet, columns=[headers[name]], rows=rows
            )


# ---------------------------------------------------------------- exhibits


# What a person sees in cells the reader gives as empty (an error value, a
# formula never computed): `notes(spreadsheet rows, column number)` gives a
# note per cell, None where the cell is simply empty.
NotesOfCells = Callable[[pd.Series, int], pd.Series]


def parse_exhibit(
    raw: pd.DataFrame, *, platform: str, file: str, sheet: str, rules: Rules, cell_notes: NotesOfCells | None = None
) -> pd.DataFrame:
    """The offered loans of one exhibit, one row per loan, with `row_problems`
    naming every row-level problem (empty string when the row is valid).
    `cell_notes` is asked only about cells already suspect: rejected as
    empty or as no date, a 0 where no loan has one, the header of a sheet
    failing for its header."""
    aliases = rules.column_aliases("exhibit")
    fields = FIELDS_BY_KIND["exhibit"]
    header_rows = range(1, rules.inbox.header_search_rows + 1)
    try:
        header_row = find_header_row(
            raw, marker="SELLER Loan #", max_rows=rules.inbox.header_search_rows, file=file, sheet=sheet, aliases=aliases
        )
        header_rows = range(header_row + 1, header_row + 2)
        frame = frame_below_header(raw, header_row)
        mapping = resolve_columns(frame, fields, file=file, sheet=sheet, aliases=aliases, kind="exhibit")
    except StructuralError as exc:
        hint = _header_notes(raw, header_rows, cell_notes)
        if not hint:
            raise
        raise StructuralError(exc.problem + hint, file=exc.file, sheet=exc.sheet, columns=exc.columns,
                              rows=exc.rows) from None
    out, invalid = typed_frame(frame, fields, mapping)
    _refuse_second_table(frame, invalid["orig_balance"], aliases, mapping["seller_loan_number"], file=file, sheet=sheet)
    # Lender Price(%) is the column a seller most likely formats as a
    # percentage (its header says %); DTI and PTI typed as percent figures
    # (36 for 36 %) failed every loan's underwriting for a reason not its own.
    for name, percent in (("apr", True), ("dealer_fee", True), ("lender_price", True), ("dti", False), ("pti", False)):
        _refuse_wrong_unit(out[name], percent=percent, header=mapping[name], rows=frame["source_row"], file=file,
                           sheet=sheet)
    extras = _extra_columns(frame, mapping)
    if extras:  # at once: added one by one, a wide export's 150 columns flooded the log with pandas' warnings
        out = pd.concat([out, frame[extras].set_axis([SELLER_COLUMN_PREFIX + c for c in extras], axis=1)], axis=1)
    if platform != "sfy":
        out["tu144"] = 0.0  # TU144 is an SFY-only exemption
        invalid.pop("tu144", None)

    headers = {f.name: mapping.get(f.name, f.header) for f in fields}
    header_cells = [str(h).strip() if h is not None else "" for h in raw.iloc[header_row].tolist()]
    column_of = {h: header_cells.index(h) + 1 for h in headers.values() if h in header_cells}  # A is 1
    problems = pd.Series("", index=out.index, dtype="string")
    uncomputed = _zeros_never_computed(out, invalid, frame["source_row"], headers, column_of, cell_notes)

    def add(mask: pd.Series, message) -> None:
        # Messages are built for the flagged rows only: most rows have none.
        nonlocal problems
        if not mask.any():
            return
        text = message(mask) if callable(message) else message
        problems = problems.mask(mask, problems[mask] + text + "; ")

    for name, mask in invalid.items():
        if name not in mapping or not mask.any():  # the column scans below cost a full parse each
            continue
        cells = frame[mapping[name]]
        is_date = name == "submit_date"

        def unreadable(rows, cells=cells, header=headers[name], is_date=is_date):
            flagged = cells[rows]
            text = flagged.astype("string").str.strip().fillna("")
            shown = f"{header} '" + text.mask(_true_or_false(flagged), text.str.upper())  # as Excel shows it
            blank = is_blank(flagged)
            message = (shown + f"' is not {'a date' if is_date else 'a number'}").where(~blank, f"{header} is empty")
            if cell_notes is not None and blank.any():
                notes = cell_notes(frame.loc[blank[blank].index, "source_row"], column_of[header])
                message = message.mask(notes.reindex(message.index).notna(), f"{header} " + notes.astype("string"))
            beyond = date_out_of_range(flagged) if is_date else number_out_of_range(flagged)
            return message.where(
                ~beyond, shown + f"' on sheet '{sheet}' is out of range ({DATE_RANGE if is_date else NUMBER_RANGE})"
            )

        add(mask, unreadable)
    for name, notes in uncomputed.items():
        add(notes.notna(), lambda rows, notes=notes, header=headers[name]: f"{header} " + notes[rows].astype("string"))
    add(_inexact_numbers(frame[mapping["seller_loan_number"]]), lambda rows: f"{headers['seller_loan_number']} "
        + out.loc[rows, "seller_loan_number"] + " is a number with more digits than a spreadsheet keeps exactly: "
        "its last digits are lost; enter the loan numbers as text")
    valid_num = out["fico"].notna()
    bad_fico = valid_num & ((out["fico"] < rules.normalization.fico_min) | (out["fico"] > rules.normalization.fico_max))
    add(bad_fico, lambda rows: f"{headers['fico']} " + out.loc[rows, "fico"].map("{:g}".format).astype("string")
        + f" outside {rules.normalization.fico_min}-{rules.normalization.fico_max}")
    bad_balance = out["orig_balance"].notna() & (out["orig_balance"] <= 0)
    add(bad_balance, lambda rows: f"{headers['orig_balance']} "
        + out.loc[rows, "orig_balance"].map("{:g}".format).astype("string") + " is not above 0")
    if "tu144" in mapping and platform == "sfy":
        bad_tu = out["tu144"].notna() & ~out["tu144"].isin([0.0, 1.0])
        add(bad_tu, f"{headers['tu144']} must be 0 or 1")

    out["platform"] = platform
    out["source_file"] = file
    out["source_row"] = frame["source_row"].to_numpy()
    out["row_problems"] = problems.str.rstrip("; ").fillna("")
    return out


def _refuse_second_table(
    frame: pd.DataFrame, suspects: pd.Series, aliases: Aliases, header: str, *, file: str, sheet: str
) -> None:
    """A row below the header that reads `SELLER Loan #` again heads a second
    table (withdrawn loans, last week's list): read on, its loans were offered
    like the others. Which table is the offer is not the engine's to guess.
    Only rows whose Orig. Balance is already unreadable or empty (a header
    row's is text) are looked at: a clean exhibit has none."""
    if not suspects.any():
        return
    rows = frame.loc[suspects.to_numpy(dtype=bool)].drop(columns="source_row")
    marker = _header_keys(Field("SELLER Loan #", "", "text"), aliases)
    cells = _header_keys_of(pd.Series(rows.to_numpy().ravel(), dtype=object).astype("string"))
    hits = cells.isin(marker).to_numpy(dtype=bool).reshape(rows.shape).any(axis=1)
    if hits.any():
        at = frame.loc[rows.index[hits], "source_row"]
        raise StructuralError(
            "a second header row below the loans: a second table under the first is not read as loans; keep one "
            "table of offered loans on this sheet and move the other to a sheet of its own",
            file=file, sheet=sheet, columns=[header], rows=at,
        )


def column_letters(number: int) -> str:
    """A spreadsheet column's letters from its number (1 is A)."""
    letters = ""
    while number:
        number, rest = divmod(number - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _header_notes(raw: pd.DataFrame, rows: range, cell_notes: NotesOfCells | None) -> str:
    """For a missing header or column: the header cells that hold a formula
    never computed or an error (they read as empty), as "; cell G2 holds
    ...". A header taken from a setup sheet by a formula, saved by a program
    that never computed it, failed as "required column missing" while Excel
    showed it. Asked only once the batch fails; the first 200 columns."""
    if cell_notes is None:
        return ""
    spreadsheet_rows = pd.Series(list(rows))
    found = []
    for column in range(1, min(raw.shape[1], 200) + 1):
        notes = cell_notes(spreadsheet_rows, column)
        found += [f"; cell {column_letters(column)}{row} {note}"
                  for row, note in zip(spreadsheet_rows, notes, strict=True)
                  if pd.notna(note) and note.startswith("holds")]  # not a merged title block's "is empty"
    return "".join(found[:3])


# Excel keeps 15 significant digits of a number: a 16-digit loan number
# typed into a number cell is stored with its last digit 0.
EXCEL_EXACT_DIGITS = 15


def _inexact_numbers(cells: pd.Series) -> pd.Series:
    """Number cells of more digits than Excel keeps: a 17-digit loan number
    stored as a number was read as "1.234567890123457e+16", and a 16-digit
    one typed in Excel loses its last digit; either is a number the seller
    never wrote, which two loans could share. A column of text (the usual
    loan numbers) is not looked at."""
    if cells.dtype != object or pd.api.types.infer_dtype(cells, skipna=True) in ("string", "empty"):
        return pd.Series(False, index=cells.index)
    numbers = cells.map(type).isin([float, int, np.float64, np.int64])
    return numbers & pd.to_numeric(cells.where(numbers), errors="coerce").abs().ge(10.0**EXCEL_EXACT_DIGITS)


# Required numbers no real loan has at 0. A 0 there is the one value worth
# asking the workbook about: a program that saves formulas without computing
# them (XlsxWriter) saves 0 in their place. Columns where 0 is common (Dealer
# Fee, Stamp fee, promo_term) are not asked: the sheet's XML would be read
# again for nearly every such exhibit.
ZERO_IS_NO_VALUE = ("orig_balance", "income", "fico", "dti", "pti", "term", "apr", "lender_price",
                    "modeled_purchase_price")
# Likewise the text a loan's names never are: a text formula is saved as 0 too.
ZERO_IS_NO_TEXT = ("seller_loan_number", "loan_program", "application_type", "property_state")


def _zeros_never_computed(out, invalid, rows, headers, column_of, cell_notes) -> dict[str, pd.Series]:
    """Per column, the note of each 0 that is a formula never computed (NA
    elsewhere); those cells become missing, so no other rule reads the 0."""
    found = {}
    if cell_notes is None:
        return found
    for name in ZERO_IS_NO_TEXT + ZERO_IS_NO_VALUE + ("submit_date",):
        if name == "submit_date":
            # A 0 is serial 1899-12-30, or a time of 00:00 in a cell formatted as a date.
            zero = out[name].eq(EXCEL_EPOCH).fillna(False).astype(bool) | invalid[name]
        else:
            zero = out[name].eq("0" if name in ZERO_IS_NO_TEXT else 0).fillna(False).astype(bool)
        if headers[name] not in column_of or not zero.any():
            continue
        notes = cell_notes(rows[zero], column_of[headers[name]]).reindex(out.index)
        if notes.notna().any():
            if name not in ZERO_IS_NO_TEXT:
                out.loc[notes.notna(), name] = pd.NaT if name == "submit_date" else np.nan
                invalid[name] = invalid[name] & notes.isna()  # the note says it instead of "is not a date"
            found[name] = notes
    return found


# A whole column in the other unit is told from a few odd loans by its size.
UNIT_EVIDENCE_ROWS = 10


def _refuse_wrong_unit(values: pd.Series, *, percent: bool, header: str, rows: pd.Series, file: str, sheet: str | None):
    """A column whose every non-zero value (at least UNIT_EVIDENCE_ROWS of
    them) is in the other unit is a structural error. Excel shows a cell
    formatted as a percentage as 11.2% but stores 0.112: read as a percent,
    every APR of the file would be a hundredth of itself, without a word."""
    present = values[values.notna() & (values != 0)]
    if len(present) < UNIT_EVIDENCE_ROWS:
        return
    if percent and (present.abs() < 1).all():
        problem = (f"every {header} is below 1 (e.g. {present.iloc[0]:g}), but it is a percent (7.99 for 7.99%); "
                   "a column formatted as a percentage in Excel stores 0.0799: enter the percent figures")
    elif not percent and (present.abs() >= 1).all():
        problem = (f"every {header} is 1 or more (e.g. {present.iloc[0]:g}), but it is a fraction here "
                   f"({present.iloc[0] / 100:g} for {present.iloc[0]:g}%): enter the fractions")
    else:
        return
    raise StructuralError(problem, file=file, sheet=sheet, columns=[header], rows=rows[present.index][:3])


def flag_duplicate_loan_numbers(buy: pd.DataFrame) -> pd.DataFrame:
    """Every row of a SELLER Loan # offered more than once in the batch (both
    exhibits together) is invalid: nobody can tell which offer is real."""
    numbers = buy["seller_loan_number"]
    dup = numbers.ne("") & numbers.duplicated(keep=False)
    if not dup.any():
        return buy
    where = (buy["source_file"] + " row " + buy["source_row"].astype("string"))
    listing = where[dup].groupby(numbers[dup]).agg(", ".join)
    message = "SELLER Loan # " + numbers[dup] + " appears more than once (" + numbers[dup].map(listing) + ")"
    out = buy.copy()
    joined = out.loc[dup, "row_problems"]
    out.loc[dup, "row_problems"] = joined.where(joined == "", joined + "; ") + message
    return out


# ---------------------------------------------------------------- reference files


def _with_csv_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows numbered as a spreadsheet program shows the file (row 1 is the
    header; the reader keeps blank lines for this), then fully empty rows
    (blank lines, Excel's trailing `,,,`) dropped, as in a workbook."""
    frame = frame.copy()
    frame["source_row"] = np.arange(len(frame)) + 2
    return _without_empty_rows(frame)


def _reference_table(
    frame: pd.DataFrame, fields, *, file: str, sheet: str | None, aliases: Aliases | None = None, kind: str | None = None
) -> tuple[pd.DataFrame, dict]:
    """Typed columns of a buyer's reference file; any bad cell is structural."""
    mapping = resolve_columns(frame, fields, file=file, sheet=sheet, aliases=aliases, kind=kind)
    out, invalid = typed_frame(frame, fields, mapping)
    out["source_row"] = frame["source_row"].to_numpy()
    _raise_on_invalid(invalid, out, fields, mapping, file=file, sheet=sheet)
    return out, mapping


def _reject_rows(mask: pd.Series, problem: str, out: pd.DataFrame, column: str, *, file: str, sheet: str | None) -> None:
    if mask.any():
        raise StructuralError(problem, file=file, sheet=sheet, columns=[column], rows=out.loc[mask, "source_row"])


def _platform_and_type(out: pd.DataFrame, mapping: dict, *, file: str, sheet: str | None) -> None:
    out["platform"] = _map_per_distinct(out["platform"], lambda platforms: platforms.str.casefold())
    _reject_rows(~out["platform"].isin(["sfy", "prime"]), "platform must be SFY or PRIME", out, mapping["platform"],
                 file=file, sheet=sheet)
    out["type"] = text_key(out["type"])
    _reject_rows(~out["type"].isin(UNDERWRITING_TYPES), f"type must be one of {', '.join(UNDERWRITING_TYPES)}", out,
                 mapping["type"], file=file, sheet=sheet)


def parse_master(raw: pd.DataFrame, *, file: str, sheet: str, max_rows: int, aliases: Aliases | None = None) -> pd.DataFrame:
    """Loan programs with their underwriting type and new-program flag."""
    header_row = find_header_row(raw, marker="loan program", max_rows=max_rows, file=file, sheet=sheet, aliases=aliases)
    frame = frame_below_header(raw, header_row)
    out, mapping = _reference_table(frame, MASTER_FIELDS, file=file, sheet=sheet, aliases=aliases, kind="master")
    _platform_and_type(out, mapping, file=file, sheet=sheet)
    out["program_key"] = text_key(out["loan_program"])
    _reject_rows(out.duplicated(["program_key", "platform"], keep=False), "a program is listed twice for the same platform",
                 out, mapping["loan_program"], file=file, sheet=sheet)
    return out[["loan_program", "platform", "type", "new_programs", "program_key"]].reset_index(drop=True)


def parse_tape(frame: pd.DataFrame, *, file: str, aliases: Aliases | None = None) -> pd.DataFrame:
    """The servicer tape: loan number, SFY/PRIME tagging and repurchase flag."""
    frame = _with_csv_rows(frame)
    mapping = resolve_columns(frame, TAPE_FIELDS, file=file, sheet=None, aliases=aliases, kind="tape")
    if frame.empty:
        # The servicer's tape lists every loan it services: an empty one is a
        # failed export, and read as such every repurchase would be missed.
        raise StructuralError("the tape lists no loan (its header only): ask the servicer for the whole tape", file=file)
    _refuse_exponent_form(frame, mapping["account_number"], file=file)
    out, invalid = typed_frame(frame, TAPE_FIELDS, mapping)
    out["source_row"] = frame["source_row"].to_numpy()
    invalid["loan_group"] = pd.Series(False, index=out.index)  # may be empty: the loan is then PRIME
    invalid["status_codes"] = pd.Series(False, index=out.index)  # may be empty: no status
    number = out["account_number"]
    invalid["account_number"] = invalid["account_number"] | (number.notna() & (number != np.floor(number)))
    _raise_on_invalid(invalid, out, TAPE_FIELDS, mapping, file=file, sheet=None)
    repurchased = _per_distinct(
        out["status_codes"], lambda codes: codes.str.upper().str.contains(r"(?:^|;)\s*REPURCHASE\s*(?:;|$)", regex=True)
    )
    sfy = _per_distinct(out["loan_group"], lambda group: group.str.upper().str.contains("FX3|FX1", regex=True))
    # Built in Arrow: numpy text or Python strings for 600k rows would cost
    # more than the whole parse (Arrow writes an int64 as Python's str() does).
    loan_numbers = pc.binary_join_element_wise("SFC_", pc.cast(pa.array(number.to_numpy(dtype="int64")), pa.string()), "")
    tagging = pa.array(["PRIME", "SFY"]).take(pa.array(sfy.astype(np.int8)))
    return pd.DataFrame(
        {
            "seller_loan_number": pd.array(loan_numbers, dtype="string"),
            "tagging": pd.array(tagging, dtype="str"),
            "repurchased": repurchased,
        }
    )


# How a spreadsheet saves a long number in a General cell to CSV: 1.23457E+11.
_EXPONENT_FORM = r"\s*[+-]?[0-9]+(?:\.[0-9]*)?[eE][+-]?[0-9]+\s*"


def _refuse_exponent_form(frame: pd.DataFrame, header: str, *, file: str) -> None:
    """Account numbers written in exponent form have lost their last digits
    (a servicer's 12-digit number opened and saved again in Excel): read as
    numbers they named other loans, and a repurchase landed on a loan nobody
    holds while the real one stayed in the portfolio."""
    written = pa.array(frame[header].array)
    if not (pa.types.is_string(written.type) or pa.types.is_large_string(written.type)):
        return  # cells that are no text (a caller's own frame) were not written at all
    # In Arrow (RE2, no GIL): pandas' own fullmatch took 0.23 s on a 100,000-row tape.
    exponent = pc.match_substring_regex(written, f"^{_EXPONENT_FORM}$").fill_null(False).to_numpy(zero_copy_only=False)
    if exponent.any():
        example = str(frame[header][exponent].iloc[0]).strip()
        raise StructuralError(
            f"account numbers written in exponent form (e.g. {example}) have lost their last digits: save the tape "
            "again from the servicer's export, or with this column formatted as a number without decimals",
            file=file, columns=[header], rows=frame.loc[exponent, "source_row"].tolist(),
        )


def _per_distinct(series: pd.Series, test) -> np.ndarray:
    """A text test run once per distinct value: a tape's 600k rows hold a
    handful of status codes and loan groups, and the regex runs in Python."""
    hits = _map_per_distinct(series, lambda values: test(values).astype("boolean"))
    return hits.fillna(False).to_numpy(dtype=bool)  # a missing cell passes no test


def _all_different(values: pd.Series) -> bool:
    """`values.is_unique`, asked of Arrow for Arrow text: on 500k loan numbers
    0.07 s against 0.13 s the first time in a process (every run's case)."""
    if isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow":
        return len(pc.unique(pa.array(values.array))) == len(values)  # a missing cell counts as a value, as there
    return values.is_unique


def parse_existing(frame: pd.DataFrame, *, file: str, aliases: Aliases | None = None) -> pd.DataFrame:
    """Loans bought in earlier batches, as the eligibility population needs them."""
    frame = _with_csv_rows(frame)
    out, mapping = _reference_table(frame, EXISTING_FIELDS, file=file, sheet=None, aliases=aliases, kind="existing")
    _platform_and_type(out, mapping, file=file, sheet=None)
    numbers = out["seller_loan_number"]
    if not _all_different(numbers):  # asked first: on 500k loan numbers, half the time of finding which
        _reject_rows(numbers.duplicated(keep=False), "a loan is listed more than once (every limit would count it as "
                     "often)", out, mapping["seller_loan_number"], file=file, sheet=None)
    _refuse_wrong_unit(out["apr"], percent=True, header=mapping["apr"], rows=out["source_row"], file=file, sheet=None)
    _refuse_wrong_unit(out["dealer_fee"], percent=False, header=mapping["dealer_fee"], rows=out["source_row"],
                       file=file, sheet=None)
    return out


def parse_underwriting_grid(
    raw: pd.DataFrame, *, file: str, sheet: str, max_rows: int, aliases: Aliases | None = None
) -> pd.DataFrame:
    header_row = find_header_row(raw, marker="finance_type_name_nls", max_rows=max_rows, file=file, sheet=sheet, aliases=aliases)
    frame = frame_below_header(raw, header_row)
    out, _ = _reference_table(frame, GRID_FIELDS, file=file, sheet=sheet, aliases=aliases, kind="grid")
    out["program_key"] = text_key(out["program"])
    out["sheet"] = sheet
    return out.drop(columns="source_row")


def _first_column_has_header(raw: pd.DataFrame, header_row: int) -> bool:
    """Whether the table's first column (the leftmost one holding anything
    from the header row down: the applied-for program in the band layout)
    has a header. Without one it is not in the frame at all, and the frame's
    first column is already a band."""
    table = raw.iloc[header_row:]
    filled = [i for i in range(table.shape[1]) if not is_blank(table.iloc[:, i].astype(object)).all()]
    return bool(filled) and not bool(is_blank(table.iloc[:1, filled[0]].astype(object)).all())


def parse_comap_sheet(
    raw: pd.DataFrame, *, file: str, sheet: str, max_rows: int, aliases: Aliases | None = None
) -> pd.DataFrame:
    """Minimum FICO per purchasable program in one CoMAP sheet, from either
    layout. Band layout: a program's minimum is the lowest band it appears in."""
    header_row = find_header_row(raw, marker=None, max_rows=max_rows, file=file, sheet=sheet)
    frame = frame_below_header(raw, header_row)
    keys = {header_key(c) for c in frame.columns}
    if all(keys & _header_keys(f, aliases or {}) for f in COMAP_LIST_FIELDS):
        out, _ = _reference_table(frame, COMAP_LIST_FIELDS, file=file, sheet=sheet, aliases=aliases, kind="comap")
        table = pd.DataFrame({"program_key": text_key(out["program"]), "min_fico": out["min_fico"]})
    else:
        candidates = frame.columns[1:] if _first_column_has_header(raw, header_row) else frame.columns
        bands = {c: int(str(c).strip()[:3]) for c in candidates if str(c).strip()[:3].isdigit()}
        if not bands:
            raise StructuralError(
                "neither layout: expected columns 'loan program' and 'Min FICO', or FICO band columns such as '660-699'",
                file=file, sheet=sheet,
            )
        long = frame[list(bands)].melt(var_name="band", value_name="program")
        long = long[~is_blank(long["program"])]
        table = pd.DataFrame({"program_key": text_key(long["program"]), "min_fico": long["band"].map(bands).astype(float)})
    table = table.groupby("program_key", as_index=False)["min_fico"].min()
    table["sheet"] = sheet
    return table
