#!/usr/bin/env bash
# Installs the project if needed and runs the whole test suite, PostgreSQL
# and webserver tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
