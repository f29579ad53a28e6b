# The README's two commands: `make demo` (main job) and `make test` (the test suite, what .ci/run calls).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REPO ?= model_repository_local
ARCH ?= large
PORT_BASE ?= 8000

.PHONY: venv test demo serve clean

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml scripts/install_system_deps.sh scripts/install_helm.sh
	bash scripts/install_system_deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .  # the kit itself (editable): mnv3-* commands, importable mnv3kit
	bash scripts/install_helm.sh $(VENV)/bin
	touch $(STAMP)

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -ra tests

demo: venv
	bash scripts/demo.sh

# PORT_BASE=9000: HTTP 9000, gRPC 9001, metrics 9002 (as make demo)
serve: venv
	@test -f $(REPO)/manifest.json || $(PY) build_repo.py --target local --arch $(ARCH) -o $(REPO)
	$(PY) serve.py --repo $(REPO) --http-port $(PORT_BASE) --grpc-port $$(($(PORT_BASE) + 1)) \
	  --metrics-port $$(($(PORT_BASE) + 2))

clean:
	rm -rf $(VENV) $(ANALYZER_VENV) model_repository model_repository_local .pytest_cache

# Triton Model Analyzer for perf/model_analyzer.py, in a venv of its own: it pulls optuna, numba and more that the kit
# does not need. It drives the kit's perf_analyzer and embedded tritonserver through wrappers the script generates.
ANALYZER_VENV ?= .venv-analyzer
ANALYZER_VERSION ?= 1.58.0

.PHONY: analyzer-venv

analyzer-venv: $(ANALYZER_VENV)/.installed-$(ANALYZER_VERSION)

$(ANALYZER_VENV)/.installed-$(ANALYZER_VERSION):
	$(PYTHON) -m venv $(ANALYZER_VENV)
	$(ANALYZER_VENV)/bin/python -m pip install -q --upgrade pip
	$(ANALYZER_VENV)/bin/python -m pip install -q triton-model-analyzer==$(ANALYZER_VERSION)
	echo '*' > $(ANALYZER_VENV)/.gitignore  # git ignores the venv without a .gitignore entry
	touch $@
