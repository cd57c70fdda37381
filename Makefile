# Every target sets itself up: a fresh clone needs only `make demo` or `make test`.
SHELL := /bin/bash
ENV := source scripts/env.sh &&
PY := .venv/bin/python

.PHONY: demo test test-fast test-system bench lint setup services airflow-db ui ui-down stack stack-down

setup:
	bash scripts/bootstrap.sh

services:
	bash scripts/services.sh

airflow-db: setup
	$(ENV) .venv/bin/airflow db migrate > "$$RECSYS_HOME/airflow-migrate.log" 2>&1 || { tail -50 "$$RECSYS_HOME/airflow-migrate.log"; exit 1; }

## Run the main job end to end on embedded defaults (no servers needed).
demo: setup
	@mkdir -p var
	$(ENV) .venv/bin/airflow db migrate > var/airflow-migrate.log 2>&1 || { tail -50 var/airflow-migrate.log; exit 1; }
	$(ENV) $(PY) scripts/airflow_setup.py > /dev/null
	$(ENV) $(PY) scripts/demo.py $(DEMO_ARGS)

## Run the whole test suite against real MariaDB, Redis, Milvus Lite, MLflow and Airflow.
test: setup services
	@mkdir -p var
	$(ENV) export AIRFLOW_HOME=$$RECSYS_HOME/airflow-test && .venv/bin/airflow db migrate > var/airflow-test-migrate.log 2>&1 || { tail -50 var/airflow-test-migrate.log; exit 1; }
	$(ENV) export AIRFLOW_HOME=$$RECSYS_HOME/airflow-test && $(PY) scripts/airflow_setup.py > /dev/null
	$(ENV) export AIRFLOW_HOME=$$RECSYS_HOME/airflow-test && $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

## Every benchmark in bench/, each printing one JSON line last.
bench: setup services
	@for b in extract sampling train_throughput quality pipeline_quality vector_refresh api_latency; do \
	  echo "== bench/$$b.py"; $(ENV) $(PY) bench/$$b.py || exit 1; done

## The local UI stack: Airflow 3 (api-server, scheduler, dag-processor, triggerer; LocalExecutor)
## on PostgreSQL, the MLflow UI and the API, all on 127.0.0.1 (scripts/ui.py; README "Operating it").
ui: setup services
	$(ENV) $(PY) scripts/ui.py up

ui-down: setup
	$(ENV) $(PY) scripts/ui.py down

## The production topology natively (scripts/stack.py; README "The production topology"):
## MariaDB primary + read_only replica, PostgreSQL, Redis, Milvus Lite server, MLflow server,
## the TF-Serving stand-in, Airflow 3 with CeleryExecutor and two workers, the API (2 workers).
stack: setup services
	$(ENV) $(PY) scripts/stack.py up

stack-down: setup
	$(ENV) $(PY) scripts/stack.py down

## System tests on a fresh stack (tests/system): clean, up, pytest -m system, always down.
## test_pipeline.py runs first (tests/system/conftest.py): it deploys the model the faults need.
test-system: setup services
	@mkdir -p var
	$(ENV) $(PY) scripts/stack.py clean
	$(ENV) trap '$(PY) scripts/stack.py down' EXIT; \
	  $(PY) scripts/stack.py up && \
	  $(PY) -m pytest -m system tests/system $(PYTEST_ARGS)
