"""Write the generated tables of docs/business_rules.md from a rules file.

    .venv/bin/python scripts/rules_doc.py            # rewrite the tables from the packaged rules.yaml
    .venv/bin/python scripts/rules_doc.py --check    # exit 1 when the document and rules.yaml disagree

Only the text between the `<!-- generated:... -->` markers is touched; the
rest of the document is written by people."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loan_engine_dagster.rules.config import Check, Rules, load_rules

DOC = Path(__file__).resolve().parent.parent / "docs" / "business_rules.md"
BEGIN, END = "<!-- generated:{name} begin (scripts/rules_doc.py; do not edit by hand) -->", "<!-- generated:{name} end -->"
METRICS = {
    "balance_share": "share of balance",
    "count_share": "share of loan count",
    "batch_balance_share": "share of this batch's balance",
    "max": "largest",
    "mean": "average",
    "wavg": "balance-weighted average",
    "distribution": "balance by value",
}
OPS = {"<=": "≤", ">=": "≥", "!=": "≠", "==": "="}


def _value(value) -> str:
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _filter(check: Check) -> str:
    terms = []
    for column, op, value in check.where:
        terms.append(f"`{column}` {'in' if op == 'in' else OPS.get(op, op)} {_value(value)}")
    return "; ".join(terms) or "all loans"


def limits_table(rules: Rules) -> str:
    lines = ["| platform | check | description | measure | loans counted | limit |", "|---|---|---|---|---|---|"]
    for platform, checks in (("PRIME", rules.eligibility.prime), ("SFY", rules.eligibility.sfy)):
        for c in checks:
            measure = METRICS[c.metric] + (f" of `{c.column}`" if c.column else "")
            limit = f"{OPS.get(c.op, c.op)} {_value(c.limit)}" if c.limit is not None else "none (information)"
            loans = _filter(c) if c.where else "every loan of the base"
            description = c.description.replace("|", "\\|")
            lines.append(f"| {platform} | `{c.id}` | {description} | {measure} | {loans} | {limit} |")
    return "\n".join(lines)


def settings_table(rules: Rules) -> str:
    n = rules.normalization
    rows = [
        ("rules version", rules.version),
        ("tape look-back (days before the notice date)", rules.inbox.tape_lookback_days),
        ("rows searched for a header row", rules.inbox.header_search_rows),
        ("IRR Support Target (percent)", _value(n.irr_target)),
        ("facility period start (price re-check of existing assets)", n.facility_period_start.isoformat()),
        ("valid FICO range", f"{n.fico_min}–{n.fico_max}"),
        ("underwriting grid sheets (SFY, PRIME, SFY notes, PRIME notes)",
         ", ".join(f"`{s}`" for s in rules.sheets.underwriting.model_dump().values())),
        ("notes CoMAP sheet", f"`{rules.sheets.notes_comap}`"),
    ]
    for platform, eras in (("PRIME", rules.comap_eras.prime), ("SFY", rules.comap_eras.sfy)):
        for era in eras:
            when = f"Submit Date after {era.after.isoformat()}" if era.after else "earlier Submit Dates"
            rows.append((f"{platform} regular CoMAP sheets, {when}", ", ".join(f"`{s}`" for s in era.sheets)))
    spellings = [f"{kind}: `{header}` ← " + ", ".join(f"`{s}`" for s in names)
                 for kind, headers in rules.columns.items() for header, names in headers.items()]
    rows.append(("other header spellings", "; ".join(spellings) or "none"))
    return "\n".join(["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


TABLES = {"settings": settings_table, "limits": limits_table}


def render(document: str, rules: Rules) -> str:
    for name, table in TABLES.items():
        begin, end = BEGIN.format(name=name), END.format(name=name)
        head, found, rest = document.partition(begin)
        _, found_end, tail = rest.partition(end)
        if not found or not found_end:
            raise SystemExit(f"{DOC.name}: markers for the {name} table are missing")
        document = f"{head}{begin}\n{table(rules)}\n{end}{tail}"
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on any difference")
    parser.add_argument("--rules", help="another rules file (default: the packaged rules.yaml)")
    parser.add_argument("--doc", default=str(DOC), help="the document (default: docs/business_rules.md)")
    args = parser.parse_args(argv)
    doc = Path(args.doc)
    current = doc.read_text()
    wanted = render(current, load_rules(args.rules))
    if args.check:
        if wanted != current:
            print(f"{doc}: the generated tables differ from the rules file; run scripts/rules_doc.py", file=sys.stderr)
            return 1
        return 0
    doc.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
