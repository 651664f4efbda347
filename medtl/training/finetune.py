"""The fine-tuning recipe: RunSpec → data, model, fit, test of the best checkpoint, predictions.

Staged so the caller (mlops' runner) can record what was prepared before training starts:
`FinetuneJob.prepare(spec, workdir)` → `.params()` → `.fit(callbacks)` → `.test()`.
"""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from medtl.training.checkpoint import Checkpointer, load_checkpoint
from medtl.training.data import Splits, load_splits
from medtl.training.factory import Network, build_model, image_size_for
from medtl.training.loop import (
    Callback,
    EarlyStopping,
    FitState,
    Runtime,
    fit,
    make_loader,
    predict,
    resolve_runtime,
    seed_everything,
    world,
)
from medtl.training.metrics import per_sample_dice
from medtl.training.spec import TASKS, Optimizer, RunSpec, TaskType
from medtl.training.tasks import TaskAdapter, make_adapter

WEIGHT_DECAY = 1e-3  # AdamW's; the Adam of regression and segmentation has none (PROTOCOL.md)
INPUT_CHANNELS = 3


@dataclass
class TestResult:
    metrics: dict[str, float]
    predictions_path: Path


class FinetuneJob:
    """One grid point's training, prepared and then run; imports no tracking library."""

    def __init__(
        self, spec: RunSpec, workdir: Path, splits: Splits, model: Network, adapter: TaskAdapter, runtime: Runtime
    ) -> None:
        self.spec = spec
        self.workdir = Path(workdir)
        self.splits = splits
        self.model = model
        self.adapter = adapter
        self.runtime = runtime
        self.image_size = image_size_for(spec)
        self.state: FitState | None = None

    @classmethod
    def prepare(
        cls,
        spec: RunSpec,
        workdir: Path,
        *,
        device: str = "auto",
        num_workers: int | None = None,
        init_path: Path | None = None,
    ) -> FinetuneJob:
        """Load the data and build the model (seeded), ready to fit.

        `init_path` is a local weights file already resolved by the caller (e.g. from a model
        URI in the registry); it overrides `spec.init_source` for the `domain` arm.
        """
        seed_everything(spec.seed)
        info = TASKS[spec.task]
        image_size = image_size_for(spec)
        splits = load_splits(spec.task, spec.dataset, image_size=image_size, fraction=spec.data_fraction)
        adapter = make_adapter(info, np.asarray(splits.train.targets))
        model = build_model(spec, info, init_path=init_path)
        job = cls(spec, workdir, splits, model, adapter, resolve_runtime(device, num_workers))
        report = getattr(model, "transfer_report", None)
        if report is not None:
            job.workdir.mkdir(parents=True, exist_ok=True)
            (job.workdir / "transfer_report.json").write_text(json.dumps(report, indent=2))
        return job

    @property
    def checkpoint_dir(self) -> Path:
        return self.workdir / "checkpoints"

    def params(self) -> dict[str, str]:
        """Everything that shaped the run beyond the spec: optimiser, inputs, runtime, data."""
        return {
            **self.spec.to_params(),
            "weight_decay": str(self.weight_decay),
            "resolved_normalization": self.spec.resolved_normalization.value,  # `normalization` after auto
            "input_channels": str(INPUT_CHANNELS),
            "resolved_image_size": str(self.image_size),
            "group": self.spec.group,
            "n_train": str(len(self.splits.train)),
            "n_val": str(len(self.splits.val)),
            "n_test": str(len(self.splits.test)),
            "data_digest": self.splits.digest,
            "num_parameters": str(sum(p.numel() for p in self.model.parameters())),
            **self.runtime.to_params(),
        }

    @property
    def optimizer(self) -> str:
        """The spec's optimizer; pretraining (a PretrainSpec has no such field) uses AdamW, as the paper did."""
        return Optimizer(getattr(self.spec, "optimizer", Optimizer.ADAMW)).value

    @property
    def weight_decay(self) -> float:
        """AdamW's decoupled weight decay; 0 for Adam, which the paper ran without it."""
        return WEIGHT_DECAY if self.optimizer == Optimizer.ADAMW.value else 0.0

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_params(),
            "run_key": self.spec.run_key,
            "task_type": self.adapter.type.value,
            "classes": list(self.adapter.info.classes),
            "extra_inputs": list(self.adapter.info.extra_inputs),
            "input_channels": INPUT_CHANNELS,
            "image_size": self.image_size,
            "normalisation": self.spec.resolved_normalization.value,
            "target_mean": self.adapter.target_mean,
            "target_std": self.adapter.target_std,
            "data_digest": self.splits.digest,
            "versions": {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__), "python": platform.python_version()},
        }

    def fit(
        self,
        callbacks: list[Callback] | tuple[Callback, ...] = (),
        resume: dict[str, Any] | None = None,
        on_saved: Callable[[int, list[dict[str, float]], bool], None] | None = None,
    ) -> FitState:
        """Train with early stopping and checkpointing, plus the caller's callbacks.

        `resume` is a `last.pt` payload to continue from; `on_saved` is called (off the training
        thread) after each epoch's checkpoint is on disk — see `Checkpointer`.
        """
        spec = self.spec
        train = make_loader(
            self.splits.train,
            self.adapter,
            spec.batch_size,
            self.runtime,
            shuffle=True,
            seed=spec.seed,
            sample_weights=self.train_sample_weights(),
        )
        val = make_loader(self.splits.val, self.adapter, spec.batch_size, self.runtime, shuffle=False)
        self.checkpointer = Checkpointer(self.checkpoint_dir, self.checkpoint_meta(), on_saved)
        # In a torchrun job only rank 0 writes checkpoints; every rank stops early alike.
        saving = [self.checkpointer] if world()[0] == 0 else []
        self.state = fit(
            self.model,
            self.adapter,
            train,
            val,
            np.asarray(self.splits.val.targets),
            lr=spec.lr,
            max_epochs=spec.max_epochs,
            runtime=self.runtime,
            callbacks=[*saving, EarlyStopping(spec.patience), *callbacks],
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            resume=resume,
        )
        return self.state

    def train_sample_weights(self) -> np.ndarray | None:
        """Per-sample drawing weights for the training loader; None draws each sample once an epoch."""
        return None

    def test(self) -> TestResult | None:
        """Test metrics and per-sample predictions of the best checkpoint (None if none exists)."""
        best = self.checkpointer.best_path
        if not best.exists():
            return None
        self.model.load_state_dict(load_checkpoint(best)["model"])
        loader = make_loader(self.splits.test, self.adapter, self.spec.batch_size, self.runtime, shuffle=False)
        _, predictions = predict(self.model, self.adapter, loader, self.runtime)
        targets = np.asarray(self.splits.test.targets)
        metrics = self.adapter.metrics(targets, predictions)
        path = self.workdir / "predictions" / "test.csv"
        write_predictions(path, self.splits.test.ids, targets, predictions, self.adapter)
        return TestResult(metrics, path)


