"""`medtl promote`: register the best validation run of each (task, arch) and move its aliases."""

from __future__ import annotations

import argparse

from medtl.mlops.commands._args import add_tracking_uri


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "promote",
        help="register each (task, arch)'s best validation run as finetuned-<task>-<arch>@champion",
        description=(
            "For each (task, architecture) of a study, the FINISHED run with the best validation "
            "primary metric (F1, Dice up; MAE down; never the test set) becomes a version of "
            "finetuned-<task>-<arch> with alias champion (the old one: previous-champion). "
            "Only runs of one protocol fingerprint (the newest run's, unless --fingerprint) and full "
            "training data (unless --fraction) compete; the version is tagged with study and "
            "fingerprint. Re-running changes nothing."
        ),
    )
    p.add_argument("--study", default=None, help="study name (default: every study in the store)")
    p.add_argument("--dry-run", action="store_true", help="show what would change; change nothing")
    p.add_argument("--fingerprint", default=None, help="rank only runs of this protocol fingerprint (or a prefix)")
    p.add_argument(
        "--fraction", default="1", help="rank only runs of this training-data fraction, or 'any' (default 1: full data)"
    )
    add_tracking_uri(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtl.errors import UserError
    from medtl.evaluation.collect import list_studies
    from medtl.mlops.tracking.promote import promote
    from medtl.training import schema as S

    uri = S.resolve_tracking_uri(args.tracking_uri)
    studies = [args.study] if args.study else list_studies(uri)
    if not studies:
        raise UserError("no study in the tracking store yet: run `medtl sweep` first")
    fraction = _fraction(args.fraction)
    for study in studies:
        for p in promote(study, tracking_uri=uri, dry_run=args.dry_run, fingerprint=args.fingerprint, fraction=fraction):
            version = f" version {p.version}" if p.version else ""
            others = f"; {p.other_fingerprints} other protocol(s) in the study not ranked, --fingerprint to choose" if p.other_fingerprints else ""
            print(f"{p.model}{version}: {p.action} (run {p.run_id}, {p.metric_name} {p.metric:.4f}, fingerprint {p.fingerprint}{others})")
    return 0


def _fraction(text: str) -> float | None:
    from medtl.errors import UserError

    if text.strip().lower() == "any":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise UserError(f"--fraction must be a number in (0, 1] or 'any', got {text!r}")
    return value
