"""The service commands of a medtl deployment, defined once.

`make ui`, the integration tests, `docker-compose.yml`, the Kubernetes manifests (`deploy/k8s/`) and the
SLURM script (`deploy/slurm/`) run these exact commands; `tests/deploy/` compares each of them with
these so the native stack, the containers and the clusters cannot drift apart.

No database password is ever part of a command (command lines are visible to every user of the
machine in `ps` and land in shell histories and logs): URLs carry the user, host and database, and
the password travels in the environment (`PGPASSWORD`, read by libpq) or a password file
(`PGPASSFILE`, default `~/.pgpass`). `without_password` splits a URL that has one.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url

from medtl.errors import UserError

# Lean server settings (DESIGN.md): one worker, no job-execution processes. A database pool of 20 + 20
# per store: with SQLAlchemy's default (5 + 10) one server process collapsed under 32 concurrent clients
# (2 requests/s, "QueuePool limit … reached" after 30 s) and answers ~100/s with this (docs/scaling.md).
MLFLOW_SERVER_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "20",
    "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "20",
}
PASSWORD_ENV = "PGPASSWORD"


@dataclass(frozen=True)
class Launch:
    """A service command and the environment variables to add to the caller's for it."""

    command: list[str]
    env: dict[str, str]


def without_password(url: str) -> tuple[str, dict[str, str]]:
    """A database URL without its password, and `{PGPASSWORD: password}` (empty when it had none).

    Non-database URLs (`sqlite:`, `http:`, files) come back unchanged.
    """
    if "://" not in url or url.startswith(("sqlite", "http://", "https://", "file:")):
        return url, {}
    parsed = make_url(url)
    if not parsed.password:
        return url, {}
    bare = URL.create(parsed.drivername, parsed.username, None, parsed.host, parsed.port, parsed.database, parsed.query)
    return bare.render_as_string(hide_password=False), {PASSWORD_ENV: str(parsed.password)}


def _refuse_password(url: str, what: str) -> str:
    if without_password(url)[1]:
        raise UserError(
            f"{what} holds a password; put it in ${PASSWORD_ENV} or ~/.pgpass and leave it out of the URL "
            "(command lines are visible to every user of the machine)"
        )
    return url


def mlflow_server_command(
    backend_store_uri: str,
    artifacts_destination: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    allowed_hosts: str | None = None,
    basic_auth: bool = False,
    workers: int | str = 1,
) -> list[str]:
    """`mlflow server` with a database backend and proxied artifacts, bound to `host`.

    Artifacts go through the server (`--serve-artifacts`) to `artifacts_destination` (a folder, a
    shared mount, `s3://bucket/prefix` on S3 or MinIO): clients upload over HTTP and never hold the
    store's credentials. `workers` is the server's process count (one answers ~90 requests/s here,
    docs/scaling.md); compose and Kubernetes pass `MLFLOW_SERVER_WORKERS`.

    Raises:
        UserError: the backend URI carries a password (use `mlflow_server_launch` to split it off).
    """
    command = [
        "mlflow",
        "server",
        "--backend-store-uri",
        _refuse_password(backend_store_uri, "the backend store URI"),
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    if basic_auth:
        command += ["--app-name", "basic-auth"]
    return command


def mlflow_server_launch(backend_store_uri: str, artifacts_destination: str, **options: object) -> Launch:
    """`mlflow_server_command` for a backend URL that may hold a password: it moves to `PGPASSWORD`."""
    url, secret = without_password(backend_store_uri)
    return Launch(mlflow_server_command(url, artifacts_destination, **options), {**MLFLOW_SERVER_ENV, **secret})


def wait_healthy(uri: str, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """Poll the MLflow server's `/health` until it answers 200; False after `timeout` s or once `proc` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            return False
        time.sleep(0.3)


def optuna_schema_command(storage: str) -> list[str]:
    """Create the Optuna tables once, before any worker could race to (compose's and Kubernetes' one-off job)."""
    storage = _refuse_password(storage, "the Optuna storage URL")
    return ["python", "-c", "import sys; from medtl.mlops.sweeps.queue import open_storage; open_storage(sys.argv[1])", storage]


def evaluation_command(host: str = "127.0.0.1", port: int = 8000) -> list[str]:
    """`medtl serve`: the evaluation service."""
    return ["medtl", "serve", "--host", host, "--port", str(port)]


def worker_command(study: str, storage: str, tracking_uri: str) -> list[str]:
    """A sweep worker on any machine: pulls points from the shared Optuna queue.

    `study` is best the study's name: its grid travels in the queue, so the worker needs no study file.
    """
    storage = _refuse_password(storage, "the Optuna storage URL")
    return ["medtl", "worker", "--study", study, "--storage", storage, "--tracking-uri", tracking_uri]


def sweep_command(study: str, storage: str, tracking_uri: str, workers: int | str = 1) -> list[str]:
    """`medtl sweep` against a shared storage (its password in `PGPASSWORD`, never in the URL)."""
    return [
        "medtl",
        "sweep",
        "--study",
        study,
        "--storage",
        _refuse_password(storage, "the Optuna storage URL"),
        "--tracking-uri",
        tracking_uri,
        "--workers",
        str(workers),
    ]
