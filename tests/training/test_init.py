"""Weight transfer: ImageNet through torchvision's cache path, domain checkpoints, strict refusals."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision.models as tvm

from medtl.errors import UserError
from medtl.training.archs import get_arch
from medtl.training.checkpoint import FORMAT, CheckpointError
from medtl.training.factory import build_model
from medtl.training.init import (
    InitSourceError,
    WeightsUnavailableError,
    WeightTransferError,
    imagenet_cache_path,
    normalize,
)
from medtl.training.spec import TASKS, RunSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def _spec(arch: str, init: str = "random", task: str = "demo-binary", **kw) -> RunSpec:
    return RunSpec(task=task, arch=arch, init=init, image_size=get_arch(arch).min_size, **kw)


def _model(spec: RunSpec, **kw):
    return build_model(spec, TASKS[spec.task], **kw)


def _body_equals(network, state: dict[str, torch.Tensor], prefix: str = "") -> None:
    body = network.body.state_dict()
    for key, value in body.items():
        assert torch.equal(value, state[prefix + key]), key


def _place_imagenet(arch: str, state: dict[str, torch.Tensor]):
    path = imagenet_cache_path(get_arch(arch))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_cache_path_is_torchvision_hub_path(tmp_path):
    path = imagenet_cache_path(get_arch("resnet18"))
    assert path == tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert get_arch("resnet50").weights.url.endswith("resnet50-0676ba61.pth")  # V1, not DEFAULT (V2)


def test_imagenet_loads_through_torchvision_cache_path():
    torch.manual_seed(1)
    state = tvm.resnet18(weights=None).state_dict()
    _place_imagenet("resnet18", state)
    net = _model(_spec("resnet18", "imagenet"))
    report = net.transfer_report
    _body_equals(net, state)
    assert report["loaded"] == len(net.body.state_dict()) == report["body_tensors"]
    assert sorted(report["missing"]) == ["head.bias", "head.weight"]
    assert sorted(report["unexpected"]) == ["fc.bias", "fc.weight"]
    assert report["source"] == "torchvision:resnet18:IMAGENET1K_V1" and report["init"] == "imagenet"
    assert net.prep.normalization.value == "imagenet"


def test_imagenet_inception_drops_auxlogits_by_rule():
    torch.manual_seed(0)
    state = tvm.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    _place_imagenet("inception_v3", state)
    net = _model(_spec("inception_v3", "imagenet"))
    report = net.transfer_report
    assert report["loaded"] == len(net.body.state_dict())
    assert any(k.startswith("AuxLogits.") for k in report["unexpected"])
    assert net.body.transform_input is False and net.body.AuxLogits is None


def test_imagenet_into_unet_encoder():
    torch.manual_seed(0)
    state = tvm.resnet50(weights=None).state_dict()
    _place_imagenet("resnet50", state)
    net = _model(_spec("unet_resnet50", "imagenet", task="demo-segmentation"))
    report = net.transfer_report
    _body_equals(net, state)
    assert report["loaded"] == len(net.body.state_dict()) and not report["head_loaded"]
    assert all(k.startswith("head.") for k in report["missing"]) and report["missing"]


def test_offline_without_cache_names_the_path(monkeypatch):
    monkeypatch.setenv("MEDTL_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as err:
        _model(_spec("mobilenet_v3_small", "imagenet"))
    path = imagenet_cache_path(get_arch("mobilenet_v3_small"))
    assert str(path) in str(err.value) and "medtl weights fetch" in str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)


def test_failed_download_names_url_and_path(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    with pytest.raises(WeightsUnavailableError) as err:
        _model(_spec("resnet18", "imagenet"))
    assert str(imagenet_cache_path(get_arch("resnet18"))) in str(err.value)
    assert "download.pytorch.org" in str(err.value)


def test_vanilla_unet_has_no_imagenet_arm():
    with pytest.raises(UserError, match="no ImageNet weights"):
        _model(_spec("unet", "imagenet", task="demo-segmentation"))


def _radiologynet(model: torch.nn.Module, doubled: bool = False) -> dict:
    inner = {f"model.{k}": v for k, v in model.state_dict().items()}
    if doubled:  # DenseNet: each tensor once under its own name and once under the wrapper
        inner.update(model.state_dict())
    return {"model_state": inner, "epoch": 12, "optimizer_state": {}, "best_loss": 0.5}


@pytest.mark.parametrize("arch,doubled", [("resnet18", False), ("densenet121", True)])
def test_domain_from_released_radiologynet_layout(tmp_path, arch, doubled):
    torch.manual_seed(2)
    source = tvm.get_model(arch, weights=None, num_classes=36)
    path = tmp_path / f"{arch}.pth"
    torch.save(_radiologynet(source, doubled), path)
    net = _model(_spec(arch, "domain", init_source=str(path)))
    report = net.transfer_report
    assert report["loaded"] == len(net.body.state_dict())
    _body_equals(net, source.state_dict())
    assert report["format"] == "wrapped:model_state"
    assert any("model." in rule for rule in report["rules"])
    if doubled:
        assert any("merged duplicate" in rule for rule in report["rules"])


def test_domain_from_medtl_checkpoint_and_init_path_override(tmp_path):
    torch.manual_seed(3)
    pretrained = _model(_spec("mobilenet_v3_small", task="demo-multiclass"))
    path = tmp_path / "best.pt"
    meta = {"spec": pretrained_spec_params("mobilenet_v3_small")}
    torch.save({"format": FORMAT, "meta": meta, "model": pretrained.state_dict()}, path)
    spec = _spec("mobilenet_v3_small", "domain")  # init_source: an unresolved models:/ URI
    net = _model(spec, init_path=path)
    assert net.transfer_report["loaded"] == len(net.body.state_dict())
    _body_equals(net, pretrained.state_dict(), prefix="body.")
    assert net.transfer_report["unexpected"] == ["head.bias", "head.weight"]


def pretrained_spec_params(arch: str) -> dict[str, str]:
    return RunSpec(task="demo-multiclass", arch=arch).to_params()


def test_unet_decoder_loads_from_unet_checkpoint(tmp_path):
    torch.manual_seed(4)
    source = _model(_spec("unet", task="demo-segmentation"))
    path = tmp_path / "unet.pt"
    torch.save({"format": FORMAT, "meta": {"arch": "unet"}, "model": source.state_dict()}, path)
    net = _model(_spec("unet", "domain", task="demo-segmentation", init_source=str(path)))
    assert net.transfer_report["head_loaded"] and net.transfer_report["loaded"] == net.transfer_report["total"]
    for key, value in source.state_dict().items():
        assert torch.equal(value, net.state_dict()[key]), key


def test_unresolved_models_uri_is_refused():
    with pytest.raises(InitSourceError, match="models:/pretrained-resnet18@champion"):
        _model(_spec("resnet18", "domain"))


def test_mismatched_backbone_tensor_is_refused(tmp_path):
    state = tvm.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save({"model_state": state}, path)
    with pytest.raises(WeightTransferError, match=r"1 shape mismatches \(layer1\.0\.conv1\.weight"):
        _model(_spec("resnet18", "domain", init_source=str(path)))


def test_missing_backbone_tensor_is_refused(tmp_path):
    state = tvm.resnet18(weights=None).state_dict()
    del state["layer4.1.bn2.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(WeightTransferError, match=r"1 backbone tensors missing \(layer4\.1\.bn2\.weight\)"):
        _model(_spec("resnet18", "domain", init_source=str(path)))


def test_checkpoint_of_another_architecture_says_which(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save({"model_state": {f"model.{k}": v for k, v in tvm.resnet34(weights=None).state_dict().items()}}, path)
    with pytest.raises(WeightTransferError, match="looks like resnet34") as err:
        _model(_spec("resnet18", "domain", init_source=str(path)))
    assert "unexpected" in str(err.value) and "\n" not in str(err.value)

    medtl = tmp_path / "mnv3.pt"
    source = _model(_spec("mobilenet_v3_small"))
    torch.save({"format": FORMAT, "meta": {"spec": pretrained_spec_params("mobilenet_v3_small")}, "model": source.state_dict()}, medtl)
    with pytest.raises(WeightTransferError, match="holds a mobilenet_v3_small model"):
        _model(_spec("resnet18", "domain", init_source=str(medtl)))


def test_truncated_and_foreign_files_give_checkpoint_errors(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model_state": tvm.resnet18(weights=None).state_dict()}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: os.path.getsize(good) // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        _model(_spec("resnet18", "domain", init_source=str(truncated)))
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    # checkpoint.py (not ours) words this one as "holds pickled objects"; the file is named either way.
    with pytest.raises(CheckpointError, match="notes.txt"):
        _model(_spec("resnet18", "domain", init_source=str(text)))
    other = tmp_path / "other.pt"
    torch.save({"epoch": 3, "lr": torch.tensor(0.1)}, other)
    with pytest.raises(CheckpointError, match="not a weights file"):
        _model(_spec("resnet18", "domain", init_source=str(other)))
    with pytest.raises(CheckpointError, match="does not exist"):
        _model(_spec("resnet18", "domain", init_source=str(tmp_path / "absent.pth")))


def test_key_rules_strip_wrappers_and_legacy_densenet_names():
    t = torch.ones(2)
    weights = normalize(
        {"state_dict": {
            "module._orig_mod.model.conv1.weight": t,
            "features.denseblock1.denselayer1.norm.1.weight": t,
        }},
        "x",
    )
    assert set(weights.backbone) == {"conv1.weight", "features.denseblock1.denselayer1.norm1.weight"}
    with pytest.raises(WeightTransferError, match="two different tensors"):
        normalize({"model.fc.weight": t, "fc.weight": torch.zeros(2)}, "x")


def test_random_init_is_seeded_and_reported():
    spec = _spec("resnet18")
    torch.manual_seed(5)
    a = _model(spec)
    torch.manual_seed(5)
    b = _model(spec)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    report = a.transfer_report
    assert report["source"] == "random" and report["loaded"] == 0 and report["total"] == len(a.state_dict())
    assert {"init", "arch", "missing", "unexpected"} <= set(report)
