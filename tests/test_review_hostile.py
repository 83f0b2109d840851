"""A hostile second read of the intake, run options, column spellings and
the purchase plan: each test pins a fault found by feeding the engine what a
tired operator or an odd seller file would, and failed before its fix."""

import datetime as dt
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from conftest import exhibit_raw, loan

from loan_engine_dagster.adapters.incidents import classify
from loan_engine_dagster.orchestration import assets
from loan_engine_dagster.orchestration.assets import BatchRunConfig
from loan_engine_dagster.orchestration.partitions import batches
from loan_engine_dagster.orchestration.resources import InboxResource, Notifier, OutputsResource, ResultsDatabase, RulesResource
from loan_engine_dagster.orchestration.run_records import stop_point
from loan_engine_dagster.rules import parsing
from loan_engine_dagster.rules.config import RulesFileError, default_rules, load_rules, parse_rules
from loan_engine_dagster.rules.errors import StructuralError
from loan_engine_dagster.rules.run_options import RunOptionError

BATCH = "2026-02-19"
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- run options

@pytest.mark.parametrize("value", ["9999-12-31", "0001-01-01", "2262-04-12"])
def test_a_pdate_the_engine_cannot_hold_is_refused_at_the_door(value):
    # Past bug: accepted at launch, then the whole batch failed in `exports`
    # with OutOfBoundsDatetime, classified `code`.
    with pytest.raises(RunOptionError, match=f"run option pdate: '{value}' is out of range"):
        BatchRunConfig(pdate=value)
    assert BatchRunConfig(pdate="2262-04-11").pdate == "2262-04-11"


def test_launchpad_pdate_out_of_range_fails_first_as_data(sample_inbox, tmp_path):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(batches.name, [BATCH])
        result = dg.materialize(
            dg.load_assets_from_modules([assets]), instance=instance, partition_key=BATCH, raise_on_error=False,
            resources={
                "inbox": InboxResource(path=str(sample_inbox)),
                "outputs": OutputsResource(root=str(tmp_path / "outputs")),
                "results_db": ResultsDatabase(url=f"sqlite:///{tmp_path / 'results.db'}"),
                "rules": RulesResource(),
                "notifier": Notifier(),
            },
            run_config={"ops": {"normalized_loans": {"config": {"pdate": "9999-12-31"}}}},
        )
        assert not result.success
        stop = stop_point(instance, result.run_id)
        assert (stop.phase, stop.error_type) == ("normalized_loans", "RunOptionError")
        assert "'9999-12-31' is out of range" in stop.message
        assert classify(stop.phase, stop.error_type, stop.message) == "data"
        assert not (tmp_path / "outputs" / BATCH).exists()


