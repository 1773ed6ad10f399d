# Blindmap: the two commands are `make demo` and `make test`; both create .venv on demand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo run test lint bench fuzz load clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-installs only when a pyproject changes (idempotent, fast on the second run).
$(STAMP): $(BIN)/python pyproject.toml client/pyproject.toml
	$(BIN)/python -m pip install -q -e ./client -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/blindmap-server demo

run: $(STAMP)
	$(BIN)/blindmap-server serve --host 127.0.0.1 --port 8000

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check client/blindmap service tests bench
	$(BIN)/ruff format --check client/blindmap service tests bench migrations
	$(BIN)/mypy
	.ci/audit

# `make bench` runs every benchmark; the end-to-end one (bench/bench_e2e.py) at SIZE
# accounts per side: 100k by default, `make bench SIZE=1m` for 1M.
# The peer (OpenMined PSI) is the optional `bench` extra, installed here on first use; where
# it cannot be installed the PSI rows are skipped with a message and the rest still runs.
SIZE ?= 100k
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]' || echo "make bench: openmined-psi could not be installed; the peer PSI rows will be skipped"
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	SIZE=$(SIZE) $(BIN)/python -m bench $(BENCH_ARGS)

# 5 minutes of the read mix + small uploads against one uvicorn worker (needs wrk and the
# PostgreSQL at 127.0.0.1:5432); docs/reliability.md records the result. Not in `make test`.
load: $(STAMP)
	$(BIN)/python -m bench.load $(LOAD_ARGS)

fuzz: $(STAMP)  # the long schemathesis run (make test runs FUZZ_EXAMPLES=8)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-500} $(BIN)/python -m pytest -n 2 -q tests/test_fuzz.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
