# `make demo` and `make test` set everything up on a fresh machine (a .venv in this folder) and run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fgvc-installed
# The oldest timm that pyproject admits, installed apart so a test can build every method with it.
TIMM_FLOOR := $(shell sed -n 's/.*"timm>=\([0-9.]*\)".*/\1/p' pyproject.toml)
FLOOR_DIR  := $(VENV)/timm-$(TIMM_FLOOR)

.PHONY: install demo test test-fast browser timm-floor gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

$(FLOOR_DIR): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --target $(FLOOR_DIR) timm==$(TIMM_FLOOR)

# Chromium and its driver for the web demo's browser test (Debian packages; needs root, as in CI).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

demo: $(STAMP)
	$(BIN)/fgvc demo

test: $(STAMP) $(FLOOR_DIR) browser
	FGVC_TIMM_FLOOR_DIR=$(FLOOR_DIR) $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Every method built and run with the oldest admitted timm (tools/timm_compat.py).
timm-floor: $(FLOOR_DIR)
	PYTHONPATH=$(FLOOR_DIR) $(BIN)/python tools/timm_compat.py

# On a CUDA machine: every feature on the GPU and the benchmark table (docs/benchmarks.md); without CUDA,
# the same path at tiny sizes on the CPU. Uses .venv when present, else a python3 that already has torch
# and timm (a GPU machine's own), else sets up .venv. GPU_CHECK_ARGS="--speed --budget 300" adds the candidate
# speed-ups (compiled steps) while time is left.
gpu-check:
	@if [ -x $(BIN)/python ]; then PY=$(BIN)/python; \
	elif $(PYTHON) -c "import torch, timm, torchvision" 2>/dev/null; then PY=$(PYTHON); \
	else $(MAKE) install && PY=$(BIN)/python; fi; \
	PYTHONPATH=$(CURDIR) $$PY -m fgvc.bench.gpu_check --out gpu-check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info runs .pytest_cache gpu-check
