"""A whole generated inbox through the engine, checked against an independent
implementation of the spec (tests/independent.py)."""

import json
import math
from importlib import resources

import pandas as pd
import pytest
import yaml

import independent
from loan_engine_dagster.adapters import database
from loan_engine_dagster.adapters.batch import process_batch
from loan_engine_dagster.adapters.inbox import find_batch
from loan_engine_dagster.adapters.sample import generate_inbox

BATCH = "2026-02-19"


@pytest.fixture(scope="module")
def processed(sample_inbox, tmp_path_factory, rules):
    out = tmp_path_factory.mktemp("out")
    result = process_batch(sample_inbox, BATCH, output_root=out, database_url=f"sqlite:///{out / 'results.db'}", rules=rules)
    return result, out


def _close(a, b):
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12) for k in a)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.slow
def test_matches_independent_implementation(processed, sample_inbox):
    result, out = processed
    folder = out / BATCH
    raw_rules = yaml.safe_load(resources.files("loan_engine_dagster.rules").joinpath("rules.yaml").read_text())
    rules = independent.rules_from_yaml(raw_rules)
    files = find_batch(sample_inbox, BATCH, 4)
    loans, existing = independent.decide(sample_inbox, files.exhibits, files.tape, rules)

    decisions = pd.read_csv(folder / "loan_decisions.csv", dtype=str, keep_default_na=False)
    assert len(decisions) == len(loans) == 600
    for ours, theirs in zip(decisions.to_dict("records"), loans, strict=True):
        assert ours["seller_loan_number"] == theirs["seller loan #"]
        assert ours["platform"] == theirs["platform"]
        assert ours["loan_kind"] == theirs["kind"]
        assert ours["purchase_price_check"] == ("true" if theirs["price"] else "false")
        assert ours["underwriting_status"] == theirs["uw"], ours
        assert ours["comap_status"] == theirs["comap"], ours
        assert ours["rejection_reasons"] == ";".join(theirs["reasons"]), ours
        assert ours["disposition"] == ("rejected" if theirs["reasons"] else "to_purchase")
        assert ours["rejection_criteria"] == (theirs["reasons"][0] if theirs["reasons"] else "")

    doc = json.loads((folder / "eligibility_checks.json").read_text())
    expected = independent.eligibility(loans, existing, rules["checks"])
    assert [(c["platform"], c["check_id"]) for c in doc["checks"]] == [(e["platform"], e["check_id"]) for e in expected]
    for ours, theirs in zip(doc["checks"], expected, strict=True):
        assert ours["status"] == theirs["status"], ours["check_id"]
        for population in ("value", "before", "to_purchase", "excess_balance"):
            assert _close(ours[population], theirs[population]), (ours["check_id"], population)
        assert [(c["seller_loan_number"], c["orig_balance"]) for c in ours["contributors"]] == theirs["contributors"]


@pytest.mark.slow
def test_typical_batch_rejects_some_for_every_reason(processed):
    result, _ = processed
    summary = result["summary"]
    assert summary["by_disposition"]["to_purchase"]["loans"] > 0.85 * summary["loans_offered"]
    assert set(summary["reasons"]) >= {"invalid_data", "unknown_program", "purchase_price_mismatch",
                                       "underwriting_sfy", "underwriting_prime", "comap_sfy", "comap_prime"}
    assert "not_in_grid" in summary["warnings"] and set(summary["warnings"]) <= {"not_in_grid", "not_on_tape"}
    assert {f["role"] for f in summary["input_files"]} == {
        "master", "notes_master", "existing", "grids", "sfy_exhibit", "prime_exhibit", "tape"}
    assert all(len(f["sha256"]) == 64 for f in summary["input_files"])


@pytest.mark.slow
def test_database_rows_written(processed):
    _, out = processed
    engine = database.engine_for(f"sqlite:///{out / 'results.db'}")
    counts = database.batch_row_counts(engine, BATCH)
    assert counts["loan_facts"] == 600 and counts["loan_exceptions"] > 0 and counts["eligibility_results"] == 3 * 49


@pytest.mark.slow
def test_sample_inbox_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate_inbox(a, loans=50, existing=100, seed=3)
    generate_inbox(b, loans=50, existing=100, seed=3)
    for name in ("current_assets.csv", "Tape20Loans_02-18-2026.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    from loan_engine_dagster.adapters.files import open_workbook, read_sheet
    name = "SFY_02-19-2026_ExhibitAtoFormofSaleNotice - Pre-Funding.xlsx"
    assert read_sheet(open_workbook(a / name), a / name)[1].equals(read_sheet(open_workbook(b / name), b / name)[1])
