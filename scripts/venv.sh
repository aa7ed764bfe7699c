# Sourced by setup.sh, demo.sh and test.sh: which virtual environment the scripts use.
# The active one (VIRTUAL_ENV, e.g. after `source .venv/bin/activate`), else MINIMAXAD_VENV,
# else the project's own .venv. Sets VENV_DIR and VENV_PYTHON (bin/, or Scripts/ on Windows).
if [ -n "${VIRTUAL_ENV:-}" ]; then
  VENV_DIR=$VIRTUAL_ENV
else
  VENV_DIR=${MINIMAXAD_VENV:-$PWD/.venv}
fi
VENV_BIN=$VENV_DIR/bin
[ -d "$VENV_BIN" ] || [ ! -d "$VENV_DIR/Scripts" ] || VENV_BIN=$VENV_DIR/Scripts
VENV_PYTHON=$VENV_BIN/python

# Run the rest of the script as if the environment were activated (tests call `python`, `minimaxad`).
activate_venv() {
  export VIRTUAL_ENV=$VENV_DIR
  export PATH="$VENV_BIN:$PATH"
  unset PYTHONHOME
}
