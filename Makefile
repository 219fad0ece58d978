# The project's front door: `make demo` and `make test`. Both install what is missing,
# build if needed, then run.
PYTHON ?= python3
BUILD  ?= build
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
export PYTHON

# The same arguments setup.py passes, so `make` and `pip install -e` share one CMake cache
# without reconfiguring each other.
CMAKE_ARGS = -DCMAKE_BUILD_TYPE=Release \
             -DPython3_EXECUTABLE=$(shell $(PYTHON) -c "import sys; print(sys.executable)") \
             -DMM_PYTHON_OUTPUT_DIR=$(CURDIR)/python/manifold_mixup -DMM_BUILD_TESTS=ON

.PHONY: all deps build test test-cpp test-python demo bench clean

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

test: build test-cpp test-python

test-cpp:
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-python:
	$(PYTHON) -m pytest -q tests/python

# Trains on scikit-learn's bundled digits under no mixup, fastai's MixUp and our callbacks.
demo: build
	$(PYTHON) demo/digits.py --out demo_out

bench: build
	$(PYTHON) bench/bench_mix.py && if [ -f bench/bench_step.py ]; then $(PYTHON) bench/bench_step.py; fi

clean:
	rm -rf $(BUILD) python/manifold_mixup/_C*.so
