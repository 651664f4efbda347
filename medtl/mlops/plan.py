"""`medtl sweep --plan`: the grid's size per task, architecture and arm, what is done, and its cost.

Cost per point comes from the study's own finished runs where a (task, arch) has some (median duration
and emissions); otherwise from the measured training throughput table `benchmarks/throughput.json`
(written by `make bench`), the dataset's nominal size and the epoch cap — an upper bound, since early
stopping usually ends runs sooner. Emissions of such cells use the store's measured kg CO2e per second
of compute, when the store has any finished run.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from mlflow.tracking import MlflowClient

from medtl.mlops import tracking as T
from medtl.mlops.study import load_study
from medtl.mlops.sweep import finished_runs
from medtl.training.spec import RunSpec, Task

THROUGHPUT = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.json"
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
    """(arch, size) → training images/s from the benchmark table (`$MEDTL_THROUGHPUT` or the repo's)."""
    import json
    import os

    path = path or Path(os.environ.get("MEDTL_THROUGHPUT", THROUGHPUT))
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())
    return {(r["arch"], int(r["size"])): float(r["images_per_s"]) for r in rows if r.get("images_per_s")}


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
    for run in finished_runs(client, study_name):
        done.add(run.data.tags.get(T.RUN_KEY_TAG, ""))
        key = (run.data.params.get("task", ""), run.data.params.get("arch", ""))
        costs[key].append((run.data.metrics.get("duration_s", 0.0), run.data.metrics.get("emissions_kg", 0.0)))
    return done, costs


def print_plan(study_path: str | Path, *, tracking_uri: str | None = None) -> None:
    study = load_study(study_path)
    client = MlflowClient(T.resolve_tracking_uri(tracking_uri))
    try:
        done, costs = _finished_costs(client, study.name)
    except Exception as exc:
        from medtl.errors import UserError

        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UserError(T.mask_url(f"cannot reach the tracking store {client.tracking_uri}: {reason}")) from None
    table = load_throughput()
    all_costs = [c for values in costs.values() for c in values if c[0] > 0]
    kg_per_s = sum(c[1] for c in all_costs) / sum(c[0] for c in all_costs) if all_costs else None
    cells: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    bench_secs: dict[tuple[str, str, str], float] = defaultdict(float)
    for spec in study.specs:
        key = (spec.task.value, spec.arch.value, spec.group)
        cells[key].append(spec.run_key in done)
        if spec.run_key not in done:
            secs = estimate_seconds(spec, table)
            bench_secs[key] = math.nan if secs is None else bench_secs[key] + secs
    print(f"study {study.name} ({study.path}): {len(study.specs)} grid points")
    print(f"{'task':<24} {'arch':<22} {'arm':<10} {'points':>6} {'done':>5} {'est. time':>10} {'est. CO2e':>10}")
    total_s = total_kg = 0.0
    unestimated = 0
    for (task, arch, arm), flags in sorted(cells.items()):
        left = flags.count(False)
        measured = costs.get((task, arch))
        if measured and left:
            secs = statistics.median(c[0] for c in measured) * left
            kg = statistics.median(c[1] for c in measured) * left
            total_s, total_kg = total_s + secs, total_kg + kg
            est_t, est_e = f"{secs / 60:.1f} min", f"{kg * 1000:.2f} g"
        elif left and math.isfinite(bench_secs.get((task, arch, arm), math.nan)):
            secs = bench_secs[(task, arch, arm)]
            total_s += secs
            est_t = f"≤{secs / 60:.1f} min"
            if kg_per_s is not None:
                total_kg += secs * kg_per_s
                est_e = f"≤{secs * kg_per_s * 1000:.2f} g"
            else:
                est_e = "unknown"
        elif left:
            unestimated += left
            est_t = est_e = "unknown"
        else:
            est_t = est_e = "-"
        print(f"{task:<24} {arch:<22} {arm:<10} {len(flags):>6} {flags.count(True):>5} {est_t:>10} {est_e:>10}")
    left_total = sum(flags.count(False) for flags in cells.values())
    line = f"left: {left_total} points; estimated {total_s / 60:.1f} min, {total_kg * 1000:.2f} g CO2e on one worker"
    if unestimated:
        line += f" (+{unestimated} points with neither finished runs nor a throughput measurement: run `make bench`)"
    print(line)
    source = "finished runs" + (f" and {THROUGHPUT.name} ({len(table)} measurements)" if table else "")
    print(f"estimates from {source}; '≤' marks upper bounds at the epoch cap")
