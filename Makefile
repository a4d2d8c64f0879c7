# The two commands of the README. Each makes the virtual environment and installs what it needs,
# from the locks in requirements/ (every dependency pinned, with hashes), then ccsync itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test test-fast test-prerequisites lint bench lock

$(STAMP): pyproject.toml requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ccsync demo

# Programs the tests run besides Python, RabbitMQ and Redis (promtool, Chromium, Node.js, a C
# compiler): installed when missing and run as root, else the one command to run is printed.
test-prerequisites:
	tools/test-prerequisites

test: $(STAMP) test-prerequisites
	$(BIN)/ruff check worker tools tests
	$(BIN)/ruff format --check worker tools tests
	$(BIN)/mypy
	$(BIN)/pytest

# The contributor's loop, under a minute: lint, types and the unit tier (no service needed; the
# tiers are pytest markers, tests/conftest.py). `make test` runs every tier.
test-fast: $(STAMP) test-prerequisites
	$(BIN)/ruff check worker tools tests
	$(BIN)/ruff format --check worker tools tests
	$(BIN)/mypy
	$(BIN)/pytest tests/unit -m unit -q

lint: $(STAMP)
	$(BIN)/ruff check worker tools tests
	$(BIN)/mypy

$(BENCH_STAMP): $(STAMP) requirements/bench.txt
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/bench.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

# The locks, made by uv from pyproject.toml for Python 3.11 (universal: any OS and CPU):
#   requirements/runtime.txt  dependencies         -> Dockerfile
#   requirements/dev.txt      + the dev extra      -> make demo, make test, .ci/run
#   requirements/bench.txt    + dev and bench      -> make bench
#   requirements/flower.txt   + the flower extra   -> Flower beside a worker (docs/operations.md)
# pyproject.toml keeps the ranges, for installing ccsync into an environment of one's own.
# Added a package to an extra or to dependencies? Run `make lock` and commit pyproject.toml with
# requirements/: the pins already there stay; `make lock UPGRADE=1` moves every pin to the newest
# release the ranges allow. runtime.txt, bench.txt and flower.txt are constrained by dev.txt, so
# the image, the benchmark and Flower run the versions the tests ran.
UV_VERSION := 0.13.9
LOCK := $(BIN)/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade)

lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(LOCK) --extra dev -o requirements/dev.txt
	$(LOCK) -c requirements/dev.txt -o requirements/runtime.txt
	$(LOCK) --extra dev --extra bench -c requirements/dev.txt -o requirements/bench.txt
	$(LOCK) --extra flower -c requirements/dev.txt -o requirements/flower.txt
