"""`medtl gradcam`: Grad-CAM heatmaps of every arm on the same seeded test images, as one MLflow run."""

from __future__ import annotations

import argparse

from medtl.mlops.commands._args import add_tracking_uri


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gradcam",
        help="Grad-CAM heatmaps of each arm's best run on the same random test images",
        description=(
            "For each arm (random, imagenet, domain, ...) with finished fine-tuning runs of --task "
            "and --arch in --study, explain the promoted run (champion of finetuned-<task>-<arch>) "
            "if it belongs to that arm, else the arm's run with the best validation primary metric. "
            "All arms see the same --n test images drawn with --seed. Heatmaps (layer from the "
            "architecture registry), overlays and the plain images are logged as PNGs in one new "
            "MLflow run (medtl.stage=gradcam, medtl.explains.<arm>=<run id>). Binary tasks explain "
            "the single logit; multiclass the true class (or --explain predicted); regression the "
            "predicted value. Then: medtl reader-packet --gradcam-run RUN_ID --out DIR."
        ),
    )
    p.add_argument("--study", required=True, help="study name: experiment medtl/<study>")
    p.add_argument("--task", required=True, help="task, e.g. brain-tumor-mri")
    p.add_argument("--arch", required=True, help="architecture, e.g. resnet50")
    p.add_argument("--n", type=int, default=20, help="number of test images (default 20, as in the paper)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image sample (default 0)")
    p.add_argument("--explain", default="true", help="multiclass: explain the true or predicted class (default true)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    add_tracking_uri(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtl.mlops.explain.gradcam import gradcam_study

    outcome = gradcam_study(
        args.study, args.task, args.arch, n=args.n, seed=args.seed, explain=args.explain,
        tracking_uri=args.tracking_uri, device=args.device,
    )
    for arm, choice in outcome.arms.items():
        print(f"{arm}: run {choice.run_id} ({choice.reason} {choice.metric:.4f})")
    print(f"gradcam run {outcome.run_id}: {outcome.n_images} images x {len(outcome.arms)} arms")
    print(outcome.run_id)
    return 0
