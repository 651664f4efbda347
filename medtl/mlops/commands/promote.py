"""`medtl promote`: offer each (task, arch)'s best validation run `champion` through the gate; show alias histories."""

from __future__ import annotations

import argparse

from medtl.mlops.commands._args import add_tracking_uri

_DESCRIPTION = """\
For each (task, architecture) of a study, the FINISHED run with the best validation primary metric
(F1, Dice up; MAE down; never the test set) is offered alias champion of finetuned-<task>-<arch>.
Only runs of one protocol fingerprint (the newest run's, unless --fingerprint) and full training data
(unless --fraction) compete.

The gate: champion moves only when the candidate has the holder's protocol fingerprint and beats the
holder's validation metric by more than the margin. The default margin (--margin auto) is the
half-width of the 95 % percentile bootstrap interval (2000 resamples, seed 0) of the mean validation
metric over the seeds of the candidate's grid point (same cell, fingerprint, arm and learning rate);
with fewer than 2 seeds there is no interval and the gate refuses. --margin X uses X (metric units;
0: any improvement). --force --reason TEXT moves it regardless (a forced move without a reason is
refused). A run is registered only when it takes the alias; the old holder becomes previous-champion.
Pretraining registers every version and offers it champion through the same gate; --model NAME
--version N offers one registered version (pretrained-<arch> or finetuned-<task>-<arch>) the same way.

Every decision — moved, forced, refused, kept — is appended to the model's alias history in the
registry (who, when, from and to version, why, the numbers); --history NAME prints it, oldest first.
Every registered version gets a model card (model_card.md / .json in its run's artifacts and as its
description); --card-template FILE replaces the card's "Intended use and limitations" text.
--dry-run prints what would happen and why, and writes nothing. Re-running moves nothing.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "promote",
        help="offer each (task, arch)'s best validation run champion through the gate; --history NAME",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--study", default=None, help="study name (default: every study in the store)")
    p.add_argument("--model", default=None, metavar="NAME", help="offer a registered version of NAME instead (with --version)")
    p.add_argument("--version", default=None, metavar="N", help="the version of --model to offer champion")
    p.add_argument("--history", default=None, metavar="NAME", help="print registered model NAME's alias history and exit")
    p.add_argument("--json", action="store_true", help="with --history: one JSON object a line")
    p.add_argument("--margin", default="auto", help="how much better the candidate must be: auto (default) or a number >= 0")
    p.add_argument("--force", action="store_true", help="move the alias whatever the gate says (needs --reason)")
    p.add_argument("--reason", default="", help="why; recorded in the history (required with --force)")
    p.add_argument("--card-template", default=None, metavar="FILE", help="Markdown for the cards' intended use and limitations")
    p.add_argument("--dry-run", action="store_true", help="print what would move and why; write nothing")
    p.add_argument("--fingerprint", default=None, help="rank only runs of this protocol fingerprint (or a prefix)")
    p.add_argument(
        "--fraction", default="1", help="rank only runs of this training-data fraction, or 'any' (default 1: full data)"
    )
    add_tracking_uri(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtl.errors import UserError
    from medtl.mlops.tracking.gate import Margin, require_reason
    from medtl.mlops.tracking.model_card import read_template
    from medtl.training import schema as S

    require_reason(args.force, args.reason)
    if args.history and (args.study or args.model):
        raise UserError("--history NAME prints a history; it takes no --study or --model")
    if bool(args.model) != bool(args.version):
        raise UserError("--model NAME and --version N go together")
    if args.model and args.study:
        raise UserError("--model offers one version; it takes no --study")
    margin = Margin.parse(args.margin)
    fraction = _fraction(args.fraction)
    template = read_template(args.card_template)
    uri = S.resolve_tracking_uri(args.tracking_uri)
    if args.history:
        return _history(args.history, uri, args.json)
    options = dict(tracking_uri=uri, dry_run=args.dry_run, margin=margin, force=args.force, reason=args.reason,
                   card_template=template)
    if args.model:
        from medtl.mlops.tracking.promote import promote_version

        _print(promote_version(args.model, args.version, **options))
        return 0
    from medtl.evaluation.collect import list_studies
    from medtl.mlops.tracking.promote import promote

    studies = [args.study] if args.study else list_studies(uri)
    if not studies:
        raise UserError("no study in the tracking store yet: run `medtl sweep` first")
    for study in studies:
        for p in promote(study, fingerprint=args.fingerprint, fraction=fraction, **options):
            _print(p)
    return 0


def _print(p) -> None:  # noqa: ANN001 - a promote.Promotion
    """Three lines at most: what happened to champion, why, and the card written."""
    others = (f"; {p.other_fingerprints} other protocol(s) in the study not ranked, --fingerprint to choose"
              if p.other_fingerprints else "")
    candidate = f"version {p.version} (run {p.run_id})" if p.version else f"run {p.run_id} (not registered)"
    if p.action.removeprefix("would ") in ("move", "force", "moved", "forced"):
        where = f"champion {p.holder or 'none'} -> {p.champion or 'a new version'}"
    else:
        where = f"champion stays at {p.holder or 'none'}"
    print(f"{p.model}: {p.action}; {where}; candidate {candidate}, {p.metric_name} {p.metric:.4f}, "
          f"fingerprint {p.fingerprint}{others}")
    print(f"  why: {p.reason}")
    if p.card:
        print(f"  model card: {p.card}")


def _history(name: str, uri: str, as_json: bool) -> int:
    import json
    from dataclasses import asdict

    from medtl.mlops.tracking.promote import history

    entries = history(name, uri)
    if not entries:
        print(f"{name}: no alias decision recorded yet")
    for entry in entries:
        print(json.dumps(asdict(entry), sort_keys=True) if as_json else entry.line())
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
