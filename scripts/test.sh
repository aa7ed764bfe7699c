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
# selected" (e.g. a -k that matches only one side) is not a failure. tests/integrations needs
# anomalib: the third process below runs it in its own environment.
"$VENV_PYTHON" -m pytest -q -m "not openvino" --ignore=tests/integrations "$@" || { rc=$?; [ "$rc" = 5 ] || status=$rc; }
"$VENV_PYTHON" -m pytest -q -m openvino --ignore=tests/integrations "$@" || { rc=$?; [ "$rc" = 5 ] || status=$rc; }

# The anomalib integration (tests/integrations) in an environment of its own, ./.venv-anomalib
# (or $MINIMAXAD_ANOMALIB_VENV): anomalib 2.7 needs the torch/torchvision pair that the [anomalib]
# extra pins, not the main environment's torch. Built once (about 5 minutes and 6.6 GB: torch's
# standard wheels, which run on CPU) and reused while pyproject.toml is unchanged. Where it cannot
# be built its tests are reported as skipped, with the reason. MINIMAXAD_SKIP_ANOMALIB=1 leaves the
# step out. Extra arguments go to this pytest too, except paths outside tests/integrations; when
# only such paths are given, the step is left out.
anomalib_tests() {
  local dir=${MINIMAXAD_ANOMALIB_VENV:-$PWD/.venv-anomalib} base=${PYTHON:-python3} started=$SECONDS
  local python=$dir/bin/python stamp_file=$dir/.minimaxad-anomalib-setup stamp args=() paths=0 ours=0 arg
  for arg in "$@"; do
    if [ -e "${arg%%::*}" ]; then
      paths=1
      case "${arg#./}" in tests/integrations*) ours=1; args+=("$arg") ;; esac
    else
      args+=("$arg")
    fi
  done
  if [ "$paths" = 1 ] && [ "$ours" = 0 ]; then return 0; fi
  [ "$ours" = 1 ] || args=(tests/integrations ${args[@]+"${args[@]}"})
  if [ "${MINIMAXAD_SKIP_ANOMALIB:-0}" = 1 ]; then
    echo "== tests/integrations (anomalib): SKIPPED, MINIMAXAD_SKIP_ANOMALIB=1"
    return 0
  fi
  stamp="$("$VENV_PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())') $PWD"
  if [ -f "$stamp_file" ] && grep -qxF "$stamp" "$stamp_file" \
     && "$python" -c "import sys, anomalib, minimaxad; sys.exit(not minimaxad.__file__.startswith('$PWD/src/'))" 2>/dev/null; then
    echo "== $dir is up to date"
  else
    echo "== building $dir for the anomalib tests (minimaxad[anomalib,onnx] + pytest; a few minutes the first time)"
    rm -f "$stamp_file"
    if { [ -x "$python" ] || "$base" -m venv "$dir"; } >"$dir.log" 2>&1 \
       && "$python" -m pip install --disable-pip-version-check --quiet -e ".[anomalib,onnx]" "pytest>=7" >>"$dir.log" 2>&1 \
       && "$python" -c "import anomalib.models, torchvision.ops, minimaxad.integrations.anomalib" >>"$dir.log" 2>&1; then
      echo "$stamp" >"$stamp_file"
      rm -f "$dir.log"
      echo "   built in $((SECONDS - started)) s"
    else
      echo "== tests/integrations (anomalib): SKIPPED, the environment $dir could not be built; the end of $dir.log:"
      tail -n 15 "$dir.log" | sed 's/^/   /'
      return 0
    fi
  fi
  # MINIMAXAD_REQUIRE_ANOMALIB: in this environment a failing import of the integration is an error, not a skip
  env VIRTUAL_ENV="$dir" PATH="$dir/bin:$PATH" MINIMAXAD_REQUIRE_ANOMALIB=1 \
    "$python" -m pytest -q -p no:cacheprovider "${args[@]}" || { rc=$?; [ "$rc" = 5 ] || return "$rc"; }
  echo "== tests/integrations (anomalib) took $((SECONDS - started)) s"
}
anomalib_tests "$@" || status=$?
exit "$status"