def test_cli_refuses_a_pdate_out_of_range_saying_so(sample_inbox, tmp_path):
    result = subprocess.run([str(BIN / "loan-engine"), "run", BATCH, "--inbox", str(sample_inbox),
                             "--output-dir", str(tmp_path / "out"), "--pdate", "9999-12-31"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert "Invalid value for '--pdate': '9999-12-31' is out of range (a date must fall between" in result.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- dates typed as text

def _submit_dates(rules, cells: list) -> pd.DataFrame:
    raw = exhibit_raw([loan("SFC_GOOD")] + [loan(f"SFC_{i}", **{"Submit Date": c}) for i, c in enumerate(cells)])
    frame = parsing.parse_exhibit(raw, platform="sfy", file="SFY.xlsx", sheet="Exhibit A", rules=rules)
    assert frame.set_index("seller_loan_number").at["SFC_GOOD", "row_problems"] == ""
    return frame.iloc[1:].reset_index(drop=True)


@pytest.mark.parametrize("cells", [
    ["2026-02-19T10:00:00+05:00"],  # alone: a time-zone-aware column could not become a plain date
    ["2026-02-19T10:00:00Z", "2026-02-19"],
    ["2026-02-19 23:30:00-05:00", "02/19/2026"],  # with a naive neighbour: "Mixed timezones detected"
])
def test_a_date_written_with_a_time_zone_is_the_date_as_written(rules, cells):
    # Past bug: a ValueError/TypeError out of the exhibit reader failed the whole batch, naming no row.
    frame = _submit_dates(rules, cells)
    assert (frame["submit_date"] == pd.Timestamp("2026-02-19")).all()
    assert (frame["row_problems"] == "").all()


@pytest.mark.parametrize("cell", ["now", "today", "12:30 PM", "2026-02", "02-2026", "1 2 3", "Feb 19"])
def test_text_that_is_no_whole_date_is_invalid_data(rules, cell):
    # Past bug: the parser filled what the text left out from the clock, so
    # "now" or "12:30 PM" became the day the batch ran (another CoMAP era on
    # another day) and "2026-02" the first of the month, without a word.
    frame = _submit_dates(rules, [cell])
    assert pd.isna(frame.at[0, "submit_date"])
    assert frame.at[0, "row_problems"].startswith(f"Submit Date '{cell}' is not a date")


@pytest.mark.parametrize("cell", [
    "2026-02-19", "2026/02/19", "2026-02-19 00:00:00", "2026-02-19T00:00:00.000", "02/19/2026", "2/19/26",
    "19.02.2026", "19-Feb-26", "19 February 2026", "Feb 19, 2026", "February 19 2026", " 2026-02-19 ",
    "2/19/2026 3:45 pm", "Thu, 19 Feb 2026 10:00:00 +0000", "Thursday, February 19, 2026",
    dt.datetime(2026, 2, 19), dt.date(2026, 2, 19), 46072,
])
def test_whole_dates_in_the_usual_forms_still_read(rules, cell):
    frame = _submit_dates(rules, [cell])
    assert frame.at[0, "submit_date"] == pd.Timestamp("2026-02-19") and frame.at[0, "row_problems"] == ""


# ---------------------------------------------------------------- purchase plan edges

def test_a_strict_limit_no_plan_can_meet_on_an_empty_base_is_not_curable():
    # A platform with no existing assets whose loans to buy all fall inside a
    # strict `<` filter: buying nothing gives 0 < 0, false, so section 12 calls
    # the limit not curable. Past bug: it was kept in the plan, which then
    # reported the platform `infeasible` with that one limit "conflicting".
    from test_purchase_plan import HYBRID, check, held_back, plan_for, row

    plan = plan_for([check("hybrid", "balance_share", "<", 0.35, HYBRID)],
                    [{"type": "hybrid", "orig_balance": 1000}, {"type": "hybrid", "orig_balance": 2000}], [])
    sfy = plan.platforms["sfy"]
    assert sfy["not_curable_checks"] == ["hybrid"] and sfy["conflicting_checks"] == []
    assert sfy["status"] == "not_needed" and held_back(plan) == []
    assert row(plan, "hybrid")["plan_status"] == "not_curable"


def test_a_non_strict_limit_on_an_empty_base_is_met_by_holding_everything_back():
    # Its best case, buying nothing, gives 0 <= 0: curable, and the plan says
    # so honestly (nothing bought, the limit then has no data).
    from test_purchase_plan import HYBRID, check, held_back, plan_for, row

    plan = plan_for([check("hybrid", "balance_share", "<=", 0.35, HYBRID)],
                    [{"type": "hybrid", "orig_balance": 1000}, {"type": "hybrid", "orig_balance": 2000}], [])
    sfy = plan.platforms["sfy"]
    assert (sfy["status"], sfy["bought_balance"], sfy["not_curable_checks"]) == ("optimal", 0.0, [])
    assert held_back(plan) == ["B1", "B2"] and row(plan, "hybrid")["plan_status"] == "no_data"


@pytest.mark.parametrize("existing", [[{"type": "hybrid", "orig_balance": 5000}], [{"type": "hybrid", "orig_balance": 0.0}], []])
def test_no_loans_to_buy_needs_no_plan(existing):
    # Every buy loan rejected: nothing to choose; a breach of the existing book alone is not curable.
    from test_purchase_plan import HYBRID, check, plan_for

    plan = plan_for([check("hybrid", "balance_share", "<", 0.25, HYBRID)],
                    [{"type": "hybrid", "orig_balance": 1000, "disposition": "rejected"}], existing)
    sfy = plan.platforms["sfy"]
    assert sfy["status"] == "not_needed" and plan.loans.empty
    assert (sfy["bought_balance"], sfy["held_back_loans"]) == (0.0, 0)
    assert sfy["not_curable_checks"] == (["hybrid"] if existing and existing[0]["orig_balance"] else [])


# ---------------------------------------------------------------- the rules file's column spellings

def _rules_data() -> dict:
    return default_rules().model_dump(mode="json")


@pytest.mark.parametrize(("columns", "message"), [
    # Past bug: both entries were accepted and the second one's spellings silently ignored,
    # so a file headed 'Yearly Income' was refused with "did you mean 'Yearly Income'?".
    ({"exhibit": {"Income": ["Annual Income"], "INCOME ": ["Yearly Income"]}},
     "columns.exhibit: 'INCOME ' and 'Income' are the same column: give its spellings in one entry"),
    ({"exhibit": {"Income": [" "]}}, "columns.exhibit: 'Income' has a blank spelling"),
])
def test_a_column_given_twice_or_a_blank_spelling_refuses_the_rules_file(columns, message):
    with pytest.raises(RulesFileError, match=re.escape(message)):
        parse_rules({**_rules_data(), "columns": columns})


def test_a_key_written_twice_in_the_rules_file_refuses_it(tmp_path):
    # Past bug: YAML keeps the last of two equal keys without a word, so the
    # analyst's first mapping (or a first irr_target) vanished.
    text = (resources.files("loan_engine_dagster.rules") / "rules.yaml").read_text()
    path = tmp_path / "rules.yaml"
    assert text.count("\n  exhibit: {}") == 1
    path.write_text(text.replace("\n  exhibit: {}", "\n  exhibit:\n    Income: [Annual Income]\n    Income: [Yearly Income]"))
    with pytest.raises(RulesFileError, match=re.escape(f"rules file {path}") + ".*key 'Income' appears twice.*line"):
        load_rules(path)


@pytest.mark.parametrize("content", [b"version: [1\n", b"\xff\xfe\x00", None])
def test_an_unreadable_rules_file_is_named_in_a_rules_error(tmp_path, content):
    # Past behaviour: a bare FileNotFoundError, yaml ParserError ("in <unicode string>")
    # or UnicodeDecodeError, naming no rules file, reached the CLI and the run.
    path = tmp_path / "rules.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RulesFileError, match=re.escape(f"rules file {path}")):
        load_rules(path)


# ---------------------------------------------------------------- headroom in the UI

def test_limit_checks_in_the_ui_show_headroom():
    # Issue 11 asks for headroom in the JSON, the workbook and the UI's limit
    # checks; the checks frame carried it but the UI's metadata left it out.
    from test_purchase_plan import HYBRID, check, frame

    from loan_engine_dagster.orchestration.checks import limit_check_results
    from loan_engine_dagster.rules.config import Eligibility
    from loan_engine_dagster.rules.eligibility import build_population, evaluate_checks

    rules = default_rules().model_copy(update={"eligibility": Eligibility(
        prime=[], sfy=[check("hybrid", "balance_share", "<", 0.25, HYBRID), check("mean_fico", "mean", ">=", 700, column="fico")])})
    checks = evaluate_checks(build_population(frame([{"type": "hybrid", "orig_balance": 10000}], buy=True),
                                              frame([{"orig_balance": 80000}], buy=False)), rules)
    loans = pd.DataFrame({"seller_loan_number": ["L1"], "loan_program": ["P"], "invalid": [False]})
    results = {r.check_name: {k: v.value for k, v in r.metadata.items()} for r in limit_check_results(checks, loans)}
    headroom = (0.25 * 90000 - 10000) / 0.75
    assert results["sfy_hybrid"]["headroom_balance"] == f"${headroom:,.2f}"  # dollars, as every balance in the UI
    assert "headroom_balance" not in results["sfy_mean_fico"]  # only balance shares have one


# ---------------------------------------------------------------- a header written twice

@pytest.mark.parametrize("second", ["Income", "income "])
def test_a_required_header_written_twice_is_refused_like_two_spellings(rules, second):
    # Past bug: `income ` next to `Income` was refused as ambiguous, but an
    # exact second `Income` (say, a monthly figure) was silently dropped and
    # the first one used: the same ambiguity, two answers.
    raw = exhibit_raw([loan("SFC_1")], title_rows=1)
    raw[len(raw.columns)] = ["", second, 15000]
    with pytest.raises(StructuralError, match="2 columns name 'Income'") as err:
        parsing.parse_exhibit(raw, platform="sfy", file="SFY.xlsx", sheet="Exhibit A", rules=rules)
    assert err.value.columns == ["Income", second.strip()]


def test_an_unknown_header_written_twice_is_carried_once(rules):
    raw = exhibit_raw([loan("SFC_1")], title_rows=1)
    raw[len(raw.columns)] = ["", "Dealer Name", "first"]
    raw[len(raw.columns)] = ["", "Dealer Name", "second"]
    frame = parsing.parse_exhibit(raw, platform="sfy", file="SFY.xlsx", sheet="Exhibit A", rules=rules)
    assert frame.loc[0, "seller:Dealer Name"] == "first" and frame.loc[0, "row_problems"] == ""


def test_rows_of_very_different_sizes_still_get_the_best_plan():
    # Past bug: a FICO-weighted row (coefficients ~1e9) beside a balance-share
    # row (~1e7), with balances from a cent to 50 million: HiGHS's presolve
    # returned 104,012,345.68 as `optimal`, half the best plan (found here by
    # brute force over all 2,048 choices). The rows are now scaled first.
    from test_purchase_plan import _brute_force, check, held_back, plan_for

    checks = [check("wavg_fico", "wavg", "<", 707.0, column="fico"),
              check("long_term", "balance_share", "<=", 0.53, [("term", ">", 120)])]
    loans = [(689, 1e6, 144), (792, 5e7, 120), (674, 1e6, 144), (747, 1e6, 120), (775, 5e7, 144), (645, 5e7, 144),
             (666, 5e7, 120), (635, 0.01, 144), (771, 1e6, 120), (684, 5e7, 144), (635, 12345.67, 144)]
    buy = [{"fico": f, "orig_balance": b, "term": t} for f, b, t in loans]
    existing = [{"fico": 643, "orig_balance": 1e7}]
    best, _, _ = _brute_force(checks, buy, existing)
    plan = plan_for(checks, buy, existing)
    sfy = plan.platforms["sfy"]
    assert best == pytest.approx(204012345.68)
    assert sfy["status"] == "optimal" and sfy["bought_balance"] == pytest.approx(best)
    assert held_back(plan) == ["B5"]


@pytest.mark.parametrize("value", [0.0805, 0.5, 0.999])
def test_an_irr_target_written_as_a_fraction_is_refused(value):
    # Past bug: the docs said 0.0805 (8.05 % typed as a fraction) is caught;
    # it lay inside 0..100 and went through, a target a hundred times too low.
    with pytest.raises(RunOptionError, match=f"run option irr_target: {value!r} looks like a fraction"):
        BatchRunConfig(irr_target=value)
    assert BatchRunConfig(irr_target=1.0).irr_target == 1.0


def test_a_rules_file_irr_target_written_as_a_fraction_is_refused():
    data = _rules_data()
    data["normalization"]["irr_target"] = 0.0805
    with pytest.raises(RulesFileError, match=r"normalization\.irr_target: .*0\.0805 looks like a fraction"):
        parse_rules(data)


@pytest.mark.parametrize("header", ["Account Number,Loan Group,Status Codes,Status Codes",
                                    "Account Number,Loan Group,Status Codes, Status Codes "])
def test_a_csv_header_written_twice_is_refused_like_a_workbook_one(tmp_path, header):
    # Past bug: pandas renamed the second `Status Codes` to `Status Codes.1`,
    # the first was used without a word, and the repurchase in the second missed.
    from loan_engine_dagster.adapters.files import read_csv

    path = tmp_path / "Tape20Loans_02-18-2026.csv"
    path.write_text(header + "\n5000001,FX3,,REPURCHASE\n")
    with pytest.raises(StructuralError, match="2 columns name 'Status Codes'") as err:
        parsing.parse_tape(read_csv(path), file=path.name)
    assert err.value.file == path.name and err.value.columns == ["Status Codes", "Status Codes"]


def test_a_csv_with_a_header_that_only_looks_renamed_reads_as_written(tmp_path):
    from loan_engine_dagster.adapters.files import read_csv

    path = tmp_path / "Tape20Loans_02-18-2026.csv"
    path.write_text("Account Number,Loan Group,Status Codes,Status Codes.1\n5000001,FX3,REPURCHASE,\n")
    assert list(read_csv(path).columns) == ["Account Number", "Loan Group", "Status Codes", "Status Codes.1"]
    assert parsing.parse_tape(read_csv(path), file=path.name)["repurchased"].tolist() == [True]
