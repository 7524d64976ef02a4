# Two commands do all set-up on a fresh machine (README):
#   make demo   set up, then a real continual-learning run on Permuted Fashion-MNIST
#   make test   set up, then the C++ tests (ctest) and the Python tests (pytest)
# A second run reuses .venv and the build; only what changed is redone.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEPS   := $(VENV)/.deps.stamp
BUILT  := $(VENV)/.build.stamp
DATA   := $(VENV)/.data.stamp
SIMDE  := $(VENV)/.simde.stamp
CSRC   := $(shell find csrc -type f 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: demo test setup ctest pytest bench info gpu-check clean

demo: setup
	$(PY) -m impresslearn demo

test: setup ctest pytest

setup: $(BUILT) $(DATA)

$(DEPS): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The editable install compiles impresslearn._C (CPU kernels, and CUDA where nvcc is found).
$(BUILT): $(DEPS) setup.py pyproject.toml $(CSRC)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

# Fashion-MNIST, the default data, ships as a Debian package (IDX files in /usr/share/datasets).
$(DATA):
	@if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST not found: install the Debian package dataset-fashion-mnist"; \
		echo "(sudo apt-get install dataset-fashion-mnist), or put the IDX files under"; \
		echo "--data-root/FashionMNIST/raw (torchvision layout) and pass --data-root."; \
	fi
	touch $@

# SIMDe (header-only, Debian libsimde-dev) lets ctest run the AVX-512 loops on any x86 CPU,
# emulated, against the AVX2 and portable ones; without it that one test is skipped with the reason.
$(SIMDE):
	@if [ -f /usr/include/simde/x86/avx512.h ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libsimde-dev \
		|| echo "libsimde-dev could not be installed: the emulated AVX-512 test will be skipped"; \
	else \
		echo "SIMDe not found (apt-get install libsimde-dev): the emulated AVX-512 test will be skipped"; \
	fi
	touch $@

ctest: $(DEPS) $(SIMDE)
	cmake -S . -B build-cmake -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build-cmake -j2
	ctest --test-dir build-cmake --output-on-failure

# Two xdist workers on two cores: one intra-op thread each, or torch's own threads oversubscribe
# the cores and spin (a 71 s test took 464 s that way); tests of thread counts set their own.
pytest: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 $(PYTEST_ARGS) tests

bench: setup
	$(PY) benchmarks/kernels.py

info: setup
	$(PY) -m impresslearn.info

# On a machine with an NVIDIA GPU (8 minutes at most): smoke checks of every GPU kernel
# against the reference, pytest -m gpu, the GPU benchmark rows, a profile; one report in
# runs/gpu_check/report.md. Without a GPU it stops at once and says so. Needs the build,
# not the data (a GPU host may have no network for apt-get).
gpu-check: $(BUILT)
	$(PY) scripts/gpu_check.py --out runs/gpu_check

clean:
	rm -rf build build-cmake *.egg-info impresslearn/_C*.so $(BUILT)
