# The two commands a newcomer needs: `make demo` (install + run the default job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export SPARK_LOCAL_IP ?= 127.0.0.1

.PHONY: setup demo test lint bench clean

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/pipelines demo

test: setup
	$(PY) -m pytest -q -rs

lint: setup
	$(VENV)/bin/ruff check pipelines tests benchmarks cluster

bench: setup
	$(PY) -m benchmarks.ingest.bench_ingest

clean:
	rm -rf runs .pytest_cache
