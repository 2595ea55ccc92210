# Two commands for a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
WHEELHOUSE := $(VENV)/wheelhouse
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test test-fast lint chaos fuzz bench bench-quick bench-tools profile clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# What the tests need: every extra, plus a wheelhouse of the base distribution's dependencies and build tools
# (made while the package index is reachable) so tests/e2e/test_install.py can install the bare
# SDK into a fresh venv with --no-index. The project's own wheel is built by that test from the current source.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	rm -rf $(WHEELHOUSE)
	$(BIN)/pip wheel --quiet --wheel-dir $(WHEELHOUSE) . 'setuptools>=68' wheel
	rm -f $(WHEELHOUSE)/tessera_config-*.whl
	touch $(RUN_STAMP) $(STAMP)

# What running needs: the server and the CLI (no AWS stack, no test tools). A test install covers it.
$(RUN_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[server,cli]'
	touch $(RUN_STAMP)

## make run: start the local server (embedded backend, sample config) and print the URL and root token
run: $(RUN_STAMP)
	$(BIN)/tessera serve --dev --data-dir .tessera

## make test: the whole suite, slow suites included
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -p no:cacheprovider

## make test-fast: skip the suites marked slow
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -m "not slow"

## make lint: ruff over the tree, then mypy over every package (tessera.core, .handlers, .local, .client)
lint: $(STAMP)
	$(BIN)/ruff check tessera core handlers local client tests bench
	$(BIN)/python -m tests.typecheck core handlers local client

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

## make chaos: the long chaos and soak runs (50 kill -9 rounds, a 5-minute soak with 200 watchers, disk full as
## root); `make test` runs the short forms. Figures go to docs/reliability.md by hand.
chaos: $(STAMP)
	TESSERA_CHAOS=long $(BIN)/python -m pytest tests/chaos -q -s -p no:cacheprovider --timeout=3600

## make fuzz: schemathesis against a real server, every phase (coverage, fuzzing, stateful), the root token and a
## restricted one, bounded by FUZZ_SECONDS per token (default 120); prints the figures docs/reliability.md records
FUZZ_SECONDS ?= 120
fuzz: $(STAMP)
	$(BIN)/python -m tests.api.fuzz_long --seconds $(FUZZ_SECONDS)

## make bench-tools: Debian's etcd-server (3.4) and wrk, when absent (needs root; rows say "absent" without them)
bench-tools:
	@command -v wrk >/dev/null 2>&1 && command -v etcd >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server wrk >/dev/null) || \
	  echo "bench: could not install etcd-server/wrk; their rows will say absent"

## make bench: every issue-8 target side by side, one table; writes docs/benchmarks.md and docs/bench.png (~10 min)
bench: $(BENCH_STAMP) bench-tools
	$(BIN)/python -m bench.run

## make bench-quick: the small form (about a minute, docs untouched); works without etcd and wrk
bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick

## make profile: py-spy profile of the read path under wrk load (docs/profiles/read-path.speedscope.json)
profile: $(BENCH_STAMP) bench-tools
	$(BIN)/python -m bench.profile

clean:
	rm -rf $(VENV) .tessera
