import json
import threading
import time

import numpy as np
import openpyxl
import pandas as pd
import pytest

from conftest import by_number, existing_frame, loan, run_rules
from loan_engine_dagster.adapters import batch
from loan_engine_dagster.adapters.outputs import publish_batch, write_concurrently, write_workbook
from loan_engine_dagster.rules import reports
from loan_engine_dagster.rules.purchase_plan import make_plan

import datetime as dt

EXPECTED_FILES = {
    "loan_decisions.csv", "purchase_price_mismatch.xlsx", "flagged_loans.xlsx", "notes_flagged_loans.xlsx",
    "comap_not_passed.xlsx", "special_asset_prime.xlsx", "special_asset_sfy.xlsx", "share/purchase_price_mismatch.xlsx",
    "share/flagged_loans.xlsx", "share/notes_flagged_loans.xlsx", "share/comap_not_passed.xlsx",
    "eligibility_checks.json", "eligibility_checks_summary.xlsx", "run_summary.json", "purchase_plan.csv",
}


def write_batch_outputs(output_root, decisions, **kwargs):
    """The batch writer with the purchase plan computed as the pipeline does (no existing assets here)."""
    plan = make_plan(decisions.loans, existing_frame([]), decisions.checks, kwargs["rules"])
    return batch.write_batch_outputs(output_root, decisions, plan, **kwargs)


def _files(folder):
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_every_file_written_even_when_empty(tmp_path, rules):
    decisions = run_rules([loan("SFC_1")])  # one clean loan: every exception report is empty
    folder, _ = write_batch_outputs(tmp_path, decisions, batch="2026-02-19", pdate=dt.date(2026, 2, 24), rules=rules, input_files=[])
    assert _files(folder) == EXPECTED_FILES
    sheet = openpyxl.load_workbook(folder / "flagged_loans.xlsx").active
    assert sheet.max_row == 1 and sheet.cell(1, 1).value == "SELLER Loan #"
    share = openpyxl.load_workbook(folder / "share/flagged_loans.xlsx").active
    assert share.max_column == reports.SHARE_COLUMN_LIMIT


def test_decisions_csv_shape(tmp_path, rules):
    decisions = run_rules([loan("SFC_1"), loan("SFC_2", **{"FICO Borrower": 600, "modeled_purchase_price": 0.5})])
    folder, _ = write_batch_outputs(tmp_path, decisions, batch="2026-02-19", pdate=dt.date(2026, 2, 24), rules=rules, input_files=[])
    frame = pd.read_csv(folder / "loan_decisions.csv", dtype=str, keep_default_na=False)
    assert list(frame.columns) == [
        "seller_loan_number", "platform", "loan_program", "application_type", "loan_kind", "type",
        "purchase_price_check", "underwriting_status", "comap_status", "disposition", "rejection_criteria",
        "rejection_reasons", "message",
    ]
    assert frame.to_dict("records")[1] | {"message": ""} == {
        "seller_loan_number": "SFC_2", "platform": "sfy", "loan_program": "Std 120", "application_type": "Individual",
        "loan_kind": "regular", "type": "standard", "purchase_price_check": "false", "underwriting_status": "fail",
        "comap_status": "not_checked", "disposition": "rejected", "rejection_criteria": "purchase_price_mismatch",
        "rejection_reasons": "purchase_price_mismatch;underwriting_sfy", "message": "",
    }
    assert frame.loc[0, "purchase_price_check"] == "true" and frame.loc[0, "rejection_reasons"] == ""


