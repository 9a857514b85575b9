#!/usr/bin/env bash
# Run the service against a local, loopback-only Prosody it sets up itself.
#
#   - installs Prosody 0.12 + prosody-modules (mod_privilege) from Debian when missing (root);
#   - creates .venv with the project;
#   - writes .demo/: a Prosody config with the component and mod_privilege, a service
#     config (config.toml), a component secret and an admin token (kept across runs);
#   - registers three demo users: alice, bob, and admin (an [auth] xmpp_admins);
#   - starts Prosody, then `python -m component --config .demo/config.toml` in the foreground.
# Ctrl-C stops both. Re-running reuses .demo/ (same secret, token, database).
#
#   - starts a local mailbox (aiosmtpd) for e-mail device shares: .demo/mailbox/new/.
# Ports (override with environment variables): XMPP c2s $C2S_PORT (15222), component
# $COMPONENT_PORT (15347), REST $HTTP_PORT (8080), SMTP $SMTP_PORT (11025); all on 127.0.0.1.
#
# XMPP_SERVER=ejabberd runs the demo against ejabberd 23.01 from Debian instead
# (scripts/install-ejabberd.sh, scripts/local_ejabberd.py: .demo/ejabberd/), with the
# service's [roster] backend = "ejabberd_api" on its mod_http_api at $API_PORT (15281);
# the Erlang node listens for ejabberdctl on $DIST_PORT (15299), no epmd.
set -euo pipefail
cd "$(dirname "$0")/.."
# Everything the demo writes (secrets, configs, the database, Prosody's data) is for its
# owner only: files 0600, folders 0700.
umask 077

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
DEMO=${DEMO_DIR:-.demo}
C2S_PORT=${C2S_PORT:-15222}
COMPONENT_PORT=${COMPONENT_PORT:-15347}
HTTP_PORT=${HTTP_PORT:-8080}
SMTP_PORT=${SMTP_PORT:-11025}
XMPP_SERVER=${XMPP_SERVER:-prosody}
API_PORT=${API_PORT:-15281}
DIST_PORT=${DIST_PORT:-15299}
DOMAIN=example.test
COMPONENT_JID=presence.$DOMAIN

say() { echo "run.sh: $*" >&2; }

case "$XMPP_SERVER" in
  prosody) bash scripts/install-prosody.sh ;;
  ejabberd) bash scripts/install-ejabberd.sh ;;
  *) say "XMPP_SERVER must be prosody or ejabberd, not '$XMPP_SERVER'"; exit 2 ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
say "installing the project into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[demo]'

mkdir -p "$DEMO"
DEMO_ABS=$(cd "$DEMO" && pwd)
# A .demo/ from an earlier version may be world-readable: tighten what holds secrets.
chmod 700 "$DEMO_ABS"
[ -s "$DEMO/secret" ] || "$VENV/bin/python" -c "import secrets; print(secrets.token_urlsafe(24))" > "$DEMO/secret"
[ -s "$DEMO/admin_token" ] || "$VENV/bin/python" -c "import secrets; print(secrets.token_urlsafe(32))" > "$DEMO/admin_token"
chmod 600 "$DEMO/secret" "$DEMO/admin_token"
for f in "$DEMO_ABS/config.toml" "$DEMO_ABS"/presence.sqlite3*; do
  if [ -e "$f" ]; then chmod 600 "$f"; fi
done
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
path = "$DEMO_ABS/presence.sqlite3"

[auth]
admin_token = "$ADMIN_TOKEN"
c2s_host = "127.0.0.1"
c2s_port = $C2S_PORT
c2s_allow_plaintext = true   # the demo Prosody has no TLS certificate; loopback only
xmpp_admins = ["admin@$DOMAIN"]   # may run the admin commands (set-state, subscriptions)

[smtp]
# A local mailbox (aiosmtpd): invitations land as files in $DEMO_ABS/mailbox/new/.
host = "127.0.0.1"
port = $SMTP_PORT
sender = "presence@$DOMAIN"

[sharing]
public_url = "http://127.0.0.1:$HTTP_PORT"
TOML
if [ "$XMPP_SERVER" = ejabberd ]; then
  cat >> "$DEMO/config.toml" <<TOML

[roster]
# ejabberd 23.01's XEP-0356 roster sets fail: rosters go through its HTTP API.
backend = "ejabberd_api"
ejabberd_api_url = "http://127.0.0.1:$API_PORT/api"
TOML
  # ejabberdctl runs the node as the ejabberd user: it must reach .demo/ejabberd/
  # (traverse only; every file in .demo stays 0600).
  chmod 711 "$DEMO_ABS"
fi

# Processes left over from an earlier run that was killed hard would hold the ports;
# they are recognised by this demo folder's absolute config paths.
if pkill -f -- "--config $DEMO_ABS/xmpp/prosody.cfg.lua" 2>/dev/null; then
  say "stopped a Prosody left over from an earlier run"
fi
if pkill -f -- "-mnesia dir \"$DEMO_ABS/ejabberd/spool\"" 2>/dev/null; then
  say "stopped an ejabberd left over from an earlier run"
fi
if pkill -f -- "-m component --config $DEMO_ABS/config.toml" 2>/dev/null; then
  say "stopped a service left over from an earlier run"
fi
if pkill -f -- "-m aiosmtpd .* $DEMO_ABS/mailbox" 2>/dev/null; then
  say "stopped a mailbox left over from an earlier run"
