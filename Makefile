# The project's front door: `make demo` and `make test`. Both install what is missing,
# build if needed, then run.
PYTHON ?= python3
BUILD  ?= build
# MAX_JOBS, as torch's extension builder and setup.py read it, else every CPU.
CPUS   := $(shell nproc 2>/dev/null || echo 2)
JOBS   ?= $(or $(MAX_JOBS),$(CPUS))
export PYTHON

# The arguments setup.py passes too (it keeps an existing cache's own settings), so `make` and
# `pip install -e` share one CMake cache without reconfiguring each other. Ninja when installed.
CMAKE_ARGS = -DCMAKE_BUILD_TYPE=Release \
             -DPython3_EXECUTABLE=$(shell $(PYTHON) -c "import sys; print(sys.executable)") \
             -DMM_PYTHON_OUTPUT_DIR=$(CURDIR)/python/manifold_mixup -DMM_BUILD_TESTS=ON \
             -DCMAKE_INSTALL_LIBDIR=lib -DCMAKE_INSTALL_INCLUDEDIR=include \
             $(if $(shell command -v ninja 2>/dev/null),-G Ninja)

.PHONY: all deps build test test-cpp test-python gpu-check gpu-check-cpu demo bench clean

all: build

deps:
	@./scripts/install-deps.sh

# Configures once, then builds incrementally; the package is installed in editable mode
# (pip install -e, which drives the same CMake build directory) unless `import
# manifold_mixup` already finds this tree.
build: deps
	@[ -f $(BUILD)/CMakeCache.txt ] || cmake -S . -B $(BUILD) $(CMAKE_ARGS)
	@cd /tmp && $(PYTHON) -c "import manifold_mixup, sys; \
	  sys.exit(manifold_mixup.__file__ != '$(CURDIR)/python/manifold_mixup/__init__.py')" 2>/dev/null || \
	  (cd $(CURDIR) && MM_CMAKE_BUILD_DIR=$(CURDIR)/$(BUILD) MM_BUILD_TESTS=ON \
	   $(PYTHON) -m pip install --disable-pip-version-check --root-user-action=ignore -q --no-build-isolation --no-deps -e .)
	@cmake --build $(BUILD) -j $(JOBS)
	@# The editable install's C package (python -m manifold_mixup --cmakedir) follows the build.
	@cmake --install $(BUILD) --prefix $(CURDIR)/python/manifold_mixup >/dev/null

test: build test-cpp test-python gpu-check-cpu

test-cpp:
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# Tests in parallel (pytest-xdist), each worker with its share of the CPUs as torch threads:
# JOBS workers of CPUS OpenMP threads each oversubscribe the machine (measured on 2 cores with
# -n 2: test_demo.py took 307 s of CPU with 2 threads a worker, 48 s with 1). The C++ tests keep
# every thread, so the parallel kernels stay tested. test_install builds its wheel from $(BUILD).
test-python:
	OMP_NUM_THREADS=$$(( $(CPUS) / $(JOBS) > 0 ? $(CPUS) / $(JOBS) : 1 )) MM_CMAKE_BUILD_DIR=$(CURDIR)/$(BUILD) \
	  $(PYTHON) -m pytest -q -n $(JOBS) --dist loadgroup tests/python

# scripts/gpu-check.sh's steps on the CPU build, so that the GPU check cannot rot before a GPU
# is lent (about 30 s of CPU; one torch thread: its figures are a smoke test, not a benchmark);
# `make gpu-check` (or the script alone) is the real one, on a machine with a GPU.
gpu-check-cpu:
	OMP_NUM_THREADS=1 BUILD=$(BUILD) scripts/gpu-check.sh --cpu

gpu-check:
	scripts/gpu-check.sh

# Trains on scikit-learn's bundled digits under no mixup, fastai's MixUp and our callbacks.
demo: build
	$(PYTHON) demo/digits.py --out demo_out

bench: build
	$(PYTHON) bench/bench_mix.py && $(PYTHON) bench/bench_step.py && $(PYTHON) bench/bench_compile.py

clean:
	rm -rf $(BUILD) python/manifold_mixup/_C*.so python/manifold_mixup/_build_info.py \
	  python/manifold_mixup/lib python/manifold_mixup/include
