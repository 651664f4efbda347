"""The spec's optimizer is the one that trains: Adam (no weight decay) for regression, AdamW for classification."""

from __future__ import annotations

import copy

import torch

from medtl.training.finetune import WEIGHT_DECAY, FinetuneRecipe
from medtl.training.spec import RunSpec


def _recipe(tmp_path, **kw) -> FinetuneRecipe:
    spec = RunSpec(**{"arch": "mobilenet_v3_small", "max_epochs": 1, "patience": 1, "image_size": 32,
                      "batch_size": 32, **kw})
    return FinetuneRecipe.prepare(spec, tmp_path)


def test_regression_trains_with_adam_as_published(tmp_path):
    recipe = _recipe(tmp_path, task="demo-regression")
    params = recipe.params()
    assert params["optimizer"] == "adam" and float(params["weight_decay"]) == 0.0
    state = recipe.fit()
    assert type(state.optimizer) is torch.optim.Adam


def test_classification_trains_with_adamw_and_its_weight_decay(tmp_path):
    recipe = _recipe(tmp_path, task="demo-binary")
    assert recipe.params()["optimizer"] == "adamw" and float(recipe.params()["weight_decay"]) == WEIGHT_DECAY
    state = recipe.fit()
    assert type(state.optimizer) is torch.optim.AdamW
    assert state.optimizer.param_groups[0]["weight_decay"] == WEIGHT_DECAY


def test_the_spec_can_name_another_optimizer(tmp_path):
    recipe = _recipe(tmp_path, task="demo-regression", optimizer="adamw")
    assert type(recipe.fit().optimizer) is torch.optim.AdamW


def test_the_fused_optimizer_follows_the_same_update_rule():
    """make_optimizer asks for torch's fused kernel on CPU; its steps match the per-parameter loop's."""
    from medtl.training.loop import make_optimizer

    torch.manual_seed(0)
    # No BatchNorm: a bias just before one gets gradients of rounding noise, which Adam scales up to
    # full-size steps in either implementation, so the two would part for a reason that is not the rule.
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    twin = copy.deepcopy(net)
    for name, weight_decay, reference in (("adamw", 1e-3, torch.optim.AdamW), ("adam", 0.0, torch.optim.Adam)):
        fused = make_optimizer(net, name, 1e-2, weight_decay)
        assert fused.param_groups[0]["fused"] is True
        loop = reference(twin.parameters(), lr=1e-2, weight_decay=weight_decay, foreach=False)
        x, y = torch.randn(16, 6), torch.randn(16, 1)
        for _ in range(5):
            for model, opt in ((net, fused), (twin, loop)):
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
        for a, b in zip(net.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
