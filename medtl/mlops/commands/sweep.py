"""`medtl sweep`: run a study's grid through an Optuna queue, each point a tracked MLflow run."""

from __future__ import annotations

import argparse
import sys

from medtl.mlops.commands._args import add_tracking_uri


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a study file's grid (tasks × archs × arms × lrs × seeds × fractions)",
        description=(
            "Enqueue every grid point of a study file that is not done yet in an Optuna study, then "
            "run them with N local worker processes. Re-running a finished study runs nothing; "
            "adding a value to an axis runs only the new points. Each point is an MLflow run in "
            "experiment medtl/<study>, under one parent run for the sweep."
        ),
    )
    p.add_argument("--study", required=True, help="study file, e.g. configs/demo.yaml")
    p.add_argument(
        "--workers",
        default="auto",
        help="local worker processes: a number, or auto (default): one per visible GPU, each with its own "
        "CUDA_VISIBLE_DEVICES and share of the cores; one on a machine without GPUs",
    )
    p.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: sqlite optuna.db beside mlflow.db)"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda ...")
    p.add_argument("--plan", action="store_true", help="show the grid and what is done; run nothing")
    add_tracking_uri(p)
    p.set_defaults(func=run)


def _workers(text: str) -> int | str:
    """`--workers`: `auto` or a whole number >= 1."""
    from medtl.errors import UserError

    if text == "auto":
        return text
    try:
        count = int(text)
    except ValueError:
        raise UserError(f"--workers must be 'auto' or a whole number >= 1, got {text!r}") from None
    if count < 1:
        raise UserError(f"--workers must be 'auto' or at least 1, got {count}")
    return count


def run(args: argparse.Namespace) -> int:
    from medtl.mlops.sweeps.lr_selection import resolve_study

    workers = _workers(args.workers)
    # A bad study file is refused before the heavy libraries load; `from_study` rates are read once, here.
    study = resolve_study(args.study, args.tracking_uri)
    if args.plan:
        from medtl.mlops.sweeps.plan import print_plan

        print_plan(study, tracking_uri=args.tracking_uri)
        return 0
    from medtl.knobs import knobs
    from medtl.mlops.signals import StopRequested
    from medtl.mlops.sweeps.placement import plan_workers
    from medtl.mlops.sweeps.sweep import sweep
    from medtl.redact import mask_url
    from medtl.training import schema as S

    knobs()  # bad MEDTL_HEARTBEAT_S / MEDTL_GRACE_S / MEDTL_MAX_REQUEUES: one line, exit 2, nothing written
    placements = plan_workers(workers)  # no GPU and no CPU to spare: one line, exit 2, nothing enqueued
    try:
        result = sweep(study, workers=placements, storage_url=args.storage, tracking_uri=args.tracking_uri, device=args.device)
    except StopRequested as stop:
        print(
            f"medtl sweep: stopped by {stop.signal_name}; the interrupted points are back in the queue "
            "(their checkpoints kept) and the sweep's parent run is KILLED. Run the same command to continue.",
            file=sys.stderr,
        )
        return 128 + stop.signum
    uri = S.resolve_tracking_uri(args.tracking_uri)
    counts = result.counts
    print(
        f"study {result.study.name}: {len(result.study.specs)} grid points, {result.enqueued} newly enqueued; "
        f"complete {counts.get('COMPLETE', 0)}, failed {counts.get('FAIL', 0)}, left {counts.get('WAITING', 0)}, "
        f"held back {result.held_back} "
        f"({result.stats.seconds:.0f} s). Runs are in experiment medtl/{result.study.name} of {mask_url(uri)} "
        f"(parent run {result.parent_run_id})."
    )
    if uri.startswith("sqlite:"):
        print("Browse them: make ui  (MLflow UI on http://127.0.0.1:5000)")
    if result.dead_workers:
        died = ", ".join(f"pid {d.pid} exit code {d.exitcode}" for d in result.dead_workers)
        print(f"medtl sweep: {len(result.dead_workers)} worker(s) died ({died}); their points went back to the queue", file=sys.stderr)
        return 1
    return 1 if counts.get("FAIL", 0) and not counts.get("COMPLETE", 0) else 0
