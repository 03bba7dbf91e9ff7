#!/usr/bin/env bash
# Installs (only when missing) and starts the local services TaskFlow runs on:
# Redis from Debian's redis-server package and FerretDB v1 (MongoDB wire protocol) on SQLite,
# or, with FERRETDB_BACKEND=postgresql, on a PostgreSQL server of its own (Debian's postgresql).
# Everything binds to 127.0.0.1 on free ports; state lives under .state/ (docs/design.md, FerretDB).
#
#   scripts/services.sh install            install redis-server, build FerretDB once
#   scripts/services.sh install-wrk        install wrk, the HTTP benchmarks' load generator
#   scripts/services.sh install-tools      what the deployment tests run (best effort: a tool that
#                                          cannot be installed makes its tests skip, saying why):
#                                          nginx, docker-compose, shellcheck, chromium (Debian
#                                          packages),
#                                          actionlint (built once from its Go module)
#   scripts/services.sh start PROFILE      start both; writes .state/PROFILE/services.env
#   scripts/services.sh stop PROFILE       stop what `start PROFILE` started
#   scripts/services.sh start-peer PROFILE a PostgreSQL of its own (Debian's postgresql) for the
#                                          benchmark's peer group, the `eventsourcing` library's
#                                          store (bench/peer.py); writes .state/PROFILE/peer.env.
#                                          `stop PROFILE` stops it too
#   FERRETDB_BACKEND=postgresql scripts/services.sh start PROFILE
#                                          the same on PostgreSQL: equality filters are pushed
#                                          down (13x faster than SQLite at 100k), ranges are not
set -euo pipefail

FERRETDB_VERSION="${FERRETDB_VERSION:-v1.24.2}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${TASKFLOW_STATE_DIR:-$ROOT/.state}"
BIN="$STATE/bin"
# The binary carries one local fix on top of the module (patch_ferretdb below), named in its
# file name so a binary built without it is never taken for one built with it.
FERRETDB="$BIN/ferretdb-$FERRETDB_VERSION-idindex"
ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-v1.7.12}"
ACTIONLINT="$BIN/actionlint-$ACTIONLINT_VERSION"
BACKEND="${FERRETDB_BACKEND:-sqlite}"

log() { printf '[services] %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  log "installing redis-server from Debian packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # The package starts a system Redis on 6379; TaskFlow never uses it (we start our own on a free port).
}

install_wrk() {
  command -v wrk >/dev/null 2>&1 && return 0
  log "installing wrk from Debian packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends wrk >/dev/null
}

