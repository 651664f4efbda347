"""Initialisation as data: random, ImageNet (torchvision's weights API) or domain weights, loaded strictly.

Source keys are normalised by rule (wrappers `model_state` / `state_dict` / medtl checkpoints; the
prefixes `module.`, `_orig_mod.`, `model.`, `body.`; torchvision's legacy DenseNet names; doubled
tensors merged when equal). Only the head — for U-Nets the decoder — may be missing, and only the
source's classifier and rule-listed keys (InceptionV3's `AuxLogits.`) may be left over. Anything
else raises `WeightTransferError` naming the keys. Every load returns a transfer report.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torchvision.models as tvm

from medtl.errors import UserError
from medtl.training.archs import ARCHS, ArchSpec
from medtl.training.checkpoint import FORMAT, CheckpointError, load_checkpoint
from medtl.training.spec import Init, RunSpec, SpecError

PREFIXES = ("module.", "_orig_mod.", "model.", "body.")
HEAD_PREFIX = "head."
WRAPPERS = ("model_state", "state_dict")
OFFLINE_ENV = "MEDTL_OFFLINE"
_DENSENET_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
_SHOW = 5


class WeightTransferError(UserError):
    """Weights that do not fit the model: missing backbone tensors, foreign keys, shape mismatches."""


class WeightsUnavailableError(UserError):
    """ImageNet weights are neither in the torch hub cache nor downloadable."""


class InitSourceError(UserError):
    """An init source medtl cannot open here (e.g. a `models:/` URI nobody resolved)."""


@dataclass
class SourceWeights:
    """A weights file normalised to torchvision key names, its head kept apart."""

    source: str
    format: str
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)
    meta_arch: str | None = None


def _show(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f", … (+{len(keys) - _SHOW})" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def imagenet_cache_path(arch: ArchSpec, member: str = "IMAGENET1K_V1") -> Path:
    """Where torchvision reads the weights of `arch`: `$TORCH_HOME/hub/checkpoints/<file of the URL>`."""
    url = imagenet_weights(arch, member).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def imagenet_weights(arch: ArchSpec, member: str = "IMAGENET1K_V1") -> Any:
    """The torchvision weights member `member` of `arch` (pinned `IMAGENET1K_V1` by default)."""
    enum = getattr(tvm, arch.weights_enum) if arch.weights_enum else None
    if enum is None:
        raise SpecError(f"{arch.name.value} has no ImageNet weights; valid inits: random, domain")
    try:
        return enum[member]
    except KeyError:
        valid = ", ".join(m.name for m in enum)
        raise SpecError(f"unknown weights {member!r} for {arch.name.value}; valid: {valid}") from None


def load_imagenet_state(arch: ArchSpec, member: str = "IMAGENET1K_V1") -> dict[str, torch.Tensor]:
    """The ImageNet state_dict through torchvision's weights API (the torch hub cache first).

    Raises:
        WeightsUnavailableError: no cached file and no download possible (or `MEDTL_OFFLINE` set).
        WeightTransferError: the cached file is unreadable.
    """
    weights = imagenet_weights(arch, member)
    path = imagenet_cache_path(arch, member)
    hint = f"place the file at {path} (e.g. `medtl weights fetch --archs {arch.torchvision_name}` on a connected machine, then copy $TORCH_HOME/hub/checkpoints)"
    if not path.is_file() and os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise WeightsUnavailableError(f"ImageNet weights for {arch.name.value} are not cached and {OFFLINE_ENV} is set: {hint}")
    try:
        state = weights.get_state_dict(progress=False, map_location="cpu", weights_only=True)
    except OSError as exc:  # URLError, HTTPError, socket errors are all OSError
        reason = str(getattr(exc, "reason", exc)).splitlines()[0]
        raise WeightsUnavailableError(
            f"ImageNet weights for {arch.name.value} are not cached and cannot be downloaded from {weights.url} ({reason}): {hint}"
        ) from None
    except Exception as exc:  # torch.load raises several types for corrupt files
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightTransferError(f"cached ImageNet weights {path} are unreadable ({text}); delete the file and fetch again") from None
    if not isinstance(state, dict):
        raise WeightTransferError(f"cached ImageNet weights {path} hold a {type(state).__name__}, not a state_dict")
    return state


def _unwrap(payload: dict[str, Any], source: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    if payload.get("format") == FORMAT and isinstance(payload.get("model"), dict):
        return payload["model"], FORMAT, payload.get("meta") or {}
    for key in WRAPPERS:
        if isinstance(payload.get(key), dict):
            return payload[key], f"wrapped:{key}", {}
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload, "state_dict", {}
    keys = ", ".join(sorted(map(str, payload))[:_SHOW])
    raise CheckpointError(
        f"{source} is not a weights file: a dict with keys {keys}, not a medtl checkpoint, "
        f"a state_dict or a wrapper holding one ({', '.join(WRAPPERS)})"
    )


def normalize(payload: dict[str, Any], source: str) -> SourceWeights:
    """Unwrap `payload` and rename its keys to torchvision's names by rule, keeping the head apart."""
    state, fmt, meta = _unwrap(payload, source)
    spec_meta = meta.get("spec") if isinstance(meta.get("spec"), dict) else {}
    meta_arch = spec_meta.get("arch") or meta.get("arch")
    counts: dict[str, int] = {}
    backbone: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    for raw, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{source}: entry {raw!r} is a {type(tensor).__name__}, not a tensor")
        key = str(raw)
        stripped = True
        while stripped:
            stripped = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    counts[f"stripped {prefix}"] = counts.get(f"stripped {prefix}", 0) + 1
                    stripped = True
        target = backbone
        if fmt == FORMAT and key.startswith(HEAD_PREFIX):
            key, target = key[len(HEAD_PREFIX):], head
        legacy = _DENSENET_LEGACY.match(key)
        if legacy:
            key = legacy.group(1) + legacy.group(2)
            counts["renamed legacy DenseNet keys"] = counts.get("renamed legacy DenseNet keys", 0) + 1
        if key in target:
            if target[key].shape != tensor.shape or not torch.equal(target[key], tensor):
                raise WeightTransferError(f"{source}: two different tensors map to {key!r} after removing wrapper prefixes")
            counts["merged duplicate tensors"] = counts.get("merged duplicate tensors", 0) + 1
            continue
        target[key] = tensor
    rules = ([f"unwrapped {fmt.removeprefix('wrapped:')}"] if fmt != "state_dict" else []) + [
        f"{rule} ({n} keys)" for rule, n in counts.items()
    ]
    return SourceWeights(source, fmt, backbone, head, rules, str(meta_arch) if meta_arch else None)


