"""`medtl sweep --plan`: the grid's size per task, architecture and arm, what is done, and its cost.

Cost per point comes from the study's own finished runs where a (task, arch) has some (median duration
and emissions); otherwise from the shipped training throughput table `benchmarks/throughput.json`
(written by `make bench`, section `throughput`), the dataset's nominal size and the epoch cap — an
upper bound, since early stopping usually ends runs sooner. GPU rows of the table are preferred; the
shipped CPU rows are marked as such. Emissions of such cells use the store's measured kg CO2e per
second of compute, when the store has any finished run. What cannot be estimated prints "unknown",
never zero.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from mlflow.tracking import MlflowClient

from medtl.mlops.sweeps.study import Study
from medtl.mlops.tracking import client as T
from medtl.redact import mask_url
from medtl.training import schema as S
from medtl.training.spec import RunSpec, Task

THROUGHPUT = Path(__file__).resolve().parents[3] / "benchmarks" / "throughput.json"
# Training / validation images per epoch at fraction 1, from the datasets' documentation.
NOMINAL_SIZES: dict[Task, tuple[int, int]] = {
    Task.RSNA_BONEAGE: (12611, 1425),
    Task.GRAZPEDWRI_OSTEOPENIA: (3710, 618),  # 2 x 2,473 after undersampling, 75 / 12.5 %
    Task.COVID19: (5424, 904),  # 2 x 3,616 after undersampling
    Task.BRAIN_TUMOR_MRI: (4284, 1428),
    Task.LUNA16: (6000, 700),  # axial slices holding nodule voxels, roughly
    Task.DEMO_BINARY: (256, 96),
    Task.DEMO_MULTICLASS: (256, 96),
    Task.DEMO_REGRESSION: (256, 96),
    Task.DEMO_SEGMENTATION: (256, 96),
}


def load_throughput(path: Path | None = None) -> dict[tuple[str, int], float]:
    """(arch, size) → training images/s from the benchmark table (`$MEDTL_THROUGHPUT` or the repo's).

    Per architecture, GPU-measured rows win over CPU ones (see `throughput_kind`).
    """
    return {key: ips for key, (ips, _) in _throughput_rows(path).items()}


def throughput_kind(path: Path | None = None) -> dict[str, str]:
    """arch → where its throughput figures were measured: `gpu` or `cpu`."""
    return {arch: kind for (arch, _), (_, kind) in _throughput_rows(path).items()}


def _throughput_rows(path: Path | None) -> dict[tuple[str, int], tuple[float, str]]:
    import json
    import os

    path = path or Path(os.environ.get("MEDTL_THROUGHPUT", THROUGHPUT))
    if not path.is_file():
        return {}
    loaded = json.loads(path.read_text())
    rows = loaded.get("rows", []) if isinstance(loaded, dict) else loaded
    best: dict[tuple[str, int], tuple[float, str]] = {}
    gpu_archs = {r["arch"] for r in rows if r.get("images_per_s") and str(r.get("device", "cpu")).startswith("cuda")}
    for r in rows:
        if not r.get("images_per_s") or float(r["images_per_s"]) <= 0:
            continue
        kind = "gpu" if str(r.get("device", "cpu")).startswith("cuda") else "cpu"
        if r["arch"] in gpu_archs and kind == "cpu":
            continue
        best[(r["arch"], int(r["size"]))] = (float(r["images_per_s"]), kind)
    return best


def estimate_seconds(spec: RunSpec, table: dict[tuple[str, int], float]) -> float | None:
    """Upper-bound compute time of one point: epochs x (train + validation/3) images / images per s."""
    from medtl.training.factory import image_size_for

    size = image_size_for(spec)
    measured = [(s, ips) for (a, s), ips in table.items() if a == spec.arch.value]
    if not measured:
        return None
    near, ips = min(measured, key=lambda m: abs(m[0] - size))
    ips *= (near / size) ** 2  # cost grows with pixels
    train, val = NOMINAL_SIZES[spec.task]
    return spec.max_epochs * (train * spec.data_fraction + val / 3) / ips


def _finished_costs(client: MlflowClient, study_name: str) -> tuple[set[str], dict[tuple[str, str], list[tuple[float, float]]]]:
    done: set[str] = set()
    costs: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for run in T.finished_runs(client, study_name):
        done.add(run.data.tags.get(S.RUN_KEY_TAG, ""))
        key = (run.data.params.get("task", ""), run.data.params.get("arch", ""))
        costs[key].append((run.data.metrics.get("duration_s", 0.0), run.data.metrics.get("emissions_kg", 0.0)))
    return done, costs


def print_plan(study: Study | str | Path, *, tracking_uri: str | None = None) -> None:
    """Print the grid per (task, arch, arm): points, done, estimated time and CO2e on one worker.

    `study` is a loaded study or a study file (its `from_study` learning rates read here).
    """
    if not isinstance(study, Study):
        from medtl.mlops.sweeps.lr_selection import resolve_study

        study = resolve_study(study, tracking_uri)
    client = MlflowClient(S.resolve_tracking_uri(tracking_uri))
    try:
        done, costs = _finished_costs(client, study.name)
    except Exception as exc:
        from medtl.errors import UserError

        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UserError(mask_url(f"cannot reach the tracking store {client.tracking_uri}: {reason}")) from None
    table = load_throughput()
    kinds = throughput_kind()
    all_costs = [c for values in costs.values() for c in values if c[0] > 0]
    kg_per_s = sum(c[1] for c in all_costs) / sum(c[0] for c in all_costs) if all_costs else None
    cells: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    bench_secs: dict[tuple[str, str, str], float] = defaultdict(float)
    bench_kinds: set[str] = set()
    for spec in study.specs:
        key = (spec.task.value, spec.arch.value, spec.arm)
        cells[key].append(spec.run_key in done)
        if spec.run_key not in done:
            secs = estimate_seconds(spec, table)
            bench_secs[key] = math.nan if secs is None else bench_secs[key] + secs
    print(f"study {study.name} ({study.path}): {len(study.specs)} grid points")
    print(f"{'task':<24} {'arch':<22} {'arm':<10} {'points':>6} {'done':>5} {'est. time':>16} {'est. CO2e':>10}")
    total_s = total_kg = 0.0
    unestimated = unestimated_kg = 0
    for (task, arch, arm), flags in sorted(cells.items()):
        left = flags.count(False)
        measured = costs.get((task, arch))
        if measured and left:
            secs = statistics.median(c[0] for c in measured) * left
            kg = statistics.median(c[1] for c in measured) * left
            total_s, total_kg = total_s + secs, total_kg + kg
            est_t, est_e = _duration(secs), f"{kg * 1000:.2f} g"
        elif left and math.isfinite(bench_secs.get((task, arch, arm), math.nan)):
            secs = bench_secs[(task, arch, arm)]
            total_s += secs
            kind = kinds.get(arch, "cpu")
            bench_kinds.add(kind)
            est_t = f"≤{_duration(secs)} {kind.upper()}"
            if kg_per_s is not None:
                total_kg += secs * kg_per_s
                est_e = f"≤{secs * kg_per_s * 1000:.2f} g"
            else:
                unestimated_kg += left
                est_e = "unknown"
        elif left:
            unestimated += left
            unestimated_kg += left
            est_t = est_e = "unknown"
        else:
            est_t = est_e = "-"
        print(f"{task:<24} {arch:<22} {arm:<10} {len(flags):>6} {flags.count(True):>5} {est_t:>16} {est_e:>10}")
    left_total = sum(flags.count(False) for flags in cells.values())
    bound = "≤" if bench_kinds and total_s > 0 else ""
    print(f"left: {left_total} points; estimated {bound}{_total_time(total_s, left_total, unestimated)}, "
          f"{_total_co2(total_kg, left_total, unestimated_kg)} on one worker")
    if unestimated:
        print(f"{unestimated} points have neither finished runs nor a throughput measurement: run `make bench`")
    if unestimated_kg > unestimated:
        print("emissions are unknown until the store holds a finished run (its measured kg CO2e per second is used)")
    source = "finished runs" + (f" and {THROUGHPUT.name} ({len(table)} measurements)" if table else "")
    marks = "'≤' marks upper bounds at the epoch cap"
    if "cpu" in bench_kinds:
        marks += "; CPU: throughput measured on a CPU (a GPU trains these many times faster)"
    print(f"estimates from {source}; {marks}")


def _duration(seconds: float) -> str:
    if seconds >= 48 * 3600:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min"


def _total_time(seconds: float, left: int, unknown: int) -> str:
    return _total(_duration(seconds), "0 min (nothing left)", "time unknown", left, unknown)


def _total_co2(kg: float, left: int, unknown: int) -> str:
    return _total(f"{kg * 1000:.2f} g CO2e", "0 g CO2e", "CO2e unknown", left, unknown)


def _total(estimate: str, nothing: str, unknowable: str, left: int, unknown: int) -> str:
    """`estimate` for the `left` points, said to cover only those known when `unknown` of them are not."""
    if left == 0:
        return nothing
    if unknown == left:
        return unknowable
    partial = f" for {left - unknown} of {left} points, the rest unknown" if unknown else ""
    return f"{estimate}{partial}"
