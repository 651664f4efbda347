"""Evaluation benchmark: full report (collect + stats + render) over 2,000 and 10,000 runs vs the naive client.

Also the whole command as a user runs it: `medtl evaluate --no-log` in a fresh interpreter (imports
included), the median of COMMAND_REPEATS runs, and the speed-up of that over the naive estimate.

The store is a fresh MLflow SQLite schema (created by MlflowClient) filled with SQL bulk inserts:
the paper's 10 (task, arch) cells x 4 arms (random, imagenet, domain, domain-CR) x 4 learning rates,
seeds added until the size is reached; every run has params, tags, final metrics and 200 epochs of
train_loss, val_loss, val_<primary> and epoch_time_s (800 history points a run). 2% of the runs
are FAILED, 1% diverged. Every finished run has a predictions/test.csv (200 test samples, the
recipe's columns per task type, subgroup_sex for bone age) in a local artifact folder and no
test_ece / test_brier metrics: a store that predates them, so evaluation recomputes calibration from
the predictions of every run its tables use (`--no-predictions`: no artifacts, as before).

The naive approach is what a script on MlflowClient does to gather the same inputs: `search_runs`
over the experiment (paged), one `get_metric_history` per run per per-epoch metric, and one
`download_artifacts` of predictions/test.csv (read with pandas) per run the report uses.
`search_runs` is timed in full; the history calls on a sample of 200 runs and the downloads on a
sample of 50, each scaled to all (estimates, marked). The naive total adds medtl's own statistics
and rendering times (the script would still have to compute and draw the same report).

Run: `.venv/bin/python benchmarks/bench_evaluation.py [sizes...] [--no-predictions]` (writes ~1.5 GB
for 10,000 runs in a temporary folder, removed afterwards); `python benchmarks/run.py --only evaluation`
runs it for 2,000 and 10,000 runs and writes the section of BENCHMARKS.md.
"""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

CELLS = (
    ("luna16", "unet"), ("luna16", "unet_resnet50"), ("rsna-boneage", "inception_v3"),
    ("rsna-boneage", "efficientnet_b3"), ("grazpedwri-osteopenia", "densenet121"),
    ("grazpedwri-osteopenia", "resnet34"), ("covid19", "mobilenet_v3_large"), ("covid19", "resnet18"),
    ("brain-tumor-mri", "resnet50"), ("brain-tumor-mri", "mobilenet_v3_small"),
)
ARMS = ("random", "imagenet", "domain", "domain-CR")
LRS = (1e-2, 1e-3, 1e-4, 1e-5)
EPOCHS = 200
SAMPLE = 200
PREDICTIONS_SAMPLE = 50
TEST_SAMPLES = 200
COMMAND_REPEATS = 3
STUDY = "bench"


def predictions_csv(task: str, rng: np.random.Generator, n: int = TEST_SAMPLES) -> str:
    """A run's predictions/test.csv in the recipe's format for `task` (with a subgroup_sex column for
    regression, as the bone-age loader is to write it), slightly over-confident probabilities."""
    from medtl.training.spec import TASKS, Task, TaskType

    info = TASKS[Task(task)]
    ids = [f"s{i:05d}" for i in range(n)]
    if info.type is TaskType.SEGMENTATION:
        dice = np.clip(0.7 + 0.15 * rng.standard_normal(n), 0, 1)
        rows = [f"{i},{int(t)},{int(p)},{d!r}" for i, t, p, d in
                zip(ids, rng.integers(0, 400, n), rng.integers(0, 400, n), dice.tolist(), strict=True)]
        return "id,target_pixels,predicted_pixels,dice\n" + "\n".join(rows) + "\n"
    if info.type is TaskType.REGRESSION:
        target = rng.uniform(20, 200, n)
        pred = target + 12 * rng.standard_normal(n)
        sex = np.where(rng.random(n) < 0.5, "male", "female")
        rows = [f"{i},{t!r},{p!r},{g}" for i, t, p, g in zip(ids, target.tolist(), pred.tolist(), sex, strict=True)]
        return "id,target,prediction,subgroup_sex\n" + "\n".join(rows) + "\n"
    k = max(2, len(info.classes))
    target = rng.integers(0, k, n)
    logits = rng.standard_normal((n, k)) + 2.5 * np.eye(k)[target] * (rng.random((n, 1)) < 0.8)
    probs = np.exp(2 * logits) / np.exp(2 * logits).sum(axis=1, keepdims=True)
    if info.type is TaskType.BINARY:
        rows = [f"{i},{t},{int(p >= 0.5)},{p!r}" for i, t, p in zip(ids, target.tolist(), probs[:, 1].tolist(), strict=True)]
        return "id,target,prediction,prob_positive\n" + "\n".join(rows) + "\n"
    header = "id,target,prediction," + ",".join(f"prob_{c}" for c in info.classes)
    rows = [f"{i},{t},{int(np.argmax(p))}," + ",".join(repr(float(x)) for x in p) for i, t, p in zip(ids, target.tolist(), probs, strict=True)]
    return header + "\n" + "\n".join(rows) + "\n"


