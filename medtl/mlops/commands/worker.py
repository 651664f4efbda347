"""`medtl worker`: take grid points from a study's queue until none is left (for other machines)."""

from __future__ import annotations

import argparse

from medtl.mlops.cli import add_tracking_uri


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="take grid points from a running sweep's queue (start on any machine)",
        description=(
            "Join a sweep: pop waiting grid points from the study's Optuna queue and run them until "
            "the queue is empty. Point it at the same --storage and --tracking-uri as the sweep."
        ),
    )
    p.add_argument("--study", required=True, help="study file, e.g. configs/paper.yaml")
    p.add_argument("--storage", required=True, help="Optuna storage URL shared by all workers")
    p.add_argument("--max-trials", type=int, default=None, help="stop after this many points")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda ...")
    add_tracking_uri(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtl.mlops.sweep import work
    from medtl.mlops.tracking import resolve_tracking_uri

    stats = work(
        args.study,
        args.storage,
        resolve_tracking_uri(args.tracking_uri),
        max_trials=args.max_trials,
        device=args.device,
    )
    print(f"worker: {stats.done} done, {stats.failed} failed, {stats.skipped} already finished ({stats.seconds:.0f} s)")
    return 0
