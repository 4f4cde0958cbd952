#!/usr/bin/env bash
# Build real Caffe (pycaffe, CPU only) from PyPI's brocolli-caffe 9.0.2 source
# distribution, cache the result outside the work tree and link it into a venv.
#
#   scripts/build-caffe.sh VENV_PYTHON
#
# Environment:
#   CAFFE_PYTHON=DIR       use an existing pycaffe (the folder that holds caffe/);
#                          nothing is built.
#   LAYERPARITY_CACHE=DIR  where built Caffe trees are kept
#                          (default ~/.cache/layerparity).
#
# The cache key covers the source version, the Python version, the CMake
# options and defines (CMAKE_FEATURES, CXX_DEFINES) and this script, so a change
# to any of them builds afresh.
#
# PSROIPooling (R-FCN) gets a CPU forward: the fork has only its CUDA kernel
# (Forward_cpu is NOT_IMPLEMENTED), and scripts/caffe-cpu/psroi_pooling_forward_cpu.inc
# is that kernel as a CPU loop, statement for statement, put in place of the stub.
#
# Python layers (`type: "Python"`) are compiled in. The fork's CMake has
# BUILD_python_layer OFF by default (upstream calls it WITH_PYTHON_LAYER), and
# as it builds only _caffe.so it never applies the WITH_PYTHON_LAYER define that
# the option adds to its (unused) Caffe_DEFINITIONS, so the define is passed as
# a compiler flag too. check_import insists on "Python" in layer_type_list().
#
# The build happens in a scratch
# folder and is moved into place only after `import caffe` works from it: an
# interrupted or failed build never leaves a caffe that half-imports.
set -euo pipefail
PY=$(realpath -s "${1:?usage: build-caffe.sh VENV_PYTHON}")
here=$(cd "$(dirname "$0")" && pwd)
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PTH="$SITE/layerparity-caffe.pth"

check_import() {  # $1: folder holding the caffe package
  env PYTHONPATH="$1" GLOG_minloglevel=2 "$PY" -c 'import caffe, sys; caffe.set_mode_cpu(); assert "Python" in caffe.layer_type_list(), "no Python layer"' >/dev/null
}

if [ -n "${CAFFE_PYTHON:-}" ]; then
  check_import "$CAFFE_PYTHON" || { echo "layerparity setup: CAFFE_PYTHON=$CAFFE_PYTHON does not import caffe" >&2; exit 1; }
  echo "$CAFFE_PYTHON" > "$PTH"
  echo "layerparity setup: using existing pycaffe at $CAFFE_PYTHON"
  exit 0
fi

VERSION=9.0.2
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
CMAKE_FEATURES="-DBUILD_python_layer=ON"
CXX_DEFINES="-DWITH_PYTHON_LAYER"
PSROI_CPU="$here/caffe-cpu/psroi_pooling_forward_cpu.inc"
KEY=$( (echo "brocolli-caffe==$VERSION py$PYVER $(uname -m) $CMAKE_FEATURES $CXX_DEFINES"; cat "$0" "$PSROI_CPU") | sha256sum | cut -c1-16)
CACHE=${LAYERPARITY_CACHE:-$HOME/.cache/layerparity}
DEST="$CACHE/caffe-$KEY"

if [ -d "$DEST/caffe" ] && check_import "$DEST"; then
  echo "$DEST" > "$PTH"
  exit 0
fi

echo "layerparity setup: building Caffe (CPU, with Python layers) from source; this takes about 4-10 minutes once"
mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/build-$KEY.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
"$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d . "brocolli-caffe==$VERSION" 2>/dev/null \
  || "$PY" -m pip download -q --no-deps --no-binary :all: -d . "brocolli-caffe==$VERSION"
tar xzf brocolli-caffe-$VERSION.tar.gz
SRC=$(find . -maxdepth 3 -name CMakeLists.txt -path '*/python/*' -printf '%h\n' | head -n1)
SRC=$(cd "$SRC/.." && pwd)
sed -i "s/-lboost_python\b/-lboost_python$PYVER/; s/boost_python\([^0-9]\)/boost_python$PYVER\1/g" "$SRC/python/CMakeLists.txt"
# PSROIPooling (R-FCN) has only a CUDA forward in this fork; give it the same kernel as a CPU loop.
"$PY" - "$SRC/src/caffe/layers/psroi_pooling_layer.cpp" "$PSROI_CPU" <<'PATCH'
import re, sys
path, body = sys.argv[1], open(sys.argv[2]).read()
src = open(path).read()
pat = re.compile(r"(void PSROIPoolingLayer<Dtype>::Forward_cpu\([^)]*\)\s*\{)\s*NOT_IMPLEMENTED;")
new, n = pat.subn(lambda m: m.group(1) + "\n" + body, src, count=1)
if n != 1:
    sys.exit(f"{path}: PSROIPooling's Forward_cpu is not the NOT_IMPLEMENTED stub this patch expects")
open(path, "w").write(new)
PATCH

PYINC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$("$PY" -c 'import numpy; print(numpy.get_include())')
cmake -S "$SRC" -B "$SRC/build" -DANACONDA_HOME=/nonexistent -DPYTHON_VERSION=python3.${PYVER#3} \
  -DCPU_ONLY=ON -DUSE_OPENCV=OFF -DUSE_LEVELDB=OFF -DUSE_LMDB=OFF -DBUILD_docs=OFF \
  -DCMAKE_BUILD_TYPE=Release $CMAKE_FEATURES \
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN' \
  -DCMAKE_CXX_FLAGS="$CXX_DEFINES -I$PYINC -I$NPINC -I/usr/include/hdf5/serial" \
  -DCMAKE_SHARED_LINKER_FLAGS="-L/usr/lib/x86_64-linux-gnu/hdf5/serial" > cmake.log 2>&1 \
  || { tail -n 40 cmake.log >&2; exit 1; }
cmake --build "$SRC/build" -j"$(nproc)" > build.log 2>&1 || { tail -n 60 build.log >&2; exit 1; }

# Stage a relocatable package: python/caffe with the real _caffe.so and
# libcaffe next to it (RPATH $ORIGIN), plus the model definitions we use.
STAGE="$WORK/stage"
mkdir -p "$STAGE"
cp -rL "$SRC/python/caffe" "$STAGE/caffe"
cp -L "$SRC"/build/lib/libcaffe.so* "$STAGE/caffe/" 2>/dev/null || true
mkdir -p "$STAGE/models"
cp -r "$SRC"/models/bvlc_alexnet "$SRC"/models/bvlc_reference_caffenet "$SRC"/models/bvlc_googlenet "$STAGE/models/" 2>/dev/null || true
check_import "$STAGE" || { echo "layerparity setup: the freshly built caffe does not import" >&2; exit 1; }
rm -rf "$DEST"
mv "$STAGE" "$DEST"
echo "$DEST" > "$PTH"
echo "layerparity setup: Caffe built and cached at $DEST"