def test_eligibility_json_shape(tmp_path, rules):
    decisions = run_rules([loan("SFC_1")])
    folder, _ = write_batch_outputs(tmp_path, decisions, batch="2026-02-19", pdate=dt.date(2026, 2, 24), rules=rules, input_files=[])
    doc = json.loads((folder / "eligibility_checks.json").read_text())
    assert set(doc) == {"batch", "pdate", "rules_version", "checks", "summary", "plan"}
    assert (doc["batch"], doc["pdate"], doc["rules_version"]) == ("2026-02-19", "2026-02-24", rules.version)
    assert len(doc["checks"]) == len(rules.eligibility.prime) + len(rules.eligibility.sfy)
    for check in doc["checks"]:
        assert list(check) == ["platform", "check_id", "description", "metric", "op", "limit", "value", "before",
                               "to_purchase", "status", "excess_balance", "contributors", "headroom_balance",
                               "plan_value", "plan_status"]
        assert check["status"] in {"pass", "fail", "info", "no_data"}
        assert check["plan_status"] in {"pass", "fail", "info", "no_data", "not_curable"}
    assert set(doc["plan"]) == {"prime", "sfy"}
    assert set(doc["plan"]["sfy"]) >= {"status", "bought_balance", "held_back_balance", "held_back_loans", "upper_bound_balance"}
    summary = json.loads((folder / "run_summary.json").read_text())
    assert summary["rules_version"] == rules.version


@pytest.mark.parametrize("text", ["=1+1", "+SUM(A1:A2)", "-2+3", "@cmd", "=HYPERLINK(\"http://x\")"])
def test_formula_like_text_stays_text(tmp_path, text):
    path = tmp_path / "r.xlsx"
    write_workbook(pd.DataFrame({"Dealer Name": [text], "n": [1.5]}), path)
    cell = openpyxl.load_workbook(path).active.cell(2, 1)
    assert cell.data_type == "s" and cell.value == text
    assert cell.quotePrefix


def test_every_workbook_names_the_rules_version_except_the_sellers_copies(tmp_path, rules):
    decisions = run_rules([loan("SFC_1", **{"FICO Borrower": 600}), loan("SFC_2", **{"modeled_purchase_price": 0.5})])
    folder, _ = write_batch_outputs(tmp_path, decisions, batch="b", pdate=dt.date(2026, 2, 24), rules=rules, input_files=[])
    for path in folder.rglob("*.xlsx"):
        sheet = openpyxl.load_workbook(path).worksheets[0]
        header = [c.value for c in sheet[1]]
        versions = {r[header.index("rules_version")] for r in sheet.iter_rows(min_row=2, values_only=True)} if (
            "rules_version" in header) else None
        if path.parent.name == "share":
            assert versions is None, path
        else:
            assert versions in ({rules.version}, set()), path  # an empty report has the header only
    assert {c.value for c in openpyxl.load_workbook(folder / "flagged_loans.xlsx").active["A"]} >= {"SFC_1"}


def test_seller_text_in_reports_is_not_a_formula(tmp_path, rules):
    decisions = run_rules([loan("SFC_1", **{"Loan Program": "=2+2", "Dealer Name": "@x", "FICO Borrower": 600})])
    folder, _ = write_batch_outputs(tmp_path, decisions, batch="b", pdate=dt.date(2026, 2, 24), rules=rules, input_files=[])
    for name in ("flagged_loans.xlsx", "share/flagged_loans.xlsx"):
        sheet = openpyxl.load_workbook(folder / name).active
        cells = [c for row in sheet.iter_rows() for c in row if c.value == "=2+2"]
        assert cells and all(c.data_type == "s" for c in cells)


def test_run_summary_has_counts_and_balances_by_reason(tmp_path, rules):
    decisions = run_rules([loan("SFC_1"), loan("SFC_2", **{"Orig. Balance": 2500.0, "modeled_purchase_price": 0.5}),
                           loan("SFC_3", **{"Orig. Balance": 4000.0, "Loan Program": "Nobody's"})])
    _, summary = write_batch_outputs(tmp_path, decisions, batch="b", pdate=dt.date(2026, 2, 24), rules=rules, input_files=[])
    by_loan = decisions.exceptions[decisions.exceptions["severity"] == "error"].groupby("reason")["seller_loan_number"].agg(set)
    balances = {"SFC_1": 10000.0, "SFC_2": 2500.0, "SFC_3": 4000.0}
    assert summary["reasons"] == {r: len(n) for r, n in by_loan.items()}
    assert summary["reason_balances"] == {r: sum(balances[x] for x in n) for r, n in by_loan.items()}
    assert summary["reason_balances"]["purchase_price_mismatch"] == 2500.0
    assert summary["reason_balances"]["unknown_program"] == 4000.0


