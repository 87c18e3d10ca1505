# chat-pipeline: `make demo` runs the pipeline on built-in data, `make test` runs the tests.
# Both create or refresh .venv first (torch's CPU wheel first, then the pinned set in requirements.lock).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup browser vulkan demo up down test test-slow bench repro clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock torch==2.13.0
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev,vulkan,cuda,gcs]'
	touch $(STAMP)

# The /chat page is tested in a real headless Chromium: Debian's package (a test tool cannot download one).
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# Vulkan training and our GLSL kernels are tested for real on Mesa's software driver (lavapipe), with glslc.
vulkan:
	@{ ls /usr/share/vulkan/icd.d/lvp_icd*.json && command -v glslc; } >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    mesa-vulkan-drivers libvulkan1 glslc >/dev/null; }

demo: setup
	chatpipe run --params configs/tiny.yaml

up: setup
	chatpipe up

down: setup
	chatpipe down

test: setup browser vulkan
	$(BIN)/pytest

test-slow: setup browser vulkan
	$(BIN)/pytest -m slow

bench: setup
	$(BIN)/python bench/data.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/distill.py   # after `make demo`: the ternary student against its teacher

repro: setup
	dvc repro

clean:
	rm -rf data/documents data/shards artifacts metrics checkpoints reports dist mlruns mlflow.db .dvc/tmp .chatpipe.lock
