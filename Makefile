# Two commands (README): `make demo` sets up and runs the smoke study; `make test` sets up and runs the tests.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.dpl-installed

.PHONY: demo test setup clean-studies

# torch/torchvision pinned: the newest pair this project's machines can install (see README)
PINS = torch==2.14.1 torchvision==0.29.1

# uv (from the package registry) installs the same packages in ~35 s where pip takes ~90 s (docs/BENCHMARKS.md,
# CI time); pip, reading the machine's pip.conf, when uv cannot (e.g. an index only pip.conf names).
# --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set (this machine) no .pyc is ever written
# later, and every process would compile torch, Ray and MLflow again (imports 2.5x slower, the suite 1.6x)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	( $(BIN)/pip install -q uv && UV_LINK_MODE=copy $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python \
	    $(PINS) -e '.[test]' ) \
	  || { echo "uv failed: installing with pip"; $(BIN)/pip install -q --upgrade pip && \
	       $(BIN)/pip install -q $(PINS) && $(BIN)/pip install -q -e '.[test]'; }
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 $(BIN)/dpl run --preset smoke
	$(BIN)/dpl status studies/smoke
	$(BIN)/dpl analyze --study-dir studies/smoke --experiment smoke --out studies/smoke/report

# two pytest-xdist workers (CI's 2 cores; each gets one OpenMP thread, tests/conftest.py); TEST_WORKERS=0: serial.
# --no-loadscope-reorder: groups and tests in collection order, the slow ones first (tests/conftest.py), instead
# of xdist's largest-group-first, which left the longest single studies for the end
TEST_WORKERS ?= 2

test: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder --durations=15

clean-studies:
	rm -rf studies runs
