# chat-pipeline: `make demo` runs the pipeline on built-in data, `make test` runs the tests (`make test-quick`: the
# fast part of them, for the edit-test loop).
# Both create or refresh .venv first (torch's CPU wheel first, then the pinned set in requirements.lock).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup browser vulkan demo up down test test-quick test-slow bench repro clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock torch==2.13.0
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev,vulkan,cuda,gcs,pretrained]'
	touch $(STAMP)

# The /chat page is tested in a real headless Chromium: Debian's package (a test tool cannot download one).
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# Vulkan training is tested for real on Mesa's software driver (lavapipe).
vulkan:
	@ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    mesa-vulkan-drivers libvulkan1 >/dev/null; }

demo: setup
	chatpipe run --params configs/tiny.yaml

up: setup
	chatpipe up

down: setup
	chatpipe down

# Tests run on TEST_WORKERS parallel pytest-xdist workers. Much of the suite waits rather than computes (servers
# starting, subprocesses, sandboxes, SQLite, HTTP), so on 2 cores 3 workers keep the CPUs busy. `--dist loadfile`
# keeps each file on one worker, so a module's fixtures (a Prefect or model server, a browser) start once; files
# go out in collection order (not xdist's most-tests-first), which tests/conftest.py makes the files with
# `integration` tests first, so the long ones start at once. The demo-sized project (tests/conftest.py: built,
# trained) is built once per session and shared by the workers. `make test TEST_WORKERS=0` runs serially; plain
# `.venv/bin/pytest FILE` (the edit-test loop) is serial too.
TEST_WORKERS ?= 3
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The suite CI runs (`.ci/run`): everything but the `slow` tests.
test: setup browser vulkan
	$(BIN)/pytest $(XDIST)

# The edit-test loop: every package's tests but the `integration` ones (servers, whole pipelines, training the
# shared model, subprocess training) and the slow ones; a few minutes at most. `make test` runs them all.
test-quick: setup browser vulkan
	$(BIN)/pytest $(XDIST) -m 'not slow and not integration'

# The long tests that `make test` leaves out (torch.compile, FSDP resharding and kill/resume, a real 45 s heartbeat wait,
# SmolLM2 through llama.cpp and against transformers' logits, the LoRA/SFT/bf16 kill-resume variants, SFT data-parallel,
# Vulkan past IREE's limits).
test-slow: setup browser vulkan
	$(BIN)/pytest $(XDIST) -m slow

bench: setup
	$(BIN)/python bench/data.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/distill.py   # after `make demo`: the ternary student against its teacher
	$(BIN)/python bench/llamacpp.py --only float ternary   # ours vs llama.cpp on our GGUF export (ppl: see its docstring)

repro: setup
	dvc repro

clean:
	rm -rf data/documents data/shards data/sft artifacts metrics checkpoints reports dist mlruns mlflow.db .dvc/tmp .chatpipe.lock
