"""A one-epoch fine-tune runs on each downstream dataset in its native layout (tiny copies)."""

from __future__ import annotations

import math

import pytest

from medtl.training.finetune import FinetuneRecipe
from medtl.training.spec import RunSpec


@pytest.mark.parametrize(
    ("task", "arch", "fixture"),
    [
        ("rsna-boneage", "resnet18", "rsna_root"),
        ("grazpedwri-osteopenia", "resnet18", "graz_root"),
        ("covid19", "mobilenet_v3_small", "covid_root"),
        ("brain-tumor-mri", "mobilenet_v3_small", "brain_root"),
        ("luna16", "unet", "luna"),
    ],
)
def test_one_epoch_finetune_on_each_dataset(task, arch, fixture, request, tmp_path):
    root = request.getfixturevalue(fixture)
    root = root["root"] if isinstance(root, dict) else root
    spec = RunSpec(task=task, arch=arch, dataset=str(root), max_epochs=1, image_size=32, batch_size=4)
    recipe = FinetuneRecipe.prepare(spec, tmp_path / "work")
    state = recipe.fit()
    result = recipe.test()
    assert state.epoch == 1 and math.isfinite(state.history[0]["val_loss"])
    assert result is not None and result.predictions_path.exists()
    assert all(math.isfinite(v) or k == "auc" for k, v in result.metrics.items()), result.metrics
    if task == "rsna-boneage":
        assert recipe.splits.extra_names == ("male",)
