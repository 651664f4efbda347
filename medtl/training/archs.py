"""Architecture registry: the study's ten classifier backbones and four U-Nets, keyed by torchvision's names.

Each entry is data: the torchvision builder, the pinned ImageNet weights member (`IMAGENET1K_V1`,
never `DEFAULT`, which means V2 for resnet50 and mobilenet_v3_large), where the classifier lives,
the study's input size, the smallest size that runs, fixed build kwargs (InceptionV3's `aux_logits`
and `transform_input` set the same for every arm) and the source keys dropped by rule.
U-Net entries name the torchvision backbone whose features form their encoder (none for `unet`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn
import torchvision.models as tvm

from medtl.training.spec import Arch, SpecError, TaskType

CLASSIFIER_TASKS = frozenset({TaskType.BINARY, TaskType.MULTICLASS, TaskType.REGRESSION})
SEGMENTATION_TASKS = frozenset({TaskType.SEGMENTATION})


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture and where its parts are.

    For classifiers `name` is the torchvision model; for U-Nets `backbone` is (the encoder's
    torchvision model, or None for the vanilla U-Net) and the weights/classifier fields describe
    that backbone, so ImageNet and domain weights of the classifier load into the encoder.
    """

    name: Arch
    weights_enum: str
    classifier: str
    input_size: int = 224
    min_size: int = 32
    build_kwargs: dict[str, Any] = field(default_factory=dict)
    task_types: frozenset[TaskType] = CLASSIFIER_TASKS
    gradcam_layer: str = ""
    dropped_source_keys: tuple[str, ...] = ()
    backbone: Arch | None = None

    @property
    def is_unet(self) -> bool:
        return self.name.is_unet

    @property
    def torchvision_name(self) -> str | None:
        """The torchvision model whose weights this architecture takes (None: vanilla U-Net)."""
        if self.is_unet:
            return self.backbone.value if self.backbone else None
        return self.name.value

    @property
    def has_imagenet_weights(self) -> bool:
        return bool(self.weights_enum)

    @property
    def classifier_container(self) -> str:
        """The top-level module holding the classifier (`fc`, `classifier`): a U-Net encoder drops it."""
        return self.classifier.split(".")[0]

    @property
    def weights(self) -> Any:
        """The pinned torchvision weights member; SpecError for the vanilla U-Net."""
        if not self.weights_enum:
            raise SpecError(f"{self.name.value} has no ImageNet weights; valid inits: random, domain")
        return getattr(tvm, self.weights_enum).IMAGENET1K_V1

    def build_torchvision(self) -> nn.Module:
        """torchvision's model (for U-Nets: the encoder's backbone) with its 1000-class head, no weights."""
        name = self.torchvision_name
        if name is None:
            raise SpecError(f"{self.name.value} is not built from a torchvision model")
        return tvm.get_model(name, weights=None, **self.build_kwargs)


def _classifier(arch: Arch, weights: str, classifier: str, gradcam: str, **kw: Any) -> ArchSpec:
    return ArchSpec(arch, weights, classifier, gradcam_layer=gradcam, **kw)


ARCHS: dict[Arch, ArchSpec] = {
    Arch.RESNET18: _classifier(Arch.RESNET18, "ResNet18_Weights", "fc", "layer4"),
    Arch.RESNET34: _classifier(Arch.RESNET34, "ResNet34_Weights", "fc", "layer4"),
    Arch.RESNET50: _classifier(Arch.RESNET50, "ResNet50_Weights", "fc", "layer4"),
    Arch.VGG16: _classifier(Arch.VGG16, "VGG16_Weights", "classifier.6", "features.29"),
    Arch.EFFICIENTNET_B3: _classifier(
        Arch.EFFICIENTNET_B3, "EfficientNet_B3_Weights", "classifier.1", "features.8", input_size=300
    ),
    Arch.EFFICIENTNET_B4: _classifier(
        Arch.EFFICIENTNET_B4, "EfficientNet_B4_Weights", "classifier.1", "features.8", input_size=380
    ),
    Arch.INCEPTION_V3: _classifier(
        Arch.INCEPTION_V3,
        "Inception_V3_Weights",
        "fc",
        "Mixed_7c",
        input_size=299,
        min_size=75,
        # One setting for every arm: no auxiliary head, and inputs are normalised by medtl, not
        # re-normalised inside the model (torchvision turns transform_input on with its weights).
        build_kwargs={"aux_logits": False, "transform_input": False, "init_weights": True},
        dropped_source_keys=("AuxLogits.",),
    ),
    Arch.DENSENET121: _classifier(Arch.DENSENET121, "DenseNet121_Weights", "classifier", "features.norm5"),
    Arch.MOBILENET_V3_SMALL: _classifier(
        Arch.MOBILENET_V3_SMALL, "MobileNet_V3_Small_Weights", "classifier.3", "features.12"
    ),
    Arch.MOBILENET_V3_LARGE: _classifier(
        Arch.MOBILENET_V3_LARGE, "MobileNet_V3_Large_Weights", "classifier.3", "features.16"
    ),
}


