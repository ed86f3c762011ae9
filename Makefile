# Everything a fresh machine needs: `make test` builds the virtualenvs and runs lint,
# types and the whole suite; the suite starts (and stops) its own Redis, Firestore
# emulator and BigQuery emulator on free loopback ports.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BQVENV := .venv-bq
BIN := $(VENV)/bin

.PHONY: test lint typecheck pytest demo bench install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[all,dev]'
	touch $@

# bqemulator is large and pins its own DuckDB, so it gets a virtualenv of its own;
# it needs numpy without declaring it.
$(BQVENV)/.installed:
	$(PYTHON) -m venv $(BQVENV)
	$(BQVENV)/bin/pip install -q --upgrade pip
	$(BQVENV)/bin/pip install -q 'bqemulator==1.4.0' numpy
	touch $@

install: $(VENV)/.installed $(BQVENV)/.installed

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed
	$(BIN)/mypy src

pytest: install
	PROCESSOR_GUARD_BQ_PYTHON=$(abspath $(BQVENV))/bin/python $(BIN)/python -m pytest

test: lint typecheck pytest

demo: $(VENV)/.installed
	$(BIN)/processor-guard demo

bench: install
	PROCESSOR_GUARD_BQ_PYTHON=$(abspath $(BQVENV))/bin/python $(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(BQVENV) .mypy_cache .pytest_cache .ruff_cache
