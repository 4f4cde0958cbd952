#!/usr/bin/env bash
# Build the converter venv: caffe2onnx (PyPI caffe-onnx) and onnx2tf with TensorFlow, in a venv
# of their own (they pin versions the project's .venv must not get), cached outside the work tree.
#
#   scripts/build-converter-venv.sh     # prints the venv's python on its last line of stdout
#
# Environment:
#   LAYERPARITY_CACHE=DIR   where it is kept (default ~/.cache/layerparity)
#   PYTHON=python3          the base interpreter
#
# The cache key covers this script, scripts/converter-requirements.txt (every version pinned),
# the Python version and the machine architecture. The venv is built in a scratch folder and
# moved into place only after everything imports and onnx2tf's calibration sample is written
# (onnx2tf would download it on first use; the machines reach only package registries, and
# nothing may download at test time). A venv's bin/ scripts keep the scratch path in their
# shebang: always run `<venv>/bin/python -m onnx2tf` / `-m pip`, never bin/onnx2tf.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
REQ="$here/converter-requirements.txt"
PYTHON=${PYTHON:-python3}
PYVER=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
KEY=$( (echo "py$PYVER $(uname -m)"; cat "$0" "$REQ") | sha256sum | cut -c1-16)
CACHE=${LAYERPARITY_CACHE:-$HOME/.cache/layerparity}
DEST="$CACHE/converter-venv-$KEY"
CALIBRATION=calibration_image_sample_data_20x128x128x3_float32.npy

check() {  # $1: venv folder
  test -f "$1/$CALIBRATION" || return 1
  env -u PYTHONPATH TF_CPP_MIN_LOG_LEVEL=3 "$1/bin/python" -c 'import onnx, onnx2tf, onnxruntime, tensorflow, tf_keras' \
    && env -u PYTHONPATH PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python "$1/bin/python" -c 'import src.caffe2onnx, src.load_save_model'
}

if [ -f "$DEST/.layerparity-ok" ] && [ -x "$DEST/bin/python" ]; then
  echo "$DEST/bin/python"
  exit 0
fi

echo "layerparity setup: building the converter venv (caffe2onnx, onnx2tf, TensorFlow); about 2 minutes once" >&2
t0=$(date +%s)
mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/build-converter-$KEY.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m venv "$WORK/venv"
PIP=("$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check --no-input)
"${PIP[@]}" -r "$REQ" 2> >(grep -v 'is ignored: it is neither' >&2)
"${PIP[@]}" --no-deps caffe-onnx==0.1.2 2> >(grep -v 'is ignored: it is neither' >&2)
# onnx2tf reads this sample from the working folder, else fetches it: write it here instead.
"$WORK/venv/bin/python" -c "import numpy as np; np.save('$WORK/venv/$CALIBRATION', \
np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))"
check "$WORK/venv" || { echo "layerparity setup: the converter venv does not import" >&2; exit 1; }
touch "$WORK/venv/.layerparity-ok"
rm -rf "$DEST"
mv "$WORK/venv" "$DEST"
echo "layerparity setup: converter venv built in $(( $(date +%s) - t0 )) s and cached at $DEST" >&2
echo "$DEST/bin/python"
