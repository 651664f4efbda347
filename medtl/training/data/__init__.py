"""Dataset registry: every task name maps to a loader that returns `Splits` of uint8 arrays.

A loader is `load(path: Path | None, *, task: Task, image_size: int, seed: int) -> Splits`
(`seed` is the data seed for splitting, fixed at 0 by default), living in its own
module under `medtl.training.data` and imported only when its task is used. The training-set
fraction is applied here, once, for every dataset alike (validation and test untouched).
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

from medtl.training.data.base import DataError, SampleSet, Splits, stratified_fraction
from medtl.training.spec import Task

__all__ = ["DataError", "SampleSet", "Splits", "load_splits", "LOADERS"]

# Task -> "module:function" under medtl.training.data; imported lazily.
LOADERS: dict[Task, str] = {
    Task.DEMO_BINARY: "synthetic:load_demo",
    Task.DEMO_MULTICLASS: "synthetic:load_demo",
    Task.DEMO_REGRESSION: "synthetic:load_demo",
    Task.DEMO_SEGMENTATION: "synthetic:load_demo",
    Task.RSNA_BONEAGE: "rsna_boneage:load",
    Task.GRAZPEDWRI_OSTEOPENIA: "grazpedwri:load",
    Task.COVID19: "covid19:load",
    Task.BRAIN_TUMOR_MRI: "brain_tumor_mri:load",
    Task.LUNA16: "luna16:load",
}


def _loader(task: Task):
    module_name, func = LOADERS[task].split(":")
    try:
        module = importlib.import_module(f"medtl.training.data.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"medtl.training.data.{module_name}":
            raise DataError(f"no reader for task {task.value!r} in this version of medtl") from None
        raise
    return getattr(module, func)


def load_splits(
    task: Task, dataset: str, *, image_size: int, fraction: float = 1.0, data_seed: int = 0
) -> Splits:
    """Load a task's splits from `dataset` (a folder, or `synthetic`) at `image_size`.

    `fraction` < 1 keeps a stratified, nested, deterministic subset of the training split only.
    Splits and subsets depend on `data_seed` alone, never on the run's seed, so every run of a
    grid (every arm, learning rate and seed) sees the same data.
    """
    load = _loader(task)
    path = Path(dataset) if dataset and dataset != "synthetic" else None
    if path is not None and not path.exists():
        raise DataError(f"data path {dataset} does not exist (task {task.value})")
    splits: Splits = load(path, task=task, image_size=image_size, seed=data_seed)
    if fraction < 1.0:
        keep = stratified_fraction(splits.train.targets, fraction, seed=data_seed)
        splits = dataclasses.replace(
            splits, train=splits.train.subset(keep), notes={**splits.notes, "fraction": str(fraction)}
        )
    return splits
