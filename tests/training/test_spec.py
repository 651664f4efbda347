"""RunSpec: round trip, key stability, validation at construction, purity."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medtl.training.spec import Arch, Init, Modality, RunSpec, SpecError, Task


def _spec(**kw) -> RunSpec:
    base = dict(task="demo-binary", arch="resnet18", lr=1e-3, seed=3, max_epochs=5, image_size=64)
    return RunSpec(**{**base, **kw})


@pytest.mark.parametrize(
    "spec",
    [
        _spec(),
        _spec(init="imagenet", lr=1e-5, data_fraction=0.05),
        _spec(init="domain", pretrain_modality="CR", init_source="/weights/x.pth", normalization="imagenet"),
        _spec(task="brain-tumor-mri", arch="mobilenet_v3_small", dataset="/data/brain", lr=0.01),
    ],
)
def test_params_round_trip_is_exact(spec):
    params = spec.to_params()
    assert all(isinstance(v, str) for v in params.values())
    again = RunSpec.from_params(params)
    assert again == spec
    assert again.run_key == spec.run_key
    assert again.to_params() == params


def test_run_key_is_stable_and_identity_sensitive():
    spec = _spec()
    # Pinned: the key must not change between machines, Python runs or releases.
    assert spec.run_key == "f48b6fd47b507aa9"
    for change in ({"lr": 1e-4}, {"seed": 4}, {"data_fraction": 0.5}, {"init": "imagenet"}, {"arch": "resnet34"}):
        assert spec.replace(**change).run_key != spec.run_key, change


def test_run_key_is_the_same_in_a_fresh_interpreter():
    code = (
        "from medtl.training.spec import RunSpec;"
        "print(RunSpec(task='demo-binary', arch='resnet18', lr=1e-3, seed=3, max_epochs=5, image_size=64).run_key)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _spec().run_key


def test_defaults_are_derived():
    assert _spec().dataset == "synthetic"
    assert _spec(init="imagenet").init_source == "torchvision:resnet18:IMAGENET1K_V1"
    assert _spec(init="domain").init_source == "models:/pretrained-resnet18@champion"
    assert _spec(init="domain", pretrain_modality="MR").init_source == "models:/pretrained-resnet18-MR@champion"
    assert _spec(init="domain", pretrain_modality="MR").group == "domain-MR"
    assert _spec(init="imagenet").resolved_normalization.value == "imagenet"
    assert _spec().resolved_normalization.value == "none"
    spec = _spec()
    assert spec.task is Task.DEMO_BINARY and spec.arch is Arch.RESNET18 and spec.init is Init.RANDOM
    assert spec.pretrain_modality is Modality.ALL


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"task": "demo-binaryy"}, "unknown task 'demo-binaryy'; valid: luna16"),
        ({"arch": "resnet19"}, "unknown architecture 'resnet19'; valid: resnet18"),
        ({"init": "imagenett"}, "unknown init 'imagenett'; valid: random, imagenet, domain"),
        ({"lr": 0}, "lr must be a positive number"),
        ({"lr": -1e-3}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"data_fraction": 0}, "fraction must lie in (0, 1]"),
        ({"data_fraction": 1.5}, "fraction must lie in (0, 1]"),
        ({"max_epochs": 0}, "max-epochs must be at least 1"),
        ({"seed": 1.5}, "seed must be a number"),
        ({"batch_size": True}, "batch_size must be a number"),
        ({"pretrain_modality": "CR"}, "applies to init 'domain' only"),
        ({"pretrain_modality": "XR", "init": "domain"}, "unknown modality 'XR'"),
        ({"image_size": 8}, "image-size must be 0"),
    ],
)
def test_invalid_values_are_refused_with_the_valid_choices(change, fragment):
    with pytest.raises(SpecError) as info:
        _spec(**change)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_spec_module_imports_no_torch_mlflow_or_optuna():
    code = (
        "import sys, medtl.training.spec;"
        "bad = [m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_training_package_imports_no_tracking_or_scheduler():
    code = (
        "import sys, medtl.training.finetune, medtl.training.data.synthetic;"
        "bad = [m for m in ('mlflow', 'optuna', 'medtl.mlops') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
