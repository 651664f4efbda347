"""Where training runs: the device and its settings, seeding and RNG state, the torchrun world.

Execution details (device, autocast, channels-last, loader workers) are resolved once into a
`Runtime` and recorded by the caller, so the same code is fast on a GPU and exact on a CPU.
In a DDP job rank 0 takes every decision; `from_rank0` hands it to the other ranks.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medtl.knobs import loader_workers, torch_threads


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed; every field is logged as a param."""

    device: str
    amp_dtype: str  # "bfloat16" or "none"
    channels_last: bool
    num_workers: int
    pin_memory: bool
    threads: int
    world_size: int = 1
    sync_batchnorm: bool = False  # BatchNorm statistics synchronised across ranks (CUDA DDP only)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def to_params(self) -> dict[str, str]:
        return {
            "device": self.device,
            "amp_dtype": self.amp_dtype,
            "channels_last": str(self.channels_last),
            "num_workers": str(self.num_workers),
            "pin_memory": str(self.pin_memory),
            "torch_threads": str(self.threads),
            "world_size": str(self.world_size),
            "sync_batchnorm": str(self.sync_batchnorm),
        }


def resolve_runtime(device: str = "auto", num_workers: int | None = None) -> Runtime:
    """CUDA (bf16 autocast, channels-last, pinned memory, loader workers) when present, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device.startswith("cuda")
    if num_workers is None:
        num_workers = loader_workers()  # set per local worker when several share the machine
    if num_workers is None:
        num_workers = min(4, os.cpu_count() or 1) if cuda else 0
    threads = torch_threads()
    if threads is not None:
        # On a small shared CPU one intra-op thread can beat two: threads that spin-wait lose badly
        # to any other busy process (a second worker, the checkpoint writer).
        torch.set_num_threads(threads)
    world_size = world()[1]
    return Runtime(
        device=device,
        amp_dtype="bfloat16" if cuda and torch.cuda.is_bf16_supported() else "none",
        channels_last=cuda,
        num_workers=num_workers,
        pin_memory=cuda,
        threads=torch.get_num_threads(),
        world_size=world_size,
        # torch's SyncBatchNorm runs on accelerators only; on CPU (gloo) DDP's buffer broadcast
        # gives every rank rank 0's running statistics instead.
        sync_batchnorm=world_size > 1 and cuda,
    )


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (CPU and CUDA) seeded alike; cuDNN made deterministic."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def world() -> tuple[int, int]:
    """(rank, world size) of a torch.distributed job started by torchrun, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def from_rank0(value: Any) -> Any:
    """`value` as rank 0 has it, on every rank (a picklable object)."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_resume(payload: dict[str, Any] | None) -> dict[str, Any] | None:
    """Rank 0's `last.pt` payload (or None) on every rank of a DDP job; the payload itself otherwise.

    Rank 0 alone talks to the tracking server, so it decides whether (and from what) to resume.
    """
    if world()[1] <= 1:
        return payload
    return from_rank0(payload)


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        # Tensors and plain scalars only, so `torch.load(weights_only=True)` accepts the file.
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any] | None) -> None:
    if not state:
        return
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
