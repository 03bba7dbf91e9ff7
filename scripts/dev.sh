#!/usr/bin/env bash
# Runs TaskFlow: local services (unless MONGODB_URI and REDIS_URL are given), the API and a projector.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
if [ -z "${MONGODB_URI:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  scripts/services.sh start dev
  trap 'scripts/services.sh stop dev' EXIT
  set -a; . .state/dev/services.env; set +a
fi
# `make dev` is development: the built-in keys are accepted here and nowhere else.
export TASKFLOW_ENV="${TASKFLOW_ENV:-development}"
export HTTP_PORT="${HTTP_PORT:-8080}" LOG_JSON="${LOG_JSON:-false}" COOKIE_SECURE="${COOKIE_SECURE:-false}"
echo "TaskFlow: http://127.0.0.1:$HTTP_PORT/api/health  (Ctrl-C stops everything)"
# `taskflow dev` runs the API and the projector and stops both on SIGINT or SIGTERM. It runs in
# the background so that a signal to this script (Ctrl-C, `kill`, a closed terminal) is passed
# on to it before the EXIT trap stops the services: a signal to the script alone used to stop
# the servers and leave the API and the projector running.
.venv/bin/taskflow dev &
dev_pid=$!
trap 'kill -TERM "$dev_pid" 2>/dev/null || true' INT TERM HUP
status=0
wait "$dev_pid" || status=$?
# A trapped signal ends `wait` at once: wait for the shutdown itself.
while kill -0 "$dev_pid" 2>/dev/null; do wait "$dev_pid" || status=$?; done
exit "$status"
