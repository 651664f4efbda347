"""Promotion: the best validation run of each (task, architecture) becomes `finetuned-<task>-<arch>@champion`.

Never the test set: runs are ranked by `best_val_<primary>` (MAE down, F1 and Dice up), ties broken
by the lower validation loss, then the earlier run. Idempotent: a run already registered is not
registered again, and the aliases move only when the champion changes.
"""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from medtl.errors import UserError
from medtl.mlops import tracking as T
from medtl.mlops.registry import (
    CHAMPION,
    RUN_TAG,
    champion,
    log_registered_version,
    move_champion_if_better,
)
from medtl.mlops.runner import experiment_name
from medtl.training.spec import PRIMARY_METRIC, TASKS, RunSpec


@dataclass(frozen=True)
class Promotion:
    model: str
    run_id: str
    metric_name: str
    metric: float
    action: str  # "registered", "champion moved", "unchanged", "would register" (dry run)
    version: str | None


def list_studies(client: MlflowClient) -> list[str]:
    names = [e.name for e in client.search_experiments(max_results=1000)]
    return sorted(n.removeprefix("medtl/") for n in names if n.startswith("medtl/") and n != "medtl/pretrain")


def study_experiment(client: MlflowClient, study: str):
    """The experiment of `study`, or UserError listing the known studies."""
    experiment = client.get_experiment_by_name(experiment_name(study))
    if experiment is None:
        known = ", ".join(list_studies(client)) or "none"
        raise UserError(f"unknown study {study!r}; known studies: {known}")
    return experiment


def validation_rank(metric: str, higher_is_better: bool):
    """Sort key, best run first: the validation metric (direction-aware), then val loss, then the earlier run."""
    sign = -1.0 if higher_is_better else 1.0
    return lambda r: (sign * r.data.metrics[metric], r.data.metrics.get("best_val_loss", math.inf), r.info.start_time)


def best_runs(client: MlflowClient, study: str) -> dict[tuple[str, str], object]:
    """The best FINISHED, non-diverged fine-tuning run per (task, arch) of a study, by validation."""
    experiment = study_experiment(client, study)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{T.STAGE_TAG}` = 'finetune' and attributes.status = 'FINISHED'",
        max_results=50_000,
    )
    cells: dict[tuple[str, str], list] = defaultdict(list)
    for run in runs:
        if run.data.metrics.get("diverged", 0.0) or "task" not in run.data.params:
            continue
        cells[(run.data.params["task"], run.data.params["arch"])].append(run)
    best = {}
    for (task, arch), members in cells.items():
        primary, higher = PRIMARY_METRIC[TASKS[RunSpec.from_params(members[0].data.params).task].type]
        key = f"best_val_{primary}"
        scored = [r for r in members if math.isfinite(r.data.metrics.get(key, math.nan))]
        if not scored:
            continue
        best[(task, arch)] = min(scored, key=validation_rank(key, higher))
    if not best:
        raise UserError(f"study {study!r} has no finished fine-tuning runs to promote")
    return best


def promote(study: str, *, tracking_uri: str | None = None, dry_run: bool = False) -> list[Promotion]:
    """Promote the best validation run of every (task, arch) of `study`; returns what was done."""
    from medtl.training.inference import load_predictor

    uri = T.resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    done = []
    for (task, arch), run in sorted(best_runs(client, study).items()):
        name = f"finetuned-{task}-{arch}"
        spec = RunSpec.from_params(run.data.params)
        primary, higher = PRIMARY_METRIC[TASKS[spec.task].type]
        metric_name = f"best_val_{primary}"
        metric = run.data.metrics[metric_name]
        current = champion(client, name)
        if current is not None and current.tags.get(RUN_TAG) == run.info.run_id:
            done.append(Promotion(name, run.info.run_id, metric_name, metric, "unchanged", str(current.version)))
            continue
        existing = _version_of_run(client, name, run.info.run_id)
        if dry_run:
            done.append(Promotion(name, run.info.run_id, metric_name, metric, "would register" if existing is None else "would move champion", existing))
            continue
        if existing is not None:
            moved, _ = move_champion_if_better(client, name, existing, metric, higher)
            done.append(Promotion(name, run.info.run_id, metric_name, metric, "champion moved" if moved else "unchanged", existing))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            best = Path(client.download_artifacts(run.info.run_id, "checkpoints/best.pt", tmp))
            predictor = load_predictor(best)
            registered = log_registered_version(
                client,
                tracking_uri=uri,
                experiment_id=run.info.experiment_id,
                name=name,
                network=predictor.network,
                best_path=best,
                image_size=predictor.image_size,
                run_id=run.info.run_id,
                metric_name=metric_name,
                metric=metric,
                higher_is_better=higher,
                tags={
                    **{f"spec.{k}": v for k, v in spec.to_params().items()},
                    **{f"metric.{k}": repr(v) for k, v in run.data.metrics.items() if k.startswith(("test_", "best_val_"))},
                    "medtl.study": study,
                    "medtl.group": spec.group,
                },
                extras=len(predictor.extra_inputs),
            )
        done.append(
            Promotion(name, run.info.run_id, metric_name, metric, "registered, champion" if registered.champion else "registered", registered.version)
        )
    return done


def _version_of_run(client: MlflowClient, name: str, run_id: str) -> str | None:
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception:
        return None
    for version in versions:
        if version.tags.get(RUN_TAG) == run_id:
            return str(version.version)
    return None


__all__ = ["CHAMPION", "Promotion", "best_runs", "list_studies", "promote"]
