"""`medtl promote`: register the best validation run of each (task, arch) and move its aliases."""

from __future__ import annotations

import argparse

from medtl.mlops.cli import add_tracking_uri


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "promote",
        help="register each (task, arch)'s best validation run as finetuned-<task>-<arch>@champion",
        description=(
            "For each (task, architecture) of a study, the FINISHED run with the best validation "
            "primary metric (F1, Dice up; MAE down; never the test set) becomes a version of "
            "finetuned-<task>-<arch> with alias champion (the old one: previous-champion). "
            "Re-running changes nothing."
        ),
    )
    p.add_argument("--study", default=None, help="study name (default: every study in the store)")
    p.add_argument("--dry-run", action="store_true", help="show what would change; change nothing")
    add_tracking_uri(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from medtl.errors import UserError
    from medtl.mlops.promote import list_studies, promote
    from medtl.mlops.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    studies = [args.study] if args.study else list_studies(MlflowClient(uri))
    if not studies:
        raise UserError("no study in the tracking store yet: run `medtl sweep` first")
    for study in studies:
        for p in promote(study, tracking_uri=uri, dry_run=args.dry_run):
            version = f" version {p.version}" if p.version else ""
            print(f"{p.model}{version}: {p.action} (run {p.run_id}, {p.metric_name} {p.metric:.4f})")
    return 0
