# mvforge: `make demo` and `make test` set everything up from scratch in .venv (Python 3.11).
# `make test-train` builds a second, training-only environment (.venv-train: no bpy, numpy >= 2) and runs the
# train/models/shards tests there (issue 8); CI runs both.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mvforge-installed
TVENV  := .venv-train
TPY    := $(TVENV)/bin/python
TSTAMP := $(TVENV)/.mvforge-installed
DEMO   ?= demo-out
export PYTHONDONTWRITEBYTECODE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-train lint format bench constraints clean

# Everything ([all,dev,bench]) under constraints.txt: the versions this project was last tested with.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 (bpy 5.0 wheels need it)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,dev,bench]"
	touch $(STAMP)

# A training node: the train and shard extras only, numpy 2 (what bpy forbids), under constraints-train.txt.
$(TSTAMP): pyproject.toml constraints-train.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found"; exit 2; }
	test -x $(TPY) || $(PYTHON) -m venv $(TVENV)
	$(TPY) -m pip install --quiet --upgrade pip
	$(TPY) -m pip install --quiet -c constraints-train.txt -e ".[train,shard,dev]" "numpy>=2"
	touch $(TSTAMP)

install: $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh $(DEMO)

test: $(STAMP)
	$(PY) -m pytest -q --durations=20 tests

test-train: $(TSTAMP)
	bash scripts/test_train_only.sh $(TPY)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

# Refresh the pins from the working environments (after a dependency change has been tested in both).
constraints:
	$(PY) -m pip freeze --exclude-editable | grep -v '^mvforge' > constraints.txt
	$(TPY) -m pip freeze --exclude-editable | grep -v '^mvforge' > constraints-train.txt

clean:
	rm -rf $(DEMO) .pytest_cache
