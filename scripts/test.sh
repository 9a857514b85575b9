#!/usr/bin/env bash
# Run the whole test suite: installs what it needs first (idempotent).
#   - Prosody 0.12 + prosody-modules (mod_privilege) from Debian, when missing (needs root);
#   - ejabberd 23.01 from Debian, when missing (needs root; its packaged service kept from
#     starting): the end-to-end tier runs its core scenarios against a private ejabberd too;
#   - PostgreSQL from Debian, when missing (needs root): the tests marked `postgresql`
#     start a private cluster of it (scripts/local_postgres.py); `-m "not postgresql"`
#     runs the rest without it;
#   - a virtualenv in .venv with the project and its test extras.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

"$PYTHON" - <<'PY' || { echo "test.sh: Python 3.11+ is required" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

bash scripts/install-prosody.sh
bash scripts/install-ejabberd.sh
bash scripts/install-postgres.sh

if [ ! -x "$VENV/bin/python" ]; then
  echo "test.sh: creating virtualenv $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
echo "test.sh: installing the project and test dependencies into $VENV" >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'

exec "$VENV/bin/python" -m pytest "$@"
