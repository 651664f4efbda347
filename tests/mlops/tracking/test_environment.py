"""Source and environment tags: the command never a path, the versions a result depends on."""

from __future__ import annotations

import platform

import torch
import torchvision

from medtl.mlops.tracking.environment import environment_tags, source_tags
from medtl.training import schema as S


def test_source_tags_name_the_command_never_a_path(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/opt/venv/bin/medtl", "worker", "--study", "x.yaml"])
    assert source_tags()["mlflow.source.name"] == "medtl worker"
    monkeypatch.setattr("sys.argv", ["/opt/venv/bin/medtl", "/data/Doe_Jane/scans"])
    tags = source_tags()
    assert tags["mlflow.source.name"] == "medtl" and "Doe" not in str(tags)
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"
    assert source_tags(commit="abc123")["mlflow.source.git.commit"] == "abc123"


def test_environment_tags_record_versions_and_device_under_one_prefix():
    tags = environment_tags("cpu")
    assert all(k.startswith(S.ENV_TAG_PREFIX) for k in tags)
    values = {k.removeprefix(S.ENV_TAG_PREFIX): v for k, v in tags.items()}
    assert values["torch"] == str(torch.__version__) and values["torchvision"] == str(torchvision.__version__)
    assert values["python"] == platform.python_version()
    assert {"medtl", "cuda", "cuda_available", "cudnn", "device_name", "host_os"} <= set(values)
    assert values["device_name"]
