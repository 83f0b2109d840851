"""The project explains its own rules, and the explanation follows rules.yaml."""

import subprocess
import sys
from importlib import resources
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "rules_doc.py"


def _script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_business_rules_doc_matches_rules_yaml():
    result = _script("--check")
    assert result.returncode == 0, result.stderr


def test_a_changed_limit_makes_the_doc_check_fail(tmp_path):
    data = yaml.safe_load(resources.files("loan_engine_dagster.rules").joinpath("rules.yaml").read_text())
    data["eligibility"]["sfy"][0]["limit"] = 0.8
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(data))
    result = _script("--check", "--rules", str(path))
    assert result.returncode == 1
    assert "the generated tables differ from the rules file" in result.stderr
    copy = tmp_path / "business_rules.md"
    copy.write_text((ROOT / "docs" / "business_rules.md").read_text())
    assert _script("--rules", str(path), "--doc", str(copy)).returncode == 0
    assert "| SFY | `check_a1` | Hybrid | share of balance | `type` in hybrid | < 0.8 |" in copy.read_text()


def test_doc_describes_every_limit():
    text = (ROOT / "docs" / "business_rules.md").read_text()
    from loan_engine_dagster.rules.config import default_rules

    for check in default_rules().eligibility.prime + default_rules().eligibility.sfy:
        assert f"`{check.id}`" in text
    assert "## 12. Headroom and the purchase plan" in text


def test_nothing_points_outside_the_repository():
    outside = ("../" + "shared", "shared/" + "spec")  # spelled apart so this file does not match itself
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in files:
        path = ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        offenders += [f"{name}: {needle}" for needle in outside if needle in text]
    assert offenders == []
