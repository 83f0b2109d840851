#!/usr/bin/env bash
# The web UI and the daemon (sensors, run queue) on this machine:
# dagster-webserver and dagster-daemon, the same two services as production,
# on 127.0.0.1:PORT (default 3000). Ctrl-C stops both.
#
# Not `dagster dev`: in Dagster 1.13 it prints a SupersessionWarning pointing
# to `dg dev` and a false warning that ./dagster.yaml is ignored (our
# DAGSTER_HOME links to it, but dagster dev only compares folder names).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:-3000}
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD/.dagster_home}
mkdir -p "$DAGSTER_HOME"
[ -e "$DAGSTER_HOME/dagster.yaml" ] || ln -s "$PWD/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
# Links in alerts point at this UI.
export LOAN_ENGINE_UI_URL=${LOAN_ENGINE_UI_URL:-http://127.0.0.1:$PORT}
# Create the instance's storage once, before two processes race to create it.
.venv/bin/dagster instance info > /dev/null
.venv/bin/dagster-webserver -h 127.0.0.1 -p "$PORT" -w workspace.yaml &
webserver=$!
.venv/bin/dagster-daemon run -w workspace.yaml &
daemon=$!
trap 'kill -TERM "$webserver" "$daemon" 2>/dev/null; wait "$webserver" "$daemon" 2>/dev/null' INT TERM EXIT
echo "UI: $LOAN_ENGINE_UI_URL  (Dagster home $DAGSTER_HOME)"
wait -n "$webserver" "$daemon"
