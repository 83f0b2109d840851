#!/usr/bin/env bash
# Creates .venv and installs the project with its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
# The distribution's Python 3.11 (Debian's /usr/bin/python3.11) is one
# executable built with profile-guided optimisation and link-time
# optimisation; a pyenv-built one calls its shared libpython without either.
# A 100k-loan run is 0.6 to 0.7 s faster on Debian's (README, Performance).
# PYTHON=... chooses another; without a venv module there, the first
# python3.11 or python3 on the PATH is used.
if [ -z "${PYTHON:-}" ]; then
  for candidate in /usr/bin/python3.11 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import ensurepip, venv' 2>/dev/null; then
      PYTHON=$candidate
      break
    fi
  done
  PYTHON=${PYTHON:-python3}  # none has venv: python3's own error says what to install
fi
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
