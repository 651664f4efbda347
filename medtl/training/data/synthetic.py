"""Synthetic demo tasks: shapes, textures and intensity patterns on noisy grayscale backgrounds.

Deterministic from a data seed (independent of the run seed, so every run of a grid sees the same
data), learnable but not trivial: low contrast, random position, size and intensity, a smooth
illumination gradient, speckle noise, and distractors that share the positive class's features.
demo-regression has a sex input (`male`, shifting the target), also its subgroup attribute `sex`.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from medtl.training.data.base import SampleSet, Splits
from medtl.training.data.subgroups import sex_label
from medtl.training.spec import Task

DEFAULT_SIZES = {"train": 256, "val": 96, "test": 128}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy / size, xx / size


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = np.cos(angle) * xx + np.sin(angle) * yy
    base = rng.uniform(0.25, 0.45) + rng.uniform(0.0, 0.15) * gradient
    # Low-frequency texture: a coarse random field upsampled.
    coarse = rng.normal(0, 0.05, (size // 8 + 1, size // 8 + 1)).astype(np.float32)
    texture = np.kron(coarse, np.ones((8, 8), np.float32))[:size, :size]
    return base + texture


def _shape_mask(kind: str, rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    yy, xx = _grid(size)
    cy, cx = rng.uniform(0.25, 0.75, 2)
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    if kind == "disc":
        return (dist < radius).astype(np.float32)
    if kind == "square":
        return ((np.abs(yy - cy) < radius * 0.9) & (np.abs(xx - cx) < radius * 0.9)).astype(np.float32)
    if kind == "ring":
        return ((dist < radius) & (dist > radius * 0.55)).astype(np.float32)
    if kind == "stripes":
        period = rng.uniform(0.1, 0.14)
        inside = dist < radius * 1.1
        return (inside & (np.sin(2 * np.pi * xx / period) > 0)).astype(np.float32)
    raise ValueError(kind)


def _finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    image = image + rng.normal(0, 0.08, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _binary_sample(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    image = _background(rng, size)
    # Distractor in every image: a dim ring, so "any structure" does not give the answer away.
    image += rng.uniform(0.08, 0.15) * _shape_mask("ring", rng, size, rng.uniform(0.08, 0.16))
    if label:
        radius = rng.uniform(0.07, 0.14)
        image += rng.uniform(0.2, 0.35) * _shape_mask("disc", rng, size, radius)
    return _finish(rng, image)


def _multiclass_sample(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    kinds = ("disc", "square", "ring", "stripes")
    image = _background(rng, size)
    image += rng.uniform(0.3, 0.5) * _shape_mask(kinds[label], rng, size, rng.uniform(0.15, 0.24))
    return _finish(rng, image)


def _regression_sample(rng: np.random.Generator, size: int, male: int) -> tuple[np.ndarray, float]:
    radius = rng.uniform(0.08, 0.22)
    image = _background(rng, size)
    image += rng.uniform(0.2, 0.3) * _shape_mask("disc", rng, size, radius)
    # Target in "months": driven by the disc's size, shifted by sex, which the image does not show.
    target = 40 + 600 * radius + (18.0 if male else -18.0)
    return _finish(rng, image), float(target)


def _segmentation_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    image = _background(rng, size)
    mask = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(1, 3))):
        mask = np.maximum(mask, _shape_mask("disc", rng, size, rng.uniform(0.06, 0.14)))
    image += rng.uniform(0.15, 0.3) * mask
    return _finish(rng, image), mask.astype(np.uint8)


def _make_split(task: Task, n: int, size: int, rng: np.random.Generator, prefix: str) -> SampleSet:
    images = np.empty((n, size, size), np.uint8)
    extras = None
    attributes = None
    ids = tuple(f"{prefix}-{i:05d}" for i in range(n))
    if task is Task.DEMO_BINARY:
        targets = np.arange(n, dtype=np.int64) % 2
        for i in range(n):
            images[i] = _binary_sample(rng, size, int(targets[i]))
    elif task is Task.DEMO_MULTICLASS:
        targets = np.arange(n, dtype=np.int64) % 4
        for i in range(n):
            images[i] = _multiclass_sample(rng, size, int(targets[i]))
    elif task is Task.DEMO_REGRESSION:
        targets = np.empty(n, np.float32)
        extras = (np.arange(n) % 2).astype(np.float32)[:, None]
        attributes = {"sex": tuple(sex_label(float(m)) for m in extras[:, 0])}
        for i in range(n):
            images[i], targets[i] = _regression_sample(rng, size, int(extras[i, 0]))
    elif task is Task.DEMO_SEGMENTATION:
        targets = np.empty((n, size, size), np.uint8)
        for i in range(n):
            images[i], targets[i] = _segmentation_sample(rng, size)
    else:
        raise ValueError(f"{task.value} is not a synthetic task")
    return SampleSet(images=images, targets=targets, ids=ids, extras=extras, attributes=attributes)


def load_synthetic(
    task: Task, image_size: int = 64, seed: int = 0, sizes: dict[str, int] | None = None
) -> Splits:
    """Train/val/test splits of a demo task, identical for the same (task, size, seed, sizes).

    Drawn once per process and recipe: a sweep's grid points of one task share the arrays, so callers
    must not write into them (the loaders copy each batch into tensors).
    """
    return _cached(task, image_size, seed, tuple(sorted({**DEFAULT_SIZES, **(sizes or {})}.items())))


@functools.lru_cache(maxsize=8)
def _cached(task: Task, image_size: int, seed: int, size_items: tuple[tuple[str, int], ...]) -> Splits:
    sizes = dict(size_items)
    parts = {}
    for offset, name in enumerate(("train", "val", "test")):
        rng = np.random.default_rng([seed, offset, list(Task).index(task)])
        parts[name] = _make_split(task, sizes[name], image_size, rng, name)
    recipe = f"{task.value}:{image_size}:{seed}:{sorted(sizes.items())}"
    return Splits(
        **parts,
        source=f"synthetic:{task.value}",
        source_digest=hashlib.sha256(recipe.encode()).hexdigest()[:16],
        extra_names=("male",) if task is Task.DEMO_REGRESSION else (),
    )


def load_demo(path: object, *, task: Task, image_size: int, seed: int = 0) -> Splits:
    """Registry entry point: the demo tasks need no folder."""
    return load_synthetic(task, image_size=image_size, seed=seed)
