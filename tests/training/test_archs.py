"""The architecture registry: every entry builds for every task type it serves, runs and trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medtl.training.archs import (
    ALL_ARCHS,
    ARCHS,
    UNET_ARCHS,
    arch_for_task,
    classifier_layer,
    get_arch,
    list_models,
)
from medtl.training.factory import Network, build_network
from medtl.training.heads import ExtrasRegressionHead, LinearHead, build_head
from medtl.training.spec import TASKS, Arch, SpecError, Task, TaskType

pytestmark = pytest.mark.usefixtures("one_thread")

TASK_OF_TYPE = {
    TaskType.BINARY: Task.DEMO_BINARY,
    TaskType.MULTICLASS: Task.DEMO_MULTICLASS,
    TaskType.REGRESSION: Task.DEMO_REGRESSION,
    TaskType.SEGMENTATION: Task.DEMO_SEGMENTATION,
}
PAIRS = [(a.value, t) for a, s in ALL_ARCHS.items() for t in sorted(s.task_types)]


def test_registry_covers_every_architecture_name():
    assert set(ALL_ARCHS) == set(Arch)
    assert set(UNET_ARCHS) == {a for a in Arch if a.is_unet}
    assert list_models(TaskType.SEGMENTATION) == ["unet", "unet_resnet50", "unet_vgg16", "unet_efficientnet_b4"]
    assert len(list_models(TaskType.BINARY)) == 10


def test_study_input_sizes_and_pinned_weights():
    sizes = {a.value: s.input_size for a, s in ARCHS.items()}
    assert sizes["inception_v3"] == 299 and sizes["efficientnet_b3"] == 300 and sizes["efficientnet_b4"] == 380
    assert {sizes[n] for n in ("resnet18", "resnet50", "vgg16", "densenet121", "mobilenet_v3_large")} == {224}
    for spec in ARCHS.values():
        assert spec.weights.name == "IMAGENET1K_V1"  # never DEFAULT (V2 for resnet50, mobilenet_v3_large)
    assert get_arch("unet_resnet50").weights == get_arch("resnet50").weights
    inception = get_arch("inception_v3").build_kwargs
    assert inception["aux_logits"] is False and inception["transform_input"] is False


@pytest.mark.parametrize("arch", list(ARCHS), ids=str)
def test_classifier_parts_exist(arch):
    spec = ARCHS[arch]
    with torch.device("meta"):
        model = spec.build_torchvision()
    assert isinstance(classifier_layer(model, spec), nn.Linear)
    assert model.get_submodule(spec.gradcam_layer) is not None
    assert spec.classifier_container in dict(model.named_children())


def test_unknown_and_unserving_architectures_name_valid_choices():
    with pytest.raises(SpecError, match="valid: resnet18, .*unet_efficientnet_b4"):
        get_arch("resnet19")
    with pytest.raises(SpecError, match="cannot serve task type segmentation; valid: unet, unet_resnet50"):
        arch_for_task("resnet18", TaskType.SEGMENTATION)
    with pytest.raises(SpecError, match="cannot serve task type binary; valid: resnet18, resnet34"):
        arch_for_task("unet_vgg16", TaskType.BINARY)


def _width(head: nn.Module) -> int:
    if isinstance(head, LinearHead):
        return head.out_features
    if isinstance(head, ExtrasRegressionHead):
        return head.mlp[-1].out_features
    return head.last.out_channels


@pytest.mark.parametrize("arch,task_type", PAIRS, ids=[f"{a}-{t.value}" for a, t in PAIRS])
def test_head_has_task_width(arch, task_type):
    info = TASKS[TASK_OF_TYPE[task_type]]
    with torch.device("meta"):
        net = build_network(get_arch(arch), info)
    assert _width(net.head) == info.num_outputs
    assert isinstance(net.head, ExtrasRegressionHead) == bool(info.extra_inputs)


@pytest.mark.parametrize("arch", [a.value for a in ALL_ARCHS])
def test_builds_runs_and_trains_at_smallest_size(arch):
    """Every task type the architecture serves: forward and backward on a batch of 2 at min size.

    The backbone is built once (VGG16's random init alone takes seconds on a CPU); each task
    type's head is put on it in turn, as `build_network` would.
    """
    spec = get_arch(arch)
    size = spec.min_size
    image = torch.rand(2, 1, size, size)
    torch.manual_seed(0)
    first, *others = sorted(spec.task_types)
    net = build_network(spec, TASKS[TASK_OF_TYPE[first]])
    for task_type in [first, *others]:
        info = TASKS[TASK_OF_TYPE[task_type]]
        if task_type is not first:
            net = Network(net.prep, net.body, build_head(info, net.head.in_features))
        net.zero_grad(set_to_none=True)
        extras = torch.tensor([[0.0], [1.0]]) if info.extra_inputs else None
        out = net(image) if extras is None else net(image, extras)
        expected = (2, 1, size, size) if task_type is TaskType.SEGMENTATION else (2, info.num_outputs)
        assert tuple(out.shape) == expected, task_type
        assert torch.isfinite(out).all()
        out.float().square().mean().backward()
        assert all(p.grad is not None for p in net.parameters()), f"{task_type}: every parameter is used"
