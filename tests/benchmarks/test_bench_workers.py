"""benchmarks/bench_workers.py names the failed requests and their causes from the server's log (offline)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

LOG = """\
INFO:     127.0.0.1:50000 - "POST /api/2.0/mlflow/runs/log-batch HTTP/1.1" 200 OK
INFO:     127.0.0.1:50001 - "GET /api/2.0/mlflow/experiments/get-by-name?experiment_name=medtl%2Fx HTTP/1.1" 404 Not Found
2026/12/06 23:30:01 ERROR mlflow.store.db.utils: SQLAlchemy database error. The following exception is caught.
Traceback (most recent call last):
  File "x.py", line 1, in <module>
psycopg.OperationalError: connection failed: connection to server on socket "/tmp/lab/pg/.s.PGSQL.5432" failed: FATAL:  sorry, too many clients already
INFO:     127.0.0.1:50002 - "POST /api/2.0/mlflow/runs/log-batch HTTP/1.1" 503 Service Unavailable
INFO:     127.0.0.1:50003 - "POST /api/2.0/mlflow/runs/create HTTP/1.1" 503 Service Unavailable
INFO:     127.0.0.1:50004 - "GET /api/2.0/mlflow/runs/get?run_id=abc HTTP/1.1" 404 Not Found
"""


@pytest.fixture(scope="module")
def bench(bench_module):
    return bench_module("bench_workers")


def test_failed_requests_by_endpoint_leave_lookup_misses_aside(bench):
    access = [m for m in (bench.ACCESS_LINE.search(line) for line in LOG.splitlines()) if m]
    assert len(access) == 5
    assert bench._failed_requests(access) == {
        "503 /api/2.0/mlflow/runs/log-batch": 1, "503 /api/2.0/mlflow/runs/create": 1, "404 /api/2.0/mlflow/runs/get": 1}


def test_error_causes_are_a_tracebacks_last_line_without_paths(bench, tmp_path):
    (tmp_path / "mlflow-server.log").write_text(LOG)
    causes = bench._error_causes(SimpleNamespace(folder=tmp_path), start=0)
    assert list(causes.items()) == [
        ('psycopg.OperationalError: connection failed: connection to server on socket "…" failed: FATAL:  sorry, too many clients already', 1)]
    assert bench._error_causes(SimpleNamespace(folder=tmp_path), start=len(LOG.splitlines())) == {}
