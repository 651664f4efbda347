"""The queue on a real PostgreSQL: a server-side idle disconnect (optuna#5600) kills no worker; a full server is refused cleanly."""

from __future__ import annotations

import secrets
import time

import psycopg
import pytest
import sqlalchemy

from medtl.mlops.cli import main
from medtl.mlops.sweeps import queue as Q
from medtl.mlops.sweeps.study import load_study
from medtl.mlops.sweeps.worker import work
from medtl.mlops.tracking.runner import RunOutcome

pytestmark = pytest.mark.integration


def _role(postgres, **settings: str) -> str:
    """A fresh role and database on the session's server (so its settings touch no other test): the URL."""
    suffix = secrets.token_hex(3)
    role, password = f"queue_{suffix}", secrets.token_hex(8)
    extra = " ".join(f"{k} {v}" for k, v in settings.items() if k == "CONNECTION LIMIT")
    statements = [f"CREATE ROLE {role} LOGIN PASSWORD '{password}' {extra};", f"CREATE DATABASE {role} OWNER {role};"]
    statements += [f"ALTER ROLE {role} SET {k} = '{v}';" for k, v in settings.items() if k != "CONNECTION LIMIT"]
    postgres.server.psql("\n".join(statements))
    socket_dir = postgres.server.get_uri().split("host=", 1)[1]
    return f"postgresql+psycopg://{role}:{password}@/{role}?host={socket_dir}"


def _enqueue(url: str, study_file):
    study = load_study(study_file("pg"))
    optuna_study = Q.open_optuna_study(study, Q.open_storage(url))
    Q.enqueue_missing(study.specs, optuna_study, set())
    return study, optuna_study


def _states(url: str, name: str) -> list[str]:
    """The trials' states, read as the server's superuser (the role's own slots may still be held)."""
    parsed = sqlalchemy.engine.make_url(url)
    sql = "SELECT t.state FROM trials t JOIN studies s USING (study_id) WHERE s.study_name = %s"
    with psycopg.connect(user="postgres", dbname=parsed.database, host=parsed.query["host"]) as connection:
        return sorted(row[0] for row in connection.execute(sql, (Q.optuna_study_name(name),)))


def _connect(url: str) -> psycopg.Connection:
    parsed = sqlalchemy.engine.make_url(url)
    return psycopg.connect(user=parsed.username, password=parsed.password, dbname=parsed.database, host=parsed.query["host"])


def test_a_server_side_idle_disconnect_kills_no_worker(postgres, study_file, train_with, monkeypatch, tracking_uri):
    monkeypatch.setenv("MEDTL_HEARTBEAT_S", "3")  # the pool's connections sit idle longer than the server allows
    monkeypatch.setenv("MEDTL_GRACE_S", "30")
    url = _role(postgres, idle_session_timeout="1s")
    # The premise: the server really drops an idle connection (a plain engine, no pre-ping, fails).
    bare = sqlalchemy.create_engine(url, pool_size=1)
    with bare.connect() as connection:
        assert connection.exec_driver_sql("SHOW idle_session_timeout").scalar() == "1s"
    time.sleep(2)
    with pytest.raises(sqlalchemy.exc.OperationalError), bare.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    bare.dispose()

    study, optuna_study = _enqueue(url, study_file)
    time.sleep(2)  # the enqueueing connections are dropped while idle

    def slow(spec, **kwargs):
        time.sleep(2)  # training: the worker's pooled connections idle past the server's timeout
        return RunOutcome(f"run-{spec.run_key}", "FINISHED", {"best_val_loss": 0.5})

    train_with(slow)
    stats = work("pg", url, tracking_uri, progress=False)
    assert (stats.done, stats.failed, stats.requeued, stats.lost) == (len(study.specs), 0, 0, 0)
    assert sorted(t.state.name for t in optuna_study.get_trials()) == ["COMPLETE"] * len(study.specs)


def test_a_database_that_refuses_more_connections_is_one_line_exit_2_nothing_claimed(postgres, study_file, capsys, tracking_uri):
    url = _role(postgres, **{"CONNECTION LIMIT": "2"})
    _, optuna_study = _enqueue(url, study_file)
    Q._rdb(optuna_study).engine.dispose()
    password = sqlalchemy.engine.make_url(url).password
    with _connect(url), _connect(url):  # the role's two slots taken by someone else
        assert main(["worker", "--study", "pg", "--storage", url, "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refuses more connections" in err[0] and "too many connections for role" in err[0], err
    assert password not in err[0] and "MEDTL_DB_POOL_SIZE" in err[0]
    assert _states(url, "pg") == ["WAITING", "WAITING"]  # nothing claimed


def test_a_sweep_is_refused_when_its_workers_would_not_fit(postgres, study_file, capsys, tracking_uri):
    url = _role(postgres, **{"CONNECTION LIMIT": "3"})
    path = study_file("fit")
    assert main(["sweep", "--study", str(path), "--workers", "4", "--storage", url, "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "free connection slot(s) for 4 process(es)" in err[0] and "POSTGRES_MAX_CONNECTIONS" in err[0], err
    assert _states(url, "fit") == []  # nothing enqueued, nothing claimed
