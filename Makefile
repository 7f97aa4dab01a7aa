# Targets a newcomer guesses. `make test` and `make lint` make their own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
IMAGE ?= echo-service:latest

.PHONY: run test lint bench bench-workers image clean venv

run:  ## run the server from this checkout (nothing installed): make run ARGS="--port 9000"
	$(PYTHON) -m server $(ARGS)

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $@

venv: $(BIN)/.installed

# pytest exits 5 when it collected no test: for this suite that means it is broken.
test: $(BIN)/.installed  ## the whole suite, in .venv
	@$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; exit 1; fi; \
	exit $$status

lint: $(BIN)/.installed  ## ruff, mypy and hadolint
	$(BIN)/ruff check server client loadtest tests
	$(BIN)/ruff format --check server client loadtest tests
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

bench: $(BIN)/.installed  ## the performance table against reference servers (loadtest/bench.py), then the workers' rows
	$(BIN)/python -m loadtest.bench $(BENCH_ARGS)
	$(MAKE) --no-print-directory bench-workers

bench-workers: $(BIN)/.installed  ## --workers: connections/s, CPU and the supervisor's per connection; accept wake-ups (docs/workers.md)
	$(BIN)/python -m loadtest.workers_churn --workers 1 2
	$(BIN)/python -m loadtest.wakeups

VERSION := $(shell $(PYTHON) -c 'import server; print(server.__version__)')
SOURCE_URL := $(shell git remote get-url origin 2>/dev/null)

# The base image: PYTHON_IMAGE if set (air-gapped: a local image), else the Dockerfile's default.
BASE_IMAGE = $(or $(PYTHON_IMAGE),$(shell sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile))

image:  ## build the container image (set PYTHON_IMAGE for a local base image); prints its size
	docker build $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) \
		--build-arg VERSION=$(VERSION) --build-arg SOURCE_URL=$(SOURCE_URL) -t $(IMAGE) .
	@total=$$(docker image inspect --format '{{.Size}}' $(IMAGE)) && \
	base=$$(docker image inspect --format '{{.Size}}' $(BASE_IMAGE)) && \
	$(PYTHON) -c 'import sys; total, base = map(int, sys.argv[1:3]); \
		print(f"image size: {sys.argv[3]} {total / 1e6:.0f} MB; echo-service layers {(total - base) / 1e6:.2f} MB" \
		f" on top of {sys.argv[4]}")' "$$total" "$$base" "$(IMAGE)" "$(BASE_IMAGE)"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
