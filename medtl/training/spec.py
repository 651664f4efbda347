"""RunSpec: the one frozen definition of a grid point, and the enums users name.

Pure: imports neither torch, mlflow nor optuna, so the CLI and the evaluation service start fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Self, TypeVar

from medtl.errors import UserError

E = TypeVar("E", bound=StrEnum)


class SpecError(UserError, ValueError):
    """A value a user typed is not valid; the message names it and the valid choices."""


class TaskType(StrEnum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"
    SEGMENTATION = "segmentation"


class Task(StrEnum):
    LUNA16 = "luna16"
    RSNA_BONEAGE = "rsna-boneage"
    GRAZPEDWRI_OSTEOPENIA = "grazpedwri-osteopenia"
    COVID19 = "covid19"
    BRAIN_TUMOR_MRI = "brain-tumor-mri"
    DEMO_BINARY = "demo-binary"
    DEMO_MULTICLASS = "demo-multiclass"
    DEMO_REGRESSION = "demo-regression"
    DEMO_SEGMENTATION = "demo-segmentation"


class Arch(StrEnum):
    RESNET18 = "resnet18"
    RESNET34 = "resnet34"
    RESNET50 = "resnet50"
    VGG16 = "vgg16"
    EFFICIENTNET_B3 = "efficientnet_b3"
    EFFICIENTNET_B4 = "efficientnet_b4"
    INCEPTION_V3 = "inception_v3"
    DENSENET121 = "densenet121"
    MOBILENET_V3_SMALL = "mobilenet_v3_small"
    MOBILENET_V3_LARGE = "mobilenet_v3_large"
    UNET = "unet"
    UNET_RESNET50 = "unet_resnet50"
    UNET_VGG16 = "unet_vgg16"
    UNET_EFFICIENTNET_B4 = "unet_efficientnet_b4"

    @property
    def is_unet(self) -> bool:
        return self.value.startswith("unet")


@dataclass(frozen=True)
class TaskInfo:
    """What a task is, independent of torch: its type, classes and extra inputs."""

    type: TaskType
    classes: tuple[str, ...] = ()
    extra_inputs: tuple[str, ...] = ()
    description: str = ""

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.type is TaskType.MULTICLASS else 1


TASKS: dict[Task, TaskInfo] = {
    Task.LUNA16: TaskInfo(TaskType.SEGMENTATION, description="LUNA16 lung nodule masks on axial CT slices"),
    Task.RSNA_BONEAGE: TaskInfo(
        TaskType.REGRESSION, extra_inputs=("male",), description="RSNA pediatric bone age (months)"
    ),
    Task.GRAZPEDWRI_OSTEOPENIA: TaskInfo(
        TaskType.BINARY, ("no-osteopenia", "osteopenia"), description="GRAZPEDWRI-DX osteopenia"
    ),
    Task.COVID19: TaskInfo(TaskType.BINARY, ("Normal", "COVID"), description="COVID-19 radiography"),
    Task.BRAIN_TUMOR_MRI: TaskInfo(
        TaskType.MULTICLASS,
        ("glioma", "meningioma", "notumor", "pituitary"),
        description="Brain tumor MRI, four classes",
    ),
    Task.DEMO_BINARY: TaskInfo(
        TaskType.BINARY, ("plain", "lesion"), description="synthetic: is there a bright blob?"
    ),
    Task.DEMO_MULTICLASS: TaskInfo(
        TaskType.MULTICLASS,
        ("disc", "square", "ring", "stripes"),
        description="synthetic: which shape is on the noisy background?",
    ),
    Task.DEMO_REGRESSION: TaskInfo(
        TaskType.REGRESSION, extra_inputs=("male",), description="synthetic: size of a shape plus a sex offset"
    ),
    Task.DEMO_SEGMENTATION: TaskInfo(TaskType.SEGMENTATION, description="synthetic: mask of blobs"),
}

# (metric name, higher is better) of each task type's primary metric.
PRIMARY_METRIC: dict[TaskType, tuple[str, bool]] = {
    TaskType.BINARY: ("f1", True),
    TaskType.MULTICLASS: ("f1", True),
    TaskType.REGRESSION: ("mae", False),
    TaskType.SEGMENTATION: ("dice", True),
}

TEST_METRICS: dict[TaskType, tuple[str, ...]] = {
    TaskType.BINARY: ("accuracy", "precision", "recall", "f1", "auc"),
    TaskType.MULTICLASS: ("accuracy", "precision", "recall", "f1", "auc"),
    TaskType.REGRESSION: ("mae", "rmse"),
    TaskType.SEGMENTATION: ("dice", "iou"),
}


def task_info(task: Task | str) -> TaskInfo:
    return TASKS[parse_enum(Task, task, "task")]


class Init(StrEnum):
    RANDOM = "random"
    IMAGENET = "imagenet"
    DOMAIN = "domain"


class Modality(StrEnum):
    ALL = "all"
    MR = "MR"
    CR = "CR"
    CT = "CT"


class Objective(StrEnum):
    """What pretraining optimises: cluster classification, or image reconstruction (vanilla U-Net)."""

    CLASSIFICATION = "classification"
    RECONSTRUCTION = "reconstruction"


class Optimizer(StrEnum):
    """The fine-tuning optimiser; the default is the paper's per task type (see `default_optimizer`)."""

    ADAMW = "adamw"
    ADAM = "adam"


