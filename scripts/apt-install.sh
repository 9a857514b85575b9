# Sourced by scripts/install-*.sh: install Debian packages without starting their services.
#
#   source scripts/apt-install.sh
#   apt_install NAME PACKAGE...
#
# Runs `apt-get update` and `apt-get install -y PACKAGE...` (as root, or through sudo) with
# a policy-rc.d that answers 101 ("action not allowed"), so invoke-rc.d starts none of the
# packaged system services (the tests and the demo run private instances of their own on
# free loopback ports). A policy-rc.d that was there before is put back afterwards. NAME is
# the calling script's name, for its messages.

apt_install() {
  local name=$1
  shift
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo="sudo"
    else
      echo "$name: $* missing and not root (no sudo)" >&2
      return 1
    fi
  fi
  local policy=/usr/sbin/policy-rc.d saved=""
  if [ -e "$policy" ]; then
    saved=$(mktemp)
    $sudo cp -p "$policy" "$saved"
  fi
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  echo "$name: installing $*" >&2
  local status=0
  $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" || status=$?
  if [ -n "$saved" ]; then
    $sudo cp -p "$saved" "$policy"
    rm -f "$saved"
  else
    $sudo rm -f "$policy"
  fi
  return $status
}

# As root or through sudo (for the stop commands the install scripts run afterwards).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
