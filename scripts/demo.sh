#!/usr/bin/env bash
# Set up everything and run the demo: synthetic data -> train -> evaluate -> predict -> report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m minimaxad.cli demo "$@"
