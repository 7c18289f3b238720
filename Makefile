# ocr-stream: `make run` OCRs a sample document on this machine; `make test` runs every test against
# real services. Both set up what they need first (idempotent; quick once done).

PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
TSTAMP  := $(VENV)/.installed-test-stamp
# Three test processes: most of the suite waits on Kafka, MinIO and subprocesses, not on the CPU
# (the whole suite: ~4.5 min this way, ~12 min in one process, on the 2-core dev machine).
PYTEST_ARGS ?= -n 3 --dist loadfile

.PHONY: help venv run test test-deps services-up services-down bench lint schemas clean

help:
	@echo "make run     OCR samples/sample.pdf end to end on this machine (no Kafka, no GPU, no network)"
	@echo "make test    install test services (Kafka, MinIO, tools), start them, run the whole suite"
	@echo "make bench   run the benchmark suite (writes bench/results/<date>.json)"
	@echo "make lint    mypy on the package"
	@echo "make up/down the full stack with docker compose on a GPU host"

# The package alone for `make run`; the test and benchmark extras on top for everything else.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(TSTAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

venv: $(TSTAMP)

run: $(STAMP)
	@bash scripts/make_run.sh

test-deps: venv
	@bash scripts/install-test-tools.sh
	@$(BIN)/python tests/stack.py install

test: test-deps
	$(BIN)/python tests/stack.py run -- $(BIN)/python -m pytest $(PYTEST_ARGS)

services-up: test-deps
	@$(BIN)/python tests/stack.py up

services-down:
	@$(BIN)/python tests/stack.py down

bench: test-deps
	$(BIN)/python tests/stack.py run -- $(BIN)/python -m bench

lint: venv
	$(BIN)/mypy

schemas: venv
	$(BIN)/ocr-stream topics schemas

clean:
	rm -rf $(VENV) .stack out .pytest_cache .mypy_cache

# make up / make down / make deploy-config: the full stack on a GPU host.
include deploy/Makefile.inc
