#!/usr/bin/env bash
# Set up everything (scripts/setup.sh: a virtual environment, ./.venv unless one is active) and run
# the demo: synthetic data -> train -> evaluate -> predict -> report. Arguments go to `minimaxad demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/venv.sh
activate_venv
exec "$VENV_PYTHON" -m minimaxad.cli demo "$@"
