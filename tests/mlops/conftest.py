"""The native service stack the integration tests use: PostgreSQL (tests/conftest.py) and a lean MLflow server on 127.0.0.1.

`docker-compose.yml` runs the same commands (`medtl.mlops.stack`); a test checks that they agree.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from medtl.mlops.stack import mlflow_server_launch

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """`mlflow server` as a child process; `stop()` and `start()` again on the same port."""

    def __init__(self, backend: str, artifacts: Path, port: int, log: Path) -> None:
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        launch = mlflow_server_launch(backend, str(artifacts), port=port)  # the password goes to PGPASSWORD
        self.command, self.env = launch.command, launch.env
        self.command[0] = str(Path(sys.executable).parent / "mlflow")
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        env = {**os.environ, **self.env}
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
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
def mlflow_server(postgres, tmp_path_factory) -> MlflowServer:
    folder = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(postgres.mlflow_url, folder / "artifacts", free_port(), folder / "server.log")
    server.start()
    yield server
    server.stop()
