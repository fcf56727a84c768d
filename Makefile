# Every command the README names. `make lab` and `make test` install whatever is missing first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8888
PYTEST_ARGS ?=
MODEL ?= opt-350m
VOILA_PORT ?= 8866

.PHONY: install lab playground bench bench-gpu plan-check-gpu figures test test-fast system-packages clean help

help:
	@echo "make playground  install what is missing, then serve the playground on $(HOST):$(VOILA_PORT) (MODEL=opt-350m)"
	@echo "make lab         install what is missing, then start JupyterLab on $(HOST) with the notebooks"
	@echo "make bench       CPU benchmark into benchmarks/ (make bench-gpu on a GPU machine)"
	@echo "make test        install what is missing (Chromium and git-lfs too, as root), lint, then run every test"
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

# System packages the tests use: Debian's Chromium for the browser tests (Playwright's own browser download
# does not work everywhere) and git-lfs for the seed's route (cloning metaseq checkpoints).
system-packages:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || missing="$$missing chromium"; \
	git lfs version >/dev/null 2>&1 || missing="$$missing git-lfs"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q $$missing; \
	  else echo "The tests need:$$missing. Install with: sudo apt-get install -y$$missing"; exit 1; fi; \
	fi

# CPU benchmark of the committed results (about 3 minutes); on a GPU machine, make bench-gpu.
bench: install
	$(PY) -m helpers bench --model opt-125m --device cpu --dtype float32 --new-tokens 128 \
	  --json benchmarks/cpu-opt-125m.json --plot benchmarks/cpu-opt-125m.png
	$(PY) -m helpers bench --model opt-350m --device cpu --dtype float32 --new-tokens 128 \
	  --methods hf-generate,generate,int8-dynamic --json benchmarks/cpu-opt-350m.json --plot benchmarks/cpu-opt-350m.png

bench-gpu: install
	$(PY) -m helpers bench --model opt-1.3b --device cuda --dtype float16 --new-tokens 128 \
	  --json benchmarks/gpu-opt-1.3b.json --plot benchmarks/gpu-opt-1.3b.png
	$(PY) -m helpers bench --model opt-6.7b --device cuda --dtype float16 --new-tokens 128 --batch 1,2,4,8,16,32,64 \
	  --methods hf-generate,static-cache,generate --json benchmarks/gpu-opt-6.7b.json --plot benchmarks/gpu-opt-6.7b.png
	$(PY) -m helpers bench --model opt-66b --device cuda --dtype float16 --new-tokens 32 --repeats 1 \
	  --methods generate --json benchmarks/gpu-opt-66b.json
	$(PY) -m helpers leaks --model opt-1.3b --device cuda --cycles 20 --out benchmarks/gpu-leaks-opt-1.3b.json

# On a GPU machine: predicted against measured peak memory under a T4's 15 GiB (figures into benchmarks/).
plan-check-gpu: install
	$(PY) -m helpers plan --model opt-6.7b --gpu-memory 15GiB --check --method fp16 --out benchmarks/plan-check-opt-6.7b-fp16.json
	$(PY) -m helpers plan --model opt-13b --gpu-memory 15GiB --check --method int8 --out benchmarks/plan-check-opt-13b-int8.json
	$(PY) -m helpers plan --model opt-30b --gpu-memory 15GiB --check --method nf4-cpu-offload --out benchmarks/plan-check-opt-30b-nf4-offload.json

# The README's figures from notebooks 03 and 04, with random weights in real shapes (no hub here): their
# speed and memory are real, their text is not. With real weights: run the notebooks on a GPU.
figures: install
	$(PY) -m helpers.notebooks notebooks/03_compare_sizes.ipynb 'MODELS=["opt-125m", "opt-350m", "opt-1.3b"]' \
	  RANDOM_WEIGHTS=True 'SAVE_FIGURE="../docs/compare-sizes.png"'
	$(PY) -m helpers.notebooks notebooks/04_decoding_strategies.ipynb 'MODEL="opt-125m"' 'JUDGE="opt-350m"' \
	  'SEED_MODEL="opt-125m"' RANDOM_WEIGHTS=True 'SAVE_FIGURE="../docs/decoding-strategies.png"'

# The playground as an app (Voila). MODEL is a size, a hub id or a local folder: make playground MODEL=./opt-350m
playground: install
	OPT_MODEL=$(MODEL) $(VENV)/bin/voila notebooks/05_playground.ipynb --no-browser --port=$(VOILA_PORT) \
	  --Voila.ip=$(HOST) --ServerApp.allow_root=True

test: install system-packages
	$(VENV)/bin/ruff check helpers tests
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not browser and not notebook" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
	find . -name __pycache__ -prune -exec rm -rf {} +
