#!/usr/bin/env bash
# Run the service against a local, loopback-only Prosody it sets up itself.
#
#   - installs Prosody 0.12 + prosody-modules (mod_privilege) from Debian when missing (root);
#   - creates .venv with the project;
#   - writes .demo/: a Prosody config with the component and mod_privilege, a service
#     config (config.toml), a component secret and an admin token (kept across runs);
#   - registers two demo users, alice and bob;
#   - starts Prosody, then `python -m component --config .demo/config.toml` in the foreground.
# Ctrl-C stops both. Re-running reuses .demo/ (same secret, token, database).
#
# Ports (override with environment variables): XMPP c2s $C2S_PORT (15222), component
# $COMPONENT_PORT (15347), REST $HTTP_PORT (8080); all on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
DEMO=${DEMO_DIR:-.demo}
C2S_PORT=${C2S_PORT:-15222}
COMPONENT_PORT=${COMPONENT_PORT:-15347}
HTTP_PORT=${HTTP_PORT:-8080}
DOMAIN=example.test
COMPONENT_JID=presence.$DOMAIN

say() { echo "run.sh: $*" >&2; }

bash scripts/install-prosody.sh
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
say "installing the project into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e .

mkdir -p "$DEMO"
umask 077
[ -s "$DEMO/secret" ] || "$VENV/bin/python" -c "import secrets; print(secrets.token_urlsafe(24))" > "$DEMO/secret"
[ -s "$DEMO/admin_token" ] || "$VENV/bin/python" -c "import secrets; print(secrets.token_urlsafe(32))" > "$DEMO/admin_token"
umask 022
SECRET=$(cat "$DEMO/secret")
ADMIN_TOKEN=$(cat "$DEMO/admin_token")

cat > "$DEMO/config.toml" <<TOML
# Written by scripts/run.sh; see config.example.toml for every key.
[component]
jid = "$COMPONENT_JID"
secret = "$SECRET"
server_host = "127.0.0.1"
server_port = $COMPONENT_PORT

[http]
host = "127.0.0.1"
port = $HTTP_PORT

[storage]
path = "$DEMO/presence.sqlite3"

[auth]
admin_token = "$ADMIN_TOKEN"
c2s_host = "127.0.0.1"
c2s_port = $C2S_PORT
c2s_allow_plaintext = true   # the demo Prosody has no TLS certificate; loopback only
TOML

# A Prosody left over from an earlier run that was killed hard would hold the ports.
if [ -s "$DEMO/xmpp/prosody.pid" ] && kill -0 "$(cat "$DEMO/xmpp/prosody.pid")" 2>/dev/null; then
  say "stopping the Prosody left over from an earlier run"
  kill "$(cat "$DEMO/xmpp/prosody.pid")" 2>/dev/null || true
  sleep 1
fi

say "starting Prosody on 127.0.0.1 (c2s $C2S_PORT, component $COMPONENT_PORT)"
"$VENV/bin/python" scripts/local_prosody.py up --dir "$DEMO/xmpp" --domain "$DOMAIN" \
  --component-jid "$COMPONENT_JID" --secret "$SECRET" \
  --c2s-port "$C2S_PORT" --component-port "$COMPONENT_PORT" \
  --user alice:alice-password --user bob:bob-password &
PROSODY_PID=$!
SERVICE_PID=""
cleanup() {
  trap - EXIT INT TERM
  [ -n "$SERVICE_PID" ] && kill "$SERVICE_PID" 2>/dev/null && wait "$SERVICE_PID" 2>/dev/null
  kill "$PROSODY_PID" 2>/dev/null && wait "$PROSODY_PID" 2>/dev/null
  say "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for _ in $(seq 1 100); do
  if "$VENV/bin/python" -c "import socket,sys; socket.create_connection(('127.0.0.1', $COMPONENT_PORT), 0.2)" 2>/dev/null; then
    break
  fi
  kill -0 "$PROSODY_PID" 2>/dev/null || { say "Prosody failed to start (see $DEMO/xmpp/prosody.log)"; exit 1; }
  sleep 0.2
done

B="http://127.0.0.1:$HTTP_PORT"
cat >&2 <<EOT

run.sh: the service is starting; REST on $B, XMPP users alice / bob (passwords alice-password / bob-password)
        on 127.0.0.1:$C2S_PORT (plaintext, loopback only). Try, in another terminal:

  curl -s $B/healthz
  curl -s -u alice@$DOMAIN:alice-password $B/api/rainbow/authentication/v1.0/login
      # -> {"token": "T", "loggedInUser": {"id": "ALICE_ID", ...}}
  curl -s -H "Authorization: Bearer T" -H "Content-Type: application/json" \\
       -d '{"toJid": "bob@$DOMAIN"}' $B/api/rainbow/enduser/v1.0/users/ALICE_ID/presences
  # then log in as bob and POST .../users/BOB_ID/presences/REQUEST_ID/accept (see README.md)

EOT

"$VENV/bin/python" -m component --config "$DEMO/config.toml" &
SERVICE_PID=$!
wait "$SERVICE_PID"
