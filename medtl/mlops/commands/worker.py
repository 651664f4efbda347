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
            "The study's grid travels in the queue, so the study's name is enough: no study file is needed here. "
            "With --gpus, one worker process per GPU, each seeing only its own."
        ),
    )
    p.add_argument("--study", required=True, help="the sweep's study name, e.g. paper (a study file still works)")
    p.add_argument("--storage", required=True, help="Optuna storage URL shared by all workers")
    p.add_argument("--max-trials", type=int, default=None, help="stop after this many points (per worker process)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda ...")
    p.add_argument(
        "--gpus",
        default=None,
        help="one worker process per GPU: visible-device indexes such as 0,1,3, or all; each gets its own "
        "CUDA_VISIBLE_DEVICES and an equal share of the cores (default: one process, devices as they are)",
    )
    add_tracking_uri(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtl.knobs import knobs
    from medtl.mlops.signals import StopRequested
    from medtl.mlops.sweeps.worker import InfrastructureDown, work, work_on_gpus
    from medtl.redact import mask_url
    from medtl.training import schema as S

    if args.max_trials is not None and args.max_trials < 1:
        raise UserError(f"--max-trials must be at least 1, got {args.max_trials}")
    knobs()  # bad MEDTL_HEARTBEAT_S / MEDTL_GRACE_S / MEDTL_MAX_REQUEUES: one line, exit 2
    uri = S.resolve_tracking_uri(args.tracking_uri)
    try:
        if args.gpus is not None:
            from medtl.mlops.sweeps.placement import parse_gpus, plan_workers

            placements = plan_workers("gpus", parse_gpus(args.gpus))  # a GPU that does not exist: exit 2, nothing claimed
            dead = work_on_gpus(args.study, args.storage, uri, placements, max_trials=args.max_trials, device=args.device)
            if dead:
                died = ", ".join(f"pid {d.pid} exit code {d.exitcode}" for d in dead)
                print(f"medtl worker: {len(dead)} worker process(es) died ({died}); their points went back to the queue", file=sys.stderr)
                return 2 if all(d.exitcode == 2 for d in dead) else 1
            print(f"worker: {len(placements)} GPU worker processes finished; the queue is empty")
            return 0
        stats = work(args.study, args.storage, uri, max_trials=args.max_trials, device=args.device)
    except StopRequested as stop:
        print(f"medtl worker: stopped by {stop.signal_name}; its point is back in the queue (checkpoint kept)", file=sys.stderr)
        return 128 + stop.signum
    except InfrastructureDown as exc:
        print(mask_url(f"medtl worker: {exc}"), file=sys.stderr)
        return 1
    print(
        f"worker: {stats.done} done, {stats.failed} failed, {stats.skipped} already finished, "
        f"{stats.requeued} put back for infrastructure faults, {stats.lost} claims lost ({stats.seconds:.0f} s); "
        f"claim {stats.claim_summary()}"
    )
    return 0