def build_store(path: Path, n_runs: int, seed: int = 0, predictions: bool = True) -> str:
    """A fresh MLflow SQLite store at `path` holding `n_runs` synthetic fine-tuning runs; with `predictions`,
    every finished run has a predictions/test.csv in a local artifact folder beside the store (and, like
    a store written before runs logged test_ece / test_brier, no calibration metrics)."""
    from mlflow.tracking import MlflowClient

    from medtl.training.spec import PRIMARY_METRIC, TASKS, TEST_METRICS, Task

    uri = f"sqlite:///{path}"
    exp = int(MlflowClient(uri).create_experiment(f"medtl/{STUDY}"))
    rng = np.random.default_rng(seed)
    prediction_rng = np.random.default_rng(seed + 1)  # its own stream: the runs' metrics stay as before
    artifacts = path.parent / "mlartifacts" / str(exp)
    combos = [(t, a, arm, lr) for t, a in CELLS for arm in ARMS for lr in LRS]
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA journal_mode=MEMORY")
    t0 = 1_700_000_000_000
    runs, tags, params, latest, metrics = [], [], [], [], []

    def flush() -> None:
        conn.executemany("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
        conn.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tags)
        conn.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", params)
        conn.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,?,?)", latest
        )
        conn.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,?)", metrics
        )
        for rows in (runs, tags, params, latest, metrics):
            rows.clear()

    for i in range(n_runs):
        task, arch, arm, lr = combos[i % len(combos)]
        seed_no = i // len(combos)
        ttype = TASKS[Task(task)].type
        primary, higher = PRIMARY_METRIC[ttype]
        rid = uuid.uuid4().hex
        failed = rng.random() < 0.02
        diverged = not failed and rng.random() < 0.01
        start = t0 + i * 1000
        folder = artifacts / rid / "artifacts"
        if predictions and not failed:
            (folder / "predictions").mkdir(parents=True)
            (folder / "predictions" / "test.csv").write_text(predictions_csv(task, prediction_rng))
        runs.append((rid, f"{task} {arch} {arm} lr={lr:g} seed={seed_no}", "LOCAL", "", "", "bench",
                     "FAILED" if failed else "FINISHED", start, start + 900, "", "active", folder.as_uri(), exp, None))
        for k, v in {"medtl.stage": "finetune", "medtl.study": STUDY, "medtl.arm": arm,
                     "medtl.task": task, "medtl.arch": arch, "medtl.run_key": rid[:16],
                     "mlflow.runName": runs[-1][1]}.items():
            tags.append((k, v, rid))
        if failed:
            tags.append(("medtl.failure_reason", "RuntimeError: bench", rid))
        spec = {"task": task, "arch": arch, "init": arm.split("-")[0], "lr": repr(lr), "seed": str(seed_no),
                "dataset": "/data", "init_source": "", "pretrain_modality": "CR" if "-" in arm else "all",
                "data_fraction": "1.0", "max_epochs": "200", "patience": "10", "batch_size": "32",
                "image_size": "224", "normalization": "auto", "optimizer": "AdamW",
                "weight_decay": "0.001"}
        params += [(k, v, rid) for k, v in spec.items()]
        quality = 0.7 + 0.05 * (ARMS.index(arm) % 3) + 0.03 * rng.standard_normal()
        epochs = EPOCHS if not failed else int(rng.integers(1, EPOCHS))
        steps = np.arange(1, epochs + 1)
        curve = quality * (1 - np.exp(-steps / 20))
        if not higher:
            curve = 40 - 20 * curve
        for key, values in (("train_loss", 1 / steps), ("val_loss", 1.2 / steps),
                            (f"val_{primary}", curve), ("epoch_time_s", np.full(epochs, 30.0))):
            metrics += [(key, float(v), start + int(s), rid, int(s), 0) for s, v in zip(steps, values, strict=True)]
            latest.append((key, float(values[-1]), start + epochs, epochs, 0, rid))
        if not failed:
            best = int(rng.integers(5, 60))
            final = {"epochs_to_convergence": best, "epochs_run": EPOCHS, "diverged": float(diverged),
                     "best_val_loss": 0.2, f"best_val_{primary}": quality if higher else 40 - 20 * quality,
                     "emissions_kg": 1e-3 * best * (1 + 0.05 * rng.random()), "energy_kwh": 0.01 * best,
                     "duration_s": 30.0 * best}
            for m in TEST_METRICS[ttype]:
                value = quality if higher or m not in ("mae", "rmse") else 40 - 20 * quality
                final[f"test_{m}"] = math.nan if diverged else value
            for k, v in final.items():
                nan = isinstance(v, float) and math.isnan(v)
                row = (k, 0.0 if nan else float(v), start + 900, rid, 0, int(nan))
                metrics.append(row)
                latest.append((k, row[1], row[2], 0, row[5], rid))
        if len(metrics) > 400_000:
            flush()
    flush()
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()
    return uri