apt_install() { # apt_install PACKAGE...: Debian packages, the package lists refreshed once per run
  if [ -z "${APT_UPDATED:-}" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

has_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }

has_compose() { # Docker Compose v1 (Debian's docker-compose) or the v2 plugin: both parse offline
  command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1
}

actionlint_ok() { [ -x "$ACTIONLINT" ] && "$ACTIONLINT" -version >/dev/null 2>&1; }

install_actionlint() {
  actionlint_ok && return 0
  command -v go >/dev/null 2>&1 || { log "Go is required to build actionlint"; return 1; }
  log "building actionlint $ACTIONLINT_VERSION (once; about 30 s)"
  mkdir -p "$BIN"
  local gobin
  gobin="$(mktemp -d)"
  GOTOOLCHAIN=local GOFLAGS=-mod=mod GOTELEMETRY=off GOBIN="$gobin" \
    go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
  mv "$gobin/actionlint" "$ACTIONLINT"
  rm -rf "$gobin"
  actionlint_ok
}

install_tools() { # best effort: each missing tool is logged and its tests skip
  has_nginx || apt_install nginx || log "could not install nginx"
  # The package may start a system nginx on port 80; the tests start their own on free ports.
  has_compose || apt_install docker-compose || log "could not install docker-compose"
  command -v shellcheck >/dev/null 2>&1 || apt_install shellcheck || log "could not install shellcheck"
  # The console's browser tests: Playwright drives Debian's Chromium (it cannot fetch its own).
  [ -x /usr/bin/chromium ] || apt_install chromium fonts-dejavu-core || log "could not install chromium"
  install_actionlint || log "could not build actionlint"
  return 0
}

pg_bin() { # the directory of Debian's PostgreSQL server binaries (initdb, pg_ctl)
  local found
  found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [ -n "$found" ] && [ -x "$found/initdb" ] && echo "$found"
}

install_postgres() {
  pg_bin >/dev/null && return 0
  log "installing postgresql from Debian packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

# PostgreSQL refuses to run as root; as root, run it as the package's `postgres` user.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start_postgres() { # start_postgres DIR PORT [SUBDIR]: a private cluster on loopback, trust auth
  local dir="$1" port="$2" pg="$1/${3:-pg}" bin
  bin="$(pg_bin)"
  mkdir -p "$pg"
  [ "$(id -u)" -ne 0 ] || chown postgres "$pg"
  chmod 700 "$pg"
  if [ ! -f "$pg/data/PG_VERSION" ]; then
    as_pg "$bin/initdb" -D "$pg/data" --auth=trust --username=postgres -E UTF8 >/dev/null
  fi
  as_pg "$bin/pg_ctl" -D "$pg/data" -l "$pg/postgres.log" -w -t 60 start \
    -o "-h 127.0.0.1 -p $port -k $pg -c fsync=on" >/dev/null
}

start_ferretdb_postgres() { # start_ferretdb_postgres DIR PORT: FerretDB's backend, with its database
  local dir="$1" port="$2" bin
  start_postgres "$dir" "$port"
  bin="$(pg_bin)"
  as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'ferretdb'" | grep -q 1 ||
    as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE ferretdb" >/dev/null
}

stop_postgres() { # stop_postgres DIR [SUBDIR]
  local pg="$1/${2:-pg}" bin
  [ -f "$pg/data/postmaster.pid" ] || return 0
  bin="$(pg_bin)" || return 0
  as_pg "$bin/pg_ctl" -D "$pg/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
}

# The benchmark's peer (bench/peer.py): the `eventsourcing` library's PostgreSQL store, on a
# cluster of its own, with PostgreSQL's defaults for durability (fsync, synchronous_commit on).
start_peer() {
  local profile="$1" dir="$STATE/$1" port
  stop_peer "$profile"
  install_postgres
  port="$(free_port)"
  mkdir -p "$dir"
  start_postgres "$dir" "$port" peer-pg
  echo "PEER_POSTGRES_URL=postgresql://postgres@127.0.0.1:$port/postgres" > "$dir/peer.env"
  log "PostgreSQL $(basename "$(dirname "$(pg_bin)")") on 127.0.0.1:$port (the peer of $profile)"
}

stop_peer() {
  stop_postgres "$STATE/$1" peer-pg
  rm -f "$STATE/$1/peer.env"
}

# FerretDB v1's SQLite backend indexes `_id` as `_ferretdb_sjson->"_id"` but looks it up as
# `_ferretdb_sjson->'$._id'`: the same value, but SQLite matches an expression index by its text,
# so every find, update and delete by `_id` scanned the whole table (docs/design.md, "Building
# FerretDB v1.24.2"). Writing the lookup as the index is written lets SQLite use the index.
patch_ferretdb() { # patch_ferretdb SRC
  local file="$1/internal/backends/sqlite/metadata/metadata.go"
  local before="IDColumn = DefaultColumn + \"->'\$._id'\"" after="IDColumn = DefaultColumn + \"->'_id'\""
  grep -qF "$before" "$file" || { log "FerretDB $FERRETDB_VERSION: $file has no '$before' to fix"; exit 1; }
  sed -i "s|$(printf '%s' "$before" | sed 's/[$.]/\\&/g')|$after|" "$file"
  grep -qF "$after" "$file" || { log "FerretDB $FERRETDB_VERSION: the _id lookup fix did not apply"; exit 1; }
}

ferretdb_ok() { [ -x "$FERRETDB" ] && "$FERRETDB" --version >/dev/null 2>&1; }

install_ferretdb() {
  ferretdb_ok && return 0
  command -v go >/dev/null 2>&1 || { log "Go is required to build FerretDB"; exit 1; }
  log "building FerretDB $FERRETDB_VERSION (once; about 3 minutes on 2 cores)"
  export GOTOOLCHAIN=local GOFLAGS=-mod=mod GOTELEMETRY=off
  local dir work
  # The published module lacks build/version/version.txt, so a plain `go install` panics at start
  # (docs/design.md, "Building FerretDB"): build from a writable copy with the file written in.
  dir="$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
  [ -n "$dir" ] || { log "go mod download gave no module directory"; exit 1; }
  work="$(mktemp -d)"
  cp -r "$dir" "$work/src"
  chmod -R u+w "$work/src"
  printf '%s\n' "$FERRETDB_VERSION" > "$work/src/build/version/version.txt"
  patch_ferretdb "$work/src"
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

# A test run killed outright (SIGKILL to its process group, a CI runner's timeout) never reaches
# its `stop`, and its FerretDB files would hold the host's memory until a reboot. A directory that
# no running process names (FerretDB is given it as --state-dir) and that is over a minute old
# (not one another suite is just starting on) is such a leftover.
remove_orphaned_test_data() {
  local d
  for d in /dev/shm/taskflow-test.*; do
    [ -d "$d" ] || continue
    [ -n "$(find "$d" -maxdepth 0 -mmin +1)" ] || continue
    grep -qsF -- "$d" /proc/[0-9]*/cmdline && continue
    rm -rf "$d" && log "removed $d, left by a test run that did not stop"
  done
}

start() {
  local profile="$1" dir="$STATE/$1"
  stop "$profile" 2>/dev/null || true
  install_redis
  install_ferretdb
  # The test profile's data is disposable: start it empty, so a damaged leftover (a run killed
  # mid-write) can never block the suite.
  [ "$profile" != test ] || rm -rf "$dir/ferretdb" "$dir/pg"
  mkdir -p "$dir/ferretdb" "$dir/redis"
  # ...and in memory when the host has a tmpfs with room (/dev/shm, 1 GiB free): each test
  # creates and drops a database of its own, a SQLite file, and the suite ran 284 -> 254 s with
  # those files there (docs/development.md). A directory of the run's own: two suites at once.
  local data="$dir/ferretdb"
  [ "$profile" != test ] || remove_orphaned_test_data
  if [ "$profile" = test ] && [ -w /dev/shm ] \
    && [ "$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')" -ge 1048576 ]; then
    data="$(mktemp -d /dev/shm/taskflow-test.XXXXXX)"
    echo "$data" > "$dir/ferretdb-data"
  fi
  local redis_port mongo_port debug_port handler
  redis_port="$(free_port)"; mongo_port="$(free_port)"; debug_port="$(free_port)"
  # Development data outlives a restart (an append-only file under .state/PROFILE/redis): `make
  # dev` stopped and started again resumes where it was instead of rebuilding its Redis read
  # model from the log. The test profile, disposable, writes nothing to disk.
  local persistence=(--appendonly yes --appendfsync everysec)
  [ "$profile" != test ] || persistence=(--appendonly no)
  redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$dir/redis" --save "" "${persistence[@]}" \
    --databases 64 --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  case "$BACKEND" in
    sqlite) handler=(--handler=sqlite --sqlite-url="file:$data/") ;;
    postgresql)
      install_postgres
      local pg_port
      pg_port="$(free_port)"
      start_ferretdb_postgres "$dir" "$pg_port"
      handler=(--handler=postgresql --postgresql-url="postgres://postgres@127.0.0.1:$pg_port/ferretdb")
      ;;
    *) log "FERRETDB_BACKEND must be sqlite or postgresql, not '$BACKEND'"; exit 2 ;;
  esac
  "$FERRETDB" "${handler[@]}" \
    --listen-addr="127.0.0.1:$mongo_port" --debug-addr="127.0.0.1:$debug_port" \
    --state-dir="$data" --telemetry=disable --repl-set-name=rs0 --log-level=warn \
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
FERRETDB_BACKEND=$BACKEND
ENV
  log "Redis on 127.0.0.1:$redis_port, FerretDB $FERRETDB_VERSION ($BACKEND) on 127.0.0.1:$mongo_port ($profile)"
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
  stop_postgres "$dir"
  stop_peer "$1"
  if [ -f "$dir/ferretdb-data" ]; then  # the test profile's data in memory (see start)
    case "$(cat "$dir/ferretdb-data")" in /dev/shm/taskflow-test.*) rm -rf "$(cat "$dir/ferretdb-data")" ;; esac
    rm -f "$dir/ferretdb-data"
  fi
  rm -f "$dir/services.env"
}

case "${1:-}" in
  install) install_redis; install_ferretdb ;;
  install-wrk) install_wrk ;;
  install-tools) install_tools ;;
  start) start "${2:?profile}" ;;
  start-peer) start_peer "${2:?profile}" ;;
  stop) stop "${2:?profile}" ;;
  *) echo "usage: $0 install | install-wrk | install-tools | start PROFILE | start-peer PROFILE | stop PROFILE" >&2; exit 2 ;;
esac
