"""The spec's optimizer is the one that trains: Adam (no weight decay) for regression, AdamW for classification."""

from __future__ import annotations

import torch

from medtl.training.finetune import WEIGHT_DECAY, FinetuneJob
from medtl.training.spec import RunSpec


def _job(tmp_path, **kw) -> FinetuneJob:
    spec = RunSpec(**{"arch": "mobilenet_v3_small", "max_epochs": 1, "patience": 1, "image_size": 32,
                      "batch_size": 32, **kw})
    return FinetuneJob.prepare(spec, tmp_path)


def test_regression_trains_with_adam_as_published(tmp_path):
    job = _job(tmp_path, task="demo-regression")
    params = job.params()
    assert params["optimizer"] == "adam" and float(params["weight_decay"]) == 0.0
    state = job.fit()
    assert type(state.optimizer) is torch.optim.Adam


def test_classification_trains_with_adamw_and_its_weight_decay(tmp_path):
    job = _job(tmp_path, task="demo-binary")
    assert job.params()["optimizer"] == "adamw" and float(job.params()["weight_decay"]) == WEIGHT_DECAY
    state = job.fit()
    assert type(state.optimizer) is torch.optim.AdamW
    assert state.optimizer.param_groups[0]["weight_decay"] == WEIGHT_DECAY


def test_the_spec_can_name_another_optimizer(tmp_path):
    job = _job(tmp_path, task="demo-regression", optimizer="adamw")
    assert type(job.fit().optimizer) is torch.optim.AdamW
