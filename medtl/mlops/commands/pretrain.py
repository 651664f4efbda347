"""`medtl pretrain`: pretrain an architecture on the pseudo-labelled archive, register the best checkpoint."""

from __future__ import annotations

import argparse

from medtl.mlops.commands._args import add_spec_arguments, add_tracking_uri, spec_arguments


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


def run(args: argparse.Namespace) -> int:
    from medtl.training.spec import PretrainSpec

    spec = PretrainSpec(
        arch=args.arch, data=args.data, modality=args.modality, objective=args.objective, **spec_arguments(args)
    )
    from medtl.mlops.signals import install_stop_handlers
    from medtl.mlops.tracking.pretraining import close_distributed, init_distributed, run_pretrain

    install_stop_handlers()  # SIGTERM like Ctrl-C: the run ends KILLED, resumable from last.pt
    device = init_distributed(args.device)
    try:
        outcome, registered = run_pretrain(spec, tracking_uri=args.tracking_uri, device=device)
    except BaseException:
        close_distributed(wait=False)
        raise
    close_distributed()
    if registered is not None:
        status = "now champion" if registered.champion else "champion unchanged (the current one validates better)"
        print(f"pretrain run {outcome.run_id} FINISHED; registered {registered.name} version {registered.version}: {status}")
    return 0
