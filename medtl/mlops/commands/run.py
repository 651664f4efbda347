"""`medtl run`: fine-tune one grid point and track it in MLflow."""

from __future__ import annotations

import argparse

from medtl.mlops.commands._args import add_spec_arguments, add_tracking_uri, spec_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="fine-tune one model on one task and track it in MLflow",
        description=(
            "Fine-tune one grid point (task × architecture × init × lr × seed) with the study's "
            "protocol: the task's optimizer (AdamW for classification, Adam for regression and "
            "segmentation), validation every epoch, early stopping on validation loss, test of the "
            "best checkpoint. Logged as one MLflow run in experiment medtl/<study>."
        ),
    )
    p.add_argument("--task", required=True, help="e.g. demo-binary, brain-tumor-mri (see medtl data check)")
    p.add_argument("--arch", required=True, help="torchvision name, e.g. resnet18, mobilenet_v3_small")
    p.add_argument("--init", default="random", help="random | imagenet | domain (default random)")
    p.add_argument("--init-source", default="", help="weights for imagenet/domain: model URI or file")
    p.add_argument("--pretrain-modality", default="all", help="domain weights' modality: all | MR | CR | CT")
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of the training split, in (0, 1]")
    p.add_argument("--normalization", default="auto", help="auto (ImageNet stats for imagenet only) | none | imagenet")
    p.add_argument("--optimizer", default="", help="adamw | adam (default: the task's, as published)")
    p.add_argument("--data", default="", help="dataset folder (not needed for demo-* tasks)")
    p.add_argument("--study", default="default", help="study name: the run goes to experiment medtl/<study>")
    add_spec_arguments(p)
    add_tracking_uri(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtl.training.spec import RunSpec

    spec = RunSpec(
        task=args.task,
        arch=args.arch,
        init=args.init,
        init_source=args.init_source,
        pretrain_modality=args.pretrain_modality,
        dataset=args.data,
        data_fraction=args.fraction,
        normalization=args.normalization,
        optimizer=args.optimizer,
        **spec_arguments(args),
    )
    from medtl.mlops.signals import install_stop_handlers
    from medtl.mlops.tracking.runner import run_spec
    from medtl.redact import mask_url
    from medtl.training import schema as S

    install_stop_handlers()  # SIGTERM like Ctrl-C: the run ends KILLED, resumable from last.pt

    outcome = run_spec(spec, study=args.study, tracking_uri=args.tracking_uri, device=args.device)
    shown = {k: round(v, 4) for k, v in outcome.metrics.items() if k.startswith("test_") or k == "epochs_to_convergence"}
    print(f"run {outcome.run_id} {outcome.status} in {mask_url(S.resolve_tracking_uri(args.tracking_uri))}: {shown}")
    return 0
