# The two commands a newcomer needs: `make demo` (install + run the default job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export SPARK_LOCAL_IP ?= 127.0.0.1

.PHONY: setup demo test test-fast typecheck lint bench clean

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/pipelines demo

test: setup  ## CI: the type check, then every test
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -rs

typecheck: setup  ## mypy over pipelines/ with pyproject.toml's [tool.mypy] (strict on the interface modules)
	$(VENV)/bin/mypy

test-fast: setup  ## the quick loop: everything not marked slow (real ranks, SLURM, standalone Spark, CLI runs)
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check pipelines tests benchmarks cluster

bench: setup
	$(PY) -m benchmarks.ingest.bench_ingest

clean:
	rm -rf runs .pytest_cache .mypy_cache
