# Two commands on a fresh machine: `make run` and `make test`. Everything else is on the way.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
TOOLS := $(CURDIR)/.tools/bin
export PATH := $(TOOLS):$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help run test lint typecheck pytest crds servers gateways helm bench-api bench-operator bench-jobs bench-scale clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

# Tenantry and the example plug-in `make run` serves beside it, each installed as a
# distribution, so the plug-in's entry points are read from installed metadata.
EXAMPLE_PLUGIN := examples/gps-reliability

$(VENV)/.installed: pyproject.toml $(EXAMPLE_PLUGIN)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev,bench]' -e $(EXAMPLE_PLUGIN)
	touch $@

# The plug-in only the tests serve, installed as a distribution of its own into a folder the
# tests put on PYTHONPATH (so `make run` does not serve it).
TEST_PLUGINS := $(CURDIR)/.tools/test-plugins
$(TEST_PLUGINS)/.installed: $(VENV)/.installed $(wildcard tests/plugin_dist/*.toml tests/plugin_dist/*/*.py)
	rm -rf $(TEST_PLUGINS)
	$(VENV)/bin/python -m pip install --quiet --no-deps --target $(TEST_PLUGINS) ./tests/plugin_dist
	touch $@

run: $(VENV)/.installed ## run the platform locally on its embedded defaults (no servers needed)
	$(VENV)/bin/tenantry dev

servers: ## PostgreSQL and Redis binaries for the test harness (installed when missing)
	scripts/ensure-servers.sh

gateways: ## Caddy and nginx (auth_request) binaries for the gateway tests (installed when missing)
	scripts/ensure-gateways.sh

helm: ## the helm binary (the one on PATH, or a pinned, checksummed copy in .tools/bin)
	scripts/install-helm.sh $(TOOLS)

lint: $(VENV)/.installed ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed ## mypy, strict
	$(VENV)/bin/mypy

pytest: $(VENV)/.installed $(TEST_PLUGINS)/.installed servers gateways helm ## the test suite against real servers
	PYTHONPATH=$(TEST_PLUGINS) $(VENV)/bin/pytest

test: lint typecheck pytest ## everything CI runs: lint, types, tests

crds: $(VENV)/.installed ## regenerate crds/ from the contract models
	$(VENV)/bin/tenantry crds --out crds

.PHONY: chart-crds
chart-crds: crds ## copy the generated CRDs into the Helm chart (charts/tenantry/crds)
	rm -f charts/tenantry/crds/*.yaml
	cp crds/*.yaml charts/tenantry/crds/

bench-api: $(VENV)/.installed servers gateways ## API request path against bare FastAPI, slowapi and fastapi-limiter; the gateway check, direct and behind Caddy
	scripts/ensure-wrk.sh
	$(VENV)/bin/python -m bench.api --rounds 3

bench-operator: $(VENV)/.installed ## operator: 1,000 tenants to Ready, memory at 10,000
	$(VENV)/bin/python -m bench.operator

bench-jobs: $(VENV)/.installed servers ## jobs throughput and latency, usage flush rate
	$(VENV)/bin/python -m bench.jobs

bench-scale: $(VENV)/.installed servers ## Redis Cluster against one Redis; 1, 2 and 4 API processes; jobs/s on Redis and RabbitMQ against plain Celery
	scripts/ensure-wrk.sh
	$(VENV)/bin/python -m bench.scale_redis
	$(VENV)/bin/python -m bench.scale_api
	$(VENV)/bin/python -m bench.scale_jobs

clean: ## remove the virtual environment, tools and caches
	rm -rf $(VENV) .tools .mypy_cache .pytest_cache .ruff_cache .hypothesis
