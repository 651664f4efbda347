"""`make sweep` from `make clean`, timed by stage, with the fixed cost of a grid point and the headline.

Runs the Makefile's own `sweep` target in a scratch folder (the repository's `.venv`, `configs/` and
`scripts/` linked in; its own `mlflow.db`, `optuna.db`, `mlartifacts/`, `.medtl/`), so it measures exactly
what a researcher runs and never touches the repository's store. Every output line is time-stamped as it
arrives; a stage starts at the line make echoes for its command. From the tracking store afterwards:

* per grid point, the time from one fine-tuning run's preparation to the next's (`point_s`: the sweep's
  loop, data, model, MLflow run, params, dataset input, checkpoints, test pass, predictions, uploads) and
  the sum of its epochs' `epoch_time_s` (training + validation); the difference is the fixed cost;
* the headline of `reports/<study>/comparisons.json`: per task, the arms' mean test primary metric and
  epochs to convergence, and the adjusted p of domain vs random.

Usage: python benchmarks/bench_demo.py [--runs 3]   (also `make bench`, section `demo`)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = (
    ("archive", "medtl demo-archive"),
    ("ingest", "medtl ingest"),
    ("pseudolabel", "medtl pseudolabel"),
    ("pretrain", "medtl sweep"),  # the sweep command pretrains the domain arm's models first
    ("grid", "[sweep] done"),  # first grid point finished → the grid; refined below
    ("promote", "medtl promote"),
    ("evaluate", "medtl evaluate"),
    ("ending", "scripts/ui_link.py"),
)


def _scratch(tmp: Path) -> None:
    for name in (".venv", "configs", "scripts", "pyproject.toml", "Makefile", "deploy"):
        (tmp / name).symlink_to(ROOT / name)


def timed_make(tmp: Path) -> tuple[float, list[tuple[float, str]]]:
    """Run `make sweep` in `tmp`; (wall seconds, [(seconds since start, line)])."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MAKEFLAGS", "MFLAGS")}
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "-o", ".venv/.medtl-installed", "sweep"], cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.perf_counter() - start, line.rstrip("\n")))
    code = proc.wait()
    wall = time.perf_counter() - start
    if code != 0:
        tail = "\n".join(text for _, text in lines[-15:])
        raise RuntimeError(f"make sweep exited {code}:\n{tail}")
    return wall, lines


def stages(lines: list[tuple[float, str]], wall: float, grid_start: float | None) -> dict[str, float]:
    """Seconds per stage from the time-stamped output; the grid starts at the first run's preparation."""
    marks: dict[str, float] = {}
    for name, needle in STAGES:
        hit = next((t for t, text in lines if needle in text), None)
        if hit is not None:
            marks[name] = hit
    if grid_start is not None and "pretrain" in marks:
        marks["grid"] = max(marks["pretrain"], grid_start)
    ordered = sorted(marks.items(), key=lambda kv: kv[1])
    out = {"setup (make, venv check, key)": ordered[0][1] if ordered else wall}
    for (name, t), nxt in zip(ordered, [*ordered[1:], ("end", wall)]):
        out[name] = nxt[1] - t
    return out


def point_costs(tmp: Path, study: str) -> tuple[list[float], list[float], float | None, float]:
    """Per fine-tuning point: (point seconds, epoch seconds), when the grid started, and when its last run ended.

    A point's time runs from the previous point's end (or its own start for the first) to its own end:
    the sweep's pop, data and model preparation happen before its MLflow run is created.
    """
    sys.path.insert(0, str(ROOT))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"medtl/{study}")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`medtl.stage` = 'finetune' and attributes.status = 'FINISHED'",
        max_results=5000,
    )
    runs = sorted(runs, key=lambda r: r.info.start_time)
    points, epochs = [], []
    previous_end = None
    for run in runs:
        begin = run.info.start_time if previous_end is None else previous_end
        points.append((run.info.end_time - begin) / 1000)
        epochs.append(sum(m.value for m in client.get_metric_history(run.info.run_id, "epoch_time_s")))
        previous_end = run.info.end_time
    first = runs[0].info.start_time / 1000 if runs else None
    return points, epochs, first, (runs[-1].info.end_time / 1000 if runs else 0.0)


def headline(tmp: Path, study: str) -> list[dict]:
    """The README's headline rows (scripts/readme_figure.py) of the scratch folder's report."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from readme_figure import headline_rows

    return headline_rows(tmp / "reports" / study)


def main(runs: int = 3) -> list[dict]:
    """Time `make sweep` from clean `runs` times; the table rows for BENCHMARKS.md."""
    study = "demo"
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="medtl-demo-bench-") as name:
            tmp = Path(name)
            _scratch(tmp)
            started_epoch = time.time()
            wall, lines = timed_make(tmp)
            points, epochs, first_run, _ = point_costs(tmp, study)
            grid_start = None if first_run is None else first_run - started_epoch
            results.append({
                "wall": wall, "stages": stages(lines, wall, grid_start), "points": points, "epochs": epochs,
                "headline": headline(tmp, study),
            })
    walls = [r["wall"] for r in results]
    rows: list[dict] = [{"measure": "make sweep wall, s (each run)", "value": ", ".join(f"{w:.0f}" for w in walls)},
                        {"measure": "make sweep wall, s (median)", "value": round(statistics.median(walls), 1)}]
    for stage in results[0]["stages"]:
        values = [r["stages"].get(stage, 0.0) for r in results]
        rows.append({"measure": f"stage {stage}, s (median)", "value": round(statistics.median(values), 1)})
    point = [p for r in results for p in r["points"]]
    epoch = [e for r in results for e in r["epochs"]]
    fixed = [p - e for p, e in zip(point, epoch)]
    rows += [
        {"measure": "grid points timed", "value": len(point)},
        {"measure": "per point, s (median)", "value": round(statistics.median(point), 2)},
        {"measure": "epochs per point, s (median)", "value": round(statistics.median(epoch), 2)},
        {"measure": "fixed cost per point, s (median)", "value": round(statistics.median(fixed), 2)},
    ]
    for number, r in enumerate(results, 1):
        for h in r["headline"]:
            domain, random_ = h["arms"].get("domain", (float("nan"),))[0], h["arms"].get("random", (float("nan"),))[0]
            p = "n/a" if h["p_adjusted"] is None else f"{h['p_adjusted']:.4f}"
            rows.append({"measure": f"run {number}: {h['task']} {h['arch']} {h['measure']}, mean: domain vs random",
                         "value": f"{domain:.3f} vs {random_:.3f}, adjusted p {p}"})
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="make sweep runs from clean (default 3: the median is reported)")
    args = parser.parse_args()
    for row in main(args.runs):
        print(f"{row['measure']}: {row['value']}")
