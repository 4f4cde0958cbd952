#!/usr/bin/env bash
# Run `make test` the way CI would on a machine it has never seen:
#   - a fresh `git clone` of the current HEAD (committed work only) into a temp folder,
#   - a fresh .venv there (made by `make`, from pyproject.toml),
#   - LAYERPARITY_CACHE in a new, empty folder (so Caffe is built from source again),
#   - a new, empty KERAS_HOME (no ~/.keras/keras.json: Keras defaults only),
#   - TF_ENABLE_ONEDNN_OPTS=0 (TensorFlow's plain CPU kernels, as on a CPU without oneDNN),
#   - CI=true, and no LAYERPARITY_*/CAFFE_PYTHON/PYTHONPATH/VIRTUAL_ENV from this shell.
# Prints the pytest summary and how long setup and tests took; exits with `make test`'s status.
#
#   scripts/fresh-check.sh                 # the whole suite, as `make test`
#   scripts/fresh-check.sh -m "not slow"   # extra arguments go to pytest (PYTEST_ARGS)
#   KEEP=1 scripts/fresh-check.sh          # keep the temp folder (clone, venv, cache, log)
#
# Takes ~5 min of Caffe build plus the suite on 2 cores; needs the Debian packages of
# scripts/ensure-debs.sh (as root it installs them) and network to PyPI. pip's own
# download cache is reused: it changes no result, only the download time.
set -euo pipefail

ROOT=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
HEAD=$(git -C "$ROOT" rev-parse HEAD)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/layerparity-fresh.XXXXXX")
LOG="$WORK/make-test.log"

cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo "fresh-check: kept $WORK (clone in src/, cache in cache/, log in make-test.log)"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]; then
  echo "fresh-check: note: uncommitted changes in $ROOT are not part of this check (HEAD only)"
fi
echo "fresh-check: $HEAD into $WORK"
git clone --quiet --no-local "$ROOT" "$WORK/src"
git -C "$WORK/src" checkout --quiet --detach "$HEAD"

# the environment of a machine that has never seen layerparity
for v in $(env | sed -n 's/^\(LAYERPARITY_[A-Z0-9_]*\)=.*/\1/p'); do unset "$v"; done
unset CAFFE_PYTHON PYTHONPATH VIRTUAL_ENV PYTEST_ADDOPTS
export LAYERPARITY_CACHE="$WORK/cache" KERAS_HOME="$WORK/keras-home" TF_ENABLE_ONEDNN_OPTS=0 CI=true
mkdir -p "$LAYERPARITY_CACHE" "$KERAS_HOME"
PYTEST_ARGS="$*"

cd "$WORK/src"
t0=$(date +%s)
set +e
make setup 2>&1 | tee "$LOG"
setup_rc=${PIPESTATUS[0]}
t1=$(date +%s)
rc=$setup_rc
if [ "$setup_rc" = 0 ]; then
  make test PYTEST_ARGS="$PYTEST_ARGS" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
fi
set -e
t2=$(date +%s)

echo
echo "== fresh-check summary ($HEAD) =="
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GB", $2 / 1048576}' /proc/meminfo), $(. /etc/os-release && echo "$PRETTY_NAME")"
echo "env: LAYERPARITY_CACHE=$LAYERPARITY_CACHE KERAS_HOME=$KERAS_HOME TF_ENABLE_ONEDNN_OPTS=0 CI=true"
if [ "$setup_rc" != 0 ]; then
  echo "setup FAILED (exit $setup_rc) after $((t1 - t0)) s; see the output above"
else
  echo "setup (venv, Debian packages check, Caffe build): $((t1 - t0)) s"
  echo "make test: $((t2 - t1)) s, exit $rc"
  grep -E "^(FAILED|ERROR) " "$LOG" || true
  grep -E "^=+ .*(passed|failed|error).* in [0-9.]+s" "$LOG" | tail -1 || echo "(no pytest summary line found)"
fi
exit "$rc"
