#!/usr/bin/env bash
# Creates .venv and installs the project with its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# pip's output goes to a log; it is shown only when the install fails.
if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e '.[test]'; } > .venv/install.log 2>&1; then
  tail -n 40 .venv/install.log >&2
  echo "setup: installing the project failed; the whole log is in .venv/install.log" >&2
  exit 1
fi
# The project is installed editable, so pip compiles none of its modules; where
# PYTHONDONTWRITEBYTECODE is set, every `loan-engine` and every run worker would
# compile them again at start (about 0.05 s of CPU each here).
.venv/bin/python -m compileall -q loan_engine_dagster
mkdir -p .dagster_home
[ -e .dagster_home/dagster.yaml ] || ln -s ../dagster.yaml .dagster_home/dagster.yaml
