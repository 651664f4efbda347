"""Local worker processes on one machine, each on its own share (`placement.Placement`), watched and replaced.

A worker that dies has its point put back at once and a replacement starts on the same share; SIGTERM
and SIGINT are forwarded to every worker, which puts its point back. `medtl sweep` and
`medtl worker --gpus` run their workers here.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from medtl.errors import UserError
from medtl.knobs import Knobs
from medtl.mlops.retry import retry
from medtl.mlops.sweeps.placement import Placement
from medtl.mlops.sweeps.queue import quietly, reclaim
from medtl.redact import mask_url

log = logging.getLogger(__name__)


@dataclass
class DeadWorker:
    pid: int
    exitcode: int


def _worker_entry(kwargs: dict[str, Any], placement: Placement) -> None:
    """A local worker process: exits 0 when the queue is empty, 128+signal when stopped, 2 on bad input, 1 on a fault."""
    # Before anything touches CUDA: the worker sees only its own GPU, and its share of the cores.
    os.environ.update(placement.env())
    import torch

    from medtl.mlops.signals import StopRequested
    from medtl.mlops.sweeps.worker import InfrastructureDown, work

    torch.set_num_threads(placement.threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(process)d: %(message)s")
    try:
        work(**kwargs)
    except StopRequested as stop:
        sys.exit(128 + stop.signum)
    except (UserError, InfrastructureDown) as exc:
        log.error("%s", mask_url(str(exc)))
        sys.exit(2 if isinstance(exc, UserError) else 1)


def run_local_workers(
    kwargs: dict[str, Any], placements: Sequence[Placement], optuna_study: optuna.Study, settings: Knobs, who: str = "sweep"
) -> list[DeadWorker]:
    """Run one `sweeps.worker.work(**kwargs)` process per placement until the queue is empty.

    A dead one's point goes back at once and a replacement starts on the same placement (at most as
    many replacements as workers; none after exit code 2, bad input that would only repeat).

    Raises:
        medtl.mlops.signals.StopRequested: forwarded to the workers, which were given the stop's grace.
    """
    from medtl.mlops.signals import StopRequested

    ctx = mp.get_context("spawn")
    procs: dict[Any, Placement] = {}

    def start(placement: Placement) -> None:
        proc = ctx.Process(target=_worker_entry, args=(kwargs, placement))
        proc.start()
        procs[proc] = placement

    for placement in placements:
        start(placement)
    dead: list[DeadWorker] = []
    replacements = len(placements)
    try:
        while procs:
            for proc in list(procs):
                proc.join(timeout=0.5)
                if proc.exitcode is None:
                    continue
                placement = procs.pop(proc)
                if proc.exitcode == 0:
                    continue
                dead.append(DeadWorker(proc.pid, proc.exitcode))
                back = retry(lambda p=proc: reclaim(optuna_study, p.pid), "re-queueing a dead worker's point", settings.infra_patience_s)
                print(f"[{who}] worker {proc.pid} died (exit code {proc.exitcode}); {back} point(s) back in the queue", flush=True)
                if replacements > 0 and proc.exitcode != 2:
                    replacements -= 1
                    start(placement)
    except StopRequested as stop:
        for proc in procs:
            if proc.is_alive():
                os.kill(proc.pid, stop.signum)  # each puts its point back and closes its run
        deadline = time.monotonic() + _stop_wait_s()
        for proc in procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
                quietly(lambda p=proc: reclaim(optuna_study, p.pid), "putting a dead worker's point back", 15,
                        "it returns to the queue after the grace")
        raise
    return dead


def _stop_wait_s() -> float:
    from medtl.mlops.signals import stop_grace_s

    return stop_grace_s() + 60.0
