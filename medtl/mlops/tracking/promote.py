"""Promotion: the best validation run of each (task, architecture) becomes `finetuned-<task>-<arch>@champion`.

Never the test set: runs are ranked by `best_val_<primary>` (MAE down, F1 and Dice up), ties broken
by the lower validation loss, then the earlier run. Idempotent: a run already registered is not
registered again, and the aliases move only when the champion changes.

The same identity as the statistics: only runs of one protocol fingerprint (`RunSpec.fingerprint`)
and full training data compete, unless told otherwise (`fingerprint=`, `fraction=`). When a cell
holds several fingerprints, the one of its most recently started run is used and the choice is
reported. Model version tags name the study and the fingerprint.
"""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from medtl.errors import UserError
from medtl.evaluation.collect import list_studies
from medtl.evaluation.selection import validation_rank_key
from medtl.mlops.tracking.registry import (
    champion,
    log_registered_version,
    move_champion_if_better,
)
from medtl.training import schema as S
from medtl.training.spec import PRIMARY_METRIC, TASKS, RunSpec, protocol_fingerprint


@dataclass(frozen=True)
class Promotion:
    model: str
    run_id: str
    metric_name: str
    metric: float
    action: str  # "registered", "champion moved", "unchanged", "would register" (dry run)
    version: str | None
    fingerprint: str = ""
    other_fingerprints: int = 0  # fingerprints of the cell that did not compete


def study_experiment(client: MlflowClient, study: str):
    """The experiment of `study`, or UserError listing the known studies."""
    experiment = client.get_experiment_by_name(S.study_experiment(study))
    if experiment is None:
        known = ", ".join(list_studies(client.tracking_uri)) or "none"
        raise UserError(f"unknown study {study!r}; known studies: {known}")
    return experiment


def validation_rank(metric: str, higher_is_better: bool):
    """Sort key over MLflow runs, best run first (the rule: `selection.validation_rank_key`)."""
    return lambda r: validation_rank_key(
        r.data.metrics[metric], r.data.metrics.get("best_val_loss", math.inf), r.info.start_time, higher_is_better
    )


def run_fingerprint(run) -> str:  # noqa: ANN001 - an MLflow Run
    """The run's protocol fingerprint: its tag, else recomputed from its params (older stores)."""
    tagged = run.data.tags.get(S.FINGERPRINT_TAG)
    if tagged:
        return tagged
    params = run.data.params
    try:
        return protocol_fingerprint(params, params.get("data_digest", ""))
    except (UserError, ValueError, TypeError):  # params that no longer make a RunSpec: a protocol of their own
        return "unknown"


@dataclass(frozen=True)
class Candidate:
    """The best run of one (task, arch) cell and the protocol it was ranked within."""

    run: object
    fingerprint: str
    other_fingerprints: int


