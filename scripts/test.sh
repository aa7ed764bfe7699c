#!/usr/bin/env bash
# Set up everything and run the whole test suite (what CI runs). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m pytest -q "$@"