def test_seller_columns_named_like_the_engines_are_carried_beside_them(tmp_path, rules):
    # Past bug: a seller's `type` column replaced the master sheet's in the
    # merge (the run failed as a code error), `message` broke the disposition
    # join, and `platform` silently overwrote the engine's platform.
    seller = {"type": "seller type", "message": "seller note", "platform": "web", "disposition": "keep",
              "new_programs": "maybe", "Dealer Name": "ACME"}
    decisions = run_rules([loan("SFC_1", **seller), loan("SFC_2", **seller, **{"FICO Borrower": 600})])
    loans = by_number(decisions)
    assert loans.loc["SFC_1", "disposition"] == "to_purchase" and loans.loc["SFC_2", "disposition"] == "rejected"
    assert set(loans["platform"]) == {"sfy"} and set(loans["type"]) == {"standard"}
    folder, _ = write_batch_outputs(tmp_path, decisions, batch="b", pdate=dt.date(2026, 2, 24), rules=rules, input_files=[])
    sheet = openpyxl.load_workbook(folder / "flagged_loans.xlsx").active
    header = [c.value for c in sheet[1]]
    row = dict(zip(header, [c.value for c in sheet[2]], strict=True))
    assert row["type"] == "standard" and row["type (exhibit)"] == "seller type"
    assert row["platform"] == "sfy" and row["platform (exhibit)"] == "web"
    assert row["message (exhibit)"] == "seller note" and row["Dealer Name"] == "ACME"
    assert len(header) == len(set(header))


