"""A run's fault handling and fixed costs: a 60 s tracking outage, exact resume, system metrics.

- Outage: an `EpochLogger` whose store refuses connections for 60 s while an epoch ends every second;
  counts epochs lost, duplicated or out of order (all must be 0), the longest hand-over on the
  training thread, and how long after the store returns the buffer is sent.
- Exact resume: a tiny CPU fit interrupted after epoch 2 and resumed from `last.pt`, against the same
  fit uninterrupted; the largest per-epoch metric difference (must be 0).
- Fixed cost per run of MLflow system metrics (start + stop) and of the environment/source tags.
- `--point` (not part of `make bench`): where a demo grid point's fixed time goes. Demo points
  (resnet18, 32 px, 5 epochs, lr 2e-4, the 256 training images; random and domain arms) run one
  after another in one process, as in a sweep worker; the wall time of each phase's function is
  summed per point, and the fixed cost is the point's wall time minus its epochs' `epoch_time_s`.
  Medians over the points after each arm's first.
"""

from __future__ import annotations

import argparse
import collections
import functools
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medtl.mlops.tracking import client as T
from medtl.mlops.tracking.emissions import EmissionsCallback
from medtl.mlops.tracking.environment import environment_tags, source_tags
from medtl.mlops.tracking.epoch_logger import EpochLogger
from medtl.mlops.tracking.system_metrics import SystemMetrics
from medtl.training.recipe import checkpoint_paths


class _Refusing:
    """A client whose `log_batch` fails like an unreachable server while `down` is set."""

    def __init__(self, client: MlflowClient) -> None:
        self.client, self.down = client, threading.Event()

    def log_batch(self, *args, **kwargs):
        if self.down.is_set():
            raise MlflowException("API request to http://127.0.0.1:5000 failed: Max retries exceeded (Connection refused)")
        return self.client.log_batch(*args, **kwargs)

    def log_artifact(self, *args, **kwargs):
        return self.client.log_artifact(*args, **kwargs)


def outage(client: MlflowClient, experiment: str, folder: Path, down_s: float = 60.0, after: int = 20) -> dict:
    run_id = client.create_run(experiment).info.run_id
    refusing = _Refusing(client)
    logger = EpochLogger(refusing, run_id, checkpoint_paths(folder))  # type: ignore[arg-type]
    history: list[dict] = []
    handovers: list[float] = []
    refusing.down.set()
    started = time.monotonic()
    back_at = None
    flushed_after = None
    epoch = during = 0
    while back_at is None or epoch < during + after:
        epoch += 1
        history.append({"epoch": epoch, "val_loss": 1.0 / epoch})
        t0 = time.perf_counter()
        logger(epoch, [dict(h) for h in history], True)
        handovers.append(time.perf_counter() - t0)
        if back_at is None and time.monotonic() - started >= down_s:
            refusing.down.clear()
            back_at, during = time.monotonic(), epoch
        if back_at is not None and flushed_after is None and logger.logged_up_to >= during:
            flushed_after = time.monotonic() - back_at
        time.sleep(1.0)
    logger.close()
    steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
    return {
        "outage_s": round(back_at - started, 1),
        "epochs_during_outage": during,
        "epochs_total": epoch,
        "epochs_lost": len(set(range(1, epoch + 1)) - set(steps)),
        "epochs_logged_twice": len(steps) - len(set(steps)),
        "max_handover_ms": round(1000 * max(handovers), 2),
        "flushed_s_after_return": round(flushed_after, 1) if flushed_after is not None else "after close",
    }


def exact_resume(folder: Path) -> dict:
    import numpy as np
    import torch.nn as nn

    from medtl.training.checkpoint import Checkpointer, load_checkpoint
    from medtl.training.data.synthetic import load_synthetic
    from medtl.training.loaders import make_loader
    from medtl.training.loop import fit
    from medtl.training.runtime import resolve_runtime, seed_everything
    from medtl.training.spec import TASKS, Task
    from medtl.training.tasks import make_adapter

    def once(where: Path, epochs: int, resume=None) -> list[dict]:
        seed_everything(5)
        splits = load_synthetic(Task.DEMO_BINARY, image_size=16, sizes={"train": 64, "val": 32, "test": 16})
        adapter = make_adapter(TASKS[Task.DEMO_BINARY])
        runtime = resolve_runtime("cpu")
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3), nn.Linear(784, 1))
        state = fit(
            model, adapter, make_loader(splits.train, adapter, 8, runtime, shuffle=True, seed=5),
            make_loader(splits.val, adapter, 8, runtime, shuffle=False), np.asarray(splits.val.targets),
            lr=0.01, max_epochs=epochs, runtime=runtime, callbacks=[Checkpointer(checkpoint_paths(where), meta={})], resume=resume,
        )
        return [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in state.history]

    whole = once(folder / "whole", 5)
    once(folder / "part", 2)
    resumed = once(folder / "resumed", 5, load_checkpoint(checkpoint_paths(folder / "part").last))
    diff = max(abs(a[k] - b[k]) for a, b in zip(whole, resumed, strict=True) for k in a)
    return {"epochs": len(whole), "interrupted_after": 2, "max_metric_difference": diff, "identical": whole == resumed}


