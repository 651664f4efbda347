"""The one place where architecture × initialisation × task meet: RunSpec → ready model."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from medtl.training.archs import ArchSpec, arch_for_task, build_body, get_arch
from medtl.training.heads import build_head
from medtl.training.init import initialise
from medtl.training.spec import Normalization, PretrainSpec, RunSpec, SpecError, TaskInfo, TaskType
from medtl.training.unet import build_unet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_CHANNELS = 3


class Preprocess(nn.Module):
    """Grayscale `(N, 1, H, W)` floats in [0, 1] → 3 channels, normalised as the arm requires.

    Part of the model so a checkpoint or a promoted model carries its own normalisation. Its
    buffers are not persistent: weights transfer between arms never trips over them.
    """

    def __init__(self, normalization: Normalization, channels: int = INPUT_CHANNELS) -> None:
        super().__init__()
        self.normalization = normalization
        self.channels = channels
        if normalization is Normalization.IMAGENET:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean, std = (0.0,) * channels, (1.0,) * channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)
        return (x - self.mean) / self.std


class Network(nn.Module):
    """preprocess → body (features) → head. The head alone is task-specific.

    Classifier bodies return one feature vector per image; U-Net bodies (encoders) return a list
    of feature maps, and their head (the decoder) also receives the input size.
    """

    def __init__(self, prep: Preprocess, body: nn.Module, head: nn.Module, *, segmentation: bool = False) -> None:
        super().__init__()
        self.prep = prep
        self.body = body
        self.head = head
        self.segmentation = segmentation
        self.transfer_report: dict | None = None

    def forward(self, x: torch.Tensor, extras: torch.Tensor | None = None) -> torch.Tensor:
        features = self.body(self.prep(x))
        if self.segmentation:
            return self.head(features, x.shape[-2:])
        if extras is None:
            return self.head(features)
        return self.head(features, extras)


def image_size_for(spec: RunSpec | PretrainSpec) -> int:
    """The spec's image size, or the architecture's default input size when it says 0."""
    arch = get_arch(spec.arch)
    size = spec.image_size or arch.input_size
    if size < arch.min_size:
        raise SpecError(f"{spec.arch.value} needs image-size >= {arch.min_size}, got {size}")
    return size


def build_network(arch: ArchSpec, info: TaskInfo, normalization: Normalization = Normalization.NONE) -> Network:
    """A randomly initialised network of `arch` for the task `info` (no weights loaded)."""
    arch = arch_for_task(arch.name, info.type)
    prep = Preprocess(normalization)
    if info.type is TaskType.SEGMENTATION:
        encoder, decoder = build_unet(arch, INPUT_CHANNELS, info.num_outputs)
        return Network(prep, encoder, decoder, segmentation=True)
    body, width = build_body(arch)
    return Network(prep, body, build_head(info, width))


def build_model(spec: RunSpec, info: TaskInfo, *, init_path: Path | None = None) -> Network:
    """A network for `spec` on a task described by `info`, initialised as `spec.init` says.

    Random init draws from torch's global RNG (seed it first). `init_path`, a local weights file
    resolved by the caller, overrides `spec.init_source`. The transfer report (what was loaded
    from where) is attached as `network.transfer_report`.

    Raises:
        SpecError: the architecture is unknown or cannot serve the task type, or the init does
            not apply to it.
        WeightTransferError, WeightsUnavailableError, CheckpointError: weights that cannot be used.
    """
    arch = arch_for_task(spec.arch, info.type)
    network = build_network(arch, info, spec.resolved_normalization)
    report = initialise(network.body, network.head, spec, arch, init_path=init_path)
    report["normalization"] = spec.resolved_normalization.value
    report["task_type"] = info.type.value
    network.transfer_report = report
    return network
