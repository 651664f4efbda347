"""`medtl evaluate`: compare a study's arms with the paper's statistics and render its report."""

from __future__ import annotations

import argparse

from medtl.evaluation.links import DEFAULT_UI_URL
from medtl.mlops.commands._args import add_tracking_uri


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="compare a study's arms and write its report (tables, p values, plots)",
        description=(
            "Read every fine-tuning run of a study from the tracking store, compare the arms per "
            "task and architecture (paper mode: Levene, Kruskal-Wallis, pairwise Mann-Whitney U "
            "with Bonferroni; recommended mode: permutation tests with Holm), and write "
            "summary.csv, comparisons.json/.csv, tables.tex, report.md, a self-contained "
            "report.html and plots into --out. The folder is logged as an MLflow run "
            "(medtl.stage=evaluation) in the study's experiment unless --no-log. Each grid point "
            "counts once (its latest FINISHED run; older copies are listed in set_aside.csv), runs "
            "of different protocols (fingerprints) are never pooled, and diverged runs count with "
            "their best checkpoint unless --exclude-diverged. Ends by printing one verdict line per "
            "task and architecture and the path of report.html."
        ),
    )
    p.add_argument("--study", required=True, help="study name: experiment medtl/<study>")
    p.add_argument("--mode", default="paper", help="paper | recommended (default paper)")
    p.add_argument("--per-lr", action="store_true", help="also compare the arms at every learning rate")
    p.add_argument("--out", default=None, help="output folder (default reports/<study>)")
    p.add_argument("--no-log", action="store_true", help="do not log the report as an MLflow run")
    p.add_argument(
        "--exclude-diverged",
        action="store_true",
        help="leave diverged runs out (default: they count with their best checkpoint's test metrics)",
    )
    p.add_argument(
        "--allow-mixed-pretrained",
        action="store_true",
        help="compare a domain arm trained from several registered pretrained versions instead of refusing",
    )
    p.add_argument(
        "--ui-url",
        default=DEFAULT_UI_URL,
        help=f"MLflow UI address that run ids in the report link to (default {DEFAULT_UI_URL}; '' for no links)",
    )
    add_tracking_uri(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtl.mlops.tracking.evaluation_run import evaluate

    result = evaluate(
        args.study,
        tracking_uri=args.tracking_uri,
        mode=args.mode,
        out=args.out,
        log=not args.no_log,
        per_lr=args.per_lr,
        exclude_diverged=args.exclude_diverged,
        allow_mixed_pretrained=args.allow_mixed_pretrained,
        ui_url=args.ui_url or None,
    )
    print("\n".join(result.headline()))
    return 0
