"""The recipe: names its checkpoints, reports its fit (epochs to convergence, best values, divergence), tests the best."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch.nn as nn

from medtl.training.checkpoint import load_checkpoint
from medtl.training.finetune import FinetuneRecipe
from medtl.training.loop import FitState
from medtl.training.recipe import FitSummary, checkpoint_paths
from medtl.training.spec import RunSpec


def _state(history: list[dict[str, float]], best_epoch: int, epoch: int, diverged: bool = False) -> FitState:
    state = FitState(model=nn.Linear(1, 1), optimizer=None, max_epochs=10)  # type: ignore[arg-type]
    state.history, state.best_epoch, state.epoch, state.diverged = history, best_epoch, epoch, diverged
    best = [h["val_loss"] for h in history if h["epoch"] == best_epoch]
    state.best_val_loss = best[0] if best else math.inf
    state.stop_reason = "no validation-loss improvement for 1 epochs"
    return state


def test_the_summary_reads_the_best_epoch_not_the_best_value():
    history = [
        {"epoch": 1, "val_loss": 0.9, "val_f1": 0.5},
        {"epoch": 2, "val_loss": 0.7, "val_f1": 0.6},  # lowest validation loss: the best epoch
        {"epoch": 3, "val_loss": 0.8, "val_f1": 0.7},  # a higher F1, but not the best epoch
    ]
    summary = FitSummary.of(_state(history, best_epoch=2, epoch=3), "f1")
    assert summary.metrics() == {
        "epochs_to_convergence": 2.0,
        "epochs_run": 3.0,
        "diverged": 0.0,
        "best_val_loss": 0.7,
        "best_val_f1": 0.6,
    }
    assert summary.stop_reason.startswith("no validation-loss improvement")


def test_a_fit_that_diverged_before_any_best_epoch_has_no_best_values():
    summary = FitSummary.of(_state([], best_epoch=0, epoch=0, diverged=True), "mae")
    metrics = summary.metrics()
    assert (metrics["epochs_to_convergence"], metrics["epochs_run"], metrics["diverged"]) == (0.0, 0.0, 1.0)
    assert math.isnan(metrics["best_val_loss"]) and math.isnan(metrics["best_val_mae"])


def test_the_recipe_names_its_checkpoints_and_reports_its_fit(tmp_path, one_thread):
    spec = RunSpec(task="demo-binary", arch="resnet18", lr=1e-3, max_epochs=2, patience=5, image_size=32, batch_size=16)
    recipe = FinetuneRecipe.prepare(spec, tmp_path)
    assert recipe.checkpoints == checkpoint_paths(tmp_path / "checkpoints")
    assert (recipe.checkpoints.best.name, recipe.checkpoints.last.name) == ("best.pt", "last.pt")
    with pytest.raises(RuntimeError, match="call fit"):
        recipe.fit_summary()
    assert recipe.test().fit is None  # nothing fitted, nothing tested
    state = recipe.fit()
    summary = recipe.fit_summary()
    assert summary.epochs_to_convergence == state.best_epoch and summary.epochs_run == 2
    assert summary.best_val_loss == min(h["val_loss"] for h in state.history)
    assert summary.best_val_primary == state.history[state.best_epoch - 1]["val_f1"] and summary.primary == "f1"
    result = recipe.test()
    assert result.fit == summary
    assert load_checkpoint(recipe.checkpoints.best)["meta"]["epoch"] == summary.epochs_to_convergence
    assert load_checkpoint(recipe.checkpoints.last)["loop"]["epoch"] == summary.epochs_run
    assert result.best_checkpoint == recipe.checkpoints.best and result.last_checkpoint == recipe.checkpoints.last
    assert result.transfer_report == tmp_path / "transfer_report.json" and result.transfer_report.exists()
    assert result.predictions_path is not None and result.predictions_path.exists()
    assert set(result.artifacts()) == {"predictions", "best_checkpoint", "last_checkpoint", "transfer_report"}
    assert "auc" in result.metrics


def test_the_predictions_carry_the_test_samples_subgroups(tmp_path, one_thread):
    spec = RunSpec(task="demo-regression", arch="mobilenet_v3_small", lr=1e-3, max_epochs=1, image_size=32, batch_size=32)
    recipe = FinetuneRecipe.prepare(spec, tmp_path)
    recipe.fit()
    table = pd.read_csv(recipe.test().predictions_path, dtype={"id": str})
    assert list(table.columns) == ["id", "target", "prediction", "subgroup_sex"]
    test = recipe.splits.test
    assert tuple(table["id"]) == test.ids and tuple(table["subgroup_sex"]) == test.attributes["sex"]
    assert set(table["subgroup_sex"]) == {"male", "female"}
