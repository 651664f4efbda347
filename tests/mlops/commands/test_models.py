"""`medtl models` and `medtl weights`: the zoo table, the cache status, fetching for air-gapped clusters."""

from __future__ import annotations

import json

import torch

from medtl.mlops.cli import main
from medtl.training.archs import get_arch
from medtl.training.init import imagenet_cache_path


def test_models_json_lists_every_architecture(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["arch"]: r for r in json.loads(capsys.readouterr().out)}
    assert len(rows) == 14
    assert rows["inception_v3"]["input_size"] == 299 and rows["inception_v3"]["min_size"] == 75
    assert rows["unet"]["task_types"] == ["segmentation"] and rows["unet"]["imagenet"] is False
    assert rows["resnet18"]["task_types"] == ["binary", "multiclass", "regression"]
    # resnet18: 11,176,512 backbone parameters + a 512→1 binary head.
    assert rows["resnet18"]["parameters"] == 11_176_512 + 513


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["architecture", "input", "min"]
    assert any(line.startswith("efficientnet_b4") and " 380 " in line for line in out)


def test_weights_status_shows_cache_path_and_presence(capsys):
    path = imagenet_cache_path(get_arch("resnet18"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * 2048)
    assert main(["weights", "status", "--archs", "resnet18", "unet_resnet50", "--json"]) == 0
    rows = {r["arch"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"resnet18", "resnet50"}  # a U-Net stands for its encoder's backbone
    assert rows["resnet18"]["present"] and rows["resnet18"]["bytes"] == 2048 and rows["resnet18"]["path"] == str(path)
    assert not rows["resnet50"]["present"] and rows["resnet50"]["path"].endswith("resnet50-0676ba61.pth")


def test_fetch_failure_is_one_line_naming_url_and_path(capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert main(["weights", "fetch", "--archs", "mobilenet_v3_small"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # torch's "Downloading: ..." notice, then the error
    err = lines[-1]
    path = imagenet_cache_path(get_arch("mobilenet_v3_small"))
    assert err.startswith("medtl weights: error: cannot fetch") and str(path) in err
    assert "https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth" in err


def test_fetch_places_the_file_and_imagenet_init_then_works(capsys, monkeypatch):
    state = {k: v.clone() for k, v in __import__("torchvision").models.mobilenet_v3_small().state_dict().items()}

    def fake_download(url, dst, hash_prefix=None, progress=True):
        assert url.endswith("mobilenet_v3_small-047dcff4.pth") and hash_prefix == "047dcff4"
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert main(["weights", "fetch", "--archs", "mobilenet_v3_small", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["present"] and rows[0]["bytes"] > 0

    from medtl.training.factory import build_model
    from medtl.training.spec import TASKS, RunSpec

    spec = RunSpec(task="demo-binary", arch="mobilenet_v3_small", init="imagenet", image_size=32)
    net = build_model(spec, TASKS[spec.task])
    assert net.transfer_report["loaded"] == len(net.body.state_dict())


def test_fetch_reads_archs_from_a_study_file(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("name: s\ntasks:\n  demo-binary: {archs: [resnet18, mobilenet_v3_small]}\n  luna16: {archs: [unet]}\n")
    assert main(["weights", "status", "--study", str(study), "--json"]) == 0
    assert [r["arch"] for r in json.loads(capsys.readouterr().out)] == ["resnet18", "mobilenet_v3_small"]
    assert main(["weights", "fetch", "--study", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml does not exist" in capsys.readouterr().err
    bare = tmp_path / "bare.yaml"
    bare.write_text("name: s\n")
    assert main(["weights", "status", "--study", str(bare)]) == 2
    assert "no `tasks:" in capsys.readouterr().err
