#!/usr/bin/env bash
# Install ejabberd (Debian 12: 23.01) via apt when missing, for the tests' private instances.
# The packaged system service is kept from starting (policy-rc.d, scripts/apt-install.sh),
# and any epmd/beam the package scripts started anyway are stopped: the tests run their own
# instance with their own node name.
# Idempotent; silent when ejabberd is already installed.
set -euo pipefail
source "$(dirname "$0")/apt-install.sh"

if command -v ejabberdctl >/dev/null 2>&1 || [ -x /usr/sbin/ejabberdctl ]; then
  exit 0
fi

apt_install install-ejabberd.sh --no-install-recommends ejabberd

# The package's postinst may still have started the packaged node (it calls ejabberdctl, which
# starts epmd): stop what it started, by the ejabberd user's processes only.
if [ -x /usr/sbin/ejabberdctl ]; then
  as_root /usr/sbin/ejabberdctl stop >/dev/null 2>&1 || true
fi
for pid in $(pgrep -u ejabberd 2>/dev/null || true); do
  as_root kill "$pid" 2>/dev/null || true
done

if ! [ -x /usr/sbin/ejabberdctl ]; then
  echo "install-ejabberd.sh: /usr/sbin/ejabberdctl still missing after install" >&2
  exit 1
fi
echo "install-ejabberd.sh: done" >&2
