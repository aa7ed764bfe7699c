#!/usr/bin/env bash
# Install minimaxad (editable) and what it needs into the current Python environment.
#   bash scripts/setup.sh          # the package
#   bash scripts/setup.sh --test   # + test tools (pytest, scikit-learn, selenium) and headless Chromium
# Uses $PYTHON (default python3). An installed torch (CPU or CUDA build) is kept; without one,
# torch 2.13.0 is installed first, so that nothing pulls a different build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  echo "== installing torch 2.13.0"
  "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
echo "== installing minimaxad"
if [ "$with_tests" = 1 ]; then
  "$PYTHON" -m pip install --quiet -e ".[test]"
else
  "$PYTHON" -m pip install --quiet -e .
fi

if [ "$with_tests" = 1 ] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; }; then
  # the HTML report is checked in headless Chromium; without it that one test is skipped with a reason
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "== installing chromium and chromium-driver (Debian packages) for the report test"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
      || echo "   could not install chromium; the browser test will be skipped"
  else
    echo "   chromium/chromedriver not installed and apt-get not usable as root: the browser test will be skipped"
  fi
fi
"$PYTHON" -c "import minimaxad, torch; print(f'minimaxad {minimaxad.__version__} with torch {torch.__version__}')"
