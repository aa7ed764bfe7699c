#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install minimaxad (editable) and what it needs into it.
#   bash scripts/setup.sh          # the package
#   bash scripts/setup.sh --test   # + test tools (pytest, scikit-learn, selenium, ...) and headless Chromium
# The environment: the active one ($VIRTUAL_ENV), else $MINIMAXAD_VENV, else ./.venv, created with
# $PYTHON (default python3). A system Python is never installed into, so this works where pip refuses
# to (PEP 668 "externally-managed-environment": Debian, Ubuntu, Homebrew). If $PYTHON already has torch
# (CPU or CUDA build), the new environment sees it (--system-site-packages) instead of a second copy;
# otherwise torch==2.13.0 is installed into it, before anything else can pull a different build.
# A second run with an unchanged pyproject.toml only checks the imports (about a second).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
with_tests=0
case "${1:-}" in
  "") ;;
  --test) with_tests=1 ;;
  -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "setup.sh: unknown option '$1' (use --test or nothing)" >&2; exit 2 ;;
esac

if [ ! -x "$VENV_PYTHON" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ]; then
    echo "setup.sh: error: VIRTUAL_ENV=$VIRTUAL_ENV has no $VENV_PYTHON; deactivate it or recreate it" >&2
    exit 1
  fi
  base=${PYTHON:-python3}
  if ! command -v "$base" >/dev/null 2>&1; then
    echo "setup.sh: error: no Python interpreter '$base' found. Install Python 3.10 or newer" >&2
    echo "  (Debian/Ubuntu: apt-get install python3 python3-venv; macOS: brew install python)" >&2
    echo "  or name one with PYTHON=/path/to/python3 bash scripts/setup.sh" >&2
    exit 1
  fi
  if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "setup.sh: error: $base is Python $("$base" -c 'import platform; print(platform.python_version())'); minimaxad needs 3.10 or newer (set PYTHON=...)" >&2
    exit 1
  fi
  site=()
  if torch_version=$("$base" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    site=(--system-site-packages)
    # the interpreter's own pip (and setuptools) serve the environment: no older bundled copies
    # shadowing them, and no download when everything is installed already
    if "$base" -c 'import pip' >/dev/null 2>&1; then site+=(--without-pip); fi
    echo "== creating $VENV_DIR with $base (reusing its torch $torch_version)"
  else
    echo "== creating $VENV_DIR with $base"
  fi
  if ! "$base" -m venv ${site[@]+"${site[@]}"} "$VENV_DIR" >"$VENV_DIR.log" 2>&1 || [ ! -x "$VENV_PYTHON" ]; then
    cat "$VENV_DIR.log" >&2
    rm -rf "$VENV_DIR" "$VENV_DIR.log"
    py=$("$base" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null || echo python3)
    echo "setup.sh: error: $base could not create a virtual environment (its venv/ensurepip module is missing)." >&2
    echo "  Debian/Ubuntu: apt-get install python3-venv   (or $py-venv; with sudo if you are not root)" >&2
    echo "  Fedora: dnf install python3;  macOS: brew install python;  or set PYTHON to another interpreter" >&2
    exit 1
  fi
  rm -f "$VENV_DIR.log"
fi

# What this environment was last set up from: skip pip when nothing changed.
stamp_file=$VENV_DIR/.minimaxad-setup
stamp="$(cat pyproject.toml scripts/setup.sh | "$VENV_PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())') $PWD"
up_to_date=0
if [ -f "$stamp_file" ] && grep -qxF "$stamp tests=$with_tests" "$stamp_file" 2>/dev/null \
   || { [ "$with_tests" = 0 ] && grep -qxF "$stamp tests=1" "$stamp_file" 2>/dev/null; }; then
  # the installed package must still be this checkout's (not another clone's)
  if versions=$("$VENV_PYTHON" -c "import sys, torch, minimaxad
sys.exit(1) if not minimaxad.__file__.startswith('$PWD/src/') else print(minimaxad.__version__, torch.__version__)" 2>/dev/null); then
    up_to_date=1
  fi
fi

if [ "$up_to_date" = 1 ]; then
  echo "== $VENV_DIR is up to date (minimaxad ${versions% *} with torch ${versions#* })"
else
  pip=("$VENV_PYTHON" -m pip --disable-pip-version-check)
  build=()
  if "$VENV_PYTHON" - <<'PY' 2>/dev/null; then
import importlib.util, sys, setuptools
major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
# setuptools that builds wheels by itself (70.1+, or with the wheel package): build with it, offline
sys.exit(0 if (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") else 1)
PY
    build=(--no-build-isolation)
  fi
  if ! "$VENV_PYTHON" -c "import torch" >/dev/null 2>&1; then
    # the exact pin: a local CPU wheel (pip's find-links) is preferred to the multi-GB CUDA download
    echo "== installing torch 2.13.0 into $VENV_DIR"
    "${pip[@]}" install --quiet "torch==2.13.0"
  fi
  echo "== installing minimaxad (editable) into $VENV_DIR"
  if [ "$with_tests" = 1 ]; then
    "${pip[@]}" install --quiet ${build[@]+"${build[@]}"} -e ".[test]"
  else
    "${pip[@]}" install --quiet ${build[@]+"${build[@]}"} -e .
  fi
  echo "$stamp tests=$with_tests" >"$stamp_file"
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
[ "$up_to_date" = 1 ] || "$VENV_PYTHON" -c "import minimaxad, torch; print(f'minimaxad {minimaxad.__version__} with torch {torch.__version__} in $VENV_DIR')"
