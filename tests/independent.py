"""A second, deliberately plain implementation of LOAN_RULES.md: one loan at a
time, decimal arithmetic, openpyxl and the csv module instead of calamine and
pandas. It shares no code with the engine; the end-to-end test checks that
both produce the same decisions and eligibility results."""

from __future__ import annotations

import csv
import datetime as dt
import math
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import openpyxl

INCOME_WAIVER_FICO = 700
REASON_ORDER = ["invalid_data", "unknown_program", "purchase_price_mismatch", "underwriting_sfy", "underwriting_prime",
                "underwriting_notes", "comap_sfy", "comap_prime", "comap_notes"]


def key(text) -> str:
    return " ".join(str(text).split()).casefold()


def dec(value) -> Decimal:
    return Decimal(repr(float(value)))


def number(value):
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return "bad"


def text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def sheet_rows(path: Path, sheet: str | None = None) -> list[list]:
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    ws = wb.worksheets[0] if sheet is None else next(w for w in wb.worksheets if w.title.strip().casefold() == sheet.casefold())
    rows = [list(r) for r in ws.iter_rows(values_only=True)]
    wb.close()
    return rows


def table(rows: list[list], marker: str | None) -> list[dict]:
    for i, row in enumerate(rows[:20]):
        cells = [key(c) if c is not None else "" for c in row]
        if (marker is None and any(cells)) or (marker is not None and marker.casefold() in cells):
            header = [str(c).strip() if c is not None else "" for c in row]
            out = []
            for j, values in enumerate(rows[i + 1:], start=i + 2):
                if all(v is None or (isinstance(v, str) and not v.strip()) for v in values):
                    continue
                record = {key(h): v for h, v in zip(header, values) if h}
                record["__row"] = j
                out.append(record)
            return out
    raise ValueError("no header")


def cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def tuesday_after(day: dt.date, holidays: set[dt.date]) -> dt.date:
    day += dt.timedelta(days=1)
    while day.weekday() != 1:
        day += dt.timedelta(days=1)
    while day.weekday() >= 5 or day in holidays:
        day += dt.timedelta(days=1)
    return day


EXHIBIT_NUMBERS = ["orig. balance", "income", "fico borrower", "dti", "pti", "term", "apr", "lender price(%)",
                   "modeled_purchase_price", "dealer fee"]
EXHIBIT_TEXT = ["seller loan #", "loan program", "application type", "property state"]


def read_exhibit(path: Path, platform: str) -> list[dict]:
    loans = []
    for rec in table(sheet_rows(path), "SELLER Loan #"):
        problems = []
        loan = {"platform": platform, "file": path.name, "row": rec["__row"]}
        for name in EXHIBIT_TEXT:
            loan[name] = text(rec.get(name))
            if not loan[name]:
                problems.append(name)
        for name in EXHIBIT_NUMBERS:
            loan[name] = number(rec.get(name))
            if loan[name] in (None, "bad"):
                problems.append(name)
        for name in ("stamp fee", "promo_term"):
            loan[name] = number(rec.get(name))
            if loan[name] == "bad":
                problems.append(name)
            elif loan[name] is None:
                loan[name] = 0.0
        tu = next((v for k, v in rec.items() if k.replace(" ", "").replace("_", "") == "tu144"), None)
        loan["tu144"] = number(tu) if platform == "sfy" else 0.0
        if loan["tu144"] is None:
            loan["tu144"] = 0.0
        submit = rec.get("submit date")
        loan["submit"] = submit.date() if isinstance(submit, dt.datetime) else submit
        if not isinstance(loan["submit"], dt.date):
            problems.append("submit date")
        fico = loan["fico borrower"]
        if isinstance(fico, float) and not 300 <= fico <= 850:
            problems.append("fico range")
        bal = loan["orig. balance"]
        if isinstance(bal, float) and bal <= 0:
            problems.append("balance")
        loan["problems"] = problems
        loans.append(loan)
    return loans


def read_master(path: Path) -> dict:
    out = {}
    for rec in table(sheet_rows(path), "loan program"):
        flag = str(rec.get("new_programs", "")).strip().casefold() in ("true", "1", "yes")
        out[(key(rec["loan program"]), str(rec["platform"]).strip().casefold())] = (key(rec["type"]), flag)
    return out


def read_grids(path: Path, rules) -> tuple[dict, dict]:
    grids = {}
    for name in set(rules["uw_sheets"].values()):
        rows = table(sheet_rows(path, name), "finance_type_name_nls")
        grids[name] = [
            {"program": key(r["finance_type_name_nls"]), **{k: dec(r[k]) for k in
             ("monthly_income_min", "fico_min", "approval_high", "dti_max", "pti_ratio")}}
            for r in rows
        ]
    comap = {}
    for name in rules["comap_sheets"]:
        rows = table(sheet_rows(path, name), None)
        mins: dict[str, float] = {}
        if rows and "min fico" in rows[0] and "loan program" in rows[0]:
            for r in rows:
                mins[key(r["loan program"])] = min(mins.get(key(r["loan program"]), math.inf), float(r["min fico"]))
        else:
            header_row = next(i for i, row in enumerate(sheet_rows(path, name)) if any(c is not None for c in row))
            header = sheet_rows(path, name)[header_row]
            bands = {key(h): int(str(h).strip()[:3]) for h in header[1:] if h is not None and str(h).strip()[:3].isdigit()}
            for r in rows:
                for band, low in bands.items():
                    cell = r.get(band)
                    if cell is not None and str(cell).strip():
                        mins[key(cell)] = min(mins.get(key(cell), math.inf), low)
        comap[name] = mins
    return grids, comap


