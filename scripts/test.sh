#!/usr/bin/env bash
# The whole test suite: lint, types, tests — on real local servers unless MONGODB_URI and
# REDIS_URL point at running ones (as the GitHub workflow does with a MongoDB replica set).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
PY=.venv/bin
# The suite runs with the built-in development keys, which nothing else may start with.
export TASKFLOW_ENV=development

# One command a line: under `set -e` a failure before the last `&&` of a list does not stop
# the script (a ruff error once went through CI that way).
echo "== ruff"
$PY/ruff check .
$PY/ruff format --check .
echo "== mypy --strict"; $PY/mypy
echo "== import-linter (the layers: .importlinter)"; $PY/lint-imports --no-cache
# nginx, docker-compose, shellcheck and actionlint for the deployment tests (when missing).
scripts/services.sh install-tools

if [ -z "${MONGODB_URI:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  scripts/services.sh start test
  trap 'scripts/services.sh stop test' EXIT
  set -a; . .state/test/services.env; set +a
fi
# Several pytest processes (pytest-xdist), tests handed out one by one; each process has a
# Redis logical database of its own (tests/conftest.py). PYTEST_WORKERS=0 runs in this process.
workers="${PYTEST_WORKERS:-5}"
xdist=()
[ "$workers" = 0 ] || xdist=(-n "$workers" --dist load --maxschedchunk=1)
echo "== pytest, ${workers} workers (MongoDB: $MONGODB_URI, Redis: $REDIS_URL)"
$PY/pytest "${xdist[@]}" "$@"
