"""`medtl worker`: take grid points from a study's queue until none is left (for other machines)."""

from __future__ import annotations

import argparse
import sys

from medtl.errors import UserError
from medtl.mlops.commands._args import add_tracking_uri


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="take grid points from a running sweep's queue (start on any machine)",
        description=(
            "Join a sweep: pop waiting grid points from the study's Optuna queue and run them until "
            "the queue is empty. Point it at the same --storage and --tracking-uri as the sweep. "
            "The study's grid travels in the queue, so the study's name is enough: no study file is needed here."
        ),
    )
    p.add_argument("--study", required=True, help="the sweep's study name, e.g. paper (a study file still works)")
    p.add_argument("--storage", required=True, help="Optuna storage URL shared by all workers")
    p.add_argument("--max-trials", type=int, default=None, help="stop after this many points")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda ...")
    add_tracking_uri(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtl.knobs import knobs
    from medtl.mlops.signals import StopRequested
    from medtl.mlops.sweeps.worker import InfrastructureDown, work
    from medtl.redact import mask_url
    from medtl.training import schema as S

    if args.max_trials is not None and args.max_trials < 1:
        raise UserError(f"--max-trials must be at least 1, got {args.max_trials}")
    knobs()  # bad MEDTL_HEARTBEAT_S / MEDTL_GRACE_S / MEDTL_MAX_REQUEUES: one line, exit 2
    try:
        stats = work(
            args.study,
            args.storage,
            S.resolve_tracking_uri(args.tracking_uri),
            max_trials=args.max_trials,
            device=args.device,
        )
    except StopRequested as stop:
        print(f"medtl worker: stopped by {stop.signal_name}; its point is back in the queue (checkpoint kept)", file=sys.stderr)
        return 128 + stop.signum
    except InfrastructureDown as exc:
        print(mask_url(f"medtl worker: {exc}"), file=sys.stderr)
        return 1
    print(
        f"worker: {stats.done} done, {stats.failed} failed, {stats.skipped} already finished, "
        f"{stats.requeued} put back for infrastructure faults, {stats.lost} claims lost ({stats.seconds:.0f} s)"
    )
    return 0
