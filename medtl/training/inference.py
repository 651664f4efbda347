"""Inference with a medtl checkpoint: rebuild the network it describes, read images, predict.

The checkpoint's metadata (spec, classes, extra inputs, image size, normalisation, target scaling)
is all that is needed; weights are loaded with `weights_only=True`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtl.errors import UserError
from medtl.training.archs import arch_for_task
from medtl.training.checkpoint import CheckpointError, load_checkpoint
from medtl.training.data.base import DataError
from medtl.training.data.generic import fit, read_gray
from medtl.training.factory import Network, build_network
from medtl.training.spec import TASKS, Normalization, RunSpec, TaskType
from medtl.training.tasks import TaskAdapter, adapter_for, make_adapter


@dataclass
class Predictor:
    network: Network
    adapter: TaskAdapter
    image_size: int
    meta: dict[str, Any]

    @property
    def extra_inputs(self) -> list[str]:
        return list(self.meta.get("extra_inputs", []))


def load_predictor(path: str | Path) -> Predictor:
    """The fine-tuned network in a medtl `best.pt`, ready for `predict_images`."""
    payload = load_checkpoint(path)
    meta = payload.get("meta") or {}
    if "spec" not in meta or "model" not in payload:
        raise CheckpointError(f"{path} is not a medtl fine-tuning checkpoint (no spec in its metadata)")
    spec = RunSpec.from_params(meta["spec"])
    info = TASKS[spec.task]
    adapter = make_adapter(info)
    if info.type is TaskType.REGRESSION:
        adapter = adapter_for(info, float(meta.get("target_mean", 0.0)), float(meta.get("target_std", 1.0)))
    network = build_network(arch_for_task(spec.arch, info.type), info, Normalization(meta.get("normalisation", "none")))
    network.load_state_dict(payload["model"])
    network.eval()
    return Predictor(network, adapter, int(meta["image_size"]), meta)


def read_image(path: Path, size: int) -> np.ndarray:
    """A PNG/JPEG/TIFF (8 or 16 bit) or a single-frame DICOM as a uint8 square of `size`."""
    if path.suffix.lower() in {".dcm", ".dicom"} or _is_dicom(path):
        from medtl.training.archive.dicom import SkipFile, iter_frames, read_dataset

        try:
            frames = list(iter_frames(read_dataset(path), size))
        except SkipFile as exc:
            raise DataError(f"{path}: {exc}") from None
        if len(frames) != 1:
            raise DataError(f"{path}: {len(frames)} frames; predict takes single images")
        return frames[0].image
    try:
        return fit(read_gray(path), size)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


@torch.no_grad()
def predict_images(predictor: Predictor, paths: list[Path], extras: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """One row per image: the prediction and, for classifiers, each class's probability."""
    missing = [name for name in predictor.extra_inputs if name not in (extras or {})]
    if missing:
        raise UserError(f"this model needs extra inputs {', '.join(missing)}: pass e.g. --extra {missing[0]}=1")
    rows = []
    info = predictor.adapter.info
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path} does not exist")
        image = torch.from_numpy(read_image(path, predictor.image_size)).float().div(255.0)[None, None]
        if predictor.extra_inputs:
            extra = torch.tensor([[float(extras[name]) for name in predictor.extra_inputs]])  # type: ignore[index]
            output = predictor.network(image, extra)
        else:
            output = predictor.network(image)
        value = predictor.adapter.postprocess(output)[0]
        row: dict[str, Any] = {"path": str(path)}
        if info.type is TaskType.MULTICLASS:
            row["prediction"] = info.classes[int(np.argmax(value))]
            row.update({f"prob_{c}": float(p) for c, p in zip(info.classes, value)})
        elif info.type is TaskType.BINARY:
            row["prediction"] = info.classes[int(value >= 0.5)] if info.classes else int(value >= 0.5)
            row["prob_positive"] = float(value)
        elif info.type is TaskType.REGRESSION:
            row["prediction"] = float(value)
        else:
            mask = value >= 0.5
            row["foreground_fraction"] = float(mask.mean())
            row["mask"] = mask
        rows.append(row)
    return rows
