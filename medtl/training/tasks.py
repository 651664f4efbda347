"""Task adapters: what differs between task types — loss, target dtype, outputs, metrics, monitor.

Every arm of every task is trained by the same loop; only the adapter changes. Regression targets are
standardised with the training split's mean and std (stored in the checkpoint) so one learning-rate grid
fits targets in months as well as in [0, 1]; predictions are reported in the original unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medtl.training import metrics as M
from medtl.training.spec import PRIMARY_METRIC, TaskInfo, TaskType


@dataclass(frozen=True)
class TaskAdapter:
    """Loss, outputs and metrics of one task type (and, for regression, the target scaling)."""

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
        targets = np.array(targets)  # a private, writable copy (the source may be a read-only memory map)
        if self.type is TaskType.MULTICLASS:
            return torch.as_tensor(targets, dtype=torch.long)
        if self.type is TaskType.REGRESSION:
            return torch.as_tensor((targets - self.target_mean) / self.target_std, dtype=torch.float32)
        return torch.as_tensor(targets, dtype=torch.float32)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs = outputs.float()
        if self.type is TaskType.MULTICLASS:
            return F.cross_entropy(outputs, targets)
        if self.type is TaskType.BINARY:
            return F.binary_cross_entropy_with_logits(outputs.squeeze(1), targets)
        if self.type is TaskType.REGRESSION:
            # L1 on standardised targets: the study's primary metric is MAE.
            return F.l1_loss(outputs.squeeze(1), targets)
        logits = outputs.squeeze(1)
        bce = F.binary_cross_entropy_with_logits(logits, targets)
        probs = torch.sigmoid(logits)
        inter = (probs * targets).sum(dim=(1, 2))
        soft_dice = (2 * inter + 1) / (probs.sum(dim=(1, 2)) + targets.sum(dim=(1, 2)) + 1)
        return bce + (1 - soft_dice).mean()

    def postprocess(self, outputs: torch.Tensor) -> np.ndarray:
        """Model outputs → probabilities (classification, segmentation) or values (regression)."""
        outputs = outputs.detach().float().cpu()
        if self.type is TaskType.MULTICLASS:
            return torch.softmax(outputs, dim=1).numpy()
        if self.type is TaskType.REGRESSION:
            return outputs.squeeze(1).numpy() * self.target_std + self.target_mean
        return torch.sigmoid(outputs.squeeze(1)).numpy()

    def metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        """All metrics of the task type, from original-unit targets and `postprocess` output."""
        if self.type in (TaskType.BINARY, TaskType.MULTICLASS):
            return M.classification_metrics(targets, predictions, self.type)
        if self.type is TaskType.REGRESSION:
            return M.regression_metrics(targets, predictions)
        return M.segmentation_metrics(targets, predictions)


def make_adapter(info: TaskInfo, train_targets: np.ndarray | None = None) -> TaskAdapter:
    """The adapter of a task, fitted to the training targets where the task type needs it."""
    if info.type is TaskType.REGRESSION and train_targets is not None and len(train_targets):
        std = float(np.std(train_targets)) or 1.0
        return TaskAdapter(info, float(np.mean(train_targets)), std)
    return TaskAdapter(info)


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

    def postprocess(self, outputs: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(outputs.detach().float().cpu().squeeze(1)).numpy()

    def metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        mse = float(np.mean((predictions - np.asarray(targets, np.float32) / 255.0) ** 2))
        return {"mse": mse, "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12)))}
