# Quick start: `make demo` runs the main job on real components, `make test` runs every test.
# Both install what is missing first: Debian packages, the Python venv and the control plane.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REPORT ?= demo-report.json
SCENARIOS ?= main
# pytest workers; end-to-end scenarios each start their own lab, so two fit on 2 cores.
WORKERS ?= 2

.PHONY: setup system python controlplane demo test unit lint format clean generate

setup: system python controlplane

system:
	@scripts/install-system.sh

python: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

controlplane:
	@controlplane/build.sh >/dev/null

demo: setup
	$(BIN)/isolator demo --report $(REPORT) --scenarios $(SCENARIOS)

test: setup
	$(BIN)/pytest -n $(WORKERS) --dist loadfile

unit: python
	$(BIN)/pytest tests/unit

lint: python
	$(BIN)/ruff format --check isolator tests
	$(BIN)/ruff check isolator tests
	$(BIN)/mypy isolator
	$(BIN)/lint-imports

# Writes the dashboards, alert rules and example monitoring configs; tests fail when the
# committed files differ from what this writes.
generate: python
	$(BIN)/python -m monitoring_gen

format: python
	$(BIN)/ruff format isolator tests
	$(BIN)/ruff check --fix isolator tests

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache demo-report.json

# Measures fault-to-cut latency against upstream Kubernetes, wrong cuts under a weak link,
# heartbeat ingest and control-loop cost on real components; writes docs/BENCHMARKS.md, its
# plots in docs/bench/ and bench-report.json (REPORT=path). About 30 minutes as root;
# BENCH_ARGS=--smoke runs a short check, and `python -m bench --help` lists every flag.
.PHONY: bench
bench: setup
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench --report $(if $(filter command line environment,$(origin REPORT)),$(REPORT),bench-report.json) $(BENCH_ARGS)
