#!/usr/bin/env bash
# The benchmark (docs/benchmarks.md): TaskFlow next to raw PyMongo/Redis baselines, side by side,
# writing bench-results/latest.md and latest.json. Runs on the local servers (profile `bench`)
# unless MONGODB_URI and REDIS_URL point at running ones; the Redis database there is flushed.
#
#   scripts/bench.sh             the full run (make bench), about 22 minutes on 2 cores
#   scripts/bench.sh --quick     a smoke run of about a minute; see `--help` for more
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
# Benchmarks run TaskFlow with its built-in development keys.
export TASKFLOW_ENV=development

# The HTTP groups' load generator: wrk, from Debian's packages (a C process that leaves the cores
# to the servers it loads).
scripts/services.sh install-wrk

if [ -z "${MONGODB_URI:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  scripts/services.sh start bench
  BENCH_STARTED=1
  trap 'scripts/services.sh stop bench' EXIT
  set -a; . .state/bench/services.env; set +a
  case "${FERRETDB_BACKEND:-sqlite}" in
    postgresql) export BENCH_BACKEND_DETAIL="PostgreSQL backend (scripts/services.sh, FERRETDB_BACKEND=postgresql)" ;;
    *) export BENCH_BACKEND_DETAIL="SQLite backend (scripts/services.sh)" ;;
  esac
fi
# The peer group (bench/peer.py) appends through the `eventsourcing` library on a PostgreSQL of
# its own (Debian's postgresql), started here unless PEER_POSTGRES_URL names one; only when the
# run includes that group (every full run does).
wants_peer=yes
case " $* " in *" --only "*) case " $* " in *" peer "*) ;; *) wants_peer="" ;; esac ;; esac
if [ -n "$wants_peer" ] && [ -z "${PEER_POSTGRES_URL:-}" ]; then
  scripts/services.sh start-peer bench-peer
  trap 'scripts/services.sh stop bench-peer; [ -z "${BENCH_STARTED:-}" ] || scripts/services.sh stop bench' EXIT
  set -a; . .state/bench-peer/peer.env; set +a
fi
.venv/bin/python -m bench.run "$@"
