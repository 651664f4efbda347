"""Loop overhead: medtl's loop with tracking, emissions and checkpointing vs a bare PyTorch loop.

Same model (built the same way, same seed), same data, same batches, in one process. An epoch is
one training pass plus one validation pass; medtl adds its validation metrics, the per-epoch
`log_batch` to a SQLite MLflow store (sent from the checkpoint writer, as the runner does),
codecarbon's tracker and the `best.pt`/`last.pt` writes.
Blocks of epochs alternate (bare, medtl, bare, medtl) so drift on a noisy machine hits both.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from medtl.mlops.tracking.client import get_or_create_experiment
from medtl.mlops.tracking.emissions import EmissionsCallback
from medtl.mlops.tracking.epoch_logger import EpochLogger
from medtl.training.checkpoint import Checkpointer
from medtl.training.data.synthetic import load_synthetic
from medtl.training.factory import build_model
from medtl.training.loaders import make_loader
from medtl.training.loop import Callback, EarlyStopping, fit, make_optimizer
from medtl.training.recipe import checkpoint_paths
from medtl.training.runtime import resolve_runtime, seed_everything
from medtl.training.spec import TASKS, RunSpec, Task
from medtl.training.tasks import make_adapter


class _EpochClock(Callback):
    """Runs last: wall time from one epoch end (all callbacks included) to the next."""

    epoch_end_order = 1000  # after the checkpointer (100) and the stop checks (200)

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_fit_start(self, state) -> None:
        self.marks.append(time.perf_counter())

    def on_epoch_end(self, state, metrics) -> None:
        self.marks.append(time.perf_counter())


def _bare_epochs(model, loaders, epochs: int, lr: float) -> list[float]:
    train, val = loaders
    optimizer = make_optimizer(model, "adamw", lr, 1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for batch in train:
            x = batch["image"].float().div_(255.0)
            loss = loss_fn(model(x).squeeze(1), batch["target"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for batch in val:
                model(batch["image"].float().div_(255.0))
        times.append(time.perf_counter() - start)
    return times


def main(arch: str = "resnet18", image_size: int = 64, epochs: int = 4, blocks: int = 2) -> dict:
    spec = RunSpec(task="demo-binary", arch=arch, image_size=image_size, batch_size=32, lr=1e-4, max_epochs=epochs)
    info = TASKS[Task.DEMO_BINARY]
    splits = load_synthetic(Task.DEMO_BINARY, image_size=image_size, sizes={"train": 512, "val": 128, "test": 32})
    adapter = make_adapter(info)
    runtime = resolve_runtime()
    val_targets = np.asarray(splits.val.targets)
    bare_times: list[float] = []
    medtl_times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        client = MlflowClient(uri)
        experiment = get_or_create_experiment(client, "medtl/bench", uri)
        for block in range(blocks):
            seed_everything(0)
            model = build_model(spec, info).to(runtime.torch_device)
            loaders = (
                make_loader(splits.train, adapter, 32, runtime, shuffle=True, seed=0),
                make_loader(splits.val, adapter, 32, runtime, shuffle=False),
            )
            times = _bare_epochs(model, loaders, epochs + 1, spec.lr)
            bare_times += times[1:]  # the first epoch warms caches and allocators up

            seed_everything(0)
            model = build_model(spec, info)
            run = client.create_run(experiment)
            clock = _EpochClock()
            checkpoints = checkpoint_paths(Path(tmp) / f"ckpt{block}")
            # What the runner wires: metrics go out from the checkpoint writer once last.pt is saved.
            logger = EpochLogger(client, run.info.run_id, checkpoints)
            callbacks = [
                Checkpointer(checkpoints, meta={"bench": True}),
                EarlyStopping(patience=10_000),
                EmissionsCallback(),
                clock,
                logger,
            ]
            fit(
                model, adapter, *loaders, val_targets, lr=spec.lr, max_epochs=epochs + 1, runtime=runtime, callbacks=callbacks
            )
            logger.close()  # the logger sends from its own thread; flush before ending the run
            client.set_terminated(run.info.run_id)
            medtl_times += list(np.diff(clock.marks))[1:]
        from bench_runs import fixed_costs  # the runner's fixed costs, measured in one place

        system_cost = fixed_costs(client, experiment, uri)["system_metrics_per_run_s"]
    bare, ours = statistics.median(bare_times), statistics.median(medtl_times)
    return {
        "arch": arch,
        "image_size": image_size,
        "train_images": len(splits.train),
        "val_images": len(splits.val),
        "epochs_each": len(bare_times),
        "bare_median_s": bare,
        "medtl_median_s": ours,
        "ratio": ours / bare,
        "device": runtime.device,
        "torch_threads": runtime.threads,
        # Per run, not per epoch: MLflow system metrics' start + stop (the first, import-warming one left out).
        "system_metrics_per_run_s": system_cost,
    }


if __name__ == "__main__":
    print(main())