def write_predictions(
    path: Path, ids: tuple[str, ...], targets: np.ndarray, predictions: np.ndarray, adapter: TaskAdapter
) -> None:
    """One row a test sample: id, target, prediction, and probabilities where they exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = adapter.type
    if adapter.primary == "mse":  # reconstruction: targets are the images
        header = ["id", "mse"]
        errors = ((predictions - np.asarray(targets, np.float32) / 255.0) ** 2).reshape(len(ids), -1).mean(1)
        rows = [[i, float(e)] for i, e in zip(ids, errors)]
    elif kind is TaskType.MULTICLASS:
        header = ["id", "target", "prediction", *[f"prob_{c}" for c in adapter.info.classes]]
        rows = [[i, int(t), int(p.argmax()), *map(float, p)] for i, t, p in zip(ids, targets, predictions)]
    elif kind is TaskType.BINARY:
        header = ["id", "target", "prediction", "prob_positive"]
        rows = [[i, int(t), int(p >= 0.5), float(p)] for i, t, p in zip(ids, targets, predictions)]
    elif kind is TaskType.REGRESSION:
        header = ["id", "target", "prediction"]
        rows = [[i, float(t), float(p)] for i, t, p in zip(ids, targets, predictions)]
    else:
        dice = per_sample_dice(targets, predictions)
        header = ["id", "target_pixels", "predicted_pixels", "dice"]
        rows = [
            [i, int((t > 0).sum()), int((p >= 0.5).sum()), float(d)]
            for i, t, p, d in zip(ids, targets, predictions, dice)
        ]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)