fi
sleep 0.5

# Every port must be free before anything starts (a taken one would fail half-way); bound
# as the servers bind (SO_REUSEADDR): a closed connection lingering in TIME_WAIT is no owner.
PORTS="C2S_PORT:$C2S_PORT COMPONENT_PORT:$COMPONENT_PORT HTTP_PORT:$HTTP_PORT SMTP_PORT:$SMTP_PORT"
[ "$XMPP_SERVER" = ejabberd ] && PORTS="$PORTS API_PORT:$API_PORT DIST_PORT:$DIST_PORT"
for spec in $PORTS; do
  name=${spec%%:*}; port=${spec#*:}
  if ! "$VENV/bin/python" -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[1])))" "$port" 2>/dev/null; then
    say "127.0.0.1:$port ($name) is already in use; free it or run with $name=<another port>"
    exit 2
  fi
done

if [ "$XMPP_SERVER" = ejabberd ]; then
  SERVER_NAME=ejabberd
  SERVER_LOG="$DEMO_ABS/ejabberd/logs/ejabberd.log"
  say "starting ejabberd on 127.0.0.1 (c2s $C2S_PORT, component $COMPONENT_PORT, API $API_PORT)"
  "$VENV/bin/python" scripts/local_ejabberd.py up --dir "$DEMO_ABS/ejabberd" --domain "$DOMAIN" \
    --component-jid "$COMPONENT_JID" --secret-file "$DEMO_ABS/secret" \
    --c2s-port "$C2S_PORT" --component-port "$COMPONENT_PORT" --api-port "$API_PORT" \
    --dist-port "$DIST_PORT" \
    --user alice:alice-password --user bob:bob-password --user admin:admin-password \
    > "$DEMO_ABS/up.log" 2>&1 &
else
  SERVER_NAME=prosody
  SERVER_LOG="$DEMO_ABS/xmpp/prosody.log"
  say "starting Prosody on 127.0.0.1 (c2s $C2S_PORT, component $COMPONENT_PORT)"
  "$VENV/bin/python" scripts/local_prosody.py up --dir "$DEMO_ABS/xmpp" --domain "$DOMAIN" \
    --component-jid "$COMPONENT_JID" --secret-file "$DEMO_ABS/secret" \
    --c2s-port "$C2S_PORT" --component-port "$COMPONENT_PORT" \
    --user alice:alice-password --user bob:bob-password --user admin:admin-password \
    > "$DEMO_ABS/up.log" 2>&1 &
fi
PROSODY_PID=$!
SERVICE_PID=""
MAILBOX_PID=""
cleanup() {
  trap - EXIT INT TERM HUP
  set +e  # a child killed by our signal makes `wait` return 143: keep cleaning up
  for pid in $SERVICE_PID $MAILBOX_PID $PROSODY_PID; do kill "$pid" 2>/dev/null; done
  for pid in $SERVICE_PID $MAILBOX_PID $PROSODY_PID; do wait "$pid" 2>/dev/null; done
  say "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Wait for the `up` helper to report the server running (it exits on any failure, e.g. a
# port already taken by another server).
for _ in $(seq 1 300); do
  kill -0 "$PROSODY_PID" 2>/dev/null || {
    cat "$DEMO_ABS/up.log" >&2
    say "$SERVER_NAME failed to start (see above and $SERVER_LOG)"
    exit 1
  }
  grep -q "^$SERVER_NAME running" "$DEMO_ABS/up.log" 2>/dev/null && break
  sleep 0.2
done
grep -q "^$SERVER_NAME running" "$DEMO_ABS/up.log" || { say "$SERVER_NAME did not start within 60 s"; exit 1; }
sed 's/^/  /' "$DEMO_ABS/up.log" >&2

say "starting a local mailbox on 127.0.0.1:$SMTP_PORT (mails land in $DEMO_ABS/mailbox/new/)"
mkdir -p "$DEMO_ABS/mailbox/tmp" "$DEMO_ABS/mailbox/new" "$DEMO_ABS/mailbox/cur"  # a maildir
"$VENV/bin/python" -m aiosmtpd -n -l "127.0.0.1:$SMTP_PORT" -c aiosmtpd.handlers.Mailbox "$DEMO_ABS/mailbox" &
MAILBOX_PID=$!

B="http://127.0.0.1:$HTTP_PORT"
cat >&2 <<EOT

run.sh: the service is starting; REST on $B, XMPP users alice / bob / admin (passwords
        alice-password / bob-password / admin-password) on 127.0.0.1:$C2S_PORT (plaintext,
        loopback only). From an XMPP client, run the ad-hoc commands of $COMPONENT_JID
        (profanity: /cmd list $COMPONENT_JID). Or try, in another terminal:

  curl -s $B/healthz
  curl -s -u alice@$DOMAIN:alice-password $B/api/rainbow/authentication/v1.0/login
      # -> {"token": "T", "loggedInUser": {"id": "ALICE_ID", ...}}
  curl -s -H "Authorization: Bearer T" -H "Content-Type: application/json" \\
       -d '{"toJid": "bob@$DOMAIN"}' $B/api/rainbow/enduser/v1.0/users/ALICE_ID/presences
  # then log in as bob and POST .../users/BOB_ID/presences/REQUEST_ID/accept (see README.md)

EOT

"$VENV/bin/python" -m component --config "$DEMO_ABS/config.toml" &
SERVICE_PID=$!
wait "$SERVICE_PID"