def read_weights(path: str | Path) -> SourceWeights:
    """A medtl checkpoint, a released RadiologyNET `.pth` or a plain state_dict, normalised."""
    return normalize(load_checkpoint(path), str(path))


def _guess_arch(keys: set[str]) -> str | None:
    """The registry classifier whose key names best match `keys` (built on the meta device)."""
    best, score = None, 0.0
    with torch.device("meta"):
        for arch, spec in ARCHS.items():
            names = set(spec.build_torchvision().state_dict())
            overlap = len(names & keys) / max(len(names | keys), 1)
            if overlap > score:
                best, score = arch.value, overlap
    return best if score >= 0.8 else None


def transfer(body: nn.Module, head: nn.Module, weights: SourceWeights, arch: ArchSpec) -> dict[str, Any]:
    """Load `weights` into `body` (and a U-Net decoder when the source holds a matching one), strictly.

    Returns:
        The transfer report: source, format, loaded, total, missing, unexpected, rules.

    Raises:
        WeightTransferError: backbone tensors missing, foreign keys or shape mismatches.
    """
    compatible = {arch.name.value, *([arch.backbone.value] if arch.backbone else [])}
    if weights.meta_arch and weights.meta_arch not in compatible and not _is_unet_of(weights.meta_arch, arch):
        raise WeightTransferError(
            f"{weights.source} holds a {weights.meta_arch} model (per its metadata), which cannot initialise "
            f"{arch.name.value}; valid source architectures: {', '.join(sorted(compatible))}"
        )
    target = body.state_dict()
    drop_prefixes = [(arch.classifier_container if arch.is_unet else arch.classifier) + ".", *arch.dropped_source_keys]
    drop_prefixes = [p for p in drop_prefixes if p != "."]
    matched: dict[str, torch.Tensor] = {}
    unexpected, dropped, mismatched = [], [], []
    for key, tensor in weights.backbone.items():
        if key in target:
            if tuple(tensor.shape) != tuple(target[key].shape):
                mismatched.append(f"{key} {list(tensor.shape)} vs model {list(target[key].shape)}")
            else:
                matched[key] = tensor
        elif any(key.startswith(p) for p in drop_prefixes):
            dropped.append(key)
        else:
            unexpected.append(key)
    missing = [k for k in target if k not in matched and not k.endswith("num_batches_tracked")]
    defaulted = [k for k in target if k not in matched and k.endswith("num_batches_tracked")]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} backbone tensors missing ({_show(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_show(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches ({_show(mismatched)})")
        foreign = unexpected or len(missing) > len(target) // 10
        guess = weights.meta_arch or (_guess_arch(set(weights.backbone)) if foreign else None)
        hint = f"; the file looks like {guess}" if guess and guess not in compatible else ""
        raise WeightTransferError(f"weights from {weights.source} do not fit {arch.name.value}: {'; '.join(parts)}{hint}")
    body.load_state_dict(matched, strict=False)
    head_state = head.state_dict()
    head_loaded = bool(weights.head) and arch.is_unet and set(weights.head) == set(head_state) and all(
        tuple(weights.head[k].shape) == tuple(v.shape) for k, v in head_state.items()
    )
    if head_loaded:
        head.load_state_dict(weights.head)
    else:
        dropped.extend(HEAD_PREFIX + k for k in weights.head)
    loaded = len(matched) + (len(head_state) if head_loaded else 0)
    return {
        "source": weights.source,
        "format": weights.format,
        "loaded": loaded,
        "total": len(target) + len(head_state),
        "body_tensors": len(target),
        "head_loaded": head_loaded,
        "missing": [] if head_loaded else [HEAD_PREFIX + k for k in head_state],
        "unexpected": sorted(dropped),
        "defaulted": defaulted,
        "rules": weights.rules,
        "source_arch": weights.meta_arch,
    }


def _is_unet_of(source_arch: str, arch: ArchSpec) -> bool:
    return source_arch == f"unet_{arch.name.value}"


def _imagenet_source(run: RunSpec, arch: ArchSpec) -> SourceWeights:
    source = run.init_source
    if source.startswith("torchvision:"):
        _, name, member = (source.split(":") + ["", ""])[:3]
        if name not in (arch.name.value, arch.torchvision_name):
            raise SpecError(f"init-source {source!r} names {name!r}, not {arch.name.value}")
        state = load_imagenet_state(arch, member or "IMAGENET1K_V1")
        report_source = f"torchvision:{arch.torchvision_name}:{member or 'IMAGENET1K_V1'}"
        return normalize(state, report_source)
    return _file_source(source)


def _file_source(source: str) -> SourceWeights:
    if source.startswith("models:/") or ("://" in source and not source.startswith("file://")):
        raise InitSourceError(
            f"init-source {source!r} is a registry or remote URI: `medtl run` resolves it into a local file; "
            "name a local checkpoint file here, or run through `medtl run`"
        )
    return read_weights(source.removeprefix("file://"))


def initialise(
    body: nn.Module, head: nn.Module, run: RunSpec, arch: ArchSpec, *, init_path: Path | None = None
) -> dict[str, Any]:
    """Initialise `body` (and a U-Net decoder where the source has one) as `run.init` says.

    `init_path`, when given, is a local weights file resolved by the caller; it overrides
    `run.init_source`. Returns the transfer report (`init` and `arch` included).
    """
    total = len(body.state_dict()) + len(head.state_dict())
    base = {"init": run.init.value, "arch": arch.name.value}
    if run.init is Init.RANDOM:
        if init_path is not None:
            raise SpecError("an init file applies to init 'imagenet' or 'domain' only, not 'random'")
        return {**base, "source": "random", "format": "none", "loaded": 0, "total": total, "body_tensors": len(body.state_dict()),
                "head_loaded": False, "missing": [], "unexpected": [], "defaulted": [], "rules": []}
    if init_path is not None:
        weights = read_weights(init_path)
    elif run.init is Init.IMAGENET:
        weights = _imagenet_source(run, arch)
    else:
        weights = _file_source(run.init_source)
    return {**base, **transfer(body, head, weights, arch)}
