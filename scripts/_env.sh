# Sourced by the quick-start scripts: make (or reuse) .venv and install the project into it.
# Idempotent: the install runs again only when pyproject.toml changed since the last one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The interpreter: $PYTHON if set, else the first of python3, python3.13, python3.12, python3.11
# that is 3.11 or newer, so that an old default python3 gives a clear message, not pip's.
new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
  if ! new_enough "$PY"; then
    echo "le_transport needs Python 3.11 or newer; PYTHON=$PY is not." >&2
    exit 2
  fi
else
  PY=""
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 && new_enough "$candidate"; then
      PY="$candidate"
      break
    fi
  done
  if [ -z "$PY" ]; then
    echo "le_transport needs Python 3.11 or newer: none found as python3, python3.13," \
      "python3.12 or python3.11 (set PYTHON=/path/to/python3.11 to choose one)." >&2
    exit 2
  fi
fi
if [ -x .venv/bin/python ] && ! new_enough .venv/bin/python; then
  echo "the .venv here was made with Python older than 3.11: remove it (rm -rf .venv) and run again." >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.le_transport_stamp"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
  echo "$want" > "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
