#!/usr/bin/env bash
# Installs what building and testing need, only what is missing, so a second run is quick.
# Debian: a C/C++ toolchain, CMake, Ninja, GoogleTest, valgrind, pkg-config. Python: torch (CPU
# wheel unless a torch is already there), fastai and the test packages, all pinned.
set -euo pipefail
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
command -v make >/dev/null || need_apt+=(make)
command -v ninja >/dev/null || need_apt+=(ninja-build)
command -v readelf >/dev/null || need_apt+=(binutils)
[ -f /usr/include/gtest/gtest.h ] || need_apt+=(libgtest-dev)
command -v valgrind >/dev/null || need_apt+=(valgrind)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

pip_install() { "$PYTHON" -m pip install --disable-pip-version-check --root-user-action=ignore -q "$@"; }
# An existing torch (CPU or CUDA, 2.4 or newer) is kept; otherwise the CPU build.
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "install-deps: pip install torch==2.13.0 (CPU)"
  pip_install torch==2.13.0
fi
if ! "$PYTHON" -c "import fastai.basics, sklearn, matplotlib, pandas, pytest, xdist" 2>/dev/null; then
  echo "install-deps: pip install -r requirements/test.txt, fastai --no-deps"
  pip_install -r requirements/test.txt
  pip_install --no-deps -r requirements/fastai.txt
fi