def time_fast(uri: str, out: Path) -> dict[str, float]:
    """The evaluation pipeline (what `medtl evaluate --no-log` runs), timed per stage in this process."""
    from medtl.evaluation.analysis import analyse
    from medtl.evaluation.collect import collect
    from medtl.evaluation.figure_data import CURVE_EPOCHS
    from medtl.evaluation.predictions import PredictionsReader
    from medtl.evaluation.report import render

    reader = PredictionsReader(uri)
    read: dict[str, float] = {"s": 0.0, "runs": 0}

    def timed(runs):  # noqa: ANN001, ANN202 - the reader's signature
        t = time.perf_counter()
        found = reader(runs)
        read["s"] += time.perf_counter() - t
        read["runs"] += len(runs)
        read["ids"] = list(runs["run_id"])
        return found

    t = time.perf_counter()
    data = collect(STUDY, uri, primary_only=True, max_step=CURVE_EPOCHS)
    t_collect = time.perf_counter() - t
    analysis = analyse(data, "paper", predictions=timed)
    t_stats = time.perf_counter() - t - t_collect
    render(analysis, out)
    total = time.perf_counter() - t
    t = time.perf_counter()
    full = collect(STUDY, uri)
    t_full = time.perf_counter() - t
    return {"collect_s": t_collect, "stats_s": t_stats, "render_s": total - t_collect - t_stats,
            "report_total_s": total, "n_runs": len(data.runs), "second_mode": len(analysis.comparisons) > 1,
            "predictions_read": read["runs"], "read_predictions_s": read["s"], "figures": len(analysis.figures),
            "collect_all_histories_s": t_full, "history_points_all": len(full.histories),
            "predictions_runs": read.get("ids", [])}


def time_command(uri: str, out: Path, repeats: int = COMMAND_REPEATS) -> dict[str, float]:
    """`medtl evaluate --no-log` as a user runs it (a fresh interpreter each time): median wall time."""
    argv = [sys.executable, "-m", "medtl.mlops.cli", "evaluate", "--no-log", "--study", STUDY,
            "--tracking-uri", uri, "--out", str(out)]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return {"command_s": statistics.median(times), "command_runs_s": times}


