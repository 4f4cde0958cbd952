#!/usr/bin/env bash
# Install the Debian packages layerparity needs, once: what building Caffe
# needs, and headless Chromium for the HTML report test.
# Where we are not root, stop with the exact command to run.
set -euo pipefail
PKGS="libboost-system-dev libboost-thread-dev libboost-filesystem-dev
libboost-regex-dev libboost-python-dev libprotobuf-dev protobuf-compiler
libgoogle-glog-dev libgflags-dev libhdf5-dev libopenblas-dev libgtest-dev
cmake g++ make
chromium fonts-dejavu-core"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "layerparity setup: Debian packages missing:$missing"
if [ "$(id -u)" != 0 ]; then
  echo "layerparity setup: not root; run this, then run make again:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y$missing" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends $missing
