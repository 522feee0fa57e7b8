# Sourced by the quick-start scripts: make (or reuse) .venv and install the project into it.
# Idempotent, and fast when nothing changed: the install runs again only when pyproject.toml
# or the venv's interpreter changed since the last one (both are in the install stamp).
# $PYTHON names the interpreter the venv must be made with: a .venv made with another one
# (another version, or the same version elsewhere) is made anew. Without $PYTHON an existing
# .venv is kept whatever its Python (3.11 or newer). A .venv whose interpreter is gone (its
# link dangles: that Python was removed or upgraded) is made anew either way.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The interpreter: $PYTHON if set, else the first of python3, python3.13, python3.12, python3.11
# that is 3.11 or newer, so that an old default python3 gives a clear message, not pip's.
new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
# What identifies an interpreter: its version and the real path of the Python behind it (a
# venv's python: the one it was made with), one line.
identity() {
  "$1" -c 'import os, platform, sys; print(platform.python_version(), os.path.realpath(getattr(sys, "_base_executable", sys.executable)))' 2>/dev/null
}
choose_python() {
  if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
    if ! new_enough "$PY"; then
      echo "le_transport needs Python 3.11 or newer; PYTHON=$PY is not." >&2
      exit 2
    fi
    return
  fi
  PY=""
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 && new_enough "$candidate"; then
      PY="$candidate"
      return
    fi
  done
  echo "le_transport needs Python 3.11 or newer: none found as python3, python3.13," \
    "python3.12 or python3.11 (set PYTHON=/path/to/python3.11 to choose one)." >&2
  exit 2
}
PY=""
if [ -n "${PYTHON:-}" ]; then
  choose_python
fi
remake() {  # why: the line said before the .venv is made anew
  [ -n "$PY" ] || choose_python
  echo "== $1: making .venv anew with $PY" >&2
  rm -rf .venv
}
have=""
if [ -e .venv ] || [ -L .venv ]; then
  if [ ! -x .venv/bin/python ] || ! have="$(identity .venv/bin/python)" || [ -z "$have" ]; then
    remake "the .venv here has no working Python (its interpreter was removed or moved?)"
    have=""
  elif ! new_enough .venv/bin/python; then
    if [ -z "${PYTHON:-}" ]; then
      echo "the .venv here was made with Python older than 3.11: remove it (rm -rf .venv) and run again, or set PYTHON." >&2
      exit 2
    fi
    remake "the .venv here is Python $have, older than 3.11"
    have=""
  elif [ -n "${PYTHON:-}" ] && [ "$have" != "$(identity "$PY")" ]; then
    remake "the .venv here is Python $have, PYTHON=$PYTHON is $(identity "$PY")"
    have=""
  fi
fi
# The advice when a venv cannot have pip: Debian and Ubuntu ship ensurepip's wheels apart.
NO_PIP_HINT="on Debian or Ubuntu, install the python3-venv package (python3.X-venv for a \
python3.X), then run again"
if [ ! -e .venv ]; then
  [ -n "$PY" ] || choose_python
  if ! "$PY" -m venv .venv; then
    # Debian's venv, without python3-venv, makes .venv and then fails for want of ensurepip:
    # the half-made one (no pip) would be taken for a made one by the next run.
    rm -rf .venv
    echo "could not make .venv with $PY: $NO_PIP_HINT" >&2
    exit 2
  fi
  have="$(identity .venv/bin/python)"
fi
stamp=".venv/.le_transport_stamp"
project="$(sha256sum < pyproject.toml | cut -d' ' -f1)"
want="python $have; pyproject $project"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$project" ]; then
  # A stamp from before the interpreter was recorded, for this pyproject.toml: the install
  # was made with this venv's own Python, so only the stamp's form changes.
  echo "$want" > "$stamp"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  if ! .venv/bin/python -c 'import pip' >/dev/null 2>&1; then
    # A .venv made without pip (by hand, or half-made by a venv that failed before this
    # script removed it): given pip, else every run failed with "No module named pip".
    echo "== the .venv here has no pip: installing it with ensurepip" >&2
    if ! .venv/bin/python -m ensurepip --upgrade --default-pip >/dev/null; then
      echo "the .venv here has no pip and ensurepip cannot give it one: $NO_PIP_HINT" >&2
      exit 2
    fi
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
  echo "$want" > "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
