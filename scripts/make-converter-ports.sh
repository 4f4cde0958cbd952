#!/usr/bin/env bash
# The third-party matrix's ports (tests/thirdparty): Caffe nets converted by caffe2onnx -> onnx2tf,
# correct and with bugs injected into the ONNX model, built once and cached.
#
#   scripts/make-converter-ports.sh VENV_PYTHON     # the project's .venv python (with pycaffe)
#
# Builds (or reuses) the converter venv, then runs scripts/make_converter_ports.py, which
# skips every net already built for this version of the generator. Environment:
# LAYERPARITY_CACHE (default ~/.cache/layerparity), LAYERPARITY_CONVERT_JOBS (default 2).
set -euo pipefail
PY=$(realpath -s "${1:?usage: make-converter-ports.sh VENV_PYTHON}")
here=$(cd "$(dirname "$0")" && pwd)
CONVERTER=$("$here/build-converter-venv.sh" | tail -n1)
export GLOG_minloglevel="${GLOG_minloglevel:-2}"
"$PY" "$here/make_converter_ports.py" --converter-python "$CONVERTER"
# and the zoo nets the converter cannot port: what it says of each (scripts/converter_refusals.py)
exec "$PY" "$here/converter_refusals.py" --converter-python "$CONVERTER"
