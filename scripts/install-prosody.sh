#!/usr/bin/env bash
# Install prosody + prosody-modules (mod_privilege) via apt when missing.
# Idempotent; silent when everything is already installed.
set -euo pipefail

MOD_PRIVILEGE=/usr/lib/prosody/modules/mod_privilege/mod_privilege.lua

if command -v prosody >/dev/null 2>&1 && command -v prosodyctl >/dev/null 2>&1 \
   && [ -f "$MOD_PRIVILEGE" ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "install-prosody.sh: prosody/prosody-modules missing and not root (no sudo)" >&2
    exit 1
  fi
fi

echo "install-prosody.sh: installing prosody prosody-modules" >&2
$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y prosody prosody-modules

if [ ! -f "$MOD_PRIVILEGE" ]; then
  echo "install-prosody.sh: $MOD_PRIVILEGE still missing after install" >&2
  exit 1
fi
echo "install-prosody.sh: done" >&2
