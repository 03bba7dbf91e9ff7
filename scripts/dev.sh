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
.venv/bin/taskflow dev
