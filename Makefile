# Two commands (README): `make demo` sets up and runs the smoke study; `make test` sets up and runs the tests.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.dpl-installed

.PHONY: demo test setup clean-studies

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision first and pinned: the newest pair this project's machines can install (see README)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 $(BIN)/dpl run --preset smoke
	$(BIN)/dpl status studies/smoke
	$(BIN)/dpl analyze --study-dir studies/smoke --experiment smoke --out studies/smoke/report

# two pytest-xdist workers: the serial suite leaves 40 % of 2 cores idle (Ray studies wait on start-up and sleeps);
# TEST_WORKERS=0 runs it serially (docs/BENCHMARKS.md, CI time)
TEST_WORKERS ?= 2

test: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

clean-studies:
	rm -rf studies runs
