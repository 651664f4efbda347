"""`medtl pretrain`: pretrain an architecture on the pseudo-labelled archive, register the best checkpoint."""

from __future__ import annotations

import argparse
import os

from medtl.mlops.cli import add_tracking_uri
from medtl.mlops.commands.run import add_spec_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain on an ingested, pseudo-labelled archive and register the model",
        description=(
            "Pretrain one architecture on a folder written by `medtl ingest` + `medtl pseudolabel`: "
            "cluster classification (cross-entropy, AdamW, class-balanced oversampling) for classifier "
            "architectures, image reconstruction (MSE) for the vanilla U-Net. Logged as stage pretrain "
            "in experiment medtl/pretrain; the best checkpoint becomes a new version of "
            "pretrained-<arch>[-<modality>], and alias champion moves only if it validates better. "
            "Multi-GPU: torchrun --nproc_per_node=N -m medtl.mlops.cli pretrain ..."
        ),
    )
    p.add_argument("--arch", required=True, help="e.g. resnet18, densenet121, unet (with --objective reconstruction)")
    p.add_argument("--data", required=True, help="ingest output folder with pseudo-labels")
    p.add_argument("--modality", default="all", help="all | MR | CR | CT (default all)")
    p.add_argument("--objective", default="classification", help="classification | reconstruction")
    add_spec_arguments(p)
    add_tracking_uri(p)
    p.set_defaults(func=run)


def pretrain(spec, *, tracking_uri: str | None = None, device: str = "auto"):
    """Run one pretraining spec as a tracked run and register its best checkpoint (rank 0).

    Returns `(RunOutcome, Registered | None)`; other ranks of a torchrun job return `(outcome, None)`.
    """
    import shutil

    from medtl.mlops import tracking as T
    from medtl.mlops.registry import log_registered_version
    from medtl.mlops.runner import run_job, work_root
    from medtl.training.loop import world
    from medtl.training.pretrain import PretrainJob

    uri = T.resolve_tracking_uri(tracking_uri)
    workdir = work_root() / f"pretrain-{spec.run_key}"
    job = PretrainJob.prepare(spec, workdir, device=device)
    name = f"pretrain {spec.arch.value} {spec.modality.value} {spec.objective.value} lr={spec.lr:g} seed={spec.seed}"
    tags = {
        T.STAGE_TAG: "pretrain",
        "medtl.arch": spec.arch.value,
        "medtl.modality": spec.modality.value,
        "medtl.objective": spec.objective.value,
        "medtl.registered_model": spec.registered_name,
    }
    note = (
        f"Pretraining of {spec.arch.value} on {spec.modality.value} images of {spec.data} "
        f"({spec.objective.value}), lr {spec.lr:g}, seed {spec.seed}; registers {spec.registered_name}; "
        f"spec {spec.run_key}."
    )
    outcome = run_job(job, experiment="medtl/pretrain", name=name, tags=tags, tracking_uri=uri, description=note)
    if world()[0] != 0:
        return outcome, None
    metric_name = f"best_val_{job.adapter.primary}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_run(outcome.run_id).info.experiment_id
    registered = log_registered_version(
        client,
        tracking_uri=uri,
        experiment_id=experiment_id,
        name=spec.registered_name,
        network=job.model,
        best_path=job.checkpointer.best_path,
        image_size=job.image_size,
        run_id=outcome.run_id,
        metric_name=metric_name,
        metric=outcome.metrics.get(metric_name, float("nan")),
        higher_is_better=job.adapter.primary_higher_is_better,
        tags={f"spec.{k}": v for k, v in spec.to_params().items()},
        description=f"{note} Best {metric_name} {outcome.metrics.get(metric_name, float('nan')):.4g}; run {outcome.run_id}.",
    )
    client.set_tag(outcome.run_id, "medtl.model_version", f"{registered.name}/{registered.version}")
    shutil.rmtree(workdir, ignore_errors=True)
    return outcome, registered


def _init_distributed(device: str) -> str:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA); returns this rank's device."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def run(args: argparse.Namespace) -> int:
    from medtl.training.spec import PretrainSpec

    spec = PretrainSpec(
        arch=args.arch,
        data=args.data,
        modality=args.modality,
        objective=args.objective,
        lr=args.lr,
        seed=args.seed,
        max_epochs=args.max_epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        image_size=args.image_size,
    )
    from medtl.mlops.signals import install_stop_handlers

    install_stop_handlers()  # SIGTERM like Ctrl-C: the run ends KILLED, resumable from last.pt
    device = _init_distributed(args.device)
    try:
        outcome, registered = pretrain(spec, tracking_uri=args.tracking_uri, device=device)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if registered is not None:
        status = "now champion" if registered.champion else "champion unchanged (the current one validates better)"
        print(f"pretrain run {outcome.run_id} FINISHED; registered {registered.name} version {registered.version}: {status}")
    return 0
