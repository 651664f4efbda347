"""SIGTERM/SIGINT stop a run at an epoch boundary (KILLED, resumable, exact); lost claims and failed runs."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import medtl.training.loaders as loaders
import medtl.training.loop as loop
import medtl.training.runtime as rt
from medtl.errors import UserError
from medtl.mlops import signals
from medtl.mlops.tracking.runner import ClaimLost, run_spec, work_root
from medtl.training.checkpoint import Checkpointer, atomic_save, load_checkpoint
from medtl.training.data.synthetic import load_synthetic
from medtl.training.finetune import FinetuneRecipe
from medtl.training.recipe import checkpoint_paths
from medtl.training.spec import TASKS, RunSpec, Task
from medtl.training.tasks import make_adapter

SPEC = dict(task="demo-binary", arch="mobilenet_v3_small", max_epochs=4, patience=4, image_size=32, seed=2)
HISTORY_KEYS = ("train_loss", "val_loss", "val_f1", "val_auc")


@pytest.fixture(autouse=True)
def _handlers():
    """Install the stop handlers for the test and put the process's own back afterwards."""
    saved = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    signals.clear_stop_request()
    yield
    signals.clear_stop_request()
    for s, handler in saved.items():
        signal.signal(s, handler)


class _SignalAt(loop.Callback):
    """Sends `signum` to this process after the first batch of `epoch`."""

    def __init__(self, epoch: int, signum: int = signal.SIGTERM) -> None:
        self.epoch, self.signum, self.sent = epoch, signum, False

    def on_batch_end(self, state):
        if state.epoch == self.epoch and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


def _tiny_fit(folder, callbacks):
    rt.seed_everything(0)
    splits = load_synthetic(Task.DEMO_BINARY, image_size=16, sizes={"train": 64, "val": 16, "test": 16})
    adapter = make_adapter(TASKS[Task.DEMO_BINARY])
    runtime = rt.resolve_runtime("cpu")
    train = loaders.make_loader(splits.train, adapter, 8, runtime, shuffle=True)
    val = loaders.make_loader(splits.val, adapter, 8, runtime, shuffle=False)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 1))
    ckpt = Checkpointer(checkpoint_paths(folder), meta={})
    loop.fit(model, adapter, train, val, np.asarray(splits.val.targets), lr=0.01, max_epochs=5, runtime=runtime,
             callbacks=[ckpt, *callbacks])
    return ckpt


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_without_grace_abandons_the_epoch_and_keeps_the_last_checkpoint(tmp_path, signum):
    signals.install_stop_handlers(grace_s=0)
    with pytest.raises(signals.StopRequested) as stopped:
        _tiny_fit(tmp_path, [_SignalAt(2, signum), signals.StopCheck()])
    assert stopped.value.signal_name == signal.Signals(signum).name
    assert load_checkpoint(tmp_path / "last.pt")["loop"]["epoch"] == 1


def test_a_signal_within_the_grace_finishes_the_epoch_first(tmp_path):
    signals.install_stop_handlers(grace_s=120)
    with pytest.raises(signals.StopRequested, match="SIGTERM"):
        _tiny_fit(tmp_path, [_SignalAt(2), signals.StopCheck()])
    assert load_checkpoint(tmp_path / "last.pt")["loop"]["epoch"] == 2


