# Everything a fresh machine needs. `make demo` installs only the package and DuckDB and
# replays the incident; `make test` installs the rest and runs lint, types, import
# contracts, the docs build and the whole suite, then the suite's fast part on the other
# supported Pythons. The suite starts (and stops) its own Redis, Firestore emulator and
# BigQuery emulator on free loopback ports.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BQVENV := .venv-bq
BIN := $(VENV)/bin
PIP_FLAGS := --disable-pip-version-check
# A virtualenv made --without-pip, installed into by the interpreter's own pip, skips
# ensurepip (which copies and byte-compiles pip into every virtualenv: over half of a
# fresh `make demo` here). Without a usable pip (>= 22.3) on $(PYTHON), the usual way.
HOST_PIP := $(shell $(PYTHON) -m pip --python $(PYTHON) --version >/dev/null 2>&1 && echo yes)
ifeq ($(HOST_PIP),yes)
VENV_ARGS := --without-pip
PIP := $(PYTHON) -m pip --python $(BIN)/python
else
VENV_ARGS :=
PIP := $(BIN)/python -m pip
endif
# The other supported Pythons the fast part of the suite runs on (`make test
# PYTHON_VERSIONS=` skips them). Found under pyenv, else as python3.X on PATH.
PYTHON_VERSIONS ?= 3.10 3.12 3.13
PYENV_ROOT ?= $(HOME)/.pyenv
# The fast part: no slow tests, no fault injection, no emulators (their server-side time
# dominates and does not depend on our Python); the 3.11 run covers all of them.
# (-k drops the BigQuery cases of fixtures parametrized over warehouses.)
FAST_TESTS := -m "not slow and not firestore and not bigquery" -k "not bigquery and not on_the_emulator" \
	--ignore=tests/faults -p no:cacheprovider

.PHONY: test lint typecheck imports docs pytest pytest-versions demo bench install clean

$(BIN)/python:
	@echo "==> creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV_ARGS) $(VENV)

# The demo needs the package and its DuckDB extra, nothing else.
$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	@echo "==> installing processor-guard[duckdb] into $(VENV) (first run only)"
	$(PIP) install $(PIP_FLAGS) --no-compile -e '.[duckdb]'
	touch $@

$(VENV)/.installed: pyproject.toml requirements-test.txt requirements-dev.txt | $(BIN)/python
	@echo "==> installing processor-guard[all] and the dev tools into $(VENV) (first run only)"
	$(PIP) install -q $(PIP_FLAGS) -e '.[all]' -r requirements-dev.txt
	touch $@ $(VENV)/.demo-installed

# bqemulator is large and pins its own DuckDB, so it gets a virtualenv of its own;
# it needs numpy without declaring it.
$(BQVENV)/.installed:
	@echo "==> installing the BigQuery emulator into $(BQVENV) (first run only)"
	$(PYTHON) -m venv $(BQVENV)
	$(BQVENV)/bin/pip install -q $(PIP_FLAGS) --upgrade pip
	$(BQVENV)/bin/pip install -q $(PIP_FLAGS) 'bqemulator==1.4.0' numpy
	touch $@

install: $(VENV)/.installed $(BQVENV)/.installed

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed
	$(BIN)/mypy src

imports: $(VENV)/.installed
	$(BIN)/lint-imports

# The API reference and guides; --strict turns every warning (a broken link, a missing
# snippet, a name mkdocstrings cannot find) into a failure. The proxies point nowhere,
# so a build that reached for the network would fail here too.
docs: $(VENV)/.installed
	HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= NO_MKDOCS_2_WARNING=1 \
		$(BIN)/mkdocs build --strict --site-dir site

pytest: install
	PROCESSOR_GUARD_BQ_PYTHON=$(abspath $(BQVENV))/bin/python $(BIN)/python -m pytest

# One virtualenv per version with only what the fast tests need; pip's cache is reused.
define python_version
.venv-py$(1)/.installed: pyproject.toml requirements-test.txt
	@py=$$$$(ls -d $(PYENV_ROOT)/versions/$(1).*/bin/python 2>/dev/null | tail -1); \
	if [ -z "$$$$py" ] && python$(1) -c '' 2>/dev/null; then py=python$(1); fi; \
	if [ -z "$$$$py" ]; then \
		echo "python$(1) not found: install it (pyenv install $(1)) or run make test PYTHON_VERSIONS="; \
		exit 1; \
	fi; \
	echo "==> creating .venv-py$(1) with $$$$py"; \
	$$$$py -m venv --without-pip .venv-py$(1) && \
	$$$$py -m pip --python .venv-py$(1)/bin/python install -q $(PIP_FLAGS) -e '.[all]' -r requirements-test.txt
	touch $$@

pytest-py$(1): .venv-py$(1)/.installed
	@echo "==> fast tests on Python $(1)"
	.venv-py$(1)/bin/python -m pytest -q $(FAST_TESTS)
endef
$(foreach v,$(PYTHON_VERSIONS),$(eval $(call python_version,$(v))))

# The versions run side by side (each its own servers, ports and temp dirs): most of
# their time is spent waiting on leases and servers, not on the CPU.
pytest-versions:
	$(MAKE) --no-print-directory -j$(words $(PYTHON_VERSIONS)) --output-sync=target \
		$(foreach v,$(PYTHON_VERSIONS),pytest-py$(v))

test: lint typecheck imports docs pytest pytest-versions

demo: $(VENV)/.demo-installed
	$(BIN)/processor-guard demo

bench: install
	PROCESSOR_GUARD_BQ_PYTHON=$(abspath $(BQVENV))/bin/python $(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(BQVENV) .venv-py* site .mypy_cache .pytest_cache .ruff_cache
