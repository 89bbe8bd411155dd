# Two commands: `make run` (set up, then the main job) and `make test` (set up, then lint, types and tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Pinned installs, torch in the same pip command as everything else (a CPU wheel; an unpinned
# torch would pull several GB of CUDA).
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==26.3
	$(BIN)/python -m pip install --quiet -r requirements.lock -e .
	touch $(STAMP)

.PHONY: setup run test bench
setup: $(STAMP)

export HF_HUB_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1
export RAY_USAGE_STATS_ENABLED = 0
export MLFLOW_DISABLE_TELEMETRY = true
export TOKENIZERS_PARALLELISM = false

run: setup
	$(BIN)/thresh-opt study run

# Lint and types first (seconds), then the suite; settings in pyproject.toml. (One process: the suite is
# CPU-bound, about 30 CPU-minutes, so two processes on CI's 2 cores took longer, 18.6 against 18 minutes.)
test: setup
	$(BIN)/ruff check thresh_opt tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q --durations=15

bench: setup
	$(BIN)/python benchmarks/forward_overhead.py
