#!/usr/bin/env bash
# Set up everything (scripts/setup.sh --test: a virtual environment, ./.venv unless one is active)
# and run the whole test suite (what CI runs). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
source scripts/venv.sh
activate_venv
status=0
# Lint and format check first (ruff, configured in pyproject.toml): a second, and a failure fails the
# run without hiding the tests' results.
"$VENV_PYTHON" -m ruff check --quiet src tests benchmarks || status=1
"$VENV_PYTHON" -m ruff format --check src tests benchmarks || status=1
# Two pytest processes: OpenVINO's tests apart from the rest (with OpenVINO loaded, a long test
# process was once killed by a SIGSEGV at a later child-process exit). Exit code 5 = "no test
# selected" (e.g. a -k that matches only one side) is not a failure.
"$VENV_PYTHON" -m pytest -q -m "not openvino" "$@" || { rc=$?; [ "$rc" = 5 ] || status=$rc; }
"$VENV_PYTHON" -m pytest -q -m openvino "$@" || { rc=$?; [ "$rc" = 5 ] || status=$rc; }
exit "$status"
