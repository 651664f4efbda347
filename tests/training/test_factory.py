"""build_model: arch × init × task in one place; extra inputs reach the output; fine-tuning runs end to end."""

from __future__ import annotations

import json

import pytest
import torch

from medtl.training.factory import build_model, image_size_for
from medtl.training.heads import LinearHead
from medtl.training.spec import TASKS, RunSpec, SpecError, TaskInfo, TaskType

pytestmark = pytest.mark.usefixtures("one_thread")


def test_classifier_for_segmentation_and_unet_for_binary_are_refused_with_choices():
    spec = RunSpec(task="demo-segmentation", arch="resnet18")
    with pytest.raises(SpecError, match="cannot serve task type segmentation; valid: unet, unet_resnet50, unet_vgg16"):
        build_model(spec, TASKS[spec.task])
    spec = RunSpec(task="demo-binary", arch="unet")
    with pytest.raises(SpecError, match="cannot serve task type binary; valid: resnet18, .*mobilenet_v3_large$"):
        build_model(spec, TASKS[spec.task])


def test_extra_input_feeds_the_regression_output():
    spec = RunSpec(task="demo-regression", arch="resnet18", image_size=32)
    torch.manual_seed(0)
    net = build_model(spec, TASKS[spec.task]).eval()
    image = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        female = net(image, torch.zeros(2, 1))
        male = net(image, torch.ones(2, 1))
    assert female.shape == (2, 1)
    assert not torch.allclose(female, male), "changing `male` must change the prediction"
    with pytest.raises(ValueError, match="extra input"):
        net(image)


def test_regression_without_extras_has_a_linear_head():
    spec = RunSpec(task="demo-regression", arch="mobilenet_v3_small", image_size=32)
    net = build_model(spec, TaskInfo(TaskType.REGRESSION))
    assert isinstance(net.head, LinearHead) and net.head.out_features == 1
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 1)


def test_image_size_default_override_and_minimum():
    assert image_size_for(RunSpec(task="rsna-boneage", arch="inception_v3")) == 299
    assert image_size_for(RunSpec(task="rsna-boneage", arch="efficientnet_b3")) == 300
    assert image_size_for(RunSpec(task="luna16", arch="unet")) == 224
    assert image_size_for(RunSpec(task="covid19", arch="resnet18", image_size=64)) == 64
    with pytest.raises(SpecError, match="inception_v3 needs image-size >= 75"):
        image_size_for(RunSpec(task="rsna-boneage", arch="inception_v3", image_size=64))


@pytest.mark.parametrize(
    "task,arch", [("demo-regression", "mobilenet_v3_small"), ("demo-segmentation", "unet")]
)

def test_one_epoch_finetune_smoke(tmp_path, task, arch):
    from medtl.training.finetune import FinetuneRecipe

    spec = RunSpec(task=task, arch=arch, max_epochs=1, image_size=32, batch_size=16)
    recipe = FinetuneRecipe.prepare(spec, tmp_path)
    recipe.fit()
    result = recipe.test()
    assert result is not None and result.predictions_path.exists()
    primary = "mae" if task == "demo-regression" else "dice"
    assert result.metrics[primary] == result.metrics[primary]  # a number, not NaN
    report = json.loads((tmp_path / "transfer_report.json").read_text())
    assert report["init"] == "random" and report["arch"] == arch and report["loaded"] == 0
