#!/usr/bin/env bash
# Writes the Docker secrets docker-compose.yml mounts (deploy/secrets/, never committed): random
# keys with the kids the env file names (JWT_ACTIVE_KID=k1, DATA_KEK_ACTIVE=k1). An existing
# file is kept: a new EVENT_LOG_HMAC_KEY, DATA_KEKS or EMAIL_HASH_KEY would make the log, the
# data keys or the e-mail reservations unreadable (docs/operations.md, go-live checklist).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=deploy/secrets
mkdir -p "$dir"
chmod 700 "$dir"
token() { python3 -c 'import secrets; print(secrets.token_urlsafe(48))'; }
kek() { python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'; }
write() {  # name value
  if [ -s "$dir/$1" ]; then echo "kept    $dir/$1"; return; fi
  # Readable by the containers' unprivileged user (compose bind-mounts the file as it is); the
  # directory (700) is what keeps other host users out.
  (umask 022; printf '%s\n' "$2" > "$dir/$1")
  echo "written $dir/$1"
}
write jwt_keys "k1:$(token)"
write event_log_hmac_key "$(token)"
write data_keks "k1:$(kek)"
write email_hash_key "$(token)"
