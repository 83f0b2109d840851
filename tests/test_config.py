import copy

import pytest
import yaml

from loan_engine_dagster.rules.config import RulesFileError, load_rules, parse_rules
from importlib import resources


def _raw():
    return yaml.safe_load(resources.files("loan_engine_dagster.rules").joinpath("rules.yaml").read_text())


def test_packaged_rules_load_with_version():
    rules = load_rules()
    assert rules.version
    assert rules.normalization.irr_target == 8.05
    assert str(rules.normalization.facility_period_start) == "2025-10-01"
    assert rules.inbox.tape_lookback_days == 4


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d["inbox"].update(tape_lookbak_days=4), "inbox.tape_lookbak_days"),
        (lambda d: d["normalization"].update(irr_target="high"), "normalization.irr_target"),
        (lambda d: d["normalization"].pop("facility_period_start"), "normalization.facility_period_start"),
        (lambda d: d["eligibility"]["sfy"][0].update(limit="x"), "eligibility.sfy.0.limit"),
        (lambda d: d.update(extra_section={}), "extra_section"),
    ],
)
def test_wrong_key_or_type_names_the_key(mutate, key):
    data = copy.deepcopy(_raw())
    mutate(data)
    with pytest.raises(RulesFileError, match=key.replace(".", r"\.")):
        parse_rules(data)


def test_unknown_filter_column_names_the_check():
    data = copy.deepcopy(_raw())
    data["eligibility"]["prime"][0]["where"][0][0] = "colour"
    with pytest.raises(RulesFileError, match="check_a: unknown filter column 'colour'"):
        parse_rules(data)


def test_eras_must_be_newest_first(tmp_path):
    data = copy.deepcopy(_raw())
    data["comap_eras"]["prime"].reverse()
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RulesFileError, match="comap_eras"):
        load_rules(path)
