"""Exact resume (the shuffle order and every RNG continue) and DDP decisions taken once by rank 0."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

from medtl.training.checkpoint import Checkpointer, load_checkpoint
from medtl.training.data.synthetic import load_synthetic
from medtl.training.loaders import make_loader
from medtl.training.loop import Callback, EarlyStopping, fit
from medtl.training.recipe import checkpoint_paths
from medtl.training.runtime import resolve_runtime, seed_everything
from medtl.training.spec import TASKS, Task
from medtl.training.tasks import make_adapter


class _TinyBN(nn.Module):
    """Conv + BatchNorm + dropout: its result depends on batch order and on the global RNG."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(self.drop(self.bn(self.conv(x)).amax(dim=(2, 3))))


def _fit(folder, max_epochs, resume=None, seed=3, lr=0.05, callbacks=()):
    seed_everything(seed)
    splits = load_synthetic(Task.DEMO_BINARY, image_size=16, sizes={"train": 48, "val": 16, "test": 16})
    adapter = make_adapter(TASKS[Task.DEMO_BINARY])
    runtime = resolve_runtime("cpu")
    train = make_loader(splits.train, adapter, 8, runtime, shuffle=True, seed=seed)
    val = make_loader(splits.val, adapter, 8, runtime, shuffle=False)
    ckpt = Checkpointer(checkpoint_paths(folder), meta={})
    state = fit(
        _TinyBN(), adapter, train, val, np.asarray(splits.val.targets), lr=lr, max_epochs=max_epochs,
        runtime=runtime, callbacks=[ckpt, *callbacks], resume=resume,
    )
    return [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in state.history], ckpt


def test_resumed_fit_matches_an_uninterrupted_one(tmp_path):
    whole, _ = _fit(tmp_path / "whole", 4)
    first, ckpt = _fit(tmp_path / "part", 2)
    payload = load_checkpoint(ckpt.paths.last)
    stale = load_checkpoint(ckpt.paths.last)
    assert "sampler_state" in payload["loop"]
    resumed, _ = _fit(tmp_path / "resumed", 4, resume=payload)
    assert first == whole[:2]
    assert resumed == whole  # epochs 3 and 4 saw the same batches, dropout masks and weights

    # The check can fail: without the sampler's state, epoch 3 replays epoch 1's order.
    del stale["loop"]["sampler_state"]
    stale_run, _ = _fit(tmp_path / "stale", 4, resume=stale)
    assert stale_run[:2] == whole[:2] and stale_run[2:] != whole[2:]


class _Weights(Callback):
    """The model's and optimizer's state at each epoch's end, copied before the checkpointer runs."""

    epoch_end_order = 50

    def __init__(self):
        self.model, self.optimizer, self.improved = {}, {}, []

    def on_epoch_end(self, state, metrics):
        self.model[state.epoch] = {k: v.clone() for k, v in state.model.state_dict().items()}
        self.optimizer[state.epoch] = {
            i: {k: v.clone() for k, v in entry.items()} for i, entry in state.optimizer.state_dict()["state"].items()
        }
        if state.improved:
            self.improved.append(state.epoch)


def test_reused_checkpoint_buffers_never_leak_a_later_epoch_into_a_file(tmp_path):
    """The checkpointer copies each epoch into the previous epoch's buffers: best.pt must still hold
    the best epoch's weights, and last.pt the last epoch's weights and optimizer state."""
    seen = _Weights()
    history, ckpt = _fit(tmp_path / "a", 6, lr=1.0, callbacks=[seen])  # lr 1.0: the best epoch is not the last
    best, last = load_checkpoint(ckpt.paths.best), load_checkpoint(ckpt.paths.last)
    best_epoch = seen.improved[-1]
    assert best["meta"]["epoch"] == best_epoch and last["meta"]["epoch"] == len(history) == 6
    for name, value in seen.model[best_epoch].items():
        assert torch.equal(best["model"][name], value), name
    for name, value in seen.model[6].items():
        assert torch.equal(last["model"][name], value), name
    for index, entry in seen.optimizer[6].items():
        for key, value in entry.items():
            assert torch.equal(last["optimizer"]["state"][index][key], value), (index, key)
    if best_epoch != 6:  # the files differ where the epochs' weights differ
        assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])


