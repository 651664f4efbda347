"""A synthetic MLflow store for the evaluation tests: built once per session with MlflowClient."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

TASKS = {"demo-binary": ("f1", True), "demo-regression": ("mae", False)}
ARCHS = ("resnet18", "mobilenet_v3_small")
ARMS = ("random", "imagenet", "domain")
LRS = (1e-3, 1e-4)
SEEDS = range(3)
EPOCHS = 4
STUDY = "synth"


@dataclass
class Store:
    """What the synthetic store holds, for assertions."""

    uri: str
    path: Path
    finetune: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    diverged: set[str] = field(default_factory=set)
    no_params: str = ""
    sweep_parent: str = ""
    expected: dict[str, dict[str, float]] = field(default_factory=dict)
    history_points: dict[tuple[str, str], int] = field(default_factory=dict)


def _test_metrics(task: str, quality: float) -> dict[str, float]:
    if task == "demo-binary":
        return {"test_accuracy": quality, "test_precision": quality - 0.01, "test_recall": quality + 0.01,
                "test_f1": quality, "test_auc": min(1.0, quality + 0.05)}
    return {"test_mae": 20 - 10 * quality, "test_rmse": 25 - 10 * quality}


def _log_run(client, exp, store: Store, *, task, arch, arm, lr, seed, fraction=1.0, epochs=EPOCHS,
             status="FINISHED", diverged=False, params=True, parent="", constant_epochs=False):
    from mlflow.entities import Metric, Param

    rng = np.random.default_rng(zlib.crc32(repr((task, arch, arm, lr, seed, fraction)).encode()))
    metric, higher = TASKS[task]
    init = "domain" if arm.startswith("domain") else arm
    # `medtl.group`: the arm's tag before the glossary named it (an older store, read as the arm)
    tags = {"medtl.stage": "finetune", "medtl.study": STUDY, "medtl.group": arm, "medtl.task": task,
            "medtl.arch": arch, "medtl.run_key": f"k{len(store.finetune):04d}"}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp, tags=tags, run_name=f"{task} {arch} {arm} lr={lr:g} seed={seed}")
    rid = run.info.run_id
    store.finetune.add(rid)
    ps = []
    if params:
        spec = {"task": task, "arch": arch, "init": init, "lr": repr(lr), "seed": str(seed),
                "dataset": "synthetic", "init_source": "", "data_fraction": repr(fraction),
                "pretrain_modality": arm.removeprefix("domain-") if "-" in arm else "all",
                "max_epochs": "200", "patience": "10", "batch_size": "16", "image_size": "64",
                "normalization": "auto"}
        ps = [Param(k, v) for k, v in {**spec, "group": arm, "optimizer": "AdamW"}.items()]
    boost = {"random": 0.0, "imagenet": 0.15, "domain": 0.1}.get(arm, 0.05) + (0.05 if lr == 1e-4 else 0.0)
    quality = 0.6 + boost + 0.03 * rng.standard_normal() - 0.1 * (1 - fraction)
    now = 1_700_000_000_000 + 1000 * len(store.finetune)
    ms = []
    for epoch in range(1, epochs + 1):
        val = quality * (1 - math.exp(-epoch / 2)) if higher else 30 - 10 * quality * (1 - math.exp(-epoch / 2))
        point = {"train_loss": 1 / epoch, "val_loss": 1.2 / epoch, f"val_{metric}": val, "epoch_time_s": 0.5}
        if task == "demo-binary":
            point["val_accuracy"] = val
        ms += [Metric(k, float(v), now + epoch, epoch) for k, v in point.items()]
        for k in point:
            store.history_points[(rid, k)] = epoch
    final: dict[str, float] = {}
    if status == "FINISHED":
        best = 4 if constant_epochs else int(rng.integers(2, epochs + 1))
        final = {"epochs_to_convergence": best, "epochs_run": epochs, "diverged": float(diverged),
                 "best_val_loss": 0.3, f"best_val_{metric}": quality if higher else 20 - 10 * quality,
                 "emissions_kg": 1e-4 * epochs * (1 + 0.1 * rng.random()), "energy_kwh": 1e-3 * epochs,
                 "duration_s": 10.0 * epochs}
        test = _test_metrics(task, quality)
        if diverged:
            test = {k: math.nan for k in test}
            final[f"best_val_{metric}"] = math.nan
        final.update(test)
        ms += [Metric(k, float(v), now + 100, 0) for k, v in final.items()]
    client.log_batch(rid, metrics=ms, params=ps)
    if status != "FINISHED":
        client.set_tag(rid, "medtl.failure_reason", "RuntimeError: synthetic failure")
        store.failed.add(rid)
    if diverged:
        store.diverged.add(rid)
    client.set_terminated(rid, status=status)
    store.expected[rid] = final
    return rid


def build_store(path: Path) -> Store:
    """2 tasks x 2 archs x 3 arms x 2 lrs x 3 seeds plus failed, diverged, variant and reduced-data runs."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{path}"
    client = MlflowClient(uri)
    store = Store(uri, path)
    exp = client.create_experiment(f"medtl/{STUDY}")
    parent = client.create_run(exp, tags={"medtl.stage": "sweep", "medtl.study": STUDY})
    client.log_metric(parent.info.run_id, "val_f1", 0.5, step=1)
    client.set_terminated(parent.info.run_id)
    store.sweep_parent = parent.info.run_id
    for task in TASKS:
        for arch in ARCHS:
            for arm in ARMS:
                for lr in LRS:
                    for seed in SEEDS:
                        kw = {}
                        if (task, arch, arm, lr, seed) == ("demo-binary", "resnet18", "random", 1e-3, 2):
                            kw = {"status": "FAILED", "epochs": 2}
                        if (task, arch, arm, lr, seed) == ("demo-regression", "mobilenet_v3_small", "domain", 1e-4, 1):
                            kw = {"diverged": True}
                        if (task, arch, arm) == ("demo-regression", "resnet18", "imagenet"):
                            kw = {"constant_epochs": True}
                        _log_run(client, exp, store, task=task, arch=arch, arm=arm, lr=lr, seed=seed,
                                 parent=store.sweep_parent, **kw)
    store.no_params = _log_run(client, exp, store, task="demo-binary", arch="mobilenet_v3_small",
                               arm="imagenet", lr=1e-3, seed=9, status="FAILED", epochs=1, params=False)
    for seed in range(3):
        _log_run(client, exp, store, task="demo-binary", arch="resnet18", arm="domain-CR", lr=1e-4, seed=seed)
    for arm in ARMS:
        for seed in range(2):
            _log_run(client, exp, store, task="demo-binary", arch="resnet18", arm=arm, lr=1e-3,
                     seed=seed, fraction=0.25, epochs=5)
    other = client.create_experiment("medtl/other")
    _log_run(client, other, Store(uri, path), task="demo-binary", arch="resnet18", arm="random", lr=1e-3, seed=0)
    pre = client.create_experiment("medtl/pretrain")
    client.set_terminated(client.create_run(pre, tags={"medtl.stage": "pretrain"}).info.run_id)
    return store


_SHARED: dict[str, Store] = {}


def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The synthetic store, built once per test session whichever test directory asks first."""
    if "store" not in _SHARED:
        _SHARED["store"] = build_store(tmp_path_factory.mktemp("store") / "mlflow.db")
    return _SHARED["store"]


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory) -> Store:
    """The synthetic store (session scope: built once, ~10 s); tests must not write to it."""
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="session")
def store_server(synthetic_store, start_mlflow_server) -> str:
    """The address of `mlflow server` (tests/conftest.py, stack.py's command) over the synthetic store."""
    return start_mlflow_server(synthetic_store.uri).uri
