#!/usr/bin/env bash
# Installs what building and testing need, only what is missing, so a second run is quick.
# Debian: a C/C++ toolchain, CMake, Ninja, GoogleTest, valgrind, pkg-config. Python: torch (CPU
# wheel unless a torch is already there), fastai, the test packages and the real models the tests
# train (transformers, lightning, timm, torchvision), all pinned.
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
# The installed torch is kept: transformers and lightning under a constraint naming it, timm and
# torchvision without their dependencies (requirements/models-nodeps.txt says why).
if ! "$PYTHON" -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('transformers', 'lightning', 'timm', 'torchvision')))"; then
  echo "install-deps: pip install -r requirements/models.txt (torch kept), models-nodeps.txt --no-deps"
  keep_torch=$(mktemp)
  trap 'rm -f "$keep_torch"' EXIT
  # The public version (2.14.1, not 2.14.1+cu130): pip keeps the installed build, which
  # satisfies it, and fails to resolve a pin on the local label against some indexes.
  "$PYTHON" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$keep_torch"
  pip_install -c "$keep_torch" -r requirements/models.txt
  pip_install --no-deps -r requirements/models-nodeps.txt
fi
