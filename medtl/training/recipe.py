"""What every training recipe shares: fit with early stopping and checkpoints, test the best one.

A recipe is prepared (data loaded, model built, seeded) and then run by the caller, staged so mlops'
runner can record what was prepared before training starts:
`Recipe.prepare(spec, workdir)` → `.params()` → `.fit(callbacks)` → `.fit_summary()` → `.test()` → a
`RecipeResult`. The recipe owns its checkpoints' paths (`checkpoints`, handed to the `Checkpointer` and
to any callback that uploads them) and the account of its fit (`FitSummary`: epochs to convergence,
best validation values, divergence); the runner logs both as given.
Fine-tuning (`finetune.py`) and pretraining (`pretrain.py`) are sibling recipes over `Recipe`;
they differ in their data, model, params, optimiser and checkpoint metadata.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
import torchvision

from medtl.training.checkpoint import Checkpointer, CheckpointPaths, load_checkpoint
from medtl.training.data import Splits
from medtl.training.factory import Network, image_size_for
from medtl.training.loaders import make_loader
from medtl.training.loop import Callback, EarlyStopping, FitState, fit, predict
from medtl.training.runtime import Runtime, world
from medtl.training.spec import PretrainSpec, RunSpec
from medtl.training.tasks import TaskAdapter

INPUT_CHANNELS = 3
TRANSFER_REPORT = "transfer_report.json"
BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"

SpecT = TypeVar("SpecT", RunSpec, PretrainSpec)


def checkpoint_paths(folder: str | Path) -> CheckpointPaths:
    """A recipe's checkpoints in `folder`: `best.pt` (best validation loss) and `last.pt` (to resume).

    The one place these names are written; a run's artifacts keep them (`checkpoints/best.pt`).
    """
    folder = Path(folder)
    return CheckpointPaths(best=folder / BEST_CHECKPOINT, last=folder / LAST_CHECKPOINT)


@dataclass(frozen=True)
class FitSummary:
    """What a fit came to, in the tracking schema's metric names (`metrics()`), as its recipe reports it.

    Attributes:
        epochs_to_convergence: the best epoch (lowest validation loss; the study's definition), 0 if none.
        epochs_run: epochs completed (a diverged epoch produced no model and is not counted).
        diverged: the training loss became non-finite (a result, not an error).
        stop_reason: why the fit ended (early stop, max epochs, divergence).
        primary: the task's primary metric (`f1`, `mae`, `dice`, ...).
        best_val_loss: the validation loss at the best epoch; NaN without one.
        best_val_primary: the primary validation metric at the best epoch; NaN without one.
    """

    epochs_to_convergence: int
    epochs_run: int
    diverged: bool
    stop_reason: str
    primary: str
    best_val_loss: float = math.nan
    best_val_primary: float = math.nan

    @classmethod
    def of(cls, state: FitState, primary: str) -> FitSummary:
        """The summary of a finished (or resumed and finished) fit's state."""
        best = next((h for h in state.history if h["epoch"] == state.best_epoch), None)
        return cls(
            epochs_to_convergence=state.best_epoch,
            epochs_run=state.epoch,
            diverged=state.diverged,
            stop_reason=state.stop_reason,
            primary=primary,
            best_val_loss=float(state.best_val_loss) if best else math.nan,
            best_val_primary=float(best[f"val_{primary}"]) if best else math.nan,
        )

    def metrics(self) -> dict[str, float]:
        """The run's end-of-fit metrics: `epochs_to_convergence`, `epochs_run`, `diverged`, `best_val_*`."""
        return {
            "epochs_to_convergence": float(self.epochs_to_convergence),
            "epochs_run": float(self.epochs_run),
            "diverged": float(self.diverged),
            "best_val_loss": self.best_val_loss,
            f"best_val_{self.primary}": self.best_val_primary,
        }


@dataclass(frozen=True)
class RecipeResult:
    """What a finished recipe hands its caller: its fit summary, test metrics and the paths of its artifacts.

    `fit` is None only when the recipe was tested without being fitted. `metrics` is empty and
    `predictions_path` None when no best checkpoint exists (nothing to test); a path is None when the
    recipe wrote no such file.
    """

    fit: FitSummary | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    predictions_path: Path | None = None
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    transfer_report: Path | None = None

    def artifacts(self) -> dict[str, Path]:
        """The artifact files that exist, by role (predictions, best/last checkpoint, transfer report)."""
        paths = {
            "predictions": self.predictions_path,
            "best_checkpoint": self.best_checkpoint,
            "last_checkpoint": self.last_checkpoint,
            "transfer_report": self.transfer_report,
        }
        return {role: path for role, path in paths.items() if path is not None}


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


class Recipe(Generic[SpecT]):
    """One run of a recipe, prepared and then run; imports no tracking library.

    Subclasses provide `prepare`, `params`, `optimizer`, `weight_decay` and may extend
    `checkpoint_meta` and `train_sample_weights`.
    """

    def __init__(
        self, spec: SpecT, workdir: Path, splits: Splits, model: Network, adapter: TaskAdapter, runtime: Runtime
    ) -> None:
        self.spec = spec
        self.workdir = Path(workdir)
        self.splits = splits
        self.model = model
        self.adapter = adapter
        self.runtime = runtime
        self.image_size = image_size_for(spec)
        self.state: FitState | None = None

    @property
    def checkpoints(self) -> CheckpointPaths:
        """Where `fit` writes `best.pt` and `last.pt` (in `workdir/checkpoints`), and where a resume looks."""
        return checkpoint_paths(self.workdir / "checkpoints")

    @property
    def transfer_report_path(self) -> Path:
        return self.workdir / TRANSFER_REPORT

    @property
    def optimizer(self) -> str:
        raise NotImplementedError

    @property
    def weight_decay(self) -> float:
        raise NotImplementedError

    def params(self) -> dict[str, str]:
        """Everything that shaped the run beyond the spec, as MLflow params."""
        raise NotImplementedError

    def write_transfer_report(self) -> None:
        """Save the model's transfer report (what was loaded from where) beside the checkpoints."""
        report = getattr(self.model, "transfer_report", None)
        if report is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.transfer_report_path.write_text(json.dumps(report, indent=2))

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
            "versions": {
                "torch": str(torch.__version__),
                "torchvision": str(torchvision.__version__),
                "python": platform.python_version(),
            },
        }

    def train_sample_weights(self) -> np.ndarray | None:
        """Per-sample drawing weights for the training loader; None draws each sample once an epoch."""
        return None

    def fit(self, callbacks: Sequence[Callback] = (), resume: dict[str, Any] | None = None) -> FitState:
        """Train with early stopping and checkpointing, plus the caller's callbacks.

        `resume` is a `last.pt` payload to continue from. A callback's `on_checkpoint_saved` runs
        (off the training thread) after each epoch's checkpoint is on disk — see `Checkpointer`.
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
        # In a torchrun job only rank 0 writes checkpoints; every rank stops early alike.
        saving = [Checkpointer(self.checkpoints, self.checkpoint_meta())] if world()[0] == 0 else []
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

    def fit_summary(self) -> FitSummary:
        """The account of the fit (`fit` done): epochs to convergence, best validation values, divergence.

        Raises:
            RuntimeError: `fit` has not run.
        """
        if self.state is None:
            raise RuntimeError("fit_summary() needs a finished fit(): call fit() first")
        return FitSummary.of(self.state, self.adapter.primary)

    def test(self) -> RecipeResult:
        """The fit's summary, test metrics and per-sample predictions of the best checkpoint, every artifact's path.

        The predictions table carries the test samples' subgroup attributes (`subgroup_<name>` columns).
        """
        best = self.checkpoints.best
        untested = RecipeResult(
            fit=self.fit_summary() if self.state is not None else None,
            best_checkpoint=_existing(best),
            last_checkpoint=_existing(self.checkpoints.last),
            transfer_report=_existing(self.transfer_report_path),
        )
        if not best.exists():
            return untested
        self.model.load_state_dict(load_checkpoint(best)["model"])
        loader = make_loader(self.splits.test, self.adapter, self.spec.batch_size, self.runtime, shuffle=False)
        _, predictions = predict(self.model, self.adapter, loader, self.runtime)
        targets = np.asarray(self.splits.test.targets)
        metrics = self.adapter.metrics(targets, predictions)
        path = self.workdir / "predictions" / "test.csv"
        test = self.splits.test
        self.adapter.write_predictions(path, test.ids, targets, predictions, test.attributes)
        return dataclasses.replace(untested, metrics=metrics, predictions_path=path)
