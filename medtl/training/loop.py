"""The one training loop every arm of every task goes through.

The loop knows tasks only through a `TaskAdapter` and the outside world only through callbacks:
tracking, early stopping, checkpointing and emissions are passed in, so it imports no mlflow.
Where it runs (device, autocast, the DDP world) is `training/runtime.py`; what it iterates over
(samplers, loaders) is `training/loaders.py`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from medtl.training.runtime import Runtime, from_rank0, restore_rng, world
from medtl.training.tasks import TaskAdapter


@dataclass
class FitState:
    """Everything the loop knows mid-fit; callbacks read it, and it is what `last.pt` resumes."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    max_epochs: int
    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    improved: bool = False
    should_stop: bool = False
    stop_reason: str = ""
    diverged: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    callback_state: dict[str, Any] = field(default_factory=dict)
    # Progress within the current epoch, for callbacks that act between batches.
    batch: int = 0
    batches: int = 0
    epoch_started: float = 0.0
    # The training sampler's generator: its state after an epoch is that epoch's place in the
    # shuffle sequence, saved with `last.pt` so a resumed run draws the same orders.
    sampler_generator: torch.Generator | None = None
    # The fit's callbacks, in the order given: the checkpointer tells them when an epoch is on disk.
    callbacks: tuple[Callback, ...] = ()

    def loop_state(self) -> dict[str, Any]:
        """The resumable scalars and the sampler's state (model and optimizer are saved beside them)."""
        state = {
            "epoch": self.epoch,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "callback_state": self.callback_state,
            "diverged": self.diverged,
            # An early stop decided at this epoch holds on resume (a run that failed later, in its test).
            "should_stop": self.should_stop,
            "stop_reason": self.stop_reason,
        }
        if self.sampler_generator is not None:
            state["sampler_state"] = self.sampler_generator.get_state()
        return state

    def load_loop_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if key == "sampler_state":
                if self.sampler_generator is not None:
                    self.sampler_generator.set_state(value)
            else:
                setattr(self, key, value)


class Callback:
    """Hooks the loop calls; every method is optional.

    `on_epoch_end` hooks run in ascending `epoch_end_order` (stable): 0 for most, 100 for the
    checkpointer (so what it saves includes their updates), 200 for stop checks (so the epoch's
    checkpoint is queued before they end the fit).
    """

    epoch_end_order: int = 0

    def on_fit_start(self, state: FitState) -> None: ...

    def on_batch_end(self, state: FitState) -> None: ...

    def on_epoch_end(self, state: FitState, metrics: dict[str, float]) -> None: ...

    def on_fit_end(self, state: FitState) -> None: ...

    def on_fit_abort(self, state: FitState, error: BaseException) -> None:
        """The fit ends by an exception (a stop request, a lost claim, a failure); must not raise."""

    def on_checkpoint_saved(self, epoch: int, history: list[dict[str, float]], improved: bool) -> None:
        """`last.pt` of `epoch` is on disk (`improved`: so is a new `best.pt`).

        Called by the checkpointer on its writer thread, off the training path: a tracker that logs
        here never records an epoch a resume would repeat, and its uploads never stall training.
        An exception surfaces on the training thread at the next epoch end.
        """


class EarlyStopping(Callback):
    """Stop after `patience` epochs without a lower validation loss (the study's rule)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, state: FitState, metrics: dict[str, float]) -> None:
        stale = state.epoch - state.best_epoch
        if stale >= self.patience:
            state.should_stop = True
            state.stop_reason = f"no validation-loss improvement for {self.patience} epochs"


_FUSED_DEVICES = frozenset({"cpu", "cuda"})


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The spec's optimizer, in torch's fused implementation where the parameters' device has one.

    Same update rule as the default per-parameter loop, one kernel for all parameters: on 2 CPU cores it
    takes resnet18's optimizer step at 32² from 35–45 ms to 5–7 ms, 40 % of the whole step before
    (BENCHMARKS.md, "One training step").
    """
    params = list(model.parameters())
    fused = bool(params) and all(p.device.type in _FUSED_DEVICES and p.is_floating_point() for p in params)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, fused=fused or None)
    raise ValueError(f"unknown optimizer {name!r}; valid: adamw, adam")