def _unet(arch: Arch, backbone: Arch | None) -> ArchSpec:
    if backbone is None:
        return ArchSpec(arch, "", "", min_size=16, task_types=SEGMENTATION_TASKS)
    base = ARCHS[backbone]
    return ArchSpec(
        arch,
        base.weights_enum,
        base.classifier,
        min_size=32,
        build_kwargs=base.build_kwargs,
        task_types=SEGMENTATION_TASKS,
        dropped_source_keys=base.dropped_source_keys,
        backbone=backbone,
    )


UNET_ARCHS: dict[Arch, ArchSpec] = {
    Arch.UNET: _unet(Arch.UNET, None),
    Arch.UNET_RESNET50: _unet(Arch.UNET_RESNET50, Arch.RESNET50),
    Arch.UNET_VGG16: _unet(Arch.UNET_VGG16, Arch.VGG16),
    Arch.UNET_EFFICIENTNET_B4: _unet(Arch.UNET_EFFICIENTNET_B4, Arch.EFFICIENTNET_B4),
}

ALL_ARCHS: dict[Arch, ArchSpec] = {**ARCHS, **UNET_ARCHS}


def list_models(task_type: TaskType | None = None) -> list[str]:
    """Architecture names in registry order, optionally only those serving `task_type`."""
    return [a.value for a, s in ALL_ARCHS.items() if task_type is None or task_type in s.task_types]


def get_arch(name: Arch | str) -> ArchSpec:
    """The registry entry for `name` (classifier or U-Net); unknown names raise SpecError."""
    try:
        return ALL_ARCHS[Arch(name)]
    except (ValueError, KeyError):
        raise SpecError(f"unknown architecture {str(name)!r}; valid: {', '.join(list_models())}") from None


def arch_for_task(name: Arch | str, task_type: TaskType) -> ArchSpec:
    """The entry for `name` if it serves `task_type`, else SpecError naming the valid choices."""
    valid = ", ".join(list_models(task_type))
    try:
        spec = ALL_ARCHS[Arch(name)]
    except (ValueError, KeyError):
        raise SpecError(f"unknown architecture {str(name)!r}; valid for {task_type.value}: {valid}") from None
    if task_type not in spec.task_types:
        raise SpecError(f"architecture {spec.name.value!r} cannot serve task type {task_type.value}; valid: {valid}")
    return spec


def _get_submodule_parent(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent_path, _, leaf = dotted.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), leaf


def classifier_layer(model: nn.Module, spec: ArchSpec) -> nn.Linear:
    """The final Linear layer of a torchvision classifier built from `spec`."""
    layer = model.get_submodule(spec.classifier)
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"{spec.name.value}: {spec.classifier} is {type(layer).__name__}, not Linear")
    return layer


def build_body(spec: ArchSpec) -> tuple[nn.Module, int]:
    """The classifier backbone with its final Linear replaced by Identity, and its feature width."""
    if spec.is_unet:
        raise SpecError(f"{spec.name.value} is a U-Net; build it with medtl.training.unet.build_unet")
    model = spec.build_torchvision()
    width = classifier_layer(model, spec).in_features
    parent, leaf = _get_submodule_parent(model, spec.classifier)
    setattr(parent, leaf, nn.Identity())
    return model, width
