#!/usr/bin/env bash
# The scale benchmark (issue #11, docs/benchmarks.md "Scale"): seeds logs of 1,000, 10,000 and
# 100,000 commits and measures request latency, lag, catch-up and rebuild at each size, writing
# bench-results/scale.md and scale.json. Runs on the local servers (profile `scale`) unless
# MONGODB_URI and REDIS_URL point at running ones; the Redis database there is flushed.
#
#   scripts/bench-scale.sh                      the full run (make bench-scale)
#   scripts/bench-scale.sh --quick              small sizes and short phases: a smoke run
#   scripts/bench-scale.sh --sizes 1000,10000   chosen sizes; see `--help` for more
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
# Benchmarks run TaskFlow with its built-in development keys.
export TASKFLOW_ENV=development

if [ -z "${MONGODB_URI:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  scripts/services.sh start scale
  trap 'scripts/services.sh stop scale' EXIT
  set -a; . "${TASKFLOW_STATE_DIR:-.state}/scale/services.env"; set +a
  case "${FERRETDB_BACKEND:-sqlite}" in
    postgresql) export BENCH_BACKEND_DETAIL="PostgreSQL backend (scripts/services.sh, FERRETDB_BACKEND=postgresql)" ;;
    *) export BENCH_BACKEND_DETAIL="SQLite backend (scripts/services.sh)" ;;
  esac
fi
.venv/bin/python -m bench.scale "$@"
