#!/usr/bin/env bash
# Setup, a sample inbox, and one batch end to end on the embedded default
# (SQLite Dagster instance in .dagster_home/, results in data/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="$PWD/.dagster_home"
.venv/bin/loan-engine sample-inbox data/inbox --batch 2026-02-19
.venv/bin/loan-engine run 2026-02-19
echo
echo "Results database: data/results.db (tables loan_facts, loan_exceptions, eligibility_results)"
echo "Web UI and daemon (sensors): bash scripts/ui.sh   (then http://127.0.0.1:3000)"
