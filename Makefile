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

# Lint and types first (seconds), then the suite as two pytest processes side by side: the Ray and
# cluster tests (marker `ray`: mostly waiting on subprocesses and Ray workers) and the rest with one torch
# thread, so that the two keep CI's 2 cores busy without oversubscribing them (13 minutes against 18 for
# one process; settings in pyproject.toml). The Ray part's report is printed after the other's; either
# failing fails the target.
test: setup
	$(BIN)/ruff check thresh_opt tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m ray --durations=5 > .pytest-ray.log 2>&1 & pid=$$!; \
	trap 'kill $$pid 2>/dev/null' INT TERM; \
	THRESH_OPT_TEST_THREADS=1 $(BIN)/python -m pytest -q -m "not ray" --durations=15; rest=$$?; \
	wait $$pid; ray=$$?; echo "--- the Ray and cluster tests (pytest -m ray) ---"; cat .pytest-ray.log; \
	test $$rest -eq 0 && test $$ray -eq 0

bench: setup
	$(BIN)/python benchmarks/forward_overhead.py
