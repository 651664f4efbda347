"""`medtl reader-import`: check a filled rating sheet whole and log it, unblinded, in its gradcam run."""

from __future__ import annotations

import argparse

from medtl.mlops.commands._args import add_tracking_uri


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reader-import",
        help="import a rater's filled rating_sheet.csv into its gradcam run",
        description=(
            "Check every row of SHEET (scores whole numbers 1-5, known images and labels, no "
            "duplicate and no missing row); any problem refuses the whole sheet and lists the "
            "line numbers. A valid sheet is joined with the key and logged as "
            "reader/ratings-<rater>.csv (image, label, arm, score, comment, rater) in the gradcam "
            "run; importing the same rater again replaces that file."
        ),
    )
    p.add_argument("sheet", metavar="SHEET.csv", help="the filled rating_sheet.csv")
    p.add_argument("--gradcam-run", required=True, help="run id the packet was made from")
    p.add_argument("--rater", default=None, help="rater name: letters, digits, _ . - (default: the sheet's file name)")
    add_tracking_uri(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtl.mlops.explain.reader_study import import_ratings

    done = import_ratings(args.sheet, args.gradcam_run, rater=args.rater, tracking_uri=args.tracking_uri)
    action = "replaced" if done.replaced else "imported"
    means = ", ".join(f"{arm} {mean:.2f}" for arm, mean in done.means.items())
    print(f"{action} {done.rows} ratings of rater {done.rater} (mean score per arm: {means})")
    return 0
