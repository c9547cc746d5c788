#!/usr/bin/env bash
# GAL Studio set-up and entry points. The first call creates .venv and installs everything.
#   ./run.sh app [app.py flags]   launch the app on http://127.0.0.1:7860 (built-in offline model)
#   ./run.sh test [pytest args]   run the test suite (offline, CPU)
#   ./run.sh lint                 ruff check + ruff format --check (what CI runs before the tests)
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=.venv

setup() {
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "GAL Studio needs Python >= 3.10; set PYTHON=/path/to/python3.x" >&2; exit 1
  fi
  local stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch 2.14.1 / torchvision 0.29.1 are the tested pair (they import cleanly together); pip picks
    # the wheel for this machine. On a CUDA machine you may pre-install the torch build you want.
    "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[dev]"
    touch "$stamp"
  fi
}

browser() {
  # The browser tests drive Debian's Chromium; install it when we can (root + apt), else they skip.
  if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
}

cmd=${1:-app}
shift || true
case "$cmd" in
  app)
    setup
    exec "$VENV/bin/python" app.py "$@"
    ;;
  test)
    setup
    browser
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    exec "$VENV/bin/python" -m pytest -q "$@"
    ;;
  lint)
    setup
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    ;;
  *)
    echo "usage: ./run.sh app|test|lint [args]" >&2; exit 2
    ;;
esac
