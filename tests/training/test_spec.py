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
        _spec(task="demo-regression", arch="resnet18"),
        _spec(task="demo-regression", arch="resnet18", optimizer="adamw"),
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
    assert _spec(init="domain", pretrain_modality="MR").arm == "domain-MR"
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
        ({"optimizer": "sgd"}, "unknown optimizer 'sgd'; valid: adamw, adam"),
    ],
)
def test_invalid_values_are_refused_with_the_valid_choices(change, fragment):
    with pytest.raises(SpecError) as info:
        _spec(**change)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "modules, forbidden",
    [
        ("medtl.training.spec", ("torch", "mlflow", "optuna")),
        ("medtl.training.finetune, medtl.training.data.synthetic", ("mlflow", "optuna", "medtl.mlops")),
    ],
    ids=["spec-no-torch-mlflow-optuna", "training-no-tracking-or-scheduler"],
)
def test_module_imports_none_of(modules, forbidden):
    code = f"import sys, {modules}; print([m for m in {forbidden!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_optimizer_defaults_to_the_papers_per_task_type():
    assert _spec().optimizer.value == "adamw"
    assert _spec(task="brain-tumor-mri", arch="resnet50").optimizer.value == "adamw"
    assert _spec(task="rsna-boneage", arch="inception_v3").optimizer.value == "adam"
    assert _spec(task="luna16", arch="unet").optimizer.value == "adam"
    assert _spec(task="demo-segmentation", arch="unet", optimizer="adamw").optimizer.value == "adamw"


def test_run_key_of_adamw_runs_is_the_key_they_had_before_the_field():
    # Every run logged before `optimizer` existed used AdamW: its key must still match.
    assert _spec(optimizer="adamw").run_key == "f48b6fd47b507aa9"
    regression = _spec(task="demo-regression")
    assert regression.run_key != regression.replace(optimizer="adamw").run_key
    # An old store's params carry optimizer=adamw (logged by the fine-tuning job): same key back.
    old = {**regression.to_params(), "optimizer": "adamw"}
    assert RunSpec.from_params(old).run_key == regression.replace(optimizer="adamw").run_key


def test_fingerprint_ignores_arm_and_grid_axes_but_not_the_protocol():
    base = _spec()
    fp = base.fingerprint("digest-a")
    for same in ({"lr": 1e-5}, {"seed": 9}, {"init": "imagenet"}, {"init": "domain", "pretrain_modality": "CR"},
                 {"init": "domain", "init_source": "/w/x.pt"}):
        assert base.replace(**same).fingerprint("digest-a") == fp, same
    for other in ({"max_epochs": 50}, {"image_size": 96}, {"batch_size": 8}, {"data_fraction": 0.5},
                  {"normalization": "imagenet"}, {"dataset": "/data/elsewhere"}, {"optimizer": "adam"},
                  {"patience": 3}, {"arch": "resnet34"}, {"task": "demo-multiclass"}):
        assert base.replace(**other).fingerprint("digest-a") != fp, other
    assert base.fingerprint("digest-b") != fp
    # Pinned like run_key: the same on every machine and release.
    assert fp == "709619b5cfd72f36"


def test_fingerprint_recomputes_from_logged_params():
    from medtl.training.spec import protocol_fields, protocol_fingerprint

    spec = _spec(init="imagenet", lr=1e-4)
    logged = {**spec.to_params(), "data_digest": "d1", "n_train": "40", "group": "imagenet"}
    assert protocol_fingerprint(logged, "d1") == spec.fingerprint("d1")
    assert set(protocol_fields()) == {
        "task", "arch", "dataset", "data_fraction", "max_epochs", "patience", "batch_size", "image_size",
        "normalization", "optimizer",
    }
