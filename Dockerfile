# One image for every service of the medtl compose stack: the MLflow tracking server, the Optuna
# dashboard, sweep workers and the evaluation service (docker-compose.yml sets each one's command).
# Build: docker compose build (or: docker build -t medtl:local .)
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The largest layer first, so that changing medtl's code does not download it again. The same pins
# as pyproject.toml; PyPI's default Linux wheels of torch are CUDA builds (GPU workers need no other
# image). tests/deploy/test_compose.py checks that these pins and pyproject.toml's agree.
RUN pip install torch==2.14.1 torchvision==0.29.1

# medtl with the pinned dependencies of pyproject.toml, plus what only the services use and medtl
# itself does not import: MLflow's basic-auth app (the `auth` extra of the same pinned mlflow; the
# compose stack always runs it), the Optuna dashboard and boto3 (MLflow's S3 artifact store).
WORKDIR /tmp/medtl-src
COPY pyproject.toml README.md ./
COPY medtl ./medtl
RUN pip install . "mlflow[auth]==3.17.2" optuna-dashboard==0.21.0 boto3==1.44.5 \
    && rm -rf /tmp/medtl-src

# A non-root user owns the working folder and the paths that the compose volumes mount (named
# volumes start with the image's ownership): artifacts, MLflow's basic-auth user store, caches.
RUN useradd --create-home --uid 10001 --user-group medtl \
    && mkdir -p /work /srv/mlartifacts /srv/mlflow-auth /srv/cache/torch /srv/cache/medtl \
    && chown -R medtl:medtl /work /srv
WORKDIR /work
COPY --chown=medtl:medtl configs ./configs
ENV TORCH_HOME=/srv/cache/torch \
    MEDTL_CACHE_DIR=/srv/cache/medtl \
    MPLCONFIGDIR=/tmp/matplotlib
USER medtl

# No ENTRYPOINT: every service names its own program (medtl, mlflow, optuna-dashboard).
# No image-wide HEALTHCHECK either: the image plays four roles, so docker-compose.yml gives each
# HTTP service its own check (GET /health, /api/studies).
EXPOSE 5000 8000 8080
CMD ["medtl", "--help"]
