# Every command the README names. `make lab` and `make test` install whatever is missing first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8888
PYTEST_ARGS ?=

.PHONY: install lab test test-fast chromium playground bench plan clean help

help:
	@echo "make lab         install what is missing, then start JupyterLab on $(HOST) with the notebooks"
	@echo "make test        install what is missing (Chromium too, as root), then run every test"
	@echo "make test-fast   the tests without the browser and notebook layers"
	@echo "make clean       remove the virtual environment and caches"

$(STAMP): pyproject.toml requirements.txt requirements-test.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt -r requirements-test.txt -e .
	touch $@

install: $(STAMP)

lab: install
	$(VENV)/bin/jupyter lab --ip=$(HOST) --port=$(PORT) --no-browser --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

# The browser tests drive Debian's Chromium (Playwright's own browser download does not work everywhere).
chromium:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "The browser tests need Chromium: run 'sudo apt-get install -y chromium' (Debian/Ubuntu) and retry."; exit 1; fi; }

test: install chromium
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not browser and not notebook" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
	find . -name __pycache__ -prune -exec rm -rf {} +
