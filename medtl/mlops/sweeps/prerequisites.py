"""What the imagenet and domain arms need before a sweep enqueues them, checked once, up front.

ImageNet weights come from torchvision's cache or a download; where neither works (offline), the
sweep says so once — naming the cache path and `medtl weights fetch` — and leaves those points
out rather than failing each of them. The domain arm needs `pretrained-<arch>[-<modality>]@champion`:
if the study has a `pretrain:` section, missing ones are pretrained now; otherwise those points are
left out with one line saying which `medtl pretrain` to run. Points left out are enqueued by a later
sweep once their weights exist.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient

from medtl.mlops.sweeps.study import Study
from medtl.mlops.tracking.registry import champion
from medtl.training.spec import Arch, Init, Modality, PretrainSpec, RunSpec

log = logging.getLogger(__name__)


@dataclass
class Readiness:
    ready: list[RunSpec]
    held_back: list[RunSpec] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def _imagenet_problem(arch: Arch, task_type) -> str | None:
    from medtl.training.archs import arch_for_task
    from medtl.training.init import (
        WeightsUnavailableError,
        imagenet_cache_path,
        load_imagenet_state,
    )

    spec = arch_for_task(arch, task_type)
    if imagenet_cache_path(spec).is_file():
        return None
    try:
        load_imagenet_state(spec)  # torchvision downloads into its cache when it can
    except WeightsUnavailableError as exc:
        return str(exc)
    return None


def _domain_source(spec: RunSpec) -> tuple[str, Modality] | None:
    """(`pretrained-…` registered name, modality) of a domain spec using the default registry source."""
    if spec.init is not Init.DOMAIN or not spec.init_source.startswith("models:/pretrained-"):
        return None
    name = spec.init_source.removeprefix("models:/").split("@")[0]
    return name, spec.pretrain_modality


def check(
    study: Study,
    specs: list[RunSpec],
    client: MlflowClient,
    *,
    pretrain: Callable[[PretrainSpec], object] | None = None,
) -> Readiness:
    """Split `specs` into ready and held back; pretrain missing domain models when the study says how."""
    from medtl.training.spec import TASKS

    result = Readiness(ready=[])
    imagenet_problems: dict[Arch, str | None] = {}
    domain_missing: dict[str, bool] = {}
    for spec in specs:
        if spec.init is Init.IMAGENET:
            if spec.arch not in imagenet_problems:
                imagenet_problems[spec.arch] = _imagenet_problem(spec.arch, TASKS[spec.task].type)
                if imagenet_problems[spec.arch]:
                    result.messages.append(f"imagenet arm of {spec.arch.value} left out: {imagenet_problems[spec.arch]}")
            if imagenet_problems[spec.arch]:
                result.held_back.append(spec)
                continue
        source = _domain_source(spec)
        if source is not None:
            name, modality = source
            if name not in domain_missing:
                domain_missing[name] = champion(client, name) is None
                if domain_missing[name] and study.pretrain is not None and pretrain is not None:
                    arch = name.removeprefix("pretrained-").removesuffix(f"-{modality.value}")
                    objective = "reconstruction" if arch == Arch.UNET.value else "classification"
                    settings = {k: v for k, v in study.pretrain.items() if k != "data"}
                    pspec = PretrainSpec(arch=arch, data=str(study.pretrain["data"]), modality=modality, objective=objective, **settings)
                    print(f"[sweep] pretraining {name} for the domain arm ...", flush=True)
                    pretrain(pspec)
                    domain_missing[name] = champion(client, name) is None
                if domain_missing[name]:
                    arch = name.removeprefix("pretrained-").removesuffix(f"-{modality.value}")
                    flag = "" if modality is Modality.ALL else f" --modality {modality.value}"
                    result.messages.append(
                        f"domain arm with {name} left out: nothing registered; run `medtl pretrain --arch {arch} --data DIR{flag}`"
                        " or add a pretrain: section to the study"
                    )
            if domain_missing[name]:
                result.held_back.append(spec)
                continue
        result.ready.append(spec)
    return result
