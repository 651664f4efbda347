"""`medtl sweep --plan`: the grid's size per task, architecture and arm, what is done, and its cost.

The cost estimate uses the study's own finished runs (median duration and emissions per task and
architecture); cells without finished runs are reported as unestimated rather than guessed.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from mlflow.tracking import MlflowClient

from medtl.mlops import tracking as T
from medtl.mlops.runner import experiment_name
from medtl.mlops.study import load_study


def _finished_costs(client: MlflowClient, study_name: str) -> tuple[set[str], dict[tuple[str, str], list[tuple[float, float]]]]:
    experiment = client.get_experiment_by_name(experiment_name(study_name))
    done: set[str] = set()
    costs: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    if experiment is None:
        return done, costs
    token = None
    while True:
        page = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{T.STAGE_TAG}` = 'finetune' and attributes.status = 'FINISHED'",
            max_results=5000,
            page_token=token,
        )
        for run in page:
            done.add(run.data.tags.get(T.RUN_KEY_TAG, ""))
            key = (run.data.params.get("task", ""), run.data.params.get("arch", ""))
            costs[key].append((run.data.metrics.get("duration_s", 0.0), run.data.metrics.get("emissions_kg", 0.0)))
        token = page.token
        if not token:
            return done, costs


def print_plan(study_path: str | Path, *, tracking_uri: str | None = None) -> None:
    study = load_study(study_path)
    client = MlflowClient(T.resolve_tracking_uri(tracking_uri))
    done, costs = _finished_costs(client, study.name)
    cells: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    for spec in study.specs:
        cells[(spec.task.value, spec.arch.value, spec.group)].append(spec.run_key in done)
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
        elif left:
            unestimated += left
            est_t = est_e = "unknown"
        else:
            est_t = est_e = "-"
        print(f"{task:<24} {arch:<22} {arm:<10} {len(flags):>6} {flags.count(True):>5} {est_t:>10} {est_e:>10}")
    left_total = sum(flags.count(False) for flags in cells.values())
    line = f"left: {left_total} points; estimated {total_s / 60:.1f} min, {total_kg * 1000:.2f} g CO2e on one worker"
    if unestimated:
        line += f" (+{unestimated} points without finished runs to estimate from)"
    print(line)
