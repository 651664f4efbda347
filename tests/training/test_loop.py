"""The training loop: learns the demo tasks, stops early, is reproducible, flags divergence."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from medtl.training.checkpoint import Checkpointer, load_checkpoint
from medtl.training.data.synthetic import load_synthetic
from medtl.training.finetune import FinetuneRecipe
from medtl.training.loaders import make_loader
from medtl.training.loop import Callback, EarlyStopping, FitState, fit
from medtl.training.recipe import checkpoint_paths
from medtl.training.runtime import resolve_runtime, seed_everything
from medtl.training.spec import TASKS, RunSpec, Task, TaskType
from medtl.training.tasks import ADAPTERS, make_adapter


def test_learns_demo_binary_well_above_chance(tmp_path):
    spec = RunSpec(task="demo-binary", arch="resnet18", lr=1e-3, max_epochs=5, patience=5, image_size=64, batch_size=16)
    recipe = FinetuneRecipe.prepare(spec, tmp_path)
    state = recipe.fit()
    result = recipe.test()
    assert state.best_epoch >= 1
    # Chance is 0.5 accuracy / AUC; the demo is learnable in a few epochs.
    assert result.metrics["accuracy"] >= 0.8, result.metrics
    assert result.metrics["auc"] >= 0.85, result.metrics


def test_learns_demo_multiclass_above_chance(tmp_path):
    spec = RunSpec(
        task="demo-multiclass", arch="resnet18", lr=1e-3, max_epochs=5, patience=5, image_size=32, batch_size=16
    )
    recipe = FinetuneRecipe.prepare(spec, tmp_path)
    state = recipe.fit()
    # Chance is 0.25. From scratch on 256 images the validation loss is noisy (BatchNorm running
    # statistics lag the weights), so the check is on the best validation accuracy reached.
    best = max(h["val_accuracy"] for h in state.history)
    assert best >= 0.5, state.history


def test_same_seed_same_metrics_on_cpu(tmp_path):
    def once(folder):
        spec = RunSpec(task="demo-multiclass", arch="mobilenet_v3_small", max_epochs=2, image_size=32, seed=7)
        recipe = FinetuneRecipe.prepare(spec, folder)
        recipe.fit()
        return recipe.state.history, recipe.test().metrics

    hist_a, test_a = once(tmp_path / "a")
    hist_b, test_b = once(tmp_path / "b")
    strip = lambda h: [{k: v for k, v in e.items() if k != "epoch_time_s"} for e in h]  # noqa: E731
    assert strip(hist_a) == strip(hist_b)
    assert test_a == test_b


def test_early_stopping_counts_epochs_since_best():
    state = FitState(model=nn.Linear(1, 1), optimizer=None, max_epochs=50)  # type: ignore[arg-type]
    stopper = EarlyStopping(patience=3)
    state.best_epoch = 2
    for epoch in (3, 4):
        state.epoch = epoch
        stopper.on_epoch_end(state, {})
        assert not state.should_stop
    state.epoch = 5
    stopper.on_epoch_end(state, {})
    assert state.should_stop and "3 epochs" in state.stop_reason


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(self.conv(x).amax(dim=(2, 3)))


def _demo_binary_fit_inputs(n_train: int, n_val: int, n_test: int):
    """(adapter, runtime, train loader, val loader, val targets) of a seeded demo-binary set on the CPU."""
    seed_everything(0)
    splits = load_synthetic(Task.DEMO_BINARY, image_size=16, sizes={"train": n_train, "val": n_val, "test": n_test})
    adapter = make_adapter(TASKS[Task.DEMO_BINARY])
    runtime = resolve_runtime("cpu")
    train = make_loader(splits.train, adapter, 16, runtime, shuffle=True)
    val = make_loader(splits.val, adapter, 16, runtime, shuffle=False)
    return adapter, runtime, train, val, np.asarray(splits.val.targets)


def test_early_stopping_stops_a_real_fit(tmp_path):
    adapter, runtime, train, val, val_targets = _demo_binary_fit_inputs(64, 32, 16)
    ckpt = Checkpointer(checkpoint_paths(tmp_path / "checkpoints"), meta={})
    # lr 1.0 makes the validation loss bounce; patience 2 must end the fit well before 100 epochs.
    state = fit(
        _Tiny(), adapter, train, val, val_targets, lr=1.0, max_epochs=100, runtime=runtime,
        callbacks=[ckpt, EarlyStopping(2)],
    )
    assert state.epoch < 100
    assert state.epoch == state.best_epoch + 2
    assert state.stop_reason.startswith("no validation-loss improvement")
    assert ckpt.paths.best.exists() and ckpt.paths.last.exists()
    assert load_checkpoint(ckpt.paths.best)["meta"]["epoch"] == state.best_epoch
    assert load_checkpoint(ckpt.paths.last)["loop"]["epoch"] == state.epoch


class _NaNAfterOne(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.linear(x.mean(dim=(1, 2, 3)).unsqueeze(1))
        return out * (math.nan if self.calls > 20 else 1.0)


def test_non_finite_loss_is_recorded_as_diverged():
    adapter, runtime, train, val, val_targets = _demo_binary_fit_inputs(64, 16, 16)
    state = fit(_NaNAfterOne(), adapter, train, val, val_targets, lr=1e-3, max_epochs=10, runtime=runtime)
    assert state.diverged
    assert "not finite" in state.stop_reason
    assert state.epoch >= 1 and state.best_epoch >= 1  # the epochs before divergence count


def test_runtime_is_cpu_here_and_recorded():
    runtime = resolve_runtime()
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime.device == expected
    params = runtime.to_params()
    assert set(params) == {
        "device", "amp_dtype", "channels_last", "num_workers", "pin_memory", "torch_threads", "world_size",
        "sync_batchnorm",
    }
    assert params["world_size"] == "1" and params["sync_batchnorm"] == "False"
    if expected == "cpu":
        assert params["amp_dtype"] == "none" and params["channels_last"] == "False"


def test_fraction_touches_only_the_training_split():
    from medtl.training.data import load_splits

    full = load_splits(Task.DEMO_BINARY, "synthetic", image_size=16)
    part = load_splits(Task.DEMO_BINARY, "synthetic", image_size=16, fraction=0.25)
    assert len(part.train) == len(full.train) // 4
    assert part.val.ids == full.val.ids and part.test.ids == full.test.ids
    assert set(part.train.ids) <= set(full.train.ids)
    assert abs(part.train.targets.mean() - 0.5) < 0.05  # stratified
    assert part.digest != full.digest


class _SavedRecorder(Callback):
    """Records each on_checkpoint_saved call and whether last.pt of that epoch was on disk by then."""

    def __init__(self, last_path):
        self.last_path = last_path
        self.calls: list[tuple[int, int, bool, bool]] = []

    def on_checkpoint_saved(self, epoch, history, improved):
        on_disk = self.last_path.exists() and load_checkpoint(self.last_path)["loop"]["epoch"] == epoch
        self.calls.append((epoch, len(history), improved, on_disk))


def test_checkpoint_saved_hook_reaches_every_callback_once_per_epoch_after_last_pt(tmp_path):
    adapter, runtime, train, val, val_targets = _demo_binary_fit_inputs(32, 16, 8)
    ckpt = Checkpointer(checkpoint_paths(tmp_path / "checkpoints"), meta={})
    first, second = _SavedRecorder(ckpt.paths.last), _SavedRecorder(ckpt.paths.last)
    state = fit(
        _Tiny(), adapter, train, val, val_targets, lr=0.01, max_epochs=3, runtime=runtime,
        callbacks=[first, ckpt, EarlyStopping(10), second],
    )
    assert state.epoch == 3
    best, improved = math.inf, []
    for entry in state.history:
        improved.append(entry["val_loss"] < best)
        best = min(best, entry["val_loss"])
    expected = [(e, e, improved[e - 1], True) for e in (1, 2, 3)]
    assert first.calls == expected and second.calls == expected


def test_every_task_type_has_its_adapter_and_predictions_table(tmp_path):
    assert set(ADAPTERS) == set(TaskType)
    for task in (Task.DEMO_BINARY, Task.DEMO_MULTICLASS, Task.DEMO_REGRESSION, Task.DEMO_SEGMENTATION):
        info = TASKS[task]
        splits = load_synthetic(task, image_size=16, sizes={"train": 8, "val": 4, "test": 4})
        adapter = make_adapter(info, np.asarray(splits.train.targets))
        assert type(adapter) is ADAPTERS[info.type]
        outputs = torch.zeros(4, info.num_outputs, *((16, 16) if info.type is TaskType.SEGMENTATION else ()))
        predictions = adapter.postprocess(outputs)
        targets = np.asarray(splits.test.targets)
        assert set(adapter.metrics(targets, predictions)) >= {adapter.primary}
        path = tmp_path / f"{task.value}.csv"
        adapter.write_predictions(path, splits.test.ids, targets, predictions)
        lines = path.read_text().splitlines()
        assert len(lines) == 5 and lines[0].startswith("id,")
