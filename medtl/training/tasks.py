"""Task adapters: what differs between task types — loss, target dtype, outputs, metrics, predictions table.

Every arm of every task is trained by the same loop; only the adapter changes. One adapter class per
task type, found through `ADAPTERS` (keyed by `TaskType`); pretraining's image reconstruction has its
own. Regression targets are standardised with the training split's mean and std (stored in the
checkpoint) so one learning-rate grid fits targets in months as well as in [0, 1]; predictions are
reported in the original unit. The predictions table ends with a `subgroup_<name>` column for each
subgroup attribute of the test samples (sex, projection, modality), after the task type's columns.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medtl.atomic import atomic_open
from medtl.training import metrics as M
from medtl.training import schema as S
from medtl.training.spec import PRIMARY_METRIC, TaskInfo, TaskType


@dataclass(frozen=True)
class TaskAdapter:
    """Loss, outputs, metrics and prediction rows of one task type (and, for regression, the target scaling)."""

    info: TaskInfo
    target_mean: float = 0.0
    target_std: float = 1.0

    @property
    def type(self) -> TaskType:
        return self.info.type

    @property
    def num_outputs(self) -> int:
        return self.info.num_outputs

    @property
    def primary(self) -> str:
        return PRIMARY_METRIC[self.type][0]

    @property
    def primary_higher_is_better(self) -> bool:
        return PRIMARY_METRIC[self.type][1]

    def target_tensor(self, targets: np.ndarray) -> torch.Tensor:
        # A private, writable copy (the source may be a read-only memory map).
        return torch.as_tensor(np.array(targets), dtype=torch.float32)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def postprocess(self, outputs: torch.Tensor) -> np.ndarray:
        """Model outputs → probabilities (classification, segmentation) or values (regression)."""
        return torch.sigmoid(outputs.detach().float().cpu().squeeze(1)).numpy()

    def metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        """All metrics of the task type, from original-unit targets and `postprocess` output."""
        raise NotImplementedError

    def prediction_rows(
        self, ids: tuple[str, ...], targets: np.ndarray, predictions: np.ndarray
    ) -> tuple[list[str], list[list[Any]]]:
        """Header and one row a sample for the predictions CSV."""
        raise NotImplementedError

    def write_predictions(
        self,
        path: Path,
        ids: tuple[str, ...],
        targets: np.ndarray,
        predictions: np.ndarray,
        attributes: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """One row a test sample (see `prediction_rows`), then its subgroups (`with_subgroups`), written atomically."""
        header, rows = with_subgroups(*self.prediction_rows(ids, targets, predictions), attributes)
        with atomic_open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)


def with_subgroups(
    header: list[str], rows: list[list[Any]], attributes: Mapping[str, Sequence[str]] | None
) -> tuple[list[str], list[list[Any]]]:
    """The table with a `subgroup_<name>` column a subgroup attribute appended (names sorted; empty where unknown).

    Raises:
        ValueError: an attribute's values do not match the rows one to one.
    """
    given = dict(attributes or {})
    if not given:
        return header, rows
    names = sorted(given)
    for name in names:
        if len(given[name]) != len(rows):
            raise ValueError(f"subgroup {name!r} has {len(given[name])} values for {len(rows)} rows")
    columns = [given[name] for name in names]
    return (
        [*header, *(f"{S.SUBGROUP_PREFIX}{name}" for name in names)],
        [[*row, *(values[i] for values in columns)] for i, row in enumerate(rows)],
    )


@dataclass(frozen=True)
class BinaryAdapter(TaskAdapter):
    """One logit; BCE; the positive class's probability."""

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs.float().squeeze(1), targets)

    def metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        return M.classification_metrics(targets, predictions, self.type)

    def prediction_rows(self, ids, targets, predictions):
        header = ["id", "target", "prediction", "prob_positive"]
        return header, [[i, int(t), int(p >= 0.5), float(p)] for i, t, p in zip(ids, targets, predictions)]