def test_an_early_stop_holds_on_resume(tmp_path):
    # lr 1.0 makes the validation loss bounce, so patience 1 stops well before 40 epochs.
    stopped, ckpt = _fit(tmp_path / "a", 40, lr=1.0, callbacks=[EarlyStopping(1)])
    assert len(stopped) < 40
    again, _ = _fit(tmp_path / "b", 40, resume=load_checkpoint(ckpt.paths.last), lr=1.0, callbacks=[EarlyStopping(1)])
    assert again == stopped  # a run that failed after stopping early (e.g. in its test) trains no more


class _SaysStop(Callback):
    """A callback that would stop at once: on rank 1 only, its decision must not count."""

    def on_epoch_end(self, state, metrics):
        state.should_stop, state.stop_reason = True, "rank 1 alone wants to stop"


def _ddp_worker(rank: int, folder: str) -> None:
    import torch.distributed as dist

    from medtl.training.runtime import broadcast_resume

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        seed_everything(0)
        splits = load_synthetic(Task.DEMO_BINARY, image_size=16, sizes={"train": 32, "val": 16, "test": 16})
        adapter = make_adapter(TASKS[Task.DEMO_BINARY])
        runtime = resolve_runtime("cpu")
        train = make_loader(splits.train, adapter, 8, runtime, shuffle=True)
        val = make_loader(splits.val, adapter, 8, runtime, shuffle=False)
        targets = np.asarray(splits.val.targets)
        ckpt = Checkpointer(checkpoint_paths(f"{folder}/ckpt"), meta={})
        extra = [ckpt] if rank == 0 else [_SaysStop()]
        # lr 1.0 makes the validation loss bounce, so patience 2 ends the fit early.
        state = fit(
            _TinyBN(), adapter, train, val, targets, lr=1.0, max_epochs=30, runtime=runtime,
            callbacks=[EarlyStopping(2), *extra],
        )
        # Resume on every rank: only rank 0 reads last.pt; the payload reaches rank 1 by broadcast.
        saved = None
        if rank == 0:
            saved = load_checkpoint(ckpt.paths.last)
            saved["loop"]["should_stop"] = False  # as if saved mid-run, so the resumed fit trains on
        payload = broadcast_resume(saved)
        again = _TinyBN()
        resumed = fit(
            again, adapter, train, val, targets, lr=1.0, max_epochs=state.epoch + 1, runtime=runtime,
            callbacks=[EarlyStopping(50)],
            resume=payload,
        )
        result = {
            "epoch": state.epoch,
            "best_epoch": state.best_epoch,
            "stop_reason": state.stop_reason,
            "val_loss": [h["val_loss"] for h in state.history],
            "runtime": runtime.to_params(),
            "resumed_epochs": [h["epoch"] for h in resumed.history],
            "weights": float(sum(p.detach().double().sum() for p in again.parameters())),
        }
        with open(f"{folder}/rank{rank}.json", "w") as fh:
            json.dump(result, fh)
        # Both ranks meet before tearing gloo down: a rank leaving while its peer still works can abort.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_rank_gloo_fit_stops_early_once_and_resumes_on_both_ranks(tmp_path):
    import torch.multiprocessing as mp

    context = mp.start_processes(_ddp_worker, args=(str(tmp_path),), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-rank fit did not finish in 240 s (ranks disagreeing hang in a collective)")
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0["stop_reason"].startswith("no validation-loss improvement for 2 epochs")
    assert rank0["epoch"] < 30 and rank0["epoch"] == rank0["best_epoch"] + 2
    # Rank 1's own callback asked to stop after epoch 1; rank 0's decision won.
    for key in ("epoch", "best_epoch", "stop_reason", "val_loss"):
        assert rank1[key] == rank0[key], key
    assert rank0["runtime"]["world_size"] == "2"
    assert rank0["runtime"]["sync_batchnorm"] == "False"  # CPU: torch's SyncBatchNorm needs an accelerator
    assert rank0["resumed_epochs"] == rank1["resumed_epochs"]
    assert rank0["resumed_epochs"][-1] == rank0["epoch"] + 1
    assert rank1["weights"] == pytest.approx(rank0["weights"], rel=1e-6)