def time_naive(uri: str, n_runs: int, prediction_runs: list[str]) -> dict[str, float]:
    """search_runs (in full) + one get_metric_history per run and metric (sampled, scaled) + one
    download_artifacts of predictions/test.csv (read with pandas) per run the report uses (sampled, scaled)."""
    import os

    import pandas as pd
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"medtl/{STUDY}").experiment_id
    t = time.perf_counter()
    found, token = [], None
    while True:
        page = client.search_runs([exp], max_results=1000, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            break
    t_search = time.perf_counter() - t
    sample = found[:: max(1, len(found) // SAMPLE)][:SAMPLE]
    t = time.perf_counter()
    calls = 0
    for run in sample:
        for key in [k for k in run.data.metrics if k in ("train_loss", "val_loss", "epoch_time_s") or k.startswith("val_")]:
            client.get_metric_history(run.info.run_id, key)
            calls += 1
    t_sample = time.perf_counter() - t
    chosen = prediction_runs[:: max(1, len(prediction_runs) // PREDICTIONS_SAMPLE)][:PREDICTIONS_SAMPLE]
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in chosen:
            pd.read_csv(client.download_artifacts(run_id, "predictions/test.csv", f"{tmp}/{run_id}"))
    t_predictions = time.perf_counter() - t
    return {"search_runs_s": t_search, "history_sample_runs": len(sample), "history_sample_calls": calls,
            "history_sample_s": t_sample, "history_estimated_s": t_sample * n_runs / max(1, len(sample)),
            "predictions_sample_runs": len(chosen),
            "predictions_estimated_s": t_predictions * len(prediction_runs) / max(1, len(chosen))}


def main(sizes: tuple[int, ...] = (2000, 10000), predictions: bool = True) -> dict:
    """Build a store per size, time the report and the naive client; return the numbers."""
    results = {}
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="medtl-bench-") as tmp:
            t = time.perf_counter()
            uri = build_store(Path(tmp) / "mlflow.db", n, predictions=predictions)
            build = time.perf_counter() - t
            size_mb = (Path(tmp) / "mlflow.db").stat().st_size / 2**20
            fast = time_fast(uri, Path(tmp) / "report")
            command = time_command(uri, Path(tmp) / "report-cli")
            naive = time_naive(uri, n, fast.pop("predictions_runs"))
            # the naive way computes and draws what medtl does: our stats and render times are added to it
            without = naive["search_runs_s"] + naive["history_estimated_s"] + fast["stats_s"] + fast["render_s"]
            naive_total = without + naive["predictions_estimated_s"]
            results[n] = {"build_s": build, "db_mb": size_mb, **fast, **command, **naive,
                          "naive_report_estimated_s": naive_total,
                          "naive_without_predictions_s": without,
                          "speedup": naive_total / fast["report_total_s"],
                          "command_speedup": naive_total / command["command_s"],
                          "command_speedup_without_predictions": without / command["command_s"]}
            print(json.dumps({n: results[n]}, default=float, indent=1), flush=True)
    return readable(results)


def readable(results: dict) -> dict[str, dict]:
    """BENCHMARKS.md's table: one row per measure, one column per store size."""
    rows: dict[str, dict] = {}

    def row(label: str, key) -> None:
        for n, r in results.items():
            rows.setdefault(label, {})[f"{n:,} runs"] = key(r) if callable(key) else r[key]

    row("store: build s / SQLite MB", lambda r: f"{r['build_s']:.1f} / {r['db_mb']:,.0f}")
    row("in-process report: collect / stats / render s", lambda r: f"{r['collect_s']:.2f} / {r['stats_s']:.2f} / {r['render_s']:.2f}")
    row("predictions files read / figures drawn", lambda r: f"{r['predictions_read']:,} / {r['figures']}")
    row("`medtl evaluate --no-log`, whole command: median s (runs)",
        lambda r: f"**{r['command_s']:.2f}** ({', '.join(f'{x:.2f}' for x in r['command_runs_s'])})")
    row("naive MLflow-API way (estimated): search / histories / predictions s",
        lambda r: f"{r['search_runs_s']:.1f} / {r['history_estimated_s']:.1f} / {r['predictions_estimated_s']:.1f}")
    row("naive total, + the same statistics and rendering s", lambda r: f"{r['naive_report_estimated_s']:.1f}")
    row("speed-up of the command", lambda r: f"**{r['command_speedup']:.1f}×**")
    row("speed-up without charging the naive way for predictions", lambda r: f"{r['command_speedup_without_predictions']:.1f}×")
    row("speed-up of the in-process report", lambda r: f"{r['speedup']:.1f}×")
    return rows


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--no-predictions"]
    main(tuple(int(a) for a in args) or (2000, 10000), predictions="--no-predictions" not in sys.argv[1:])
