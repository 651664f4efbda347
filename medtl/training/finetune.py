"""The fine-tuning recipe: RunSpec → data, model, fit, test of the best checkpoint, predictions.

Staged so the caller (mlops' runner) can record what was prepared before training starts:
`FinetuneRecipe.prepare(spec, workdir)` → `.params()` → `.fit(callbacks)` → `.fit_summary()` → `.test()`
(a `RecipeResult`). The loop, checkpoints, fit summary and test are `Recipe`'s (training/recipe.py),
shared with pretraining.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtl.training.data import load_splits
from medtl.training.factory import build_model, image_size_for
from medtl.training.recipe import INPUT_CHANNELS, Recipe
from medtl.training.runtime import resolve_runtime, seed_everything
from medtl.training.spec import TASKS, Optimizer, RunSpec
from medtl.training.tasks import make_adapter

WEIGHT_DECAY = 1e-3  # AdamW's; the Adam of regression and segmentation has none (PROTOCOL.md)


class FinetuneRecipe(Recipe[RunSpec]):
    """One grid point's training, prepared and then run; imports no tracking library."""

    @classmethod
    def prepare(
        cls,
        spec: RunSpec,
        workdir: Path,
        *,
        device: str = "auto",
        num_workers: int | None = None,
        init_path: Path | None = None,
    ) -> FinetuneRecipe:
        """Load the data and build the model (seeded), ready to fit.

        `init_path` is a local weights file already resolved by the caller (e.g. from a model
        URI in the registry); it overrides `spec.init_source` for the `domain` arm.
        """
        seed_everything(spec.seed)
        info = TASKS[spec.task]
        image_size = image_size_for(spec)
        splits = load_splits(spec.task, spec.dataset, image_size=image_size, fraction=spec.data_fraction)
        adapter = make_adapter(info, np.asarray(splits.train.targets))
        model = build_model(spec, info, init_path=init_path)
        recipe = cls(spec, workdir, splits, model, adapter, resolve_runtime(device, num_workers))
        recipe.write_transfer_report()
        return recipe

    def params(self) -> dict[str, str]:
        """Everything that shaped the run beyond the spec: optimiser, inputs, runtime, data."""
        return {
            **self.spec.to_params(),
            "weight_decay": str(self.weight_decay),
            "resolved_normalization": self.spec.resolved_normalization.value,  # `normalization` after auto
            "input_channels": str(INPUT_CHANNELS),
            "resolved_image_size": str(self.image_size),
            "arm": self.spec.arm,
            "n_train": str(len(self.splits.train)),
            "n_val": str(len(self.splits.val)),
            "n_test": str(len(self.splits.test)),
            "data_digest": self.splits.digest,
            "num_parameters": str(sum(p.numel() for p in self.model.parameters())),
            **self.runtime.to_params(),
        }

    @property
    def optimizer(self) -> str:
        """The spec's optimizer."""
        return Optimizer(self.spec.optimizer).value

    @property
    def weight_decay(self) -> float:
        """AdamW's decoupled weight decay; 0 for Adam, which the paper ran without it."""
        return WEIGHT_DECAY if self.optimizer == Optimizer.ADAMW.value else 0.0
