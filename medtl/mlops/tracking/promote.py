"""Promotion: the best validation run of each (task, architecture) is offered `finetuned-<task>-<arch>@champion`.

Never the test set: runs are ranked by `best_val_<primary>` (MAE down, F1 and Dice up), ties broken
by the lower validation loss, then the earlier run. The same identity as the statistics: only runs of
one protocol fingerprint (`RunSpec.fingerprint`) and full training data compete, unless told otherwise
(`fingerprint=`, `fraction=`); when a cell holds several fingerprints, the one of its most recently
started run is used and the choice is reported.

The best run then passes the gate (`gate.decide`): the alias moves only when the candidate has the
holder's fingerprint and beats the holder's validation metric by more than the margin (default: the
half-width of the seed interval of the candidate's grid point), or when forced with a reason. A run is
registered only when it takes the alias; every decision, refusals included, is appended to the model's
alias history, and every registered version gets a model card. Idempotent: promoting again without a
better run moves nothing, and the history says so.
"""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from mlflow.tracking import MlflowClient

from medtl.errors import UserError
from medtl.evaluation.collect import list_studies
from medtl.evaluation.selection import validation_rank_key
from medtl.knobs import promotion_wait_s
from medtl.mlops.tracking import alias_history
from medtl.mlops.tracking.champion import (
    against_champion,
    apply,
    family_values,
    offer,
    primary_of,
    promotion_lock,
    run_fingerprint,
    run_side,
)
from medtl.mlops.tracking.gate import Decision, Margin, Side, require_reason
from medtl.mlops.tracking.model_card import has_card, write_card
from medtl.mlops.tracking.registry import (
    champion,
    ensure_registered_model,
    register_version,
)
from medtl.training import schema as S
from medtl.training.spec import RunSpec


@dataclass(frozen=True)
class Promotion:
    """What promotion did for one registered model: the gate's action, why, and where `champion` is now."""

    model: str
    run_id: str
    metric_name: str
    metric: float
    action: str
    """`moved`, `forced`, `refused` or `kept`; `would move`, ... in a dry run."""
    version: str | None
    """The candidate's version (None: a run not registered)."""
    reason: str
    champion: str | None = None
    """The version holding `champion` after this promotion."""
    holder: str | None = None
    """The version that held `champion` before it."""
    fingerprint: str = ""
    other_fingerprints: int = 0  # fingerprints of the cell that did not compete
    registered: bool = False
    card: str | None = None
    """The artifact URI of a model card written by this promotion."""


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
        key, higher = primary_of(members[0])
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


_DRY = {"moved": "would move", "forced": "would force", "refused": "would refuse", "kept": "would keep"}


def promote(
    study: str,
    *,
    tracking_uri: str | None = None,
    dry_run: bool = False,
    fingerprint: str | None = None,
    fraction: float | None = 1.0,
    margin: Margin | None = None,
    force: bool = False,
    reason: str = "",
    card_template: str | None = None,
) -> list[Promotion]:
    """Offer the best validation run of every (task, arch) of `study` its model's `champion`; returns what was done.

    Args:
        study: the study name.
        tracking_uri: MLflow tracking URI (default: `resolve_tracking_uri`).
        dry_run: decide and report, write nothing (no version, alias, tag, history entry or card).
        fingerprint: rank only runs of this protocol fingerprint (see `candidates`).
        fraction: rank only runs of this training-data fraction (None: any).
        margin: the gate's margin (default `auto`: the candidate's seed interval's half-width).
        force: move the alias whatever the gate says; needs `reason`.
        reason: why (recorded in the history; required with `force`).
        card_template: Markdown for the cards' "Intended use and limitations" (None: the default).

    Raises:
        UserError: unknown study, no run qualifies, or `force` without `reason`.
    """
    require_reason(force, reason)
    uri = S.resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    wait_s = promotion_wait_s()  # a mistyped value fails before anything is written
    done = []
    for (task, arch), cand in sorted(candidates(client, study, fingerprint=fingerprint, fraction=fraction).items()):
        run, name = cand.run, f"finetuned-{task}-{arch}"
        metric_name, higher = primary_of(run)
        gate = dict(metric_name=metric_name, higher_is_better=higher, family=family_values(client, run, metric_name),
                    margin=margin, force=force, reason=reason)  # the seeds: from the runs, before any lock
        if dry_run:
            decision = against_champion(client, name, _side(client, name, run, metric_name), **gate)
            done.append(Promotion(action=_DRY[decision.action], version=decision.candidate.version,
                                  champion=decision.after, **_common(name, run, metric_name, decision, cand)))
            continue
        ensure_registered_model(client, name)
        with promotion_lock(client, name, wait_s=wait_s):  # the holder read, the decision and the move as one step
            decision = against_champion(client, name, _side(client, name, run, metric_name), **gate)
            registered = decision.moves and decision.candidate.version is None
            if registered:
                number = _register(client, uri, study, run, cand.fingerprint)
                decision = replace(decision, candidate=replace(decision.candidate, version=number))
            apply(client, name, decision, study=study)
        common = _common(name, run, metric_name, decision, cand)
        card = _card_if_missing(client, name, decision.candidate.version if registered else None, card_template, uri)
        after = champion(client, name)
        done.append(Promotion(action=decision.action, version=decision.candidate.version, registered=registered,
                              champion=None if after is None else str(after.version), card=card, **common))
    return done


