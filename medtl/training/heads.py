"""Task heads: what turns backbone features into a task's outputs (the only task-specific part).

Classifier backbones give one feature vector per image: binary takes one logit, multiclass one
logit per class, regression one value, optionally from extra tabular inputs as in the bone-age
task (extras → Linear(E→128) → ReLU, concatenated with the image features, then an MLP).
U-Nets give a list of feature maps; their head is the decoder (`medtl.training.unet`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from medtl.training.spec import SpecError, TaskInfo, TaskType

EXTRA_WIDTH = 128
HIDDEN_WIDTH = 128


class LinearHead(nn.Linear):
    """One Linear layer: binary (1 logit), multiclass (C logits) or regression (1 value)."""


class ExtrasRegressionHead(nn.Module):
    """Regression from image features plus extra inputs (e.g. sex for bone age)."""

    def __init__(self, width: int, num_extras: int, outputs: int = 1) -> None:
        super().__init__()
        self.num_extras = num_extras
        self.extras = nn.Sequential(nn.Linear(num_extras, EXTRA_WIDTH), nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(
            nn.Linear(width + EXTRA_WIDTH, HIDDEN_WIDTH), nn.ReLU(inplace=True), nn.Linear(HIDDEN_WIDTH, outputs)
        )

    def forward(self, features: torch.Tensor, extras: torch.Tensor | None = None) -> torch.Tensor:
        if extras is None:
            raise ValueError(f"this head needs {self.num_extras} extra input(s) per image; call model(image, extras)")
        extras = extras.to(features.dtype).reshape(features.shape[0], -1)
        return self.mlp(torch.cat([features, self.extras(extras)], dim=1))


def build_head(info: TaskInfo, width: int) -> nn.Module:
    """The head of a classifier backbone of feature width `width` for the task `info`."""
    if info.type is TaskType.SEGMENTATION:
        raise SpecError("segmentation heads are U-Net decoders; use a U-Net architecture")
    if info.extra_inputs:
        if info.type is not TaskType.REGRESSION:
            raise SpecError(f"extra inputs are supported for regression only, not {info.type.value}")
        return ExtrasRegressionHead(width, len(info.extra_inputs), info.num_outputs)
    return LinearHead(width, info.num_outputs)
