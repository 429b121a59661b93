# One-command set-up: `make demo` and `make test` create .venv, install and run.
# torch==2.13.0 is pinned first so pip takes the CPU wheel this kind of machine keeps on disk
# instead of a multi-GB CUDA build; override with `make TORCH_SPEC='torch==X' ...`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast cpp-deps clean bench

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[torch,openvino,serve,report,dev]"
	# Triton (unet-deploy serve): the nvidia-pytriton wheel only for its tritonserver binary and Python
	# backend. It pins numpy<2, so it goes in without its dependencies, and its backend stub (built against
	# numpy 1) gets a private numpy 1.26 in $(VENV)/triton-stub-site; the environment keeps numpy 2.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps "nvidia-pytriton==0.7.0"
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --upgrade --target $(VENV)/triton-stub-site "numpy<2"
	touch $(STAMP)

install: $(STAMP)

# OpenCV and nlohmann-json C++ headers for the libtorch consumer in export/cpp (best effort: needs root + apt).
CPP_DEBS := libopencv-dev nlohmann-json3-dev
cpp-deps:
	@{ pkg-config --exists opencv4 2>/dev/null && test -f /usr/include/nlohmann/json.hpp; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(CPP_DEBS) (C++ consumer tests)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(CPP_DEBS) >/dev/null) \
	      || echo "could not install $(CPP_DEBS): the C++ tests will be skipped"; \
	  else echo "$(CPP_DEBS) missing and no root apt-get: the C++ tests will be skipped"; fi; }

demo: $(STAMP)
	$(BIN)/unet-deploy demo --out demo_out

test: $(STAMP) cpp-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything but the tests marked slow (AOTInductor compiles, the CMake build, torchrun, NNCF, training).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_cpu.py

clean:
	rm -rf $(VENV) build *.egg-info demo_out export/cpp/build
