#!/usr/bin/env bash
# Installs (only when missing) and starts the local services TaskFlow runs on:
# Redis from Debian's redis-server package and FerretDB v1 (MongoDB wire protocol) on SQLite.
# Everything binds to 127.0.0.1 on free ports; state lives under .state/ (see DESIGN.md §9).
#
#   scripts/services.sh install            install redis-server, build FerretDB once
#   scripts/services.sh start PROFILE      start both; writes .state/PROFILE/services.env
#   scripts/services.sh stop PROFILE       stop what `start PROFILE` started
set -euo pipefail

FERRETDB_VERSION="${FERRETDB_VERSION:-v1.24.2}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${TASKFLOW_STATE_DIR:-$ROOT/.state}"
BIN="$STATE/bin"
FERRETDB="$BIN/ferretdb-$FERRETDB_VERSION"

log() { printf '[services] %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  log "installing redis-server from Debian packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # The package starts a system Redis on 6379; TaskFlow never uses it (we start our own on a free port).
}

ferretdb_ok() { [ -x "$FERRETDB" ] && "$FERRETDB" --version >/dev/null 2>&1; }

install_ferretdb() {
  ferretdb_ok && return 0
  command -v go >/dev/null 2>&1 || { log "Go is required to build FerretDB"; exit 1; }
  log "building FerretDB $FERRETDB_VERSION (once; about 3 minutes on 2 cores)"
  export GOTOOLCHAIN=local GOFLAGS=-mod=mod GOTELEMETRY=off
  local dir work
  # The published module lacks build/version/version.txt, so a plain `go install` panics at start
  # (DESIGN.md §9): build from a writable copy with the file written in.
  dir="$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
  [ -n "$dir" ] || { log "go mod download gave no module directory"; exit 1; }
  work="$(mktemp -d)"
  cp -r "$dir" "$work/src"
  chmod -R u+w "$work/src"
  printf '%s\n' "$FERRETDB_VERSION" > "$work/src/build/version/version.txt"
  mkdir -p "$BIN"
  (cd "$work/src" && go build -trimpath -o "$FERRETDB.tmp" ./cmd/ferretdb)
  mv "$FERRETDB.tmp" "$FERRETDB"
  rm -rf "$work"
  ferretdb_ok || { log "built FerretDB does not answer --version"; exit 1; }
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for() { # wait_for DESCRIPTION SECONDS COMMAND...
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { log "$what did not come up within ${secs}s"; return 1; }
    sleep 0.2
  done
}

start() {
  local profile="$1" dir="$STATE/$1"
  stop "$profile" 2>/dev/null || true
  install_redis
  install_ferretdb
  # The test profile's data is disposable: start it empty, so a damaged leftover (a run killed
  # mid-write) can never block the suite.
  [ "$profile" != test ] || rm -rf "$dir/ferretdb"
  mkdir -p "$dir/ferretdb" "$dir/redis"
  local redis_port mongo_port debug_port
  redis_port="$(free_port)"; mongo_port="$(free_port)"; debug_port="$(free_port)"
  redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$dir/redis" --save "" --appendonly no \
    --databases 64 --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  "$FERRETDB" --handler=sqlite --sqlite-url="file:$dir/ferretdb/" \
    --listen-addr="127.0.0.1:$mongo_port" --debug-addr="127.0.0.1:$debug_port" \
    --state-dir="$dir/ferretdb" --telemetry=disable --repl-set-name=rs0 --log-level=warn \
    >"$dir/ferretdb.log" 2>&1 &
  echo $! > "$dir/ferretdb.pid"
  wait_for "Redis" 20 redis-cli -p "$redis_port" ping
  wait_for "FerretDB" 30 python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$debug_port/debug/readyz', timeout=1)" || {
    grep -v "probe failed" "$dir/ferretdb.log" | tail -5 >&2
    log "see $dir/ferretdb.log; if the data is damaged, remove $dir/ferretdb (it holds $profile's data)"
    stop "$profile"
    return 1
  }
  cat > "$dir/services.env" <<ENV
MONGODB_URI=mongodb://127.0.0.1:$mongo_port/?replicaSet=rs0
REDIS_URL=redis://127.0.0.1:$redis_port/0
ENV
  log "Redis on 127.0.0.1:$redis_port, FerretDB $FERRETDB_VERSION on 127.0.0.1:$mongo_port ($profile)"
}

stop() {
  local dir="$STATE/$1" pid
  for name in ferretdb redis; do
    [ -f "$dir/$name.pid" ] || continue
    pid="$(cat "$dir/$name.pid")"
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/$name.pid"
  done
  rm -f "$dir/services.env"
}

case "${1:-}" in
  install) install_redis; install_ferretdb ;;
  start) start "${2:?profile}" ;;
  stop) stop "${2:?profile}" ;;
  *) echo "usage: $0 install | start PROFILE | stop PROFILE" >&2; exit 2 ;;
esac