@dataclass(frozen=True)
class MulticlassAdapter(TaskAdapter):
    """One logit a class; cross-entropy; softmax probabilities."""

    def target_tensor(self, targets: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.array(targets), dtype=torch.long)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), targets)

    def postprocess(self, outputs: torch.Tensor) -> np.ndarray:
        return torch.softmax(outputs.detach().float().cpu(), dim=1).numpy()

    def metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        return M.classification_metrics(targets, predictions, self.type)

    def prediction_rows(self, ids, targets, predictions):
        header = ["id", "target", "prediction", *[f"prob_{c}" for c in self.info.classes]]
        return header, [[i, int(t), int(p.argmax()), *map(float, p)] for i, t, p in zip(ids, targets, predictions)]


@dataclass(frozen=True)
class RegressionAdapter(TaskAdapter):
    """One value; L1 on standardised targets (the study's primary metric is MAE); original-unit outputs."""

    def target_tensor(self, targets: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((np.array(targets) - self.target_mean) / self.target_std, dtype=torch.float32)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(outputs.float().squeeze(1), targets)

    def postprocess(self, outputs: torch.Tensor) -> np.ndarray:
        return outputs.detach().float().cpu().squeeze(1).numpy() * self.target_std + self.target_mean

    def metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        return M.regression_metrics(targets, predictions)

    def prediction_rows(self, ids, targets, predictions):
        return ["id", "target", "prediction"], [[i, float(t), float(p)] for i, t, p in zip(ids, targets, predictions)]


@dataclass(frozen=True)
class SegmentationAdapter(TaskAdapter):
    """A logit a pixel; BCE plus soft Dice; per-pixel probabilities."""

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = outputs.float().squeeze(1)
        bce = F.binary_cross_entropy_with_logits(logits, targets)
        probs = torch.sigmoid(logits)
        inter = (probs * targets).sum(dim=(1, 2))
        soft_dice = (2 * inter + 1) / (probs.sum(dim=(1, 2)) + targets.sum(dim=(1, 2)) + 1)
        return bce + (1 - soft_dice).mean()

    def metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        return M.segmentation_metrics(targets, predictions)

    def prediction_rows(self, ids, targets, predictions):
        dice = M.per_sample_dice(targets, predictions)
        header = ["id", "target_pixels", "predicted_pixels", "dice"]
        rows = [
            [i, int((t > 0).sum()), int((p >= 0.5).sum()), float(d)]
            for i, t, p, d in zip(ids, targets, predictions, dice)
        ]
        return header, rows


ADAPTERS: dict[TaskType, type[TaskAdapter]] = {
    TaskType.BINARY: BinaryAdapter,
    TaskType.MULTICLASS: MulticlassAdapter,
    TaskType.REGRESSION: RegressionAdapter,
    TaskType.SEGMENTATION: SegmentationAdapter,
}


def adapter_for(info: TaskInfo, target_mean: float = 0.0, target_std: float = 1.0) -> TaskAdapter:
    """The adapter of a task type with a known target scaling (e.g. read from a checkpoint)."""
    return ADAPTERS[info.type](info, target_mean, target_std)


def make_adapter(info: TaskInfo, train_targets: np.ndarray | None = None) -> TaskAdapter:
    """The adapter of a task, fitted to the training targets where the task type needs it."""
    if info.type is TaskType.REGRESSION and train_targets is not None and len(train_targets):
        std = float(np.std(train_targets)) or 1.0
        return adapter_for(info, float(np.mean(train_targets)), std)
    return adapter_for(info)


@dataclass(frozen=True)
class ReconstructionAdapter(TaskAdapter):
    """Image reconstruction (the vanilla U-Net's pretraining): MSE between sigmoid(output) and input.

    Targets are the uint8 images themselves, scaled to [0, 1].
    """

    @property
    def primary(self) -> str:
        return "mse"

    @property
    def primary_higher_is_better(self) -> bool:
        return False

    def target_tensor(self, targets: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.array(targets), dtype=torch.float32) / 255.0

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(torch.sigmoid(outputs.float().squeeze(1)), targets)

    def metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        mse = float(np.mean((predictions - np.asarray(targets, np.float32) / 255.0) ** 2))
        return {"mse": mse, "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12)))}

    def prediction_rows(self, ids, targets, predictions):
        errors = ((predictions - np.asarray(targets, np.float32) / 255.0) ** 2).reshape(len(ids), -1).mean(1)
        return ["id", "mse"], [[i, float(e)] for i, e in zip(ids, errors)]
