"""U-Nets: encoders keep torchvision's key names, skips come from every stage, masks at input size."""

from __future__ import annotations

import pytest
import torch

from medtl.training.archs import get_arch
from medtl.training.unet import LAYOUTS, VanillaEncoder, build_unet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["unet_resnet50", "unet_vgg16", "unet_efficientnet_b4"])
def test_encoder_keys_are_torchvision_keys_minus_classifier(name):
    spec = get_arch(name)
    with torch.device("meta"):
        encoder, _ = build_unet(spec)
        reference = spec.build_torchvision().state_dict()
    container = spec.classifier_container + "."
    expected = {k for k in reference if not k.startswith(container)}
    assert set(encoder.state_dict()) == expected


@pytest.mark.parametrize("name", ["unet_resnet50", "unet_vgg16", "unet_efficientnet_b4"])
def test_skips_have_layout_channels_and_halving_resolution(name):
    spec = get_arch(name)
    with torch.device("meta"):
        encoder, decoder = build_unet(spec)
        features = encoder(torch.zeros(1, 3, 64, 64))
        mask = decoder(features, (64, 64))
    assert tuple(f.shape[1] for f in features) == LAYOUTS[spec.backbone].channels
    sides = [f.shape[-1] for f in features]
    assert sides == sorted(sides, reverse=True) and sides[-1] < sides[0] and len(set(sides)) == len(sides)
    assert tuple(mask.shape) == (1, 1, 64, 64)


def test_vanilla_unet_depth_three_16_32_64():
    encoder, decoder = build_unet(get_arch("unet"))
    assert isinstance(encoder, VanillaEncoder) and encoder.channels == (16, 32, 64)
    features = encoder(torch.rand(2, 3, 21, 21))  # odd size: the decoder resizes to each skip
    assert [f.shape[1] for f in features] == [16, 32, 64]
    assert [f.shape[-1] for f in features] == [21, 10, 5]
    assert tuple(decoder(features, (21, 21)).shape) == (2, 1, 21, 21)


def test_backbone_unet_mask_matches_odd_input_size():
    torch.manual_seed(0)
    encoder, decoder = build_unet(get_arch("unet_resnet50"))
    encoder.eval(), decoder.eval()
    with torch.no_grad():
        mask = decoder(encoder(torch.rand(1, 3, 45, 37)), (45, 37))
    assert tuple(mask.shape) == (1, 1, 45, 37)
