#!/usr/bin/env bash
# Writes the Docker secrets docker-compose.yml mounts (deploy/secrets/, never committed): random
# keys with the kids the env file names (JWT_ACTIVE_KID=k1, DATA_KEK_ACTIVE=k1). An existing
# file is kept: a new EVENT_LOG_HMAC_KEY, DATA_KEKS or EMAIL_HASH_KEY would make the log, the
# data keys or the e-mail reservations unreadable (docs/operations.md).
#
# Permissions: Compose mounts each file into the containers as it is on the host (a bind mount),
# and the image runs as uid 10001, so the files are world-readable (0444) inside a directory
# only their owner may enter (0700): on the host nobody else reaches them.
#
#   scripts/make-secrets.sh [DIR]      # default deploy/secrets
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-deploy/secrets}"
mkdir -p "$dir"
chmod 700 "$dir"
token() { python3 -c 'import secrets; print(secrets.token_urlsafe(48))'; }
kek() { python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'; }
write() {  # name value
  if [ -s "$dir/$1" ]; then echo "kept    $dir/$1"; return; fi
  (umask 077; printf '%s\n' "$2" > "$dir/$1.tmp")
  chmod 444 "$dir/$1.tmp"
  mv "$dir/$1.tmp" "$dir/$1"
  echo "written $dir/$1"
}
write jwt_keys "k1:$(token)"
write event_log_hmac_key "$(token)"
write data_keks "k1:$(kek)"
write email_hash_key "$(token)"
