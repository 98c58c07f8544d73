# Two entry points a new user needs; everything else is `agentmesh --help`.
#   make up    set up and run the example mesh (Ctrl-C stops it)
#   make test  set up and run lint, type checks and the whole test suite
#   make bench set up and run the benchmark suite (bench/README.md; `make bench-quick` for a short run)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup system-deps up test lint typecheck proto unit integration clean

$(BIN)/agentmesh: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# xds-protos ships an old copy of opentelemetry/proto/*; put the OTLP exporter's own back on top.
	$(BIN)/pip install --quiet --force-reinstall --no-deps \
		"opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	touch $@

setup: $(BIN)/agentmesh

# Debian packages the suite runs for real: Prometheus (promtool) and Alertmanager (amtool).
DEBIAN_PACKAGES := prometheus prometheus-alertmanager
system-deps:
	@if command -v promtool >/dev/null && command -v amtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES); \
	else echo "warning: install $(DEBIAN_PACKAGES) (Debian) to run the Prometheus tests; they will be skipped"; fi

up: setup
	$(BIN)/agentmesh up -f examples/mesh.yaml

proto: setup
	$(BIN)/python -m agentmesh.codegen

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

test: setup system-deps lint typecheck
	$(BIN)/python -m agentmesh.codegen --check
	$(BIN)/python -m dashboards.generate --check
	$(BIN)/python -m agentmesh.cli.reference --check
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Benchmarks (bench/README.md). h2load, from Debian's nghttp2-client, generates the load; without it the
# suite falls back to a Python load generator and says so in its report.
BENCH_H2LOAD = command -v h2load >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nghttp2-client; } || \
	echo "warning: install nghttp2-client (Debian) for h2load; the benchmark will use its Python load generator"
.PHONY: bench bench-quick
bench: setup
	@$(BENCH_H2LOAD)
	$(BIN)/python -m bench

bench-quick: setup
	@$(BENCH_H2LOAD)
	$(BIN)/python -m bench --quick