def _batches(loader: DataLoader, runtime: Runtime) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    device = runtime.torch_device
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
    for batch in loader:
        # uint8 crosses to the device (4x less traffic than float), then becomes [0, 1] there.
        image = batch["image"].to(device, non_blocking=True).float().div_(255.0)
        image = image.contiguous(memory_format=memory_format)
        target = batch["target"].to(device, non_blocking=True)
        extras = batch.get("extras")
        yield image, target, None if extras is None else extras.to(device, non_blocking=True)


def _autocast(runtime: Runtime):
    if runtime.amp_dtype == "bfloat16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


def train_epoch(
    model: nn.Module,
    adapter: TaskAdapter,
    loader: DataLoader,
    optimizer,
    runtime: Runtime,
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """One pass over the training set; returns the sample-weighted mean loss (NaN if it diverged).

    `on_batch(batches_done)` runs after each step (single-process only: ranks must stay in step).
    """
    model.train()
    distributed = world()[1] > 1
    total, count = 0.0, 0
    for done, (image, target, extras) in enumerate(_batches(loader, runtime), start=1):
        with _autocast(runtime):
            output = model(image) if extras is None else model(image, extras)
        loss = adapter.loss(output, target)
        finite = bool(torch.isfinite(loss.detach()))
        if distributed:
            # Every rank must stop at the same step, or the others wait forever in backward.
            import torch.distributed as dist

            flag = torch.tensor([1.0 if finite else 0.0], device=loss.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = bool(flag.item())
        if not finite:
            return math.nan
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(image)
        count += len(image)
        if on_batch is not None and not distributed:
            on_batch(done)
    if distributed:
        import torch.distributed as dist

        sums = torch.tensor([total, float(count)], dtype=torch.float64, device=runtime.torch_device)
        dist.all_reduce(sums)
        total, count = float(sums[0]), int(sums[1])
    return total / max(count, 1)


@torch.no_grad()
def predict(model: nn.Module, adapter: TaskAdapter, loader: DataLoader, runtime: Runtime) -> tuple[float, np.ndarray]:
    """Mean loss and postprocessed predictions (probabilities or values) over a loader, in order."""
    model.eval()
    total, count, outputs = 0.0, 0, []
    for image, target, extras in _batches(loader, runtime):
        with _autocast(runtime):
            output = model(image) if extras is None else model(image, extras)
        total += adapter.loss(output, target).item() * len(image)
        count += len(image)
        outputs.append(adapter.postprocess(output))
    return total / max(count, 1), np.concatenate(outputs) if outputs else np.empty(0)


def fit(
    model: nn.Module,
    adapter: TaskAdapter,
    train_loader: DataLoader,
    val_loader: DataLoader,
    val_targets: np.ndarray,
    *,
    lr: float,
    max_epochs: int,
    runtime: Runtime,
    callbacks: Sequence[Callback] = (),
    optimizer: str = "adamw",
    weight_decay: float = 1e-3,
    resume: dict[str, Any] | None = None,
) -> FitState:
    """Train until `max_epochs` or a callback stops it; validate every epoch.

    The best epoch is the one with the lowest validation loss; epochs to convergence is that epoch.
    A non-finite training loss ends the fit as diverged (a result, not an error).
    `resume` is a `last.pt` payload: model, optimizer, loop state, the sampler's shuffle state and
    every RNG continue at the next epoch, so a resumed fit draws the batches an uninterrupted one would.
    A callback may end the fit by raising (a stop request, a lost claim): every callback's
    `on_fit_abort` runs, then the exception propagates. In a DDP job only rank 0 validates; its
    metrics and its callbacks' stop decisions are broadcast.
    """
    model.to(runtime.torch_device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    rank, world_size = world()
    if runtime.sync_batchnorm:
        # Converts the BatchNorm children in place (same parameter and buffer names), so `model`
        # and its checkpoints stay what the caller built.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    state = FitState(model, make_optimizer(model, optimizer, lr, weight_decay), max_epochs)
    state.callbacks = tuple(callbacks)
    shard = getattr(getattr(train_loader, "sampler", None), "sampler", None)
    state.sampler_generator = getattr(shard, "generator", None)
    if resume is not None:
        model.load_state_dict(resume["model"])
        state.optimizer.load_state_dict(resume["optimizer"])
        state.load_loop_state(resume["loop"])
        restore_rng(resume.get("rng"))
    trained = model
    if world_size > 1:
        # Gradients are averaged across ranks; rank 0 validates and takes every decision (best
        # epoch, early stop, a callback's stop) and broadcasts it, so no rank waits for another.
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [runtime.torch_device.index] if runtime.torch_device.type == "cuda" else None
        trained = DistributedDataParallel(model, device_ids=device_ids)
    batch_hooks = [cb for cb in callbacks if type(cb).on_batch_end is not Callback.on_batch_end]
    epoch_enders = sorted(callbacks, key=lambda cb: getattr(cb, "epoch_end_order", 0))

    def on_batch(done: int) -> None:
        state.batch = done
        for cb in batch_hooks:
            cb.on_batch_end(state)

    try:
        for cb in callbacks:
            cb.on_fit_start(state)
        while state.epoch < max_epochs and not state.should_stop:
            state.epoch += 1
            started = time.perf_counter()
            state.epoch_started, state.batch, state.batches = started, 0, len(train_loader)
            if hasattr(shard, "set_epoch"):
                shard.set_epoch(state.epoch)
            train_loss = train_epoch(
                trained, adapter, train_loader, state.optimizer, runtime, on_batch if batch_hooks else None
            )
            if not math.isfinite(train_loss):
                state.diverged, state.should_stop = True, True
                state.stop_reason = f"training loss is not finite at epoch {state.epoch}"
                state.epoch -= 1  # the diverged epoch produced no usable model
                break
            metrics: dict[str, float] | None = None
            if rank == 0:
                val_loss, val_pred = predict(model, adapter, val_loader, runtime)
                metrics = {"train_loss": train_loss, "val_loss": val_loss}
                metrics.update({f"val_{k}": v for k, v in adapter.metrics(val_targets, val_pred).items()})
                metrics["epoch_time_s"] = time.perf_counter() - started
            if world_size > 1:
                metrics = from_rank0(metrics)
            if metrics is None:  # only if rank 0 broadcast nothing, which it never does
                raise RuntimeError(f"no validation metrics at epoch {state.epoch}")
            val_loss = metrics["val_loss"]
            state.improved = math.isfinite(val_loss) and val_loss < state.best_val_loss
            if state.improved:
                state.best_val_loss, state.best_epoch = val_loss, state.epoch
            state.history.append({"epoch": state.epoch, **metrics})
            if world_size > 1:
                _epoch_end_once(state, epoch_enders, metrics, rank)
            else:
                for cb in epoch_enders:
                    cb.on_epoch_end(state, metrics)
        if not state.stop_reason:
            state.stop_reason = "max epochs reached"
        for cb in callbacks:
            cb.on_fit_end(state)
    except BaseException as exc:
        for cb in callbacks:
            with contextlib.suppress(Exception):  # the original error is the one to report
                cb.on_fit_abort(state, exc)
        raise
    return state


def _epoch_end_once(state: FitState, callbacks: Sequence[Callback], metrics: dict[str, float], rank: int) -> None:
    """Epoch-end callbacks in a DDP job: rank 0's stop decision (or its error) is every rank's."""
    error: BaseException | None = None
    for cb in callbacks:
        try:
            cb.on_epoch_end(state, metrics)
        except BaseException as exc:  # noqa: BLE001 - shared with the other ranks, then re-raised
            if rank == 0:
                error = exc
                break
            raise
    decision = from_rank0(
        (state.should_stop, state.stop_reason, None if error is None else f"{type(error).__name__}: {error}")
    )
    if error is not None:
        raise error
    state.should_stop, state.stop_reason, failure = decision
    if failure is not None:
        raise RuntimeError(f"rank 0 stopped the fit: {failure}")


