"""The tracking schema: one definition of names, order and types (issue 17)."""

import dataclasses
import subprocess
import sys

import pytest

from medtl.training import schema
from medtl.training.spec import RunSpec


def test_param_dtypes_cover_every_runspec_field_and_parse_logged_params():
    spec = RunSpec(task="demo-binary", arch="resnet18", init="domain", lr=3e-4, seed=4, data_fraction=0.25)
    dtypes = schema.param_dtypes()
    assert set(dtypes) == {f.name for f in dataclasses.fields(RunSpec)}
    parsed = {k: dtypes[k](v) for k, v in spec.to_params().items()}
    assert parsed["lr"] == pytest.approx(3e-4) and parsed["seed"] == 4 and parsed["data_fraction"] == 0.25
    assert parsed["init"] == "domain" and dtypes["max_epochs"] is int


def test_arm_order_puts_the_study_arms_first():
    assert schema.arm_order({"domain-MR", "domain", "imagenet", "random", "domain-CR"}) == [
        "random", "imagenet", "domain", "domain-CR", "domain-MR",
    ]


def test_arm_order_can_put_variants_last():
    arms = ["domain-CR", "zeta", "domain", "random", "alpha"]
    assert schema.arm_order(arms, last_prefix="domain-") == ["random", "domain", "alpha", "zeta", "domain-CR"]
    assert schema.arm_order(arms) == ["random", "domain", "alpha", "domain-CR", "zeta"]


def test_experiment_names_round_trip_and_skip_pretraining():
    assert schema.study_of_experiment(schema.study_experiment("paper")) == "paper"
    assert schema.study_of_experiment(schema.PRETRAIN_EXPERIMENT) is None
    assert schema.study_of_experiment("Default") is None


def test_tracking_uri_rule(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert schema.resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert schema.resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert schema.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_schema_imports_neither_torch_nor_mlflow():
    code = "import sys, medtl.training.schema; print(any(m in sys.modules for m in ('torch', 'mlflow')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_tag_name_is_distinct_and_model_version_tags_live_here():
    names = {k: v for k, v in vars(schema).items() if k.endswith("_TAG") and isinstance(v, str)}
    assert len(set(names.values())) == len(names), "two tag constants name the same tag"
    assert {"RUN_TAG", "METRIC_TAG", "METRIC_NAME_TAG", "HIGHER_TAG"} <= set(names)
    assert all(v.startswith((schema.TAG_PREFIX, "mlflow.")) for v in names.values())
