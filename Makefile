# mdgate: `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip warns about every unreadable local index location configured on some machines: hide that
# noise (pip's own exit status still counts: pipefail).
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
VENV := .venv
PY := $(VENV)/bin/python
# Find a Python 3.12: PYTHON312 if given, else python3.12 on PATH, else a pyenv install.
PYTHON312 ?= $(shell for c in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do \
	if command -v $$c >/dev/null 2>&1 && $$c -c 'import sys; assert sys.version_info[:2]==(3,12)' >/dev/null 2>&1; then command -v $$c; break; fi; done)

.PHONY: venv test test-all demo lint data clean benchmark docs

$(VENV)/.installed: pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if [ -z "$(PYTHON312)" ]; then echo "error: Python 3.12 not found. Install it (e.g. 'pyenv install 3.12') or pass PYTHON312=/path/to/python3.12" >&2; exit 2; fi; \
	  echo "creating $(VENV) with $(PYTHON312)"; $(PYTHON312) -m venv $(VENV); fi
	$(PY) -m pip install -q --upgrade pip $(QUIET_PIP)
	$(PY) -m pip install -q -e '.[test,dev]' $(QUIET_PIP)
	@touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q

test-all: venv
	$(PY) -m pytest -q -m ''

demo: venv
	$(VENV)/bin/mdgate demo

benchmark: venv
	$(PY) benchmarks/speed.py

data: venv
	$(PY) scripts/make_molecule_set.py

# The documentation site: the benchmark results page rendered from benchmarks/results/*.json, then
# mkdocs (warnings are errors) into site/. NO_MKDOCS_2_WARNING silences mkdocs-material's banner.
docs: venv
	$(PY) -m pip install -q -e '.[docs]' $(QUIET_PIP)
	$(PY) scripts/render_benchmarks.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

lint: venv
	$(VENV)/bin/ruff check mdgate registry flows tests scripts benchmarks
	$(VENV)/bin/mypy mdgate flows registry

clean:
	rm -rf $(VENV) .pytest_cache
