# algd-runtime: install, test, benchmark.
# `make install` is idempotent: it re-runs only when setup.py, pyproject.toml or constraints.txt change.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# DDS discovery never leaves this machine in tests, demos and benchmarks.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= 42
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: install demo test test-all bench clean

install: $(STAMP)

$(STAMP): setup.py pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "need Python 3.11, got " + sys.version' \
		|| { echo "error: training needs Python 3.11 (set PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# setuptools < 80: colcon build --symlink-install needs its `develop --editable` (tests/test_colcon.py).
	$(BIN)/python -m pip install -q --upgrade pip wheel "setuptools<80"
	# torch first and pinned, so nothing later can pull a CUDA build.
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[train,ros,dev]"
	# safety-gymnasium pins pygame 2.1.0 (no Python 3.11 wheel): install it without its deps.
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps safety-gymnasium==1.0.0
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

# The whole pipeline on the toy task: train (~5 min, cached), export, ROS 2 run, report.
demo: install
	$(BIN)/algd-demo --out runs/demo $(DEMO_ARGS)

test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/algd-bench train

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
