"""Grad-CAM heatmaps of a medtl `Network` (library `grad-cam`), overlays, and metadata-free PNGs.

Pure: no MLflow. The target layer comes from the architecture registry (`ArchSpec.gradcam_layer`,
a module inside `network.body`). What is explained, for every arm alike:
- binary: the single logit (evidence for the positive class), whatever the prediction;
- multiclass: the true class (default) or the predicted class;
- regression: the predicted value (extra inputs such as sex bound to each image).
Heatmaps come back at the image's resolution, each scaled to [0, 1] (an all-zero map stays zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from medtl.atomic import atomic_open
from medtl.training.archs import ArchSpec
from medtl.training.spec import SpecError, TaskInfo, TaskType

LIBRARY = "grad-cam==1.5.7"
IMAGE_WEIGHT = 0.6  # share of the grayscale image in an overlay; the heatmap takes the rest


class Explain(StrEnum):
    """Which multiclass output a heatmap explains (binary: the logit; regression: the value)."""

    TRUE = "true"
    PREDICTED = "predicted"


@dataclass(frozen=True)
class Heatmaps:
    """`maps` float32 (N, H, W) in [0, 1]; per image the class explained (-1: the single output),
    the model's output (probability of that class, or the regression value) and a description."""

    maps: np.ndarray
    explained: np.ndarray
    outputs: np.ndarray
    target: str
    feature_map: tuple[int, int]


def target_layer(network: nn.Module, arch: ArchSpec) -> nn.Module:
    """The module Grad-CAM hooks: `network.body.<arch.gradcam_layer>`; SpecError for U-Nets."""
    if not arch.gradcam_layer:
        raise SpecError(
            f"Grad-CAM serves classifier architectures; {arch.name.value} has no target layer "
            "(valid: resnet18, resnet34, resnet50, vgg16, efficientnet_b3, efficientnet_b4, inception_v3, "
            "densenet121, mobilenet_v3_small, mobilenet_v3_large)"
        )
    body = getattr(network, "body", None)
    if body is None:
        raise SpecError("Grad-CAM expects a medtl Network (prep, body, head)")
    return body.get_submodule(arch.gradcam_layer)


class _BoundExtras(nn.Module):
    """`network(x, extras)` as a one-argument module, for heads that take extra inputs."""

    def __init__(self, network: nn.Module, extras: torch.Tensor) -> None:
        super().__init__()
        self.network = network
        self.extras = extras

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x, self.extras[: x.shape[0]])


