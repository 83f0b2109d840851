"""The one error type for structural input problems (business_rules.md section 3)."""

from __future__ import annotations

from collections.abc import Sequence


class StructuralError(Exception):
    """A file, sheet, column or header the batch cannot do without.

    It is a data problem, never a code bug: the on-call person fixes the file,
    not the program. `rows` are spreadsheet row numbers as a person sees them.
    """

    kind = "data"

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        sheet: str | None = None,
        columns: Sequence[str] = (),
        rows: Sequence[int] = (),
    ) -> None:
        self.problem = problem
        self.file = file
        self.sheet = sheet
        self.columns = list(columns)
        self.rows = [int(r) for r in rows]
        super().__init__(self.describe())

    def describe(self) -> str:
        where = []
        if self.file:
            where.append(f"file '{self.file}'")
        if self.sheet:
            where.append(f"sheet '{self.sheet}'")
        if self.columns:
            where.append("column" + ("s " if len(self.columns) > 1 else " ") + ", ".join(f"'{c}'" for c in self.columns))
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows[:10])
            more = f" and {len(self.rows) - 10} more" if len(self.rows) > 10 else ""
            where.append(f"row{'s' if len(self.rows) > 1 else ''} {shown}{more}")
        prefix = "Data problem"
        text = f"{prefix} in {', '.join(where)}: {self.problem}" if where else f"{prefix}: {self.problem}"
        # One line, whatever the names in it hold: a header typed with Alt+Enter
        # shows its line break as \n instead of cutting the message there.
        return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "problem": self.problem,
            "file": self.file,
            "sheet": self.sheet,
            "columns": self.columns,
            "rows": self.rows,
        }