class Normalization(StrEnum):
    """Input normalisation; `auto` means ImageNet mean/std for the imagenet arm, none otherwise."""

    AUTO = "auto"
    NONE = "none"
    IMAGENET = "imagenet"


def parse_enum(enum: type[E], value: Any, name: str) -> E:
    """Return `value` as a member of `enum`, or raise SpecError naming the valid choices."""
    if isinstance(value, enum):
        return value
    try:
        return enum(str(value))
    except ValueError:
        choices = ", ".join(m.value for m in enum)
        raise SpecError(f"unknown {name} {value!r}; valid: {choices}") from None


# Fields that identify a grid point. Execution details (device, workers, batch size is
# identity: it changes the optimisation) never enter run_key.
_IDENTITY = (
    "task",
    "dataset",
    "arch",
    "init",
    "init_source",
    "pretrain_modality",
    "lr",
    "seed",
    "data_fraction",
    "max_epochs",
    "patience",
    "batch_size",
    "image_size",
    "normalization",
    "optimizer",
)

# Fields that do NOT enter the protocol fingerprint: what distinguishes the arms of one comparison
# (init, its source, the pretraining modality) and the grid axes within an arm (lr, seed).
ARM_AND_GRID_FIELDS = ("init", "init_source", "pretrain_modality", "lr", "seed")

# The optimizer every run used before RunSpec had the field: it is left out of run_key, so the
# keys of existing stores stay valid; any other optimizer enters the key.
_LEGACY_OPTIMIZER = "adamw"


