"""PretrainSpec → a tracked pretraining run (stage `pretrain`) whose best checkpoint is registered.

The sibling of `medtl.mlops.tracking.runner.run_spec`: `medtl pretrain` and a sweep that must first pretrain
a domain arm's weights both call `run_pretrain`; neither the sweep nor any other orchestration
imports a command module.
"""

from __future__ import annotations

import logging
import shutil
from typing import TYPE_CHECKING

from medtl.knobs import promotion_wait_s, torchrun_world
from medtl.training import schema as S

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from medtl.mlops.tracking.registry import Registered
    from medtl.mlops.tracking.runner import RunOutcome
    from medtl.training.spec import PretrainSpec


def run_pretrain(
    spec: PretrainSpec, *, tracking_uri: str | None = None, device: str = "auto"
) -> tuple[RunOutcome, Registered | None]:
    """Run one pretraining spec as a tracked run and register its best checkpoint (rank 0).

    Args:
        spec: what to pretrain (architecture, archive folder, modality, objective, lr, seed, ...).
        tracking_uri: MLflow tracking URI; None means `resolve_tracking_uri`'s default.
        device: auto, cpu, cuda, cuda:1 ...

    Returns:
        `(RunOutcome, Registered | None)`; other ranks of a torchrun job return `(outcome, None)`.
    """
    from mlflow.tracking import MlflowClient

    from medtl.errors import UserError
    from medtl.mlops.tracking.registry import log_registered_version
    from medtl.mlops.tracking.runner import run_recipe, work_root
    from medtl.training.pretrain import PretrainRecipe
    from medtl.training.runtime import world

    uri = S.resolve_tracking_uri(tracking_uri)
    promotion_wait_s()  # the registration's promotion reads it: a mistyped value fails now, not after training
    workdir = work_root() / f"pretrain-{spec.run_key}"
    recipe = PretrainRecipe.prepare(spec, workdir, device=device)
    name = f"pretrain {spec.arch.value} {spec.modality.value} {spec.objective.value} lr={spec.lr:g} seed={spec.seed}"
    tags = {
        S.STAGE_TAG: S.Stage.PRETRAIN.value,
        S.ARCH_TAG: spec.arch.value,
        S.MODALITY_TAG: spec.modality.value,
        S.OBJECTIVE_TAG: spec.objective.value,
        S.REGISTERED_MODEL_TAG: spec.registered_name,
    }
    note = (
        f"Pretraining of {spec.arch.value} on {spec.modality.value} images of {spec.data} "
        f"({spec.objective.value}), lr {spec.lr:g}, seed {spec.seed}; registers {spec.registered_name}; "
        f"spec {spec.run_key}."
    )
    outcome = run_recipe(recipe, experiment=S.PRETRAIN_EXPERIMENT, name=name, tags=tags, tracking_uri=uri, description=note)
    if world()[0] != 0:
        return outcome, None
    best = outcome.result.best_checkpoint if outcome.result is not None else None
    if best is None:
        raise UserError(f"pretraining run {outcome.run_id} saved no best checkpoint (no finite validation loss); nothing registered")
    metric_name = f"best_val_{recipe.adapter.primary}"
    client = MlflowClient(uri)
    experiment_id = client.get_run(outcome.run_id).info.experiment_id
    registered = log_registered_version(
        client,
        tracking_uri=uri,
        experiment_id=experiment_id,
        name=spec.registered_name,
        network=recipe.model,
        best_path=best,
        image_size=recipe.image_size,
        run_id=outcome.run_id,
        metric_name=metric_name,
        metric=outcome.metrics.get(metric_name, float("nan")),
        higher_is_better=recipe.adapter.primary_higher_is_better,
        tags={f"{S.SPEC_TAG_PREFIX}{k}": v for k, v in spec.to_params().items()},
        description=f"{note} Best {metric_name} {outcome.metrics.get(metric_name, float('nan')):.4g}; run {outcome.run_id}.",
    )
    client.set_tag(outcome.run_id, S.MODEL_VERSION_TAG, f"{registered.name}/{registered.version}")
    shutil.rmtree(workdir, ignore_errors=True)
    return outcome, registered


def init_distributed(device: str) -> str:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA); returns this rank's device.

    Outside torchrun (`WORLD_SIZE` unset or 1), or when a group is already up, returns `device` unchanged.
    """
    import torch
    import torch.distributed as dist

    world_size, local = torchrun_world()
    if world_size <= 1 or dist.is_initialized():
        return device
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def close_distributed(wait: bool = True) -> None:
    """Tear down the process group `init_distributed` joined, if any.

    Args:
        wait: first wait at a barrier for every rank (the success path): rank 0 still logs and
            registers after the fit, and a rank that tears gloo down while a peer is busy can abort
            (`terminate called without an active exception`), which makes torchrun kill rank 0 mid-write.
            False on an error path, where a peer may never reach the barrier.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait:
        try:
            dist.barrier()
        except Exception as exc:  # a peer already gone: tear down anyway
            log.warning("ranks did not meet before shutdown: %s", exc)
    dist.destroy_process_group()
