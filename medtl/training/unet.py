"""U-Nets: the vanilla U-Net and U-Nets whose encoder is a torchvision backbone, as encoder + decoder.

The encoder is the `Network` body and returns its feature maps shallow → deep; the decoder is the
head and turns them into mask logits at the input resolution. A backbone encoder keeps the
torchvision module names (`conv1`, `layer1`, `features.3` ...), so ImageNet weights and domain
weights of the classifier load into it by name; only the classifier part of the source is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from medtl.training.archs import ArchSpec
from medtl.training.spec import Arch, SpecError

VANILLA_FILTERS = (16, 32, 64)


@dataclass(frozen=True)
class EncoderLayout:
    """Where a backbone's stages end: module paths run in order, and each stage's output channels."""

    stages: tuple[tuple[str, ...], ...]
    channels: tuple[int, ...]


def _seq(prefix: str, start: int, stop: int) -> tuple[str, ...]:
    return tuple(f"{prefix}.{i}" for i in range(start, stop))


# Skip connections from every resolution the backbone passes through (strides 2..32; VGG 1..16).
LAYOUTS: dict[Arch, EncoderLayout] = {
    Arch.RESNET50: EncoderLayout(
        (("conv1", "bn1", "relu"), ("maxpool", "layer1"), ("layer2",), ("layer3",), ("layer4",)),
        (64, 256, 512, 1024, 2048),
    ),
    Arch.VGG16: EncoderLayout(
        (_seq("features", 0, 4), _seq("features", 4, 9), _seq("features", 9, 16),
         _seq("features", 16, 23), _seq("features", 23, 30)),
        (64, 128, 256, 512, 512),
    ),
    Arch.EFFICIENTNET_B4: EncoderLayout(
        (_seq("features", 0, 2), ("features.2",), ("features.3",), _seq("features", 4, 6),
         _seq("features", 6, 9)),
        (24, 32, 56, 160, 1792),
    ),
}
BACKBONE_DECODER = (256, 128, 64, 32)
REFINE_CHANNELS = 16


class ConvBlock(nn.Sequential):
    """(3×3 conv → batch norm → ReLU) twice."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class VanillaEncoder(nn.Module):
    """The study's vanilla U-Net encoder: depth 3, 16/32/64 filters, 2×2 max pooling between levels."""

    def __init__(self, in_channels: int = 3, filters: tuple[int, ...] = VANILLA_FILTERS) -> None:
        super().__init__()
        chans = (in_channels, *filters)
        self.blocks = nn.ModuleList(ConvBlock(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.channels = tuple(filters)
        self.strides = tuple(2**i for i in range(len(filters)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, block in enumerate(self.blocks):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            features.append(x)
        return features


class BackboneEncoder(nn.Module):
    """A torchvision backbone without its classifier, returning the output of every stage.

    Holds the backbone's own top-level modules under their own names, so its state_dict keys are
    exactly the torchvision model's keys minus the classifier (and pooling) part.
    """

    def __init__(self, model: nn.Module, layout: EncoderLayout) -> None:
        super().__init__()
        keep = {path.split(".")[0] for stage in layout.stages for path in stage}
        for name, child in model.named_children():
            if name in keep:
                self.add_module(name, child)
        self.layout = layout
        self.channels = layout.channels
        self._stages = [[self.get_submodule(p) for p in stage] for stage in layout.stages]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self._stages:
            for module in stage:
                x = module(x)
            features.append(x)
        return features


class UNetDecoder(nn.Module):
    """Upsample the deepest features level by level, concatenating each skip; mask logits at input size.

    When the shallowest skip is coarser than the input (backbone encoders start at stride 2), a
    last block refines the features after upsampling to the input resolution.
    """

    def __init__(
        self, encoder_channels: tuple[int, ...], decoder_channels: tuple[int, ...], refine: int = 0, out_channels: int = 1
    ) -> None:
        super().__init__()
        skips = tuple(reversed(encoder_channels[:-1]))
        if len(decoder_channels) != len(skips):
            raise ValueError(f"{len(skips)} skip levels need {len(skips)} decoder widths, got {decoder_channels}")
        blocks = []
        cin = encoder_channels[-1]
        for skip, cout in zip(skips, decoder_channels):
            blocks.append(ConvBlock(cin + skip, cout))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.refine = ConvBlock(cin, refine) if refine else None
        self.last = nn.Conv2d(refine or cin, out_channels, kernel_size=1)
        self.out_channels = out_channels

    def forward(self, features: list[torch.Tensor], size: tuple[int, int] | torch.Size) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        if self.refine is not None:
            x = self.refine(x)
        return self.last(x)


def build_encoder(spec: ArchSpec, in_channels: int = 3) -> nn.Module:
    """The U-Net's encoder: the vanilla one, or the backbone's stages (torchvision key names)."""
    if not spec.is_unet:
        raise SpecError(f"{spec.name.value} is not a U-Net")
    if spec.backbone is None:
        return VanillaEncoder(in_channels)
    return BackboneEncoder(spec.build_torchvision(), LAYOUTS[spec.backbone])


def build_decoder(spec: ArchSpec, encoder: nn.Module, out_channels: int = 1) -> UNetDecoder:
    """The decoder matching `encoder`: mirrored widths for the vanilla U-Net, 256→32 (+16) otherwise."""
    channels = tuple(encoder.channels)
    if spec.backbone is None:
        return UNetDecoder(channels, tuple(reversed(channels[:-1])), out_channels=out_channels)
    return UNetDecoder(channels, BACKBONE_DECODER, refine=REFINE_CHANNELS, out_channels=out_channels)


def build_unet(spec: ArchSpec, in_channels: int = 3, out_channels: int = 1) -> tuple[nn.Module, UNetDecoder]:
    """Encoder and decoder of the U-Net `spec`."""
    encoder = build_encoder(spec, in_channels)
    return encoder, build_decoder(spec, encoder, out_channels)
