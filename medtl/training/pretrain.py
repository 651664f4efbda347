"""The pretraining recipe: the shared loop on the pseudo-labelled archive.

Classification over the cluster labels (cross-entropy, AdamW, class-balanced oversampling) for
classifier architectures; image reconstruction (MSE) for the vanilla U-Net. All layers trainable,
random initialisation, no input normalisation — the domain arm's starting point. A sibling of
fine-tuning over `Recipe` (training/recipe.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from medtl.training.archive.pretrain_set import load_pretrain, oversampling_weights
from medtl.training.archs import arch_for_task
from medtl.training.factory import build_network, image_size_for
from medtl.training.recipe import Recipe
from medtl.training.runtime import resolve_runtime, seed_everything
from medtl.training.spec import (
    Normalization,
    Objective,
    Optimizer,
    PretrainSpec,
    TaskInfo,
    TaskType,
)
from medtl.training.tasks import ReconstructionAdapter, TaskAdapter, make_adapter

WEIGHT_DECAY = 1e-3  # AdamW, as the paper pretrained


class PretrainRecipe(Recipe[PretrainSpec]):
    """One pretraining run, prepared and then run; the loop, checkpoints and test are `Recipe`'s."""

    @classmethod
    def prepare(
        cls, spec: PretrainSpec, workdir: Path, *, device: str = "auto", num_workers: int | None = None
    ) -> PretrainRecipe:
        """Load the archive's splits and build a randomly initialised network (seeded), ready to fit."""
        seed_everything(spec.seed)
        image_size = image_size_for(spec)
        splits = load_pretrain(Path(spec.data), modality=spec.modality, image_size=image_size, seed=0)
        adapter: TaskAdapter
        if spec.objective is Objective.RECONSTRUCTION:
            info = TaskInfo(TaskType.SEGMENTATION, description="pretraining: image reconstruction")
            adapter = ReconstructionAdapter(info)
            # The target of reconstruction is the image itself.
            splits = dataclasses.replace(
                splits,
                train=dataclasses.replace(splits.train, targets=splits.train.images),
                val=dataclasses.replace(splits.val, targets=splits.val.images),
                test=dataclasses.replace(splits.test, targets=splits.test.images),
            )
        else:
            classes = tuple(f"cluster-{c}" for c in range(int(splits.notes.get("classes", 0)) or _count(splits)))
            info = TaskInfo(TaskType.MULTICLASS, classes, description="pretraining: pseudo-label classification")
            adapter = make_adapter(info)
        arch = arch_for_task(spec.arch, info.type)
        model = build_network(arch, info, Normalization.NONE)
        model.transfer_report = {"source": "random", "init": "random", "arch": spec.arch.value, "loaded": 0}
        return cls(spec, workdir, splits, model, adapter, resolve_runtime(device, num_workers))

    @property
    def optimizer(self) -> str:
        return Optimizer.ADAMW.value

    @property
    def weight_decay(self) -> float:
        return WEIGHT_DECAY

    def params(self) -> dict[str, str]:
        return {
            **self.spec.to_params(),
            "optimizer": self.optimizer,
            "weight_decay": str(self.weight_decay),
            "normalization": "none",
            "input_channels": "3",
            "resolved_image_size": str(self.image_size),
            "num_classes": str(len(self.adapter.info.classes)),
            "oversampling": str(self.spec.objective is Objective.CLASSIFICATION),
            "n_train": str(len(self.splits.train)),
            "n_val": str(len(self.splits.val)),
            "n_test": str(len(self.splits.test)),
            "data_digest": self.splits.digest,
            "registered_model": self.spec.registered_name,
            **self.runtime.to_params(),
        }

    def checkpoint_meta(self) -> dict[str, Any]:
        meta = super().checkpoint_meta()
        meta["stage"] = "pretrain"
        meta["arch"] = self.spec.arch.value
        meta["objective"] = self.spec.objective.value
        meta["modality"] = self.spec.modality.value
        return meta

    def train_sample_weights(self) -> np.ndarray | None:
        if self.spec.objective is Objective.CLASSIFICATION:
            return oversampling_weights(np.asarray(self.splits.train.targets))
        return None


def _count(splits) -> int:
    return int(max(int(np.max(part.targets)) for _, part in splits.items() if len(part)) + 1)