class _ParamsMixin:
    """The params round trip and the stable key, shared by the two spec types."""

    _identity: ClassVar[tuple[str, ...]] = ()

    @property
    def run_key(self) -> str:
        """A stable 16-hex-digit hash of the identity fields; the same on every machine."""
        ident = {k: _canonical(getattr(self, k)) for k in self._identity}
        if ident.get("optimizer") == _LEGACY_OPTIMIZER:
            del ident["optimizer"]
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_params(self) -> dict[str, str]:
        """Every field as a string, for MLflow params and Optuna user attrs."""
        return {f.name: _canonical(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        """Inverse of `to_params`; ignores keys that are not fields."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in params.items() if k in names})


@dataclass(frozen=True)
class RunSpec(_ParamsMixin):
    """One fine-tuning grid point: the single source of a run's identity.

    `init_source` is derived when empty: the pinned torchvision weights for `imagenet`,
    `models:/pretrained-<arch>[-<modality>]@champion` for `domain`, nothing for `random`.
    `dataset` is where the data live (a folder, or `synthetic` for the demo tasks).
    `image_size` 0 means the architecture's default input size.
    `optimizer` empty means the paper's for the task type: AdamW for classification, Adam for
    regression and segmentation (`default_optimizer`).
    """

    task: Task
    arch: Arch
    init: Init = Init.RANDOM
    lr: float = 1e-3
    seed: int = 0
    dataset: str = ""
    init_source: str = ""
    pretrain_modality: Modality = Modality.ALL
    data_fraction: float = 1.0
    max_epochs: int = 200
    patience: int = 10
    batch_size: int = 32
    image_size: int = 0
    normalization: Normalization = Normalization.AUTO
    optimizer: Optimizer | str = ""
    _identity: ClassVar[tuple[str, ...]] = _IDENTITY

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "task", parse_enum(Task, self.task, "task"))
        set_(self, "arch", parse_enum(Arch, self.arch, "architecture"))
        set_(self, "init", parse_enum(Init, self.init, "init"))
        set_(self, "pretrain_modality", parse_enum(Modality, self.pretrain_modality, "modality"))
        set_(self, "normalization", parse_enum(Normalization, self.normalization, "normalization"))
        optimizer = self.optimizer or default_optimizer(self.task)
        # Case-insensitive: stores written by hand or by other tools spell it `AdamW`.
        set_(self, "optimizer", parse_enum(Optimizer, str(optimizer).lower(), "optimizer"))
        set_(self, "lr", _number(self.lr, "lr", float))
        set_(self, "data_fraction", _number(self.data_fraction, "fraction", float))
        for name in ("seed", "max_epochs", "patience", "batch_size", "image_size"):
            set_(self, name, _number(getattr(self, name), name, int))
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise SpecError(f"lr must be a positive number, got {self.lr!r}")
        if not 0 < self.data_fraction <= 1:
            raise SpecError(f"fraction must lie in (0, 1], got {self.data_fraction!r}")
        if self.max_epochs < 1:
            raise SpecError(f"max-epochs must be at least 1, got {self.max_epochs}")
        if self.patience < 1:
            raise SpecError(f"patience must be at least 1, got {self.patience}")
        if self.batch_size < 1:
            raise SpecError(f"batch-size must be at least 1, got {self.batch_size}")
        if self.image_size < 0 or 0 < self.image_size < 16:
            raise SpecError(f"image-size must be 0 (architecture default) or >= 16, got {self.image_size}")
        if self.seed < 0:
            raise SpecError(f"seed must be non-negative, got {self.seed}")
        if self.init is not Init.DOMAIN and self.pretrain_modality is not Modality.ALL:
            raise SpecError("pretrain-modality applies to init 'domain' only")
        if self.init is Init.RANDOM and self.init_source:
            raise SpecError("init-source applies to init 'imagenet' or 'domain' only")
        if not self.dataset and self.task.value.startswith("demo-"):
            set_(self, "dataset", "synthetic")
        if not self.init_source:
            set_(self, "init_source", default_init_source(self.arch, self.init, self.pretrain_modality))

    @property
    def arm(self) -> str:
        """The arm's display label: `random`, `imagenet`, `domain`, `domain-CR`, ..."""
        if self.init is Init.DOMAIN and self.pretrain_modality is not Modality.ALL:
            return f"domain-{self.pretrain_modality.value}"
        return self.init.value

    @property
    def resolved_normalization(self) -> Normalization:
        if self.normalization is Normalization.AUTO:
            return Normalization.IMAGENET if self.init is Init.IMAGENET else Normalization.NONE
        return self.normalization

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def fingerprint(self, data_digest: str = "") -> str:
        """The protocol's identity: 16 hex digits over every field but the arm's and the grid axes'.

        Two runs may be compared (pooled into arms, tested against each other) only if their
        fingerprints agree: same task, architecture, data (path and `data_digest`, the digest of
        split membership), fraction, epochs, patience, batch size, image size, normalisation and
        optimizer. Init, init source, pretraining modality, learning rate and seed are left out.
        """
        return protocol_fingerprint(self.to_params(), data_digest)


def protocol_fields() -> tuple[str, ...]:
    """The RunSpec fields that enter the protocol fingerprint, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(RunSpec) if f.name not in ARM_AND_GRID_FIELDS)


def protocol_fingerprint(params: dict[str, Any], data_digest: str = "") -> str:
    """The fingerprint of `RunSpec.from_params(params)` with `data_digest`; see `RunSpec.fingerprint`.

    Accepts logged MLflow params (strings) as well as `to_params()` output, so evaluation can
    recompute the fingerprint of a run logged before the tag existed.
    """
    spec = RunSpec.from_params(params)
    ident = {k: _canonical(getattr(spec, k)) for k in protocol_fields()}
    ident["data_digest"] = str(data_digest or "")
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_optimizer(task: Task | str) -> Optimizer:
    """The paper's optimizer for a task: AdamW for classification, Adam for regression and segmentation."""
    kind = task_info(task).type
    return Optimizer.ADAM if kind in (TaskType.REGRESSION, TaskType.SEGMENTATION) else Optimizer.ADAMW


_PRETRAIN_IDENTITY = (
    "arch", "data", "modality", "objective", "lr", "seed", "max_epochs", "patience", "batch_size", "image_size",
)


@dataclass(frozen=True)
class PretrainSpec(_ParamsMixin):
    """One pretraining run: an architecture on a pseudo-labelled (or any) image folder.

    Classification over the pseudo-labels serves every classifier architecture; reconstruction
    serves the vanilla U-Net. U-Nets with a torchvision encoder take a classifier's pretrained
    backbone instead (register `pretrained-resnet50` and fine-tune `unet_resnet50` with it).
    """

    arch: Arch
    data: str
    modality: Modality = Modality.ALL
    objective: Objective = Objective.CLASSIFICATION
    lr: float = 1e-3
    seed: int = 0
    max_epochs: int = 200
    patience: int = 10
    batch_size: int = 32
    image_size: int = 0
    _identity: ClassVar[tuple[str, ...]] = _PRETRAIN_IDENTITY

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "arch", parse_enum(Arch, self.arch, "architecture"))
        set_(self, "modality", parse_enum(Modality, self.modality, "modality"))
        set_(self, "objective", parse_enum(Objective, self.objective, "objective"))
        # The numeric rules are RunSpec's: validate them there rather than twice.
        probe = RunSpec(
            task=Task.DEMO_BINARY, arch=Arch.RESNET18, lr=self.lr, seed=self.seed, max_epochs=self.max_epochs,
            patience=self.patience, batch_size=self.batch_size, image_size=self.image_size,
        )
        for name in ("lr", "seed", "max_epochs", "patience", "batch_size", "image_size"):
            set_(self, name, getattr(probe, name))
        if not str(self.data):
            raise SpecError("pretraining needs --data: a folder written by `medtl ingest` and `medtl pseudolabel`")
        if self.objective is Objective.RECONSTRUCTION and self.arch is not Arch.UNET:
            raise SpecError(f"objective reconstruction serves the vanilla U-Net only; got {self.arch.value}; valid: unet")
        if self.objective is Objective.CLASSIFICATION and self.arch is Arch.UNET:
            raise SpecError("the vanilla unet is pretrained with --objective reconstruction")
        if self.objective is Objective.CLASSIFICATION and self.arch.is_unet:
            backbone = self.arch.value.removeprefix("unet_")
            raise SpecError(
                f"{self.arch.value} takes its encoder from a pretrained classifier: "
                f"run `medtl pretrain --arch {backbone}` and fine-tune {self.arch.value} with --init domain"
            )

    @property
    def registered_name(self) -> str:
        """`pretrained-<arch>` for all modalities, `pretrained-<arch>-<modality>` otherwise."""
        suffix = "" if self.modality is Modality.ALL else f"-{self.modality.value}"
        return f"pretrained-{self.arch.value}{suffix}"

    @property
    def resolved_normalization(self) -> Normalization:
        return Normalization.NONE



def default_init_source(arch: Arch, init: Init, modality: Modality = Modality.ALL) -> str:
    """Where an arm's weights come from when the user names nothing."""
    if init is Init.IMAGENET:
        return f"torchvision:{arch.value}:IMAGENET1K_V1"
    if init is Init.DOMAIN:
        suffix = "" if modality is Modality.ALL else f"-{modality.value}"
        # A U-Net with a torchvision encoder takes that backbone's classification pretraining.
        source = arch.value.removeprefix("unet_") if arch.is_unet and arch is not Arch.UNET else arch.value
        return f"models:/pretrained-{source}{suffix}@champion"
    return ""


def _number(value: Any, name: str, kind: type) -> Any:
    if isinstance(value, bool):
        raise SpecError(f"{name} must be a number, got {value!r}")
    try:
        number = kind(value) if kind is float else _as_int(value)
    except (TypeError, ValueError):
        raise SpecError(f"{name} must be a number, got {value!r}") from None
    return number


def _as_int(value: Any) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    if isinstance(value, str):
        value = value.strip()
        as_float = float(value)
        if not as_float.is_integer():
            raise ValueError(value)
        return int(as_float)
    return int(value)


def _canonical(value: Any) -> str:
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, float):
        return repr(value)
    return str(value)