def test_a_signal_outside_a_fit_stops_at_once():
    signals.install_stop_handlers(grace_s=120)
    with pytest.raises(signals.StopRequested, match="SIGTERM"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted by the handler's exception


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_a_bad_grace_is_one_clear_error(monkeypatch, value):
    monkeypatch.setenv("MEDTL_STOP_GRACE_S", value)
    with pytest.raises(UserError, match="MEDTL_STOP_GRACE_S must be a number of seconds >= 0"):
        signals.install_stop_handlers()


def _history(client, run_id):
    return {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
            for k in HISTORY_KEYS}


def test_sigterm_ends_the_run_killed_and_the_resume_matches_an_uninterrupted_run(tracking_uri, monkeypatch):
    client = MlflowClient(tracking_uri)
    reference = run_spec(RunSpec(**SPEC), study="reference", tracking_uri=tracking_uri)

    signals.install_stop_handlers(grace_s=0)
    original = loop.EarlyStopping.on_epoch_end

    def term_after_epoch_2(self, state, metrics):
        original(self, state, metrics)
        if state.epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives at the boundary: epoch 2 is kept

    monkeypatch.setattr(loop.EarlyStopping, "on_epoch_end", term_after_epoch_2)
    with pytest.raises(signals.StopRequested):
        run_spec(RunSpec(**SPEC), study="stopped", tracking_uri=tracking_uri)
    monkeypatch.setattr(loop.EarlyStopping, "on_epoch_end", original)
    signals.clear_stop_request()
    experiment = client.get_experiment_by_name("medtl/stopped")
    (killed,) = client.search_runs([experiment.experiment_id])
    assert killed.info.status == "KILLED"
    assert "SIGTERM" in killed.data.tags["medtl.failure_reason"]
    assert [s for s, _ in _history(client, killed.info.run_id)["val_loss"]] == [1, 2]

    # Earlier attempts' totals ride in last.pt; make them large to see them added.
    last = work_root() / RunSpec(**SPEC).run_key / "checkpoints" / "last.pt"
    payload = load_checkpoint(last)
    assert payload["loop"]["callback_state"]["totals"]["duration_s"] > 0
    payload["loop"]["callback_state"]["totals"] = {"duration_s": 1000.0, "energy_kwh": 0.5, "emissions_kg": 0.25}
    atomic_save(payload, last)

    outcome = run_spec(RunSpec(**SPEC), study="stopped", tracking_uri=tracking_uri)
    assert outcome.run_id == killed.info.run_id
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["medtl.resumed_from_epoch"] == "2"
    assert _history(client, outcome.run_id) == _history(client, reference.run_id)  # exact resume
    assert run.data.metrics["test_auc"] == client.get_run(reference.run_id).data.metrics["test_auc"]
    assert 1000 < run.data.metrics["duration_s"] < 1000 + 600
    assert run.data.metrics["energy_kwh"] >= 0.5 and run.data.metrics["emissions_kg"] >= 0.25


def test_a_failed_run_with_a_checkpoint_resumes(tracking_uri, monkeypatch):
    spec = RunSpec(**{**SPEC, "max_epochs": 2, "patience": 2})
    original = FinetuneRecipe.test

    def boom(self):
        raise RuntimeError("test pass crashed")

    monkeypatch.setattr(FinetuneRecipe, "test", boom)
    with pytest.raises(RuntimeError):
        run_spec(spec, study="failed", tracking_uri=tracking_uri)
    monkeypatch.setattr(FinetuneRecipe, "test", original)
    client = MlflowClient(tracking_uri)
    (failed,) = client.search_runs([client.get_experiment_by_name("medtl/failed").experiment_id])
    assert failed.info.status == "FAILED"
    outcome = run_spec(spec, study="failed", tracking_uri=tracking_uri)
    assert outcome.run_id == failed.info.run_id
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["medtl.resumed_from_epoch"] == "2"
    assert [m.step for m in client.get_metric_history(outcome.run_id, "val_loss")] == [1, 2]


def test_a_lost_claim_stops_the_run_without_touching_it(tracking_uri, monkeypatch):
    owned = {"yes": True}
    original = loop.EarlyStopping.on_epoch_end

    def taken_over_at_epoch_2(self, state, metrics):
        original(self, state, metrics)
        if state.epoch == 2:
            owned["yes"] = False  # another worker claimed the point while epoch 2 was saved

    monkeypatch.setattr(loop.EarlyStopping, "on_epoch_end", taken_over_at_epoch_2)
    with pytest.raises(ClaimLost):
        run_spec(RunSpec(**SPEC), study="claims", tracking_uri=tracking_uri, owns_claim=lambda: owned["yes"])
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("medtl/claims").experiment_id])
    assert run.info.status == "RUNNING"  # the new owner's to continue and end
    assert "medtl.failure_reason" not in run.data.tags and "medtl.stop_reason" not in run.data.tags
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1]
    last = work_root() / RunSpec(**SPEC).run_key / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["loop"]["epoch"] >= 2  # its work is checkpointed for the new owner


def test_medtl_run_ends_killed_on_sigterm(tmp_path, tracking_uri):
    import subprocess
    import sys

    command = [
        sys.executable, "-m", "medtl.mlops.cli", "run", "--task", "demo-binary", "--arch", "mobilenet_v3_small",
        "--max-epochs", "60", "--patience", "60", "--image-size", "32", "--study", "term", "--tracking-uri", tracking_uri,
    ]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(tracking_uri)
    deadline = time.monotonic() + 300
    run_id = None
    while time.monotonic() < deadline and process.poll() is None:  # wait for a logged epoch
        experiment = client.get_experiment_by_name("medtl/term")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and client.get_metric_history(runs[0].info.run_id, "val_loss"):
            run_id = runs[0].info.run_id
            break
        time.sleep(0.5)
    assert run_id is not None, process.communicate(timeout=60)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err and "interrupted (stopped by SIGTERM)" in err
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["medtl.failure_reason"].startswith("stopped by SIGTERM")
