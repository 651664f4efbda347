"""Security: passwords in URLs never reach output or MLflow; checkpoints that would run code are refused."""

from __future__ import annotations

import os
import shlex

import pytest
import torch
from mlflow.tracking import MlflowClient

from medtl.evaluation.collect import mask_uri
from medtl.mlops.cli import main
from medtl.mlops.sweeps.study import study_text
from medtl.mlops.tracking.client import end_run, log_params, set_tags
from medtl.redact import mask_url
from medtl.training import schema as S
from medtl.training.checkpoint import FORMAT, CheckpointError, atomic_save, load_checkpoint
from medtl.training.init import read_weights

STUDY = study_text("security", seeds=[0], max_epochs=1, patience=1, batch_size=8, image_size=32)

MASKED = [
    ("postgresql+psycopg://medtl:s3cret@db:5432/optuna", "postgresql+psycopg://medtl:***@db:5432/optuna"),
    # '@', ':' and '/' in a password, percent-encoded as a URL requires
    ("postgresql://u:p%40ss%3Aw%2Frd@host/db", "postgresql://u:***@host/db"),
    # an unencoded ':' in the password
    ("postgresql://u:pa:ss:wd@host:5432/db", "postgresql://u:***@host:5432/db"),
    ("http://alice:hunter2@mlflow.internal:5000", "http://alice:***@mlflow.internal:5000"),
    ("https://alice:hunter2@mlflow.example/api?x=1", "https://alice:***@mlflow.example/api?x=1"),
    (
        "cannot open postgresql://u:pw1@h/a, then http://v:pw2@h:5000: refused",
        "cannot open postgresql://u:***@h/a, then http://v:***@h:5000: refused",
    ),
    # nothing to hide
    ("postgresql://medtl@host/db", "postgresql://medtl@host/db"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
]


@pytest.mark.parametrize("mask", [mask_url, mask_uri], ids=["redact", "evaluation.collect"])
@pytest.mark.parametrize(("text", "expected"), MASKED)
def test_mask_hides_the_password_and_nothing_else(mask, text, expected):
    assert mask(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://u:p@ssword@host/db",  # an unencoded '@' in the password: its tail leaks
        "postgresql+psycopg//u:hunter2@host/db",  # a typo in the scheme: nothing is masked
    ],
)
def test_mask_hides_passwords_of_malformed_urls(text):
    assert "ssword" not in mask_url(text) and "hunter2" not in mask_url(text)


@pytest.mark.parametrize("command", ["sweep", "worker"])
def test_an_unreachable_storage_is_reported_masked(command, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    study = tmp_path / "security.yaml"
    study.write_text(STUDY)
    url = "postgresql+psycopg://medtl:p%40ss%3Aword@127.0.0.1:1/optuna"
    rc = main([command, "--study", str(study), "--storage", url])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "cannot open Optuna storage postgresql+psycopg://medtl:***@127.0.0.1:1/optuna" in err
    for secret in ("p%40ss%3Aword", "p@ss:word", "p%40ss"):
        assert secret not in out + err + caplog.text
    assert not (tmp_path / "mlflow.db").exists()  # nothing half-created


@pytest.mark.parametrize("flags", [[], ["--plan"]], ids=["sweep", "plan"])
def test_an_unreachable_tracking_server_is_reported_masked(flags, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    study = tmp_path / "security.yaml"
    study.write_text(STUDY)
    uri = "http://alice:hunter2@127.0.0.1:1"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    rc = main(["sweep", "--study", str(study), "--storage", storage, "--tracking-uri", uri, *flags])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "http://alice:***@127.0.0.1:1" in err
    assert "hunter2" not in out + err + caplog.text


def test_urls_reach_mlflow_masked(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("security", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    storage = "postgresql+psycopg://medtl:p%40ss%3Aword@db:5432/optuna"
    log_params(client, run_id, {"optuna_storage": storage, "tracking": "http://alice:hunter2@mlflow:5000", "lr": 0.001})
    set_tags(client, run_id, {"medtl.note": f"queue at {storage}"})
    end_run(client, run_id, "FAILED", f"OperationalError: cannot connect to {storage}")
    run = client.get_run(run_id)
    assert run.data.params == {
        "optuna_storage": "postgresql+psycopg://medtl:***@db:5432/optuna",
        "tracking": "http://alice:***@mlflow:5000",
        "lr": "0.001",
    }
    assert run.data.tags["medtl.note"] == "queue at postgresql+psycopg://medtl:***@db:5432/optuna"
    assert run.data.tags[S.FAILURE_TAG] == "OperationalError: cannot connect to postgresql+psycopg://medtl:***@db:5432/optuna"
    stored = str(run.data.params) + str(run.data.tags)
    assert "p%40ss" not in stored and "hunter2" not in stored


class _RunsCode:
    """Unpickling this runs a shell command: what a malicious `.pt` file does."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "best.pt"
    torch.save({"format": FORMAT, "model": {"w": torch.zeros(2)}, "extra": _RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"holds pickled objects \(posix.system\), refused"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="pickled objects"):
        read_weights(path)  # init=domain / --init-source FILE goes through the same door
    assert not marker.exists()
    # The file is a live exploit: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["truncated", "text", "empty"])
def test_a_damaged_or_foreign_file_is_not_a_readable_checkpoint(kind, tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(1000.0)}, good)
    path = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("epoch,val_loss\n1,0.5\n")
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_checkpoint(path)


def test_plain_state_dicts_and_medtl_checkpoints_load(tmp_path):
    weights = {"conv.weight": torch.randn(4, 3, 3, 3), "fc.bias": torch.zeros(2)}
    torch.save(weights, tmp_path / "plain.pt")
    loaded = load_checkpoint(tmp_path / "plain.pt")
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
    atomic_save({"format": FORMAT, "meta": {"epoch": 3, "arch": "resnet18"}, "model": weights}, tmp_path / "best.pt")
    payload = load_checkpoint(tmp_path / "best.pt")
    assert payload["meta"] == {"epoch": 3, "arch": "resnet18"} and torch.equal(payload["model"]["fc.bias"], weights["fc.bias"])
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_evaluation_service_answers_only_its_own_host_names(tracking_uri, monkeypatch):
    import http.client
    import threading

    from medtl.errors import UserError
    from medtl.evaluation.service import ALLOWED_HOSTS_ENV, EvaluationService, make_server

    server = make_server(EvaluationService(tracking_uri), "127.0.0.1", 0)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def status(host: str | None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.putrequest("GET", "/health", skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()

    try:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
            assert status(host)[0] == 200, host
        for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.attacker.example", "", None):
            code, body = status(host)
            assert code == 403 and b"is not served here" in body, host
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setenv(ALLOWED_HOSTS_ENV, "evaluation:8000, reports.lab.example:*")
    assert EvaluationService(tracking_uri).allowed_hosts == ("evaluation:8000", "reports.lab.example:*")
    assert EvaluationService(tracking_uri).host_allowed("reports.lab.example:443")
    monkeypatch.setenv(ALLOWED_HOSTS_ENV, "*")
    with pytest.raises(UserError, match="may not allow every host"):
        EvaluationService(tracking_uri)
