"""Where local workers run: one per visible GPU with its own `CUDA_VISIBLE_DEVICES`, the CPU divided between them.

`medtl sweep --workers auto` (the default) and `medtl worker --gpus 0,1,…|all` ask `plan_workers` for one
`Placement` per worker process. With GPUs, each worker sees exactly one (its `CUDA_VISIBLE_DEVICES`, so
inside it the device is `cuda:0`) and gets an equal share of the usable cores, split into DataLoader
workers and intra-op threads. Without GPUs, `auto` is one worker on every usable core, as before. The
device list and the core count are passed in (`visible_gpus`, `usable_cpus`), so tests give fake ones.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medtl.errors import UserError
from medtl.knobs import LOADER_WORKERS_ENV, TORCH_THREADS_ENV, torch_threads

CUDA_ENV = "CUDA_VISIBLE_DEVICES"
MAX_LOADER_WORKERS = 4  # per GPU worker: enough to feed one GPU from the decoded cache (benchmarks/gpu_check.py)


@dataclass(frozen=True)
class Placement:
    """One local worker's share of the machine: its GPU, intra-op threads and DataLoader workers.

    `gpu` None leaves the devices as they are; `loader_workers` None leaves the runtime's choice.
    """

    gpu: str | None
    threads: int
    loader_workers: int | None = None

    def env(self) -> dict[str, str]:
        """The environment variables that give a worker process this share (set before torch touches CUDA)."""
        env = {TORCH_THREADS_ENV: str(self.threads)}
        if self.loader_workers is not None:
            env[LOADER_WORKERS_ENV] = str(self.loader_workers)
        if self.gpu is not None:
            env[CUDA_ENV] = self.gpu
        return env

    def describe(self) -> str:
        where = f"GPU {self.gpu}" if self.gpu is not None else "CPU"
        loaders = "" if self.loader_workers is None else f", {self.loader_workers} loader worker(s)"
        return f"{where}, {self.threads} thread(s){loaders}"


def visible_gpus() -> list[str]:
    """The GPUs this process may use, each as the id `CUDA_VISIBLE_DEVICES` takes (an index or a UUID).

    Honours a `CUDA_VISIBLE_DEVICES` already set (a SLURM or Kubernetes allocation): its entries, as
    many as CUDA found. Empty on a machine without CUDA.
    """
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    given = os.environ.get(CUDA_ENV)
    if given is None:
        return [str(i) for i in range(count)]
    return [entry.strip() for entry in given.split(",") if entry.strip()][:count]


def usable_cpus() -> float:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (containers, Kubernetes limits)."""
    cores = float(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else float(os.cpu_count() or 1)
    quota = _cgroup_quota()
    return min(cores, quota) if quota is not None else cores


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup's CPU limit in cores (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def parse_gpus(text: str) -> list[int] | None:
    """`--gpus`: `all` → None (every visible GPU), or a comma list of visible-device indexes.

    Raises:
        UserError: an entry that is not a whole number >= 0, or one named twice.
    """
    if text.strip() == "all":
        return None
    try:
        indexes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--gpus takes 'all' or GPU indexes such as 0,1,3; got {text!r}") from None
    if not indexes or min(indexes) < 0:
        raise UserError(f"--gpus takes 'all' or GPU indexes such as 0,1,3; got {text!r}")
    if len(set(indexes)) != len(indexes):
        raise UserError(f"--gpus names a GPU twice: {text!r}")
    return indexes


def plan_workers(
    workers: int | str,
    gpus: Sequence[int] | None = None,
    *,
    devices: Callable[[], list[str]] | None = None,
    cpus: Callable[[], float] | None = None,
) -> list[Placement]:
    """One placement per local worker process.

    Args:
        workers: `auto` (one per visible GPU, else one on the CPU), a count (today's behaviour: that many
            processes sharing the machine, threads divided, devices untouched), or `gpus` to place
            one worker on each GPU of `gpus`. A `MEDTL_TORCH_THREADS` already set is kept.
        gpus: with `workers="gpus"`, the visible-device indexes to use (None: all of them).
        devices: the visible GPUs' ids (default `visible_gpus`; tests inject a fake list).
        cpus: the usable cores (default `usable_cpus`; tests inject a count).

    Raises:
        UserError: `auto` with no GPU and no whole core to spare (a CPU quota below one core, or
            `MEDTL_TORCH_THREADS` above the usable cores), `--gpus` naming a GPU that is not visible
            or asked for on a machine without one.
    """
    cores = max(0, math.floor((cpus or usable_cpus)() + 1e-9))
    if isinstance(workers, int):
        if workers < 1:
            raise UserError(f"--workers must be 'auto' or at least 1, got {workers}")
        return [Placement(None, torch_threads() or max(1, cores // workers))] * workers
    if workers not in ("auto", "gpus"):
        raise UserError(f"--workers must be 'auto' or a whole number >= 1, got {workers!r}")
    ids = (devices or visible_gpus)()
    if workers == "gpus":
        if not ids:
            raise UserError("--gpus: this machine has no visible GPU (CUDA unavailable, or CUDA_VISIBLE_DEVICES empty)")
        missing = [i for i in (gpus or []) if i >= len(ids)]
        if missing:
            raise UserError(f"--gpus: GPU {missing[0]} does not exist; visible: {', '.join(str(i) for i in range(len(ids)))}")
        chosen = [ids[i] for i in gpus] if gpus is not None else ids
    elif ids:
        chosen = ids
    else:
        return [_cpu_only(cores)]
    share = max(1, cores // len(chosen))
    loaders = min(MAX_LOADER_WORKERS, share - 1)
    threads = torch_threads() or max(1, share - loaders)  # a MEDTL_TORCH_THREADS the user set wins
    return [Placement(gpu, threads, loaders) for gpu in chosen]


def _cpu_only(cores: int) -> Placement:
    threads = torch_threads()
    if cores < 1:
        raise UserError("--workers auto: no GPU and no CPU to spare (a CPU quota below one core); give --workers 1 to run anyway")
    if threads is not None and threads > cores:
        raise UserError(
            f"--workers auto: no GPU and no CPU to spare: {TORCH_THREADS_ENV}={threads} but this process may use "
            f"{cores} core(s); lower it or give --workers 1"
        )
    return Placement(None, threads or cores, 0)
