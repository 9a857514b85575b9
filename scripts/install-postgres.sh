#!/usr/bin/env bash
# Install PostgreSQL (server binaries: initdb, pg_ctl, postgres) via apt when missing.
# The tests start a private cluster of their own (scripts/local_postgres.py); the
# Debian package's system cluster is kept from starting (policy-rc.d,
# scripts/apt-install.sh) and, if it runs anyway, stopped. Idempotent; silent when everything is already installed.
set -euo pipefail
source "$(dirname "$0")/apt-install.sh"

# The newest installed major version's binaries (Debian bookworm ships 15).
find_bin() { { ls -d /usr/lib/postgresql/*/bin 2>/dev/null || true; } | sort -V | tail -n 1; }
PG_BIN=${PG_BIN:-$(find_bin)}

if [ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] && [ -x "$PG_BIN/postgres" ]; then
  exit 0
fi

apt_install install-postgres.sh postgresql
# Should a system cluster have started anyway, stop it: tests use their own.
if command -v pg_ctlcluster >/dev/null 2>&1; then
  for cluster in /etc/postgresql/*/*; do
    [ -d "$cluster" ] || continue
    version=$(basename "$(dirname "$cluster")")
    name=$(basename "$cluster")
    as_root pg_ctlcluster "$version" "$name" stop 2>/dev/null || true
  done
fi

PG_BIN=${PG_BIN:-$(find_bin)}
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
  ls /usr/lib/postgresql >&2 || true
  echo "install-postgres.sh: $PG_BIN/initdb still missing after install (set PG_BIN)" >&2
  exit 1
fi
echo "install-postgres.sh: done" >&2