def gradcam_heatmaps(
    network: nn.Module,
    arch: ArchSpec,
    info: TaskInfo,
    images: np.ndarray,
    *,
    targets: np.ndarray | None = None,
    extras: np.ndarray | None = None,
    explain: Explain | str = Explain.TRUE,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> Heatmaps:
    """Grad-CAM heatmaps of `network` for uint8 grayscale `images` (N, H, W).

    Args:
        network: a medtl `Network` taking (N, 1, H, W) floats in [0, 1].
        arch: its registry entry (names the target layer).
        info: the task (type decides what is explained).
        images: uint8 (N, H, W) at the network's input size.
        targets: true class ids, needed for multiclass with `explain="true"`.
        extras: (N, E) extra inputs for heads that take them (bone age: sex).
        explain: multiclass only: the `true` or the `predicted` class.
        batch_size: images per forward/backward pass.
        device: where to compute.

    Returns:
        Heatmaps with `maps` float32 (N, H, W) in [0, 1].
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import (
        BinaryClassifierOutputTarget,
        ClassifierOutputTarget,
        RawScoresOutputTarget,
    )

    explain = Explain(explain)
    if info.type is TaskType.SEGMENTATION:
        raise SpecError("Grad-CAM serves binary, multiclass and regression tasks, not segmentation")
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
    if info.type is TaskType.MULTICLASS and explain is Explain.TRUE and targets is None:
        raise ValueError("explaining the true class needs `targets`")
    if info.extra_inputs and extras is None:
        raise ValueError(f"this task's model needs extra inputs {', '.join(info.extra_inputs)}")
    device = torch.device(device)
    network = network.to(device).eval()
    layer = target_layer(network, arch)
    maps, explained, outputs = [], [], []
    feature_map = (0, 0)
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(images[start : start + batch_size]).float().div(255.0)[:, None].to(device)
        model: nn.Module = network
        if info.extra_inputs:
            bound = torch.as_tensor(np.asarray(extras)[start : start + batch_size], dtype=torch.float32)
            model = _BoundExtras(network, bound.reshape(len(chunk), -1).to(device))
        with torch.no_grad():
            logits = model(chunk).float()
        if info.type is TaskType.BINARY:
            cls = np.full(len(chunk), -1)
            score = torch.sigmoid(logits.reshape(-1)).cpu().numpy()
            cam_targets = [BinaryClassifierOutputTarget(1) for _ in cls]
        elif info.type is TaskType.MULTICLASS:
            probs = torch.softmax(logits, dim=1).cpu().numpy()
            if explain is Explain.TRUE:
                cls = np.asarray(targets)[start : start + batch_size].astype(np.int64)
            else:
                cls = probs.argmax(axis=1)
            score = probs[np.arange(len(cls)), cls]
            cam_targets = [ClassifierOutputTarget(int(c)) for c in cls]
        else:
            cls = np.full(len(chunk), -1)
            score = logits.reshape(-1).cpu().numpy()
            cam_targets = [RawScoresOutputTarget() for _ in cls]
        cam = GradCAM(model=model, target_layers=[layer])
        # The library keeps the layer's output itself on CPU (a copy on GPU); DenseNet then applies
        # an in-place ReLU to it. Handing the rest of the network a clone keeps the recorded
        # activations the layer's own output on every device.
        detach_inplace = layer.register_forward_hook(lambda _module, _inputs, output: output.clone())
        try:
            batch = cam(input_tensor=chunk, targets=cam_targets)
            activations = cam.activations_and_grads.activations
            if activations:
                feature_map = tuple(int(s) for s in activations[0].shape[-2:])  # type: ignore[assignment]
        finally:
            detach_inplace.remove()
            cam.activations_and_grads.release()
        maps.append(np.clip(np.nan_to_num(batch.astype(np.float32)), 0.0, 1.0))
        explained.append(cls)
        outputs.append(score.astype(np.float32))
    return Heatmaps(
        maps=np.concatenate(maps) if maps else np.zeros((0, *images.shape[1:]), np.float32),
        explained=np.concatenate(explained) if explained else np.zeros(0, np.int64),
        outputs=np.concatenate(outputs) if outputs else np.zeros(0, np.float32),
        target=describe_target(info, explain),
        feature_map=feature_map,
    )


def describe_target(info: TaskInfo, explain: Explain | str = Explain.TRUE) -> str:
    """In words, what the heatmaps of a task explain (logged with them)."""
    if info.type is TaskType.BINARY:
        return "binary logit (positive class)"
    if info.type is TaskType.MULTICLASS:
        return f"{Explain(explain).value} class logit"
    return "regression output"


def overlay(image: np.ndarray, heatmap: np.ndarray, image_weight: float = IMAGE_WEIGHT) -> np.ndarray:
    """The heatmap in the jet colormap blended onto the grayscale uint8 `image`: uint8 (H, W, 3)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if image.shape != heatmap.shape:
        raise ValueError(f"image {image.shape} and heatmap {heatmap.shape} differ in shape")
    rgb = np.repeat((image.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    return show_cam_on_image(rgb, heatmap.astype(np.float32), use_rgb=True, image_weight=image_weight)


def heatmap_to_uint8(heatmap: np.ndarray) -> np.ndarray:
    """A [0, 1] heatmap as an 8-bit grayscale image."""
    return np.round(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)


def sample_indices(total: int, n: int, seed: int) -> np.ndarray:
    """`min(n, total)` distinct indices of `range(total)`, drawn with `seed`, in ascending order."""
    if n < 1:
        raise SpecError(f"n must be at least 1, got {n}")
    if total < 1:
        raise SpecError("the test split is empty: nothing to explain")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=min(n, total), replace=False))


def save_png(path: Path, array: np.ndarray) -> None:
    """Write uint8 (H, W) or (H, W, 3) as a PNG with no text chunks, atomically (temp + rename)."""
    from PIL import Image

    with atomic_open(path) as fh:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(fh, format="PNG")


def read_png(path: Path) -> np.ndarray:
    """A PNG's pixels as a uint8 array (metadata dropped)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB" if img.mode not in ("L", "RGB") else img.mode)).copy()
