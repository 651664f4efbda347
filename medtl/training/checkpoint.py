"""Checkpoints that describe themselves, written off the training thread, loaded safely.

The best checkpoint: the model of the best validation loss and its metadata. The last checkpoint:
model, optimizer, loop state and RNG state after the latest epoch — enough to resume. Both are plain
state_dict payloads (no pickled classes), loaded with `torch.load(..., weights_only=True)`. Where they
go is the recipe's to say (`medtl.training.recipe.checkpoint_paths`); this module only writes and reads.
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medtl.atomic import atomic_path
from medtl.errors import UserError
from medtl.training.loop import Callback, FitState
from medtl.training.runtime import rng_state

FORMAT = "medtl-checkpoint/1"


class CheckpointError(UserError):
    """A file handed in is not a usable checkpoint: truncated, not a checkpoint, or unsafe."""


@dataclass(frozen=True)
class CheckpointPaths:
    """Where one fit's checkpoints go, as its recipe names them (`Recipe.checkpoints`).

    Attributes:
        best: the model of the best validation loss, rewritten on every improvement.
        last: everything needed to resume, rewritten after every epoch.
    """

    best: Path
    last: Path


def _cpu_copy(tree: Any, into: Any = None) -> Any:
    """A CPU copy of `tree`'s tensors; a tensor of `into` (the same tree's previous copy) of the
    same shape, dtype and layout is written over rather than allocated again."""
    if isinstance(tree, torch.Tensor):
        tree = tree.detach()
        if (
            isinstance(into, torch.Tensor)
            and into.shape == tree.shape
            and into.dtype == tree.dtype
            and into.stride() == tree.stride()
        ):
            return into.copy_(tree)
        return tree.to("cpu", copy=True)
    if isinstance(tree, dict):
        before = into if isinstance(into, dict) else {}
        return {k: _cpu_copy(v, before.get(k)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        before = into if isinstance(into, type(tree)) and len(into) == len(tree) else [None] * len(tree)
        return type(tree)(_cpu_copy(v, b) for v, b in zip(tree, before, strict=True))
    return tree


def atomic_save(payload: dict[str, Any], path: Path) -> None:
    """Write to a temporary name beside `path`, then rename: never a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely; typed errors for missing, truncated, unsafe or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types; all mean "not a safe checkpoint"
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        refused = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(exc))
        if refused:
            raise CheckpointError(
                f"{path} holds pickled objects ({refused.group(1)}), refused: medtl loads weights only"
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or another format): {text}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} is not a checkpoint: it holds a {type(payload).__name__}, not a dict")
    return payload


def _snapshot(loop: dict[str, Any]) -> dict[str, Any]:
    """A copy of the loop state the training thread will not mutate while the writer saves it."""
    return {**loop, "history": [dict(h) for h in loop["history"]], "callback_state": copy.deepcopy(loop["callback_state"])}


class Checkpointer(Callback):
    """Saves `paths.best` on every validation-loss improvement and `paths.last` after every epoch.

    Writes happen on a background thread from a CPU copy taken at epoch end, so the next epoch
    starts at once; at most one write is in flight, and `on_fit_end` waits for it.

    Once an epoch's last checkpoint is on disk, the writer thread calls `on_checkpoint_saved` of the
    fit's other callbacks (those that define it), in their order: a tracker that logs there never
    records an epoch that a resume would repeat, and its uploads and retries never stall training.
    """

    epoch_end_order = 100

    def __init__(self, paths: CheckpointPaths, meta: dict[str, Any]) -> None:
        self.paths = paths
        self.meta = meta
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        # The previous epoch's CPU copies, reused once its write is done: no fresh allocation
        # (and page faults) for a few hundred MB every epoch.
        self._buffers: tuple[Any, Any] = (None, None)

    def _wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write(
        self,
        writes: list[tuple[dict[str, Any], Path]],
        listeners: Sequence[Callback],
        epoch: int,
        history: list,
        improved: bool,
    ) -> None:
        try:
            for payload, path in writes:
                atomic_save(payload, path)
            for listener in listeners:
                listener.on_checkpoint_saved(epoch, history, improved)
        except BaseException as exc:  # surfaced on the training thread at the next wait
            self._error = exc

    def on_epoch_end(self, state: FitState, metrics: dict[str, float]) -> None:
        self._wait()  # the previous write is done: its buffers are free
        weights = _cpu_copy(state.model.state_dict(), self._buffers[0])
        optimizer = _cpu_copy(state.optimizer.state_dict(), self._buffers[1])
        self._buffers = (weights, optimizer)
        meta = {**self.meta, "epoch": state.epoch, "val_loss": metrics.get("val_loss")}
        writes = []
        if state.improved:
            writes.append(({"format": FORMAT, "meta": meta, "model": weights}, self.paths.best))
        last = {
            "format": FORMAT,
            "meta": meta,
            "model": weights,
            "optimizer": optimizer,
            "loop": _snapshot(state.loop_state()),
            "rng": rng_state(),
        }
        writes.append((last, self.paths.last))
        history = [dict(h) for h in state.history]
        listeners = [
            cb
            for cb in state.callbacks
            if cb is not self and type(cb).on_checkpoint_saved is not Callback.on_checkpoint_saved
        ]
        self._thread = threading.Thread(
            target=self._write, args=(writes, listeners, state.epoch, history, state.improved), daemon=True
        )
        self._thread.start()

    def on_fit_end(self, state: FitState) -> None:
        self._wait()

    def on_fit_abort(self, state: FitState, error: BaseException) -> None:
        """Let the write in flight finish, so the last completed epoch's checkpoint is kept."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            self._error = None
