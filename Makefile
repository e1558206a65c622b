# Two commands matter: `make run` (dashboard at http://127.0.0.1:7860) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast typecheck lint install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) app.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Everything that needs no model server and no browser (tests marked slow are left out),
# on FAST_WORKERS pytest-xdist workers; a file's tests stay on one worker (its shared app).
# Temp files (the tests' SQLite databases, whose every commit is an fsync) go to RAM where
# Linux has it: on a disk the fsyncs were a third of the wall time. Bytecode caches are on
# even where the environment sets PYTHONDONTWRITEBYTECODE: without them every worker and
# every Python subprocess compiles our modules again, and pytest rewrites every test
# module's asserts again (~3 s of CPU per worker). __pycache__/ is git-ignored.
# Three workers on a 2-core machine: about a third of a worker's time is spent waiting on
# the processes and sockets its tests start (sshd, MCP servers, the local hub's throttled
# downloads), and a third worker runs tests meanwhile. A fourth added ~10 s of CPU (one
# more collection and per-worker fixtures) and no speed.
FAST_WORKERS ?= 3
FAST_TMPDIR ?= $(if $(wildcard /dev/shm/.),/dev/shm,$(or $(TMPDIR),/tmp))
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	PYTHONDONTWRITEBYTECODE= TMPDIR=$(FAST_TMPDIR) $(PY) -m pytest -m "not slow" -q \
		-n $(FAST_WORKERS) --dist loadfile $(PYTEST_ARGS)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Everything, in two rounds: what test-fast runs (on FAST_WORKERS workers), then the slow
# tests (model servers, browsers) one at a time: they wait on real processes, and a second
# worker would only slow them. Both rounds always run; exit code 5 is "no test selected"
# (PYTEST_ARGS narrowed to files of one kind). Bytecode caches are on, as in test-fast: the
# slow round starts a dashboard or CLI subprocess in most of its tests.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	fast=0; slow=0; export PYTHONDONTWRITEBYTECODE=; \
	TMPDIR=$(FAST_TMPDIR) $(PY) -m pytest -m "not slow" -n $(FAST_WORKERS) --dist loadfile \
		$(PYTEST_ARGS) || fast=$$?; \
	$(PY) -m pytest -m slow $(PYTEST_ARGS) || slow=$$?; \
	for code in $$fast $$slow; do [ $$code -eq 0 ] || [ $$code -eq 5 ] || exit $$code; done

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
