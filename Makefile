# medtl — `make help` lists the targets. Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
MEDTL := $(VENV)/bin/medtl
STAMP := $(VENV)/.medtl-installed
STUDY ?= configs/demo.yaml
UI_PORT ?= 5000

.DEFAULT_GOAL := help
.PHONY: help install test test-fast sweep ui bench evaluate lint clean readme-figure

-include deploy/compose.mk

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## build .venv with medtl and its pinned dependencies (no-op when up to date)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

test: install ## run the test suite (CPU, tiny data; starts the services it needs)
	$(PY) -m pytest -q

test-fast: install ## the tests not marked slow or integration
	$(PY) -m pytest -q -m "not slow and not integration"

DEMO := .medtl/demo
DEMO_SET := $(DEMO)/pretrain-set
DEMO_PATIENTS ?= 60

STUDY_NAME_OF = $$($(PY) -c "from medtl.mlops.sweeps.study import load_study; print(load_study('$(STUDY)').name)")

sweep: install $(DEMO_SET)/.labelled ## the whole study in miniature: archive → ingest → pseudo-labels → pretrain → grid → promote → report
	$(MEDTL) sweep --study $(STUDY)
	$(MEDTL) promote --study $(STUDY_NAME_OF) --fraction any
	$(MEDTL) evaluate --study $(STUDY_NAME_OF)
	@echo
	@$(PY) scripts/ui_link.py --db mlflow.db --study $(STUDY_NAME_OF) --ui-url http://127.0.0.1:$(UI_PORT) --champions
	@echo "Start the MLflow UI on this store with:  make ui"

# The demo's pretraining set: a synthetic DICOM archive, ingested with a key kept outside the
# output folder, then pseudo-labelled. Make's own timestamps keep it idempotent.
$(DEMO)/deid.key:
	@mkdir -p $(DEMO)
	@umask 077; $(PY) -c "import secrets; print(secrets.token_hex(32))" > $@

$(DEMO_SET)/.labelled: $(STAMP) $(DEMO)/deid.key
	@rm -rf $(DEMO)/archive $(DEMO_SET)
	$(MEDTL) demo-archive --out $(DEMO)/archive --patients $(DEMO_PATIENTS)
	$(MEDTL) ingest $(DEMO)/archive --out $(DEMO_SET) --key-file $(DEMO)/deid.key --no-progress --image-size 64
	$(MEDTL) pseudolabel $(DEMO_SET) --clusters 6
	@touch $@

ui: install ## MLflow UI over ./mlflow.db on http://127.0.0.1:$(UI_PORT), opening on the study's runs
	@$(PY) scripts/ui_link.py --db mlflow.db --study $(or $(STUDY_NAME),demo) --ui-url http://127.0.0.1:$(UI_PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server \
		--backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--artifacts-destination $(CURDIR)/mlartifacts \
		--host 127.0.0.1 --port $(UI_PORT) --workers 1

readme-figure: install ## copy the demo's learning curves and headline table into README.md (after make sweep)
	$(PY) scripts/readme_figure.py --report reports/$(or $(STUDY_NAME),demo) --readme README.md --docs docs/demo

bench: install ## measure speed and overheads; writes BENCHMARKS.md
	$(PY) benchmarks/run.py

lint: install ## ruff
	$(VENV)/bin/ruff check medtl tests benchmarks

evaluate: install ## the statistics, tables and plots of a study: STUDY_NAME=demo
	$(MEDTL) evaluate --study $(or $(STUDY_NAME),demo)

clean: ## remove the demo's tracking store, artifacts and work files (keeps .venv)
	rm -rf mlflow.db optuna.db mlartifacts mlruns .medtl reports
