"""The epoch logger: epochs buffered in order through an outage, training never waits, claims gate sends."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medtl.mlops.retry import is_connection_error
from medtl.mlops.tracking.client import TrackingUnavailable
from medtl.mlops.tracking.epoch_logger import EpochLogger, upload_every_default
from medtl.training.recipe import checkpoint_paths


class _Flaky:
    """An MlflowClient whose writes fail with a connection error while `down` is set."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self.down = threading.Event()
        self.hang = threading.Event()  # set: a request that never returns (a frozen server)
        self.failures = 0

    def log_batch(self, *args, **kwargs):
        while self.hang.is_set():
            time.sleep(0.05)
        if self.down.is_set():
            self.failures += 1
            raise MlflowException("API request to http://127.0.0.1:5000 failed: Max retries exceeded (Connection refused)")
        return self.client.log_batch(*args, **kwargs)

    def log_artifact(self, *args, **kwargs):
        return self.client.log_artifact(*args, **kwargs)


def _epoch(n: int) -> dict[str, float]:
    return {"epoch": n, "train_loss": 1.0 / n, "val_loss": 2.0 / n}


def _wait_sent(logger: EpochLogger) -> None:
    deadline = time.monotonic() + 10
    while logger.pending and time.monotonic() < deadline:
        time.sleep(0.05)


def test_epochs_wait_out_an_outage_in_order_and_training_never_blocks(new_run, tmp_path):
    client, run_id = new_run
    flaky = _Flaky(client)
    logger = EpochLogger(flaky, run_id, checkpoint_paths(tmp_path))  # type: ignore[arg-type]
    history = []
    flaky.down.set()
    for n in range(1, 4):  # three epochs end while the server refuses connections
        history.append(_epoch(n))
        logger(n, [dict(h) for h in history], improved=True)
        time.sleep(0.3)
    assert flaky.failures >= 1 and logger.pending
    assert client.get_metric_history(run_id, "val_loss") == []
    flaky.hang.set()  # then two more while a request hangs: handing over must not wait for it
    handed = threading.Thread(
        target=lambda: [logger(n, [dict(h) for h in history + [_epoch(4), _epoch(5)][: n - 3]], True) for n in (4, 5)]
    )
    handed.start()
    handed.join(timeout=10)
    assert not handed.is_alive(), "the training thread waited for the tracking store"
    history += [_epoch(4), _epoch(5)]
    flaky.hang.clear()
    flaky.down.clear()
    history.append(_epoch(6))
    logger(6, [dict(h) for h in history], improved=False)
    logger.close(timeout_s=60)
    for key in ("train_loss", "val_loss"):
        steps = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == [(n, _epoch(n)[key]) for n in range(1, 7)], key  # each once, none lost


def test_close_is_bounded_when_the_server_stays_away(new_run, tmp_path):
    client, run_id = new_run
    flaky = _Flaky(client)
    flaky.down.set()
    logger = EpochLogger(flaky, run_id, checkpoint_paths(tmp_path))  # type: ignore[arg-type]
    logger(1, [_epoch(1)], improved=True)
    started = time.perf_counter()
    with pytest.raises(TrackingUnavailable, match="epochs 1..1") as unavailable:
        logger.close(timeout_s=1.5)
    assert is_connection_error(unavailable.value)  # a sweep sees an infrastructure fault, not the point's
    assert time.perf_counter() - started < 5


def test_a_rejected_batch_is_an_error_not_a_retry(new_run, tmp_path):
    client, _ = new_run
    logger = EpochLogger(client, "no-such-run", checkpoint_paths(tmp_path))
    logger(1, [_epoch(1)], improved=True)
    with pytest.raises(MlflowException):
        logger.close(timeout_s=30)


def test_owns_claim_gates_every_batch(new_run, tmp_path):
    client, run_id = new_run
    owned = {"yes": True}
    logger = EpochLogger(client, run_id, checkpoint_paths(tmp_path), owns_claim=lambda: owned["yes"])
    logger(1, [_epoch(1)], improved=True)
    _wait_sent(logger)
    owned["yes"] = False
    logger(2, [_epoch(1), _epoch(2)], improved=False)
    logger.close(timeout_s=10)
    assert logger.claim_lost.is_set()
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1]


def test_uploads_the_recipes_checkpoints_every_n_epochs(new_run, tmp_path):
    """The files uploaded are the ones the recipe named (not a name the logger knows), under `checkpoints/`."""
    client, run_id = new_run
    checkpoints = checkpoint_paths(tmp_path / "work")
    checkpoints.last.parent.mkdir()
    logger = EpochLogger(client, run_id, checkpoints, upload_every=2)

    def epoch(n: int, improved: bool) -> None:
        torch.save({"epoch": n}, checkpoints.last)
        if improved:
            torch.save({"epoch": n}, checkpoints.best)
        logger(n, [_epoch(e) for e in range(1, n + 1)], improved)
        _wait_sent(logger)

    epoch(1, improved=True)
    assert client.list_artifacts(run_id, "checkpoints") == []  # not an upload epoch
    epoch(2, improved=False)  # uploads last.pt and the best.pt improved since the last upload
    logger.close(timeout_s=30)
    assert sorted(a.path for a in client.list_artifacts(run_id, "checkpoints")) == [
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    ]


def test_mid_run_uploads_default_on_for_a_remote_store_only(monkeypatch):
    assert upload_every_default("http://mlflow:5000") == 1
    assert upload_every_default("sqlite:////tmp/mlflow.db") == 0
    monkeypatch.setenv("MEDTL_CHECKPOINT_UPLOAD_EVERY", "3")
    assert upload_every_default("sqlite:////tmp/mlflow.db") == 3