def test_publish_replaces_whole_and_failure_keeps_old(tmp_path):
    def good(folder):
        (folder / "a.txt").write_text("new")

    def bad(folder):
        (folder / "a.txt").write_text("half")
        raise RuntimeError("disk full")

    (tmp_path / "b1").mkdir()
    (tmp_path / "b1" / "a.txt").write_text("old")
    (tmp_path / "b1" / "stale.txt").write_text("old")
    with pytest.raises(RuntimeError):
        publish_batch(tmp_path, "b1", bad)
    assert (tmp_path / "b1" / "a.txt").read_text() == "old"
    publish_batch(tmp_path, "b1", good)
    assert _files(tmp_path / "b1") == {"a.txt"} and (tmp_path / "b1" / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b1"]  # no staging folders left behind


def test_concurrent_writers_fail_as_one_after_another_would():
    """Writers run two at a time, but the error is the first listed writer's
    (as when they ran in order), and nothing is still writing once it is raised."""
    first_failing, log = threading.Event(), []

    def listed_first():
        assert first_failing.wait(10)  # fails only after the later writer has failed
        raise ValueError("first listed")

    def listed_second():
        first_failing.set()
        raise RuntimeError("second listed")

    def slow():
        first_failing.wait(10)
        time.sleep(0.2)
        log.append("slow finished")

    with pytest.raises(ValueError, match="first listed"):
        # biggest first: the second and the slow writer start, the second fails, then the first starts
        write_concurrently([(1, listed_first), (3, listed_second), (2, slow)])
    assert log == ["slow finished"]  # started before the failure, so awaited
    ran = []
    write_concurrently([(0, lambda: ran.append("a")), (5, lambda: ran.append("b")), (1, lambda: ran.append("c"))])
    assert sorted(ran) == ["a", "b", "c"]


def test_a_failing_writer_fails_the_whole_export(tmp_path, rules, monkeypatch):
    """One workbook failing among the concurrent writers: the export raises its
    error and leaves no staging folder; the published batch is untouched."""
    decisions = run_rules([loan("SFC_1"), loan("SFC_2", **{"FICO Borrower": 600})])
    folder, _ = write_batch_outputs(tmp_path, decisions, batch="b", pdate=dt.date(2026, 2, 24), rules=rules, input_files=[])
    before = {name: (folder / name).read_bytes() for name in _files(folder) if name.endswith((".csv", ".json"))}
    real = batch.write_workbook

    def broken(frame, path, *args, **kwargs):
        if path.name == "comap_not_passed.xlsx":
            raise OSError(28, "No space left on device")
        return real(frame, path, *args, **kwargs)

    monkeypatch.setattr(batch, "write_workbook", broken)
    with pytest.raises(OSError, match="No space left on device"):
        write_batch_outputs(tmp_path, decisions, batch="b", pdate=dt.date(2026, 2, 24), rules=rules, input_files=[],
                            run_id="second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no staging folder left behind
    assert {name: (folder / name).read_bytes() for name in before} == before


def test_purchase_plan_csv_and_the_plan_beside_the_checks(tmp_path, rules):
    decisions = run_rules([loan("SFC_1"), loan("SFC_2", **{"FICO Borrower": 600, "modeled_purchase_price": 0.5})])
    folder, summary = write_batch_outputs(tmp_path, decisions, batch="b", pdate=dt.date(2026, 2, 24), rules=rules, input_files=[])
    plan = pd.read_csv(folder / "purchase_plan.csv", dtype=str, keep_default_na=False)
    assert plan.to_dict("records") == [  # the rejected SFC_2 is not in the plan
        {"seller_loan_number": "SFC_1", "platform": "sfy", "orig_balance": "10000.0", "plan": "buy", "binding_checks": ""}]
    sheet = openpyxl.load_workbook(folder / "eligibility_checks_summary.xlsx").active
    headers = [c.value for c in sheet[1]]
    assert {"headroom_balance", "plan_value", "plan_status", "platform_plan", "rules_version"} <= set(headers)
    assert {r[headers.index("rules_version")] for r in sheet.iter_rows(min_row=2, values_only=True)} == {rules.version}
    texts = {r[headers.index("platform_plan")] for r in sheet.iter_rows(min_row=2, values_only=True)}
    assert any(t.startswith("plan SFY: not_needed: buy 10,000.00, hold back 0 loans") for t in texts)
    assert summary["plan"]["sfy"]["status"] == "not_needed"


def _cells(path):
    sheet = openpyxl.load_workbook(path).active
    return sheet, [[(c.value, c.data_type) for c in row] for row in sheet.iter_rows()]


def _every_kind(**extra):
    return pd.DataFrame(
        {
            "SELLER Loan #": pd.array(["L1", "L2", "L3"], dtype="string"),
            "Dealer Name": ["=HYPERLINK(\"http://x\")", None, "+1"],
            "Orig. Balance": [1000.5, float("nan"), 3.0],
            "source_row": [7, 8, 9],
            "new_programs": [True, False, True],
            "Submit Date": pd.to_datetime(["2026-01-29", None, "2026-02-03"]),
            "Purchase_Date": [dt.date(2026, 2, 24), None, dt.date(2026, 2, 24)],
            **extra,
        },
        index=[10, 5, 0],  # a filtered, sorted report: the index is not written
    )


def test_workbook_reads_back_value_by_value(tmp_path):
    path = tmp_path / "r.xlsx"
    write_workbook(_every_kind(), path)
    sheet, cells = _cells(path)
    assert cells[0] == [(c, "s") for c in _every_kind().columns]
    assert all(c.font.b for c in sheet[1]) and sheet.auto_filter.ref == "A1:G4"
    assert cells[1] == [
        ("L1", "s"), ("=HYPERLINK(\"http://x\")", "s"), (1000.5, "n"), (7, "n"), (True, "b"),
        (dt.datetime(2026, 1, 29), "d"), (dt.datetime(2026, 2, 24), "d"),
    ]
    assert [v for v, _ in cells[2]] == ["L2", None, None, 8, False, None, None]
    assert sheet["B4"].value == "+1" and sheet["B4"].data_type == "s" and sheet["B4"].quotePrefix
    assert not sheet["A2"].quotePrefix  # no formula-like text in the column: no prefix needed
    assert sheet["F2"].number_format == "yyyy-mm-dd" and sheet["G4"].number_format == "yyyy-mm-dd"


def test_workbook_with_a_mixed_column_reads_back_the_same(tmp_path):
    """A seller's free-form column can mix text, numbers and dates; such a
    sheet goes through the cell-by-cell writer and reads back alike."""
    mixed = ["=2+2", 12.5, dt.date(2026, 1, 2)]
    write_workbook(_every_kind(Notes=mixed), tmp_path / "mixed.xlsx")
    write_workbook(_every_kind(), tmp_path / "plain.xlsx")
    sheet, cells = _cells(tmp_path / "mixed.xlsx")
    _, plain = _cells(tmp_path / "plain.xlsx")
    assert [row[:-1] for row in cells] == plain
    assert [row[-1] for row in cells[1:]] == [("=2+2", "s"), (12.5, "n"), (dt.datetime(2026, 1, 2), "d")]
    assert sheet["H2"].quotePrefix and sheet.auto_filter.ref == "A1:H4"


@pytest.mark.parametrize("mixed", [False, True], ids=["columnar writer", "cell-by-cell writer"])
def test_text_longer_than_an_excel_cell_is_cut_there_not_a_failed_export(tmp_path, mixed):
    """Past bug: one cell over Excel's 32,767 characters made the Rust writer
    refuse the whole workbook ("String exceeds Excel's limit"), failing the
    batch's exports; XlsxWriter cuts such text. Both writers now cut it."""
    from loan_engine_dagster.adapters.outputs import EXCEL_CELL_CHARS

    long = "=" + "x" * 40_000  # formula-like too: still quoted text once cut
    notes = [long, None, "short"] if not mixed else [long, 12.5, "short"]
    write_workbook(_every_kind(Notes=notes), tmp_path / "long.xlsx")
    sheet, cells = _cells(tmp_path / "long.xlsx")
    assert cells[1][-1] == (long[:EXCEL_CELL_CHARS], "s") and sheet["H2"].quotePrefix
    assert cells[3][-1] == ("short", "s")
    # Excel counts UTF-16 units: an emoji is two, and a cut through one drops it.
    wide = "\N{THUMBS UP SIGN}" + "x" * 40_000
    write_workbook(_every_kind(Notes=[wide, None, "short"] if not mixed else [wide, 12.5, "short"]), tmp_path / "wide.xlsx")
    _, cells = _cells(tmp_path / "wide.xlsx")
    assert cells[1][-1] == (wide[:EXCEL_CELL_CHARS - 1], "s")
    assert len(cells[1][-1][0].encode("utf-16-le")) // 2 == EXCEL_CELL_CHARS


def test_a_workbook_or_csv_that_cannot_be_written_is_named(tmp_path):
    """The Rust writers' own message ("Failed to save workbook: No such file
    or directory") named no file."""
    from loan_engine_dagster.adapters.outputs import write_csv

    missing = tmp_path / "gone"
    with pytest.raises(OSError, match="gone/r.xlsx"):
        write_workbook(_every_kind(), missing / "r.xlsx")
    with pytest.raises(OSError, match="gone/r.csv"):
        write_csv(pd.DataFrame({"a": pd.array(["x"], dtype="string")}), missing / "r.csv")


def test_empty_workbook_keeps_its_header(tmp_path):
    path = tmp_path / "e.xlsx"
    write_workbook(_every_kind().iloc[:0], path)
    sheet, cells = _cells(path)
    assert cells == [[(c, "s") for c in _every_kind().columns]]


@pytest.mark.parametrize("kind", ["str", "string", "object"])
def test_csv_is_byte_for_byte_what_pandas_writes(tmp_path, kind):
    from loan_engine_dagster.adapters.outputs import write_csv

    tricky = ["a,b", 'say "hi"', "line\nbreak", " lead", "trail ", "", None, "é ü 中", "#x", "=1+1", "tab\there", '"', ",",
              "\r\n", "true"]
    frames = [
        pd.DataFrame({"a": pd.array(tricky, dtype=kind), "b": pd.array(tricky[::-1], dtype=kind)}, index=range(20, 35)),
        pd.DataFrame({"a": pd.array(["x", "cr\ralone"], dtype=kind), "b": ["y", "z"]}),  # pandas leaves a lone CR unquoted
        pd.DataFrame({"a": ["x", "y"], "n": [1.5, float("nan")]}),  # numbers: pandas' formatting
        # Floats are turned into text for the Rust writer: every shape of float pandas writes
        pd.DataFrame({"a": pd.array(["x"] * 16, dtype=kind), "n": [
            1e16, 1e-5, -0.0, 0.0, np.inf, -np.inf, np.nan, 0.1 + 0.2, 123456789012345.0, 5e-324,
            1.7976931348623157e308, 100.0, 2.5, 1e15, 12345.678901234567, -1e-7]}, index=range(5, 21)),
        pd.DataFrame({"f32": np.array([0.1, 1e20, np.nan], dtype=np.float32), "i": [1, 2, 3]}),  # an int: pandas
    ]
    for i, frame in enumerate(frames):
        write_csv(frame, tmp_path / f"{i}.csv")
        frame.to_csv(tmp_path / f"{i}.pandas.csv", index=False)
        assert (tmp_path / f"{i}.csv").read_bytes() == (tmp_path / f"{i}.pandas.csv").read_bytes()


def test_unusual_column_types_still_write(tmp_path):
    frame = pd.DataFrame({"grade": pd.Categorical(["A", "=B"]), "n": pd.array([1, None], dtype="Int64"),
                          "ok": pd.array([True, None], dtype="boolean")})
    write_workbook(frame, tmp_path / "u.xlsx")
    _, cells = _cells(tmp_path / "u.xlsx")
    assert cells[1:] == [[("A", "s"), (1, "n"), (True, "b")], [("=B", "s"), (None, "n"), (None, "n")]]


def test_summary_workbook_charts_each_platforms_share_limits(tmp_path, rules):
    import zipfile

    decisions = run_rules([loan("SFC_1"), loan("SFC_2", **{"Orig. Balance": 60000.0})], [loan("PRI_1")])
    folder, _ = write_batch_outputs(tmp_path, decisions, batch="2026-02-19", pdate=dt.date(2026, 2, 24), rules=rules, input_files=[])
    path = folder / "eligibility_checks_summary.xlsx"
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["checks", "PRIME", "SFY"]
    sfy = list(book["SFY"].values)
    assert sfy[0][:6] == ("check", "description", "limit (%)", "value (%)", "before (%)", "to_purchase (%)")
    shares = [c for c in rules.eligibility.sfy if c.metric in ("balance_share", "count_share") and c.limit is not None]
    assert [r[0] for r in sfy[1:]] == [c.id for c in shares]
    g1 = next(r for r in sfy[1:] if r[0] == "check_g1")  # Orig. Balance > 50,000: 60,000 of 70,000
    assert g1[2] == pytest.approx(38.0) and g1[3] == pytest.approx(100 * 60000 / 70000)
    with zipfile.ZipFile(path) as archive:
        charts = sorted(n for n in archive.namelist() if n.startswith("xl/charts/chart"))
        xml = {n: archive.read(n).decode() for n in charts}
    assert len(charts) == 2  # one per platform
    sfy_chart = next(x for x in xml.values() if "SFY!$D$2:$D$" in x)
    for column in ("C", "D", "E", "F"):  # limit, value, before, to_purchase
        assert f"SFY!${column}$2:${column}${len(shares) + 1}" in sfy_chart


# ---------------------------------------------------------------- reports and rows after a worker died


def _stage(root, decisions, rules, run_id):
    plan = make_plan(decisions.loans, existing_frame([]), decisions.checks, rules)
    staging, _ = batch.stage_batch_outputs(root, decisions, plan, batch="b", pdate=dt.date(2026, 2, 24), rules=rules,
                                           input_files=[], run_id=run_id)
    return staging


def _commit(engine, decisions, run_id, publish=None):
    from loan_engine_dagster.adapters import database

    database.save_batch(engine, batch_key="b", run_id=run_id, rules_version="v", loans=decisions.loans,
                        exceptions=decisions.exceptions, checks=decisions.checks, publish=publish)


def _swapped_in_then_killed(root, staging):
    """What a worker killed between the swap and the commit leaves: its
    reports in place, the previous ones set aside (swapped_in's renames)."""
    if (root / "b").exists():
        (root / "b").rename(root / ".b.old-0123")
    staging.rename(root / "b")


def _reconcile(engine, root):
    with engine.begin() as conn:
        return batch.reconcile_reports(conn, root, "b")


def _shown(root):
    return json.loads((root / "b" / "run_summary.json").read_text())["run_id"]


@pytest.fixture
def results(tmp_path):
    from loan_engine_dagster.adapters import database

    engine = database.engine_for(f"sqlite:///{tmp_path / 'results.db'}")
    yield engine
    engine.dispose()


def test_reports_swapped_in_by_a_worker_killed_before_its_commit_give_way_to_the_rows(tmp_path, rules, results):
    root, decisions = tmp_path / "out", run_rules([loan("SFC_1")])
    _commit(results, decisions, "q", publish=lambda: batch.delivered(_stage(root, decisions, rules, "q"), root / "b", "q"))
    # Run r swaps its reports in, then its worker dies before the commit.
    _swapped_in_then_killed(root, _stage(root, decisions, rules, "r"))
    assert _shown(root) == "r"
    assert "put back the reports of run q" in _reconcile(results, root)
    assert _shown(root) == "q" and _reconcile(results, root) is None


def test_rows_committed_by_a_worker_that_lost_the_answer_get_their_reports(tmp_path, rules, results):
    root, decisions = tmp_path / "out", run_rules([loan("SFC_1")])
    _commit(results, decisions, "q", publish=lambda: batch.delivered(_stage(root, decisions, rules, "q"), root / "b", "q"))
    # Run r's commit went through, but the answer never came: its reports were put back aside.
    _stage(root, decisions, rules, "r")
    _commit(results, decisions, "r")
    assert _shown(root) == "q"
    assert "put back the reports of run r" in _reconcile(results, root)
    assert _shown(root) == "r"


def test_a_link_to_nothing_in_the_batch_folders_place_gives_way_to_the_rows_reports(tmp_path, rules, results):
    # Past bug (second read): the batch folder's reports are put back by a
    # rename, which a link to nothing in its place refused with a bare
    # "[Errno 20] Not a directory" (or "File exists").
    root, decisions = tmp_path / "out", run_rules([loan("SFC_1")])
    _commit(results, decisions, "q", publish=lambda: batch.delivered(_stage(root, decisions, rules, "q"), root / "b", "q"))
    (root / "b").rename(root / ".b.old-0123")  # set aside, as a killed run's swap leaves it
    (root / "b").symlink_to(tmp_path / "nowhere")
    assert "put back the reports of run q" in _reconcile(results, root)
    assert not (root / "b").is_symlink() and _shown(root) == "q"


def test_reports_without_any_rows_are_set_aside(tmp_path, rules, results):
    root, decisions = tmp_path / "out", run_rules([loan("SFC_1")])
    _swapped_in_then_killed(root, _stage(root, decisions, rules, "r"))
    assert "had no rows" in _reconcile(results, root)
    assert not (root / "b").exists()


def test_a_frozen_worker_whose_commit_fails_late_leaves_the_later_runs_reports_in_place(tmp_path, rules, results):
    # Past bug (hostile pass): a worker paused between its swap and its commit,
    # marked failed meanwhile, resumed after a later run had published the
    # batch; its failed commit's undo renamed that run's folder to its own
    # staging name and left no batch folder at all.
    root, decisions = tmp_path / "out", run_rules([loan("SFC_1")])
    _commit(results, decisions, "q", publish=lambda: batch.delivered(_stage(root, decisions, rules, "q"), root / "b", "q"))
    frozen = batch.delivered(_stage(root, decisions, rules, "a"), root / "b", "a")
    frozen.__enter__()  # run a's reports swapped in; its worker stops here
    _commit(results, decisions, "b2", publish=lambda: batch.delivered(_stage(root, decisions, rules, "b2"), root / "b", "b2"))
    assert _shown(root) == "b2"
    # Run a resumes and its commit fails (its lease was revoked): that error stands, and nothing moves.
    assert frozen.__exit__(RuntimeError, RuntimeError("commit refused"), None) is False
    assert _shown(root) == "b2" and _reconcile(results, root) is None
    assert sorted(p.name for p in root.iterdir()) == ["b"]