def _common(name: str, run, metric_name: str, decision: Decision, cand) -> dict:  # noqa: ANN001
    """The Promotion fields every outcome shares."""
    return dict(model=name, run_id=run.info.run_id, metric_name=metric_name, metric=decision.candidate.metric,
                reason=decision.reason, fingerprint=cand.fingerprint, other_fingerprints=cand.other_fingerprints,
                holder=decision.holder_version)


def _side(client: MlflowClient, name: str, run, metric_name: str) -> Side:  # noqa: ANN001
    """The run as a candidate, with its registered version when it has one (read under the lock: a version
    registered by a promotion that just ended makes this one a keep)."""
    return run_side(run, metric_name, _version_of_run(client, name, run.info.run_id))


def _card_if_missing(client: MlflowClient, name: str, new: str | None, template: str | None, uri: str) -> str | None:
    """The card of a version just registered, else of a champion without one (older stores); None if neither."""
    if new is None:
        holder = champion(client, name)
        if holder is None or has_card(holder):
            return None
        new = str(holder.version)
    return write_card(client, name, new, template=template, tracking_uri=uri)


def promote_version(
    name: str,
    version: str,
    *,
    tracking_uri: str | None = None,
    dry_run: bool = False,
    margin: Margin | None = None,
    force: bool = False,
    reason: str = "",
    card_template: str | None = None,
) -> Promotion:
    """Offer registered `version` of `name` (fine-tuned or pretrained) `champion` through the same gate.

    Raises:
        UserError: an unknown model or version, or `force` without `reason`.
    """
    require_reason(force, reason)
    uri = S.resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    alias_history.read(client, name)  # an unknown model: one line listing the registered ones
    decision, _ = offer(client, name, str(version), margin=margin, force=force, reason=reason, dry_run=dry_run)
    side = decision.candidate
    common = dict(model=name, run_id=side.run_id, metric_name=decision.metric_name, metric=side.metric,
                  version=side.version, reason=decision.reason, fingerprint=side.fingerprint,
                  holder=decision.holder_version)
    if dry_run:
        return Promotion(action=_DRY[decision.action], champion=decision.after, **common)
    card = _card_if_missing(client, name, None, card_template, uri)
    after = champion(client, name)
    return Promotion(action=decision.action, champion=None if after is None else str(after.version), card=card, **common)


def history(name: str, tracking_uri: str | None = None) -> list[alias_history.Entry]:
    """The alias history of registered model `name`, oldest first (UserError if it is not registered)."""
    return alias_history.read(MlflowClient(S.resolve_tracking_uri(tracking_uri)), name)


def _register(client: MlflowClient, uri: str, study: str, run, fingerprint: str) -> str:  # noqa: ANN001
    """Register `run`'s best checkpoint as a new version of its cell's model; returns the version number."""
    from medtl.training.inference import load_predictor

    spec = RunSpec.from_params(run.data.params)
    metric_name, higher = primary_of(run)
    with tempfile.TemporaryDirectory() as tmp:
        best = Path(client.download_artifacts(run.info.run_id, "checkpoints/best.pt", tmp))
        predictor = load_predictor(best)
        return register_version(
            client,
            tracking_uri=uri,
            experiment_id=run.info.experiment_id,
            name=f"finetuned-{spec.task.value}-{spec.arch.value}",
            network=predictor.network,
            best_path=best,
            image_size=predictor.image_size,
            run_id=run.info.run_id,
            metric_name=metric_name,
            metric=run.data.metrics[metric_name],
            higher_is_better=higher,
            tags=version_tags(study, spec, run, fingerprint),
            extras=len(predictor.extra_inputs),
        )


def _version_of_run(client: MlflowClient, name: str, run_id: str) -> str | None:
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception:
        return None
    for version in versions:
        if version.tags.get(S.RUN_TAG) == run_id:
            return str(version.version)
    return None


__all__ = ["Candidate", "Promotion", "best_runs", "candidates", "history", "promote", "promote_version", "version_tags"]