def fixed_costs(client: MlflowClient, experiment: str, uri: str, runs: int = 6) -> dict:
    system, tags = [], []
    for _ in range(runs + 1):
        run_id = client.create_run(experiment).info.run_id
        t0 = time.perf_counter()
        monitor = SystemMetrics(run_id, uri)
        t1 = time.perf_counter()
        time.sleep(0.3)
        t2 = time.perf_counter()
        monitor.stop()
        system.append((t1 - t0) + (time.perf_counter() - t2))
        t3 = time.perf_counter()
        environment_tags("cpu"), source_tags()
        tags.append(time.perf_counter() - t3)
        client.set_terminated(run_id)
    return {
        "system_metrics_per_run_s": round(statistics.median(system[1:]), 3),
        "system_metrics_first_in_process_s": round(system[0], 3),
        "env_and_source_tags_per_run_s": round(statistics.median(tags[1:]), 4),
        "env_and_source_tags_first_in_process_s": round(tags[0], 3),
    }


def point_phases(folder: Path, reps: int = 4, arms: tuple[str, ...] = ("random", "domain")) -> dict:
    """Seconds per phase of a demo grid point (median over warm points), per arm; see the module doc."""
    import os
    import shutil

    from medtl.mlops.tracking import runner as R
    from medtl.mlops.tracking.pretraining import run_pretrain
    from medtl.training import checkpoint as C
    from medtl.training import recipe as RC
    from medtl.training.finetune import FinetuneRecipe
    from medtl.training.spec import Arch, Init, PretrainSpec, RunSpec, Task

    spent: dict[str, float] = collections.defaultdict(float)

    def timed(owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                what = label
                if name == "log_artifact":
                    what = f"upload {Path(args[2] if len(args) > 2 else args[1]).name}"
                spent[what] += time.perf_counter() - started

        setattr(owner, name, wrapper)

    phases = [
        (FinetuneRecipe, "prepare", "prepare data and model"),
        (R, "resolve_init", "resolve registered weights"),
        (R, "_interrupted_attempt", "look for an earlier attempt"),
        (MlflowClient, "create_run", "create the run"),
        (T, "log_params", "params"),
        (R, "_log_dataset", "dataset input"),
        (SystemMetrics, "__init__", "system metrics start"),
        (SystemMetrics, "stop", "system metrics stop"),
        (EmissionsCallback, "on_fit_start", "codecarbon start"),
        (EmissionsCallback, "on_fit_end", "codecarbon stop"),
        (C.Checkpointer, "on_epoch_end", "checkpoint CPU copies (training thread)"),
        (C.Checkpointer, "on_fit_end", "wait for the last checkpoint write"),
        (EpochLogger, "close", "epoch logger close"),
        (RC.Recipe, "test", "test pass and predictions"),
        (MlflowClient, "log_artifact", ""),
        (T, "log_metrics", "final metrics"),
        (T, "end_run", "end the run"),
        (shutil, "rmtree", "remove the work folder"),
        (RC.Recipe, "fit", "fit"),
    ]
    # As found in each owner's own namespace (a classmethod stays one); None: inherited, delete to restore.
    originals = [(owner, name, vars(owner).get(name)) for owner, name, _ in phases]
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for owner, name, label in phases:
            timed(owner, name, label)
        uri = f"sqlite:///{folder / 'points.db'}"
        client = MlflowClient(uri)
        if "domain" in arms:
            from medtl.training.archive.demo_archive import write_demo_archive
            from medtl.training.archive.ingest import ingest
            from medtl.training.archive.pseudolabel import pseudolabel

            write_demo_archive(folder / "archive")
            ingest(folder / "archive", folder / "set", key=b"bench-key-0123456789abcdef", progress=False)
            pseudolabel(folder / "set", clusters=6)
            spec = PretrainSpec(arch=Arch.RESNET18, data=str(folder / "set"), max_epochs=1, batch_size=32, image_size=32)
            run_pretrain(spec, tracking_uri=uri, device="cpu")
        rows: dict[str, dict[str, list[float]]] = {arm: collections.defaultdict(list) for arm in arms}
        for rep in range(reps):
            for arm in arms:
                spec = RunSpec(
                    task=Task.DEMO_BINARY, arch=Arch.RESNET18, init=Init(arm), seed=rep, lr=2e-4,
                    max_epochs=5, patience=5, batch_size=16, image_size=32,
                )
                spent.clear()
                started = time.perf_counter()
                outcome = R.run_spec(spec, study="bench-point", tracking_uri=uri, device="cpu")
                wall = time.perf_counter() - started
                epochs = sum(m.value for m in client.get_metric_history(outcome.run_id, "epoch_time_s"))
                found = {**spent, "point": wall, "epochs": epochs, "fixed (point - epochs)": wall - epochs}
                found["fit outside epochs"] = found.pop("fit") - epochs
                if rep > 0 or reps == 1:
                    for key, value in found.items():
                        rows[arm][key].append(value)
    finally:
        os.chdir(cwd)
        for owner, name, original in originals:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
    return {
        f"{arm}: {key}": round(statistics.median(values), 3)
        for arm, found in rows.items()
        for key, values in sorted(found.items(), key=lambda kv: -statistics.median(kv[1]))
    }


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        client = MlflowClient(uri)
        experiment = T.get_or_create_experiment(client, "medtl/bench-runs", uri)
        resume = exact_resume(folder)  # first: torch and torchvision are imported, as in a worker
        costs = fixed_costs(client, experiment, uri)
        down = outage(client, experiment, folder)
    sections = {"outage": down, "exact_resume": resume, "fixed_cost": costs}
    return {f"{section}: {key}": value for section, found in sections.items() for key, value in found.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--point", action="store_true", help="only the phases of a demo grid point")
    parser.add_argument("--reps", type=int, default=4, help="points per arm with --point (the first is not counted)")
    options = parser.parse_args()
    if options.point:
        with tempfile.TemporaryDirectory() as tmp:
            for key, value in point_phases(Path(tmp), options.reps).items():
                print(f"{key:55s} {value:8.3f}")
        sys.exit(0)
    print(main())