def candidates(
    client: MlflowClient, study: str, *, fingerprint: str | None = None, fraction: float | None = 1.0
) -> dict[tuple[str, str], Candidate]:
    """The best FINISHED, non-diverged run per (task, arch) of a study, by validation, within one protocol.

    Args:
        client: MLflow client.
        study: the study name.
        fingerprint: rank only runs of this protocol fingerprint (a prefix is enough); default:
            per cell, the fingerprint of its most recently started run.
        fraction: rank only runs of this training-data fraction (None: any; default full data).

    Raises:
        UserError: unknown study, or no run qualifies (the message says what was asked).
    """
    experiment = study_experiment(client, study)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{S.STAGE_TAG}` = '{S.Stage.FINETUNE.value}' and attributes.status = 'FINISHED'",
        max_results=50_000,
    )
    cells: dict[tuple[str, str], list] = defaultdict(list)
    for run in runs:
        if run.data.metrics.get("diverged", 0.0) or "task" not in run.data.params:
            continue
        if fraction is not None and float(run.data.params.get("data_fraction", 1.0)) != fraction:
            continue
        cells[(run.data.params["task"], run.data.params["arch"])].append(run)
    best = {}
    for (task, arch), members in cells.items():
        prints = {r.info.run_id: run_fingerprint(r) for r in members}
        if fingerprint is not None:
            chosen = next((f for f in sorted(set(prints.values())) if f.startswith(fingerprint)), None)
        else:
            chosen = prints[max(members, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id]
        if chosen is None:
            continue
        primary, higher = PRIMARY_METRIC[TASKS[RunSpec.from_params(members[0].data.params).task].type]
        key = f"best_val_{primary}"
        scored = [r for r in members if prints[r.info.run_id] == chosen and math.isfinite(r.data.metrics.get(key, math.nan))]
        if not scored:
            continue
        best[(task, arch)] = Candidate(min(scored, key=validation_rank(key, higher)), chosen, len(set(prints.values())) - 1)
    if not best:
        asked = "" if fingerprint is None else f" of fingerprint {fingerprint}"
        data = "any training fraction" if fraction is None else f"training fraction {fraction:g}"
        raise UserError(f"study {study!r} has no finished fine-tuning runs{asked} at {data} to promote")
    return best


def best_runs(client: MlflowClient, study: str, **options: object) -> dict[tuple[str, str], object]:
    """The best FINISHED, non-diverged run per (task, arch) of a study, by validation (see `candidates`)."""
    return {cell: c.run for cell, c in candidates(client, study, **options).items()}  # type: ignore[arg-type]


def version_tags(study: str, spec: RunSpec, run, fingerprint: str) -> dict[str, str]:  # noqa: ANN001
    """Tags of a registered fine-tuned version: the spec, the validation and test metrics, study and fingerprint."""
    return {
        **{f"{S.SPEC_TAG_PREFIX}{k}": v for k, v in spec.to_params().items()},
        **{f"{S.METRIC_TAG_PREFIX}{k}": repr(v) for k, v in run.data.metrics.items() if k.startswith(("test_", "best_val_"))},
        S.STUDY_TAG: study,
        S.ARM_TAG: spec.arm,
        S.FINGERPRINT_TAG: fingerprint,
    }


def promote(
    study: str,
    *,
    tracking_uri: str | None = None,
    dry_run: bool = False,
    fingerprint: str | None = None,
    fraction: float | None = 1.0,
) -> list[Promotion]:
    """Promote the best validation run of every (task, arch) of `study`; returns what was done.

    Only runs of one protocol fingerprint and full training data compete unless `fingerprint`
    or `fraction` say otherwise (see `candidates`).
    """
    from medtl.training.inference import load_predictor

    uri = S.resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    done = []
    for (task, arch), cand in sorted(candidates(client, study, fingerprint=fingerprint, fraction=fraction).items()):
        run, fp, others = cand.run, cand.fingerprint, cand.other_fingerprints
        name = f"finetuned-{task}-{arch}"
        spec = RunSpec.from_params(run.data.params)
        primary, higher = PRIMARY_METRIC[TASKS[spec.task].type]
        metric_name = f"best_val_{primary}"
        metric = run.data.metrics[metric_name]
        current = champion(client, name)
        if current is not None and current.tags.get(S.RUN_TAG) == run.info.run_id:
            done.append(Promotion(name, run.info.run_id, metric_name, metric, "unchanged", str(current.version), fp, others))
            continue
        existing = _version_of_run(client, name, run.info.run_id)
        if dry_run:
            action = "would register" if existing is None else "would move champion"
            done.append(Promotion(name, run.info.run_id, metric_name, metric, action, existing, fp, others))
            continue
        if existing is not None:
            moved, _ = move_champion_if_better(client, name, existing, metric, higher)
            done.append(Promotion(name, run.info.run_id, metric_name, metric, "champion moved" if moved else "unchanged", existing, fp, others))
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
                tags=version_tags(study, spec, run, fp),
                extras=len(predictor.extra_inputs),
            )
        done.append(
            Promotion(name, run.info.run_id, metric_name, metric, "registered, champion" if registered.champion else "registered",
                      registered.version, fp, others)
        )
    return done


def _version_of_run(client: MlflowClient, name: str, run_id: str) -> str | None:
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception:
        return None
    for version in versions:
        if version.tags.get(S.RUN_TAG) == run_id:
            return str(version.version)
    return None


__all__ = ["Candidate", "Promotion", "best_runs", "candidates", "promote", "version_tags"]
