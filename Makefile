# Tasks for working on tuneforge; every target runs inside the project's .venv (made by `make setup`).
PY := .venv/bin/python
DEPS = $(shell cat .venv/.deps 2>/dev/null)
FAST_TESTS := tests/contracts tests/service/test_jobs_api.py tests/service/test_job_graders.py \
	tests/service/test_auth.py tests/service/test_tenancy.py tests/service/test_models_api.py \
	tests/operator/test_manifests.py tests/operator/test_status.py tests/trainer/test_trainer_grader_formula.py

.PHONY: setup lint test-fast test test-one bench-object-store bench-control-plane docs crd demo

setup:            ## the virtual environment (heavy dependencies cached in ~/.cache/tuneforge)
	bash .ci/setup

lint: setup       ## ruff, mypy (strict on contracts and service), import-linter (the layer rules)
	$(DEPS)/bin/ruff check .
	$(PY) -m mypy
	$(PY) -c 'import sys; from importlinter.cli import lint_imports_command; sys.argv[0] = "lint-imports"; sys.exit(lint_imports_command())'

test-fast: setup  ## contracts, API and operator unit tests on SQLite: about a minute, no training
	$(PY) -m pytest -q -p no:randomly $(FAST_TESTS)

test: setup       ## everything CI runs (installs PostgreSQL, Prometheus, Chromium, the k8s testbed first)
	bash .ci/run

test-one: setup   ## one test: make test-one T=tests/service/test_files.py::test_upload_and_get
	$(PY) -m pytest -q $(T)

bench-object-store: setup  ## one benchmark, e.g. the object store against boto3 (see bench/README.md)
	$(PY) bench/object_store.py

docs: setup       ## regenerate README's configuration tables and the CRD from the models
	$(PY) docs/configuration.py
	$(PY) -m tuneforge.operator.crd --write helm/crds && cp helm/crds/*.yaml helm/tuneforge/crds/

demo:             ## the README's first command
	bash .ci/quickstart