def read_existing(path: Path, repurchased: set[str]) -> list[dict]:
    out = []
    with open(path, newline="") as handle:
        for rec in csv.DictReader(handle):
            rec = {key(k): v for k, v in rec.items()}
            flag = lambda name: str(rec.get(name, "")).strip().casefold() in ("true", "1", "yes")  # noqa: E731
            out.append({
                "seller loan #": rec["seller loan #"].strip(), "platform": rec["platform"].strip().casefold(),
                "loan program": rec["loan program"].strip(), "type": key(rec["type"]),
                "orig. balance": float(rec["orig. balance"]), "lender price(%)": float(rec["lender price(%)"]),
                "fico borrower": float(rec["fico borrower"]), "term": float(rec["term"]), "apr": float(rec["apr"]),
                "property state": rec["property state"].strip(), "dealer fee": float(rec["dealer fee"]),
                "promo_term": float(rec.get("promo_term") or 0), "new_programs": flag("new_programs"),
                "excess": flag("excess_asset"),
                "repurchase": flag("repurchase") or rec["seller loan #"].strip() in repurchased,
            })
    return out


def read_tape(path: Path) -> tuple[set[str], set[str]]:
    numbers, repurchased = set(), set()
    with open(path, newline="") as handle:
        for rec in csv.DictReader(handle):
            number_ = "SFC_" + str(int(rec["Account Number"]))
            numbers.add(number_)
            if any(code.strip().upper() == "REPURCHASE" for code in rec["Status Codes"].split(";")):
                repurchased.add(number_)
    return numbers, repurchased


def decide(inbox: Path, exhibits: dict[str, Path], tape: Path, rules: dict) -> tuple[list[dict], list[dict]]:
    loans = [l for p in ("sfy", "prime") for l in read_exhibit(exhibits[p], p)]
    counts: dict[str, int] = {}
    for l in loans:
        counts[l["seller loan #"]] = counts.get(l["seller loan #"], 0) + 1
    for l in loans:
        if l["seller loan #"] and counts[l["seller loan #"]] > 1:
            l["problems"].append("duplicate")
    master = read_master(inbox / "MASTER_SHEET.xlsx")
    notes_master = read_master(inbox / "MASTER_SHEET - Notes.xlsx")
    grids, comap = read_grids(inbox / "Underwriting_Grids_COMAP.xlsx", rules)
    _, repurchased = read_tape(tape)

    for l in loans:
        l["kind"] = "notes" if key(l["application type"]) == "hd note" else "regular"
        found = (notes_master if l["kind"] == "notes" else master).get((key(l["loan program"]), l["platform"]))
        l["type"], l["new_programs"] = found if found else ("", False)
        reasons = []
        if l["problems"]:
            l.update(price=False, uw="not_checked", comap="not_checked", reasons=["invalid_data"])
            continue
        if found is None:
            reasons.append("unknown_program")
        l["price"] = cents(dec(l["lender price(%)"])) == cents(dec(l["modeled_purchase_price"]) * 100)
        if not l["price"]:
            reasons.append("purchase_price_mismatch")
        # underwriting
        if l["platform"] == "sfy" and l["tu144"] == 1:
            l["uw"] = "exempt_tu144"
        else:
            sheet = rules["uw_sheets"][(l["platform"], l["kind"])]
            rows = [r for r in grids[sheet] if r["program"] == key(l["loan program"])]
            balance = dec(l["orig. balance"]) - dec(l["stamp fee"])
            income = dec(l["income"]) / 12
            fico, dti, pti = dec(l["fico borrower"]), dec(l["dti"]) * 100, dec(l["pti"])
            base = [r for r in rows if r["fico_min"] <= fico and balance <= r["approval_high"] and dti <= r["dti_max"]]
            if any(r["monthly_income_min"] <= income for r in base):
                l["uw"] = "pass"
            elif fico > INCOME_WAIVER_FICO and any(pti <= r["pti_ratio"] for r in base):
                l["uw"] = "pass_income_waived"
            else:
                l["uw"] = "fail"
                reasons.append("underwriting_notes" if l["kind"] == "notes" else f"underwriting_{l['platform']}")
        # CoMAP
        if not l["price"]:
            l["comap"] = "not_checked"
        else:
            if l["kind"] == "notes":
                sheets = [rules["notes_comap"]]
            else:
                sheets = next(s for after, s in rules["eras"][l["platform"]] if after is None or l["submit"] > after)
            minimum = next((comap[s][key(l["loan program"])] for s in sheets if key(l["loan program"]) in comap[s]), None)
            if minimum is None:
                l["comap"] = "not_in_grid"
            elif l["fico borrower"] >= minimum:
                l["comap"] = "pass"
            else:
                l["comap"] = "fail"
                reasons.append("comap_notes" if l["kind"] == "notes" else f"comap_{l['platform']}")
        l["reasons"] = sorted(reasons, key=REASON_ORDER.index)
    existing = read_existing(inbox / "current_assets.csv", repurchased)
    return loans, existing


