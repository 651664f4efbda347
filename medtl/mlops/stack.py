"""The service commands of a medtl deployment, defined once.

`make ui`, the integration tests and `docker-compose.yml` run these exact commands; a test compares
the compose file against them so the native stack and the containers cannot drift apart.
"""

from __future__ import annotations

# Lean server settings (DESIGN.md): one worker, no job-execution processes.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_server_command(
    backend_store_uri: str,
    artifacts_destination: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    allowed_hosts: str | None = None,
    basic_auth: bool = False,
) -> list[str]:
    """`mlflow server` with a database backend and proxied artifacts, bound to `host`."""
    command = [
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    if basic_auth:
        command += ["--app-name", "basic-auth"]
    return command


def worker_command(study: str, storage: str, tracking_uri: str) -> list[str]:
    """A sweep worker on any machine: pulls points from the shared Optuna queue."""
    return ["medtl", "worker", "--study", study, "--storage", storage, "--tracking-uri", tracking_uri]


def sweep_command(study: str, storage: str, tracking_uri: str, workers: int = 1) -> list[str]:
    return [
        "medtl",
        "sweep",
        "--study",
        study,
        "--storage",
        storage,
        "--tracking-uri",
        tracking_uri,
        "--workers",
        str(workers),
    ]
