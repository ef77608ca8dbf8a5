# Two entry points (see README): `make run` sets up and runs, `make test` sets up and passes the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?= serve

.PHONY: run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Runtime install: pip picks the CUDA build of torch on Linux GPU machines.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# Test install: the pinned CPU-friendly torch first, so no multi-GB CUDA wheel is pulled in CI.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: $(VENV)/.runtime
	$(BIN)/framepack-bot $(ARGS)

# The second pass runs the chat end-to-end tests again on PostgreSQL and S3 (a server from the pgserver wheel, moto's
# S3 server; tests/conftest.py), each worker a separate `python -m engine.worker` process with an empty data folder
# of its own (tests/worker_processes.py), the frontends in the test; and the worker's own tests (test_worker.py,
# test_lora_jobs.py: resume, cancel, several worker processes, LoRA jobs) on the same servers.
E2E_ON_POSTGRES_S3 := tests/test_telegram.py tests/test_discord.py tests/test_telegram_extend.py \
	tests/test_discord_extend.py tests/test_worker.py tests/test_lora_jobs.py

# Two test processes (pytest-xdist), each test file whole in one of them (its module fixtures built once): the
# suite waits on subprocesses, servers and sockets as much as it computes. tests/conftest.py gives each process
# its share of the cores as torch threads (one each on CI's two cores), and the same to the processes they start.
# TEST_PROCESSES=0 runs in this process.
TEST_PROCESSES ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_PROCESSES) --dist loadfile

test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(PYTEST)
	FRAMEPACK_TEST_BACKEND=postgres-s3 $(PYTEST) $(E2E_ON_POSTGRES_S3)

lint: $(VENV)/.dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
