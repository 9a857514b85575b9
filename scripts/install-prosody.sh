#!/usr/bin/env bash
# Install prosody + prosody-modules (mod_privilege) via apt when missing, the packaged
# system service kept from starting (scripts/apt-install.sh): the tests and the demo run
# throwaway instances of their own (scripts/local_prosody.py).
# Idempotent; silent when everything is already installed.
set -euo pipefail
source "$(dirname "$0")/apt-install.sh"

MOD_PRIVILEGE=/usr/lib/prosody/modules/mod_privilege/mod_privilege.lua

if command -v prosody >/dev/null 2>&1 && command -v prosodyctl >/dev/null 2>&1 \
   && [ -f "$MOD_PRIVILEGE" ]; then
  exit 0
fi

apt_install install-prosody.sh prosody prosody-modules
# Should the packaged service have started anyway (no invoke-rc.d), stop it.
as_root pkill -u prosody -x lua5.4 2>/dev/null || true
as_root pkill -u prosody prosody 2>/dev/null || true

if [ ! -f "$MOD_PRIVILEGE" ]; then
  echo "install-prosody.sh: $MOD_PRIVILEGE still missing after install" >&2
  exit 1
fi
echo "install-prosody.sh: done" >&2
