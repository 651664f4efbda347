# The compose stack of docker-compose.yml, included from the Makefile. Needs Docker with the compose
# plugin (v2.20 or later). Settings and passwords come from .env: cp .env.example .env, then edit it.
COMPOSE ?= docker compose
STUDY ?= configs/demo.yaml
WORKERS ?= 2
SWEEP_WORKERS ?= 1
GPU ?=

WORKER_SERVICE := $(if $(GPU),worker-gpu,worker)
WORKER_PROFILE := $(if $(GPU),gpu,workers)

.PHONY: up down dashboard sweep-remote workers compose-env compose-study

compose-env:
	@test -f .env || { echo "no .env here: cp .env.example .env, then set its passwords and secret key" >&2; exit 2; }

compose-study:
	@case "$(STUDY)" in configs/*.yaml|configs/*.yml) ;; \
	  *) echo "STUDY=$(STUDY): the containers see ./configs only; put the study file under configs/" >&2; exit 2;; esac
	@test -f "$(STUDY)" || { echo "STUDY=$(STUDY): no such file" >&2; exit 2; }

up: compose-env ## start PostgreSQL, MLflow (login required), the evaluation service (docker compose, 127.0.0.1 only)
	$(COMPOSE) up -d --build postgres mlflow evaluation
	$(COMPOSE) ps

dashboard: compose-env ## also start the Optuna dashboard (no login: reach it through an SSH tunnel only)
	$(COMPOSE) --profile dashboard up -d --build optuna-dashboard

down: compose-env ## stop the compose stack (its volumes, with the database and artifacts, are kept)
	$(COMPOSE) --profile dashboard --profile sweep --profile workers --profile gpu down

sweep-remote: compose-env compose-study ## run STUDY on the compose stack with SWEEP_WORKERS processes (make workers adds more)
	MEDTL_STUDY=$(STUDY) SWEEP_WORKERS=$(SWEEP_WORKERS) $(COMPOSE) run --rm --build sweep

workers: compose-env compose-study ## add WORKERS containers that join the running sweep of STUDY (GPU=1: the GPU variant)
	MEDTL_STUDY=$(STUDY) $(COMPOSE) --profile $(WORKER_PROFILE) up -d --build --scale $(WORKER_SERVICE)=$(WORKERS) $(WORKER_SERVICE)
