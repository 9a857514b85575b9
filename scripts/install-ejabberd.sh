#!/usr/bin/env bash
# Install ejabberd (Debian 12: 23.01) via apt when missing, for the tests' private instances.
# The packaged system service is kept from starting (policy-rc.d), and any epmd/beam the package
# scripts started anyway are stopped: the tests run their own instance with their own node name.
# Idempotent; silent when ejabberd is already installed.
set -euo pipefail

if command -v ejabberdctl >/dev/null 2>&1 || [ -x /usr/sbin/ejabberdctl ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "install-ejabberd.sh: ejabberd missing and not root (no sudo)" >&2
    exit 1
  fi
fi

POLICY=/usr/sbin/policy-rc.d
SAVED=""
if [ -e "$POLICY" ]; then
  SAVED=$(mktemp)
  $SUDO cp -p "$POLICY" "$SAVED"
fi
restore_policy() {
  if [ -n "$SAVED" ]; then
    $SUDO cp -p "$SAVED" "$POLICY"
    rm -f "$SAVED"
  else
    $SUDO rm -f "$POLICY"
  fi
}
trap restore_policy EXIT
# 101 = "action not allowed": invoke-rc.d does not start the packaged service.
printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
$SUDO chmod 755 "$POLICY"

echo "install-ejabberd.sh: installing ejabberd" >&2
$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ejabberd

# The package's postinst may still have started the packaged node (it calls ejabberdctl, which
# starts epmd): stop what it started, by the ejabberd user's processes only.
if [ -x /usr/sbin/ejabberdctl ]; then
  $SUDO /usr/sbin/ejabberdctl stop >/dev/null 2>&1 || true
fi
for pid in $(pgrep -u ejabberd 2>/dev/null || true); do
  $SUDO kill "$pid" 2>/dev/null || true
done

if ! [ -x /usr/sbin/ejabberdctl ]; then
  echo "install-ejabberd.sh: /usr/sbin/ejabberdctl still missing after install" >&2
  exit 1
fi
echo "install-ejabberd.sh: done" >&2
