#!/usr/bin/env bash
# The whole test suite, as the README and CI run it: installs what it needs into .venv,
# then lint, format, types and every test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11), "streamflow needs Python 3.11+"'
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"

echo "== ruff check"; .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== mypy --strict src"; .venv/bin/mypy --strict src
echo "== pytest"; .venv/bin/python -m pytest "$@"