def eligibility(loans: list[dict], existing: list[dict], checks_by_platform: dict) -> list[dict]:
    def row_of(l, buy):
        return {"n": l["seller loan #"], "platform": l["platform"], "program": key(l["loan program"]),
                "type": l["type"], "term": l["term"], "fico": l["fico borrower"], "apr": l["apr"],
                "lender_price": l["lender price(%)"], "orig_balance": l["orig. balance"],
                "promo_term": l["promo_term"], "dealer_fee": l["dealer fee"] / (100 if buy else 1),
                "new_programs": l["new_programs"], "property_state": l["property state"],
                "out": (not buy) and (l["repurchase"] or l["excess"]), "buy": buy,
                "to_purchase": buy and not l["reasons"]}

    pop = [row_of(l, True) for l in loans if "invalid_data" not in l["reasons"]] + [row_of(e, False) for e in existing]
    ops = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
           "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "in": lambda a, b: a in b}
    results = []
    for platform, checks in checks_by_platform.items():
        base = [r for r in pop if r["platform"] == platform and not r["out"]]
        populations = {"value": base, "before": [r for r in base if not r["buy"]],
                       "to_purchase": [r for r in base if not r["buy"] or r["to_purchase"]]}
        for c in checks:
            def match(r):
                for col, op, val in c.get("where", []):
                    if col == "loan_program":
                        col, val = "program", key(val)
                    if not ops[op](r[col], val):
                        return False
                return True

            def metric(rows):
                total = math.fsum(r["orig_balance"] for r in rows)
                if not rows or total == 0:
                    return None
                m = c["metric"]
                if m in ("balance_share", "batch_balance_share"):
                    return math.fsum(r["orig_balance"] for r in rows if match(r)) / total
                if m == "count_share":
                    return sum(1 for r in rows if match(r)) / len(rows)
                if m == "distribution":
                    by = {}
                    for r in rows:
                        by[r["property_state"]] = by.get(r["property_state"], 0.0) + r["orig_balance"]
                    return {k: v / total for k, v in by.items()}
                values = [r[c["column"]] for r in rows]
                if m == "max":
                    return max(values)
                if m == "mean":
                    return math.fsum(values) / len(values)
                return math.fsum(v * r["orig_balance"] for v, r in zip(values, rows)) / total

            if c["metric"] == "batch_balance_share":
                vals = {"value": metric([r for r in base if r["buy"]]), "before": None, "to_purchase": None}
            else:
                vals = {k: metric(v) for k, v in populations.items()}
            status = "no_data" if vals["value"] is None else ("info" if c.get("limit") is None else
                     ("pass" if ops[c["op"]](vals["value"], c["limit"]) else "fail"))
            excess, contributors = None, []
            if status == "fail" and c["metric"] in ("balance_share", "count_share"):
                subset = [r for r in base if match(r)]
                if c["metric"] == "balance_share":
                    s = math.fsum(r["orig_balance"] for r in subset)
                    b = math.fsum(r["orig_balance"] for r in base)
                    excess = (s - c["limit"] * b) / (1 - c["limit"])
                contributors = sorted(((r["n"], r["orig_balance"]) for r in subset if r["buy"]), key=lambda t: -t[1])
            headroom = None
            if (c["metric"] == "balance_share" and c.get("op") in ("<", "<=") and 0 <= c["limit"] < 1
                    and vals["to_purchase"] is not None and ops[c["op"]](vals["to_purchase"], c["limit"])):
                rows = populations["to_purchase"]
                s = math.fsum(r["orig_balance"] for r in rows if match(r))
                b = math.fsum(r["orig_balance"] for r in rows)
                headroom = (c["limit"] * b - s) / (1 - c["limit"])
            results.append({"platform": platform, "check_id": c["id"], "status": status, **vals,
                            "excess_balance": excess, "contributors": contributors, "headroom_balance": headroom})
    return results


def rules_from_yaml(data: dict) -> dict:
    uw = data["sheets"]["underwriting"]
    eras = {p: [(e["after"], e["sheets"]) for e in data["comap_eras"][p]] for p in ("sfy", "prime")}
    sheets = [data["sheets"]["notes_comap"]] + [s for p in eras.values() for _, ss in p for s in ss]
    return {
        "uw_sheets": {("sfy", "regular"): uw["sfy_regular"], ("prime", "regular"): uw["prime_regular"],
                      ("sfy", "notes"): uw["sfy_notes"], ("prime", "notes"): uw["prime_notes"]},
        "notes_comap": data["sheets"]["notes_comap"],
        "comap_sheets": list(dict.fromkeys(sheets)),
        "eras": eras,
        "checks": {"prime": data["eligibility"]["prime"], "sfy": data["eligibility"]["sfy"]},
    }
