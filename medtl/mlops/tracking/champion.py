"""Moving `champion` through the gate: the evidence from the store, the move itself, and its history entry.

Every alias move in medtl goes through `offer` — `medtl promote` (fine-tuned models, a study's best
validation run per cell), a pretraining run's registration (`registry.log_registered_version`) and
`medtl promote --model NAME --version N` — so every move and every refusal is in the model's history
(`alias_history`). The gate itself is `gate.decide` (pure); this module reads what it needs: the
holder, each side's validation metric and protocol fingerprint, and the candidate's family of seeds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow.tracking import MlflowClient

from medtl.errors import UserError
from medtl.knobs import PROMOTION_WAIT_ENV, promotion_wait_s
from medtl.mlops.tracking import alias_history as H
from medtl.mlops.tracking.environment import medtl_version, user
from medtl.mlops.tracking.gate import Decision, Margin, Side, decide
from medtl.mlops.tracking.registry import CHAMPION, PREVIOUS, champion
from medtl.training import schema as S
from medtl.training.spec import PRIMARY_METRIC, TASKS, PretrainSpec, RunSpec, protocol_fingerprint

ALIAS_TAG_PREFIX = "medtl.alias."
"""`medtl.alias.<alias>.since|from|reason|by` on the version that gained an alias, `.until` on the one that lost it."""

_PRETRAIN_GRID = ("lr", "seed")

LOCK_TAG = "medtl.promotion_lock"
"""Registered-model tag held while one promotion reads the holder, decides and moves: `token until by`."""
LOCK_SETTLE_S = 0.5
LOCK_LEASE_S = 600.0


@dataclass(frozen=True)
class Lock:
    """Who holds a model's promotion lock, and until when (epoch seconds)."""

    token: str
    until: float
    by: str


def lock_of(client: MlflowClient, name: str) -> Lock | None:
    """`name`'s promotion lock as its tag holds it, or None (an unreadable expiry counts as expired)."""
    value = client.get_registered_model(name).tags.get(LOCK_TAG, "")
    if not value.strip():
        return None
    token, until, by = (value.split(" ", 2) + ["", ""])[:3]
    try:
        expiry = float(until)
    except ValueError:
        expiry = 0.0
    return Lock(token, expiry, by)


def _write_lock(client: MlflowClient, name: str, value: str) -> bool:
    """Write the lock tag; False when another promoter wrote it at the same moment and won: MLflow's SQL
    store looks a tag up, then inserts it, so the second insert fails with BAD_REQUEST."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_registered_model_tag(name, LOCK_TAG, value)
    except MlflowException as exc:
        if exc.error_code != "BAD_REQUEST":
            raise
        return False
    return True


@contextlib.contextmanager
def promotion_lock(
    client: MlflowClient,
    name: str,
    *,
    wait_s: float | None = None,
    settle_s: float = LOCK_SETTLE_S,
    lease_s: float = LOCK_LEASE_S,
    poll_s: float = 0.25,
) -> Iterator[None]:
    """One promotion at a time per registered model, while it reads the holder, decides and moves the alias.

    MLflow has no compare-and-set on aliases or tags, so this is a lease on a registered-model tag with a
    settle time: a promoter that finds no unexpired lock writes its token, waits `settle_s` and reads the
    tag back; only the last writer goes on, the others wait (as does one whose write lost to another's). Two promoters both go on only if one of them
    takes longer than `settle_s` between finding the lock free and writing its own. The lock is removed
    at the end; a crashed promoter's expires after `lease_s`. The model must exist.

    Raises:
        UserError: another promotion of `name` held the lock for longer than `wait_s` (default
            `$MEDTL_PROMOTION_WAIT_S`, 120 s).
    """
    wait_s = promotion_wait_s() if wait_s is None else wait_s
    token = secrets.token_hex(8)
    deadline = time.monotonic() + wait_s
    while True:
        held = lock_of(client, name)
        if held is None or held.until <= time.time():
            if _write_lock(client, name, f"{token} {time.time() + lease_s:.3f} {user()}"):
                time.sleep(settle_s)
            held = lock_of(client, name)
            if held is not None and held.token == token:
                break
        if time.monotonic() >= deadline:
            holder = "another promotion" if held is None else f"{held.by or 'another user'} (lock held until " \
                f"{datetime.fromtimestamp(held.until, UTC):%Y-%m-%d %H:%M:%S} UTC)"
            raise UserError(f"registered model {name!r} is being promoted by {holder}; waited {wait_s:g} s "
                            f"({PROMOTION_WAIT_ENV}): try again when it is done")
        time.sleep(poll_s * (1 + random.random()))
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # never hide the body's own error; an unremoved lock expires
            held = lock_of(client, name)
            if held is not None and held.token == token:
                client.delete_registered_model_tag(name, LOCK_TAG)


def pretrain_fingerprint(params: dict[str, Any]) -> str:
    """A pretraining run's protocol: every PretrainSpec field but lr and seed, plus the data digest (16 hex)."""
    spec = PretrainSpec.from_params(params).to_params()
    ident = {k: v for k, v in spec.items() if k not in _PRETRAIN_GRID}
    ident["data_digest"] = str(params.get("data_digest", ""))
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_fingerprint(run: Any) -> str:
    """The run's protocol fingerprint: its tag, else recomputed from its params (older stores); `unknown` if neither."""
    tagged = run.data.tags.get(S.FINGERPRINT_TAG)
    if tagged:
        return tagged
    params = run.data.params
    try:
        if run.data.tags.get(S.STAGE_TAG) == S.Stage.PRETRAIN.value:
            return pretrain_fingerprint(params)
        return protocol_fingerprint(params, params.get("data_digest", ""))
    except (UserError, ValueError, TypeError):  # params that no longer make a spec: a protocol of their own
        return "unknown"


def grid_point(run: Any) -> tuple[Any, ...]:
    """What a run's seeds share: its fingerprint, arm and learning rate (and, fine-tuned, task, arch, fraction)."""
    params = run.data.params
    if run.data.tags.get(S.STAGE_TAG) == S.Stage.PRETRAIN.value:
        return ("pretrain", run_fingerprint(run), float(params.get("lr", "nan")))
    spec = RunSpec.from_params(params)
    return ("finetune", run_fingerprint(run), spec.task.value, spec.arch.value, spec.arm, spec.lr, spec.data_fraction)


def family_values(client: MlflowClient, run: Any, metric_name: str) -> list[float]:
    """`metric_name` of each seed of `run`'s grid point: FINISHED, non-diverged runs, the latest per run_key.

    Fine-tuned runs are searched in their study's experiment, pretraining runs among those that
    register the same model.
    """
    stage = run.data.tags.get(S.STAGE_TAG)
    clauses = [f"tags.`{S.STAGE_TAG}` = '{stage}'", "attributes.status = 'FINISHED'"]
    if stage == S.Stage.PRETRAIN.value:
        clauses.append(f"tags.`{S.REGISTERED_MODEL_TAG}` = '{run.data.tags.get(S.REGISTERED_MODEL_TAG, '')}'")
    else:
        clauses += [f"params.task = '{run.data.params.get('task', '')}'", f"params.arch = '{run.data.params.get('arch', '')}'"]
    runs = client.search_runs([run.info.experiment_id], filter_string=" and ".join(clauses), max_results=50_000)
    point = grid_point(run)
    latest: dict[str, Any] = {}
    for other in runs:
        if other.data.metrics.get("diverged", 0.0):
            continue
        try:
            same = grid_point(other) == point
        except (UserError, ValueError, TypeError):
            continue
        key = other.data.tags.get(S.RUN_KEY_TAG) or other.info.run_id
        if same and (key not in latest or other.info.start_time > latest[key].info.start_time):
            latest[key] = other
    return [float(r.data.metrics.get(metric_name, math.nan)) for r in latest.values()]


def version_side(client: MlflowClient, version: Any) -> Side:
    """A registered version as one side of the gate: its run, validation metric and fingerprint."""
    run_id = version.tags.get(S.RUN_TAG) or version.run_id or ""
    fingerprint = version.tags.get(S.FINGERPRINT_TAG)
    if not fingerprint:
        try:
            fingerprint = run_fingerprint(client.get_run(run_id))
        except Exception:  # the run was deleted: nothing is known of its protocol
            fingerprint = "unknown"
    return Side(run_id, float(version.tags.get(S.METRIC_TAG, "nan")), fingerprint, str(version.version))


def run_side(run: Any, metric_name: str, version: str | None = None) -> Side:
    """A run (registered or not) as the candidate side of the gate."""
    return Side(run.info.run_id, float(run.data.metrics.get(metric_name, math.nan)), run_fingerprint(run), version)


def apply(client: MlflowClient, name: str, decision: Decision, *, study: str | None = None, by: str | None = None) -> H.Entry:
    """Carry out `decision` on `name` (move `champion`, the old holder to `previous-champion`) and log it.

    The candidate must be a registered version when the decision moves the alias. Returns the
    history entry appended.
    """
    by = by or user()
    holder, candidate = decision.holder, decision.candidate
    entry = H.new_entry(
        model=name, alias=decision.alias, action=decision.action,
        from_version=decision.holder_version, to_version=decision.after,
        candidate_run=candidate.run_id, candidate_version=candidate.version, by=by, reason=decision.reason,
        evidence=decision.evidence(), study=study, medtl=medtl_version(),
    )
    if decision.moves:
        if candidate.version is None:
            raise ValueError("a move needs a registered candidate version")
        prefix = f"{ALIAS_TAG_PREFIX}{decision.alias}."
        if holder is not None and holder.version is not None:
            if decision.alias == CHAMPION:
                client.set_registered_model_alias(name, PREVIOUS, holder.version)
            client.set_model_version_tag(name, holder.version, f"{prefix}until", entry.time)
        client.set_registered_model_alias(name, decision.alias, candidate.version)
        for key, value in {"since": entry.time, "from": entry.from_version or "none", "reason": decision.reason[:4000],
                           "by": by}.items():
            client.set_model_version_tag(name, candidate.version, f"{prefix}{key}", value)
    H.append(client, entry)
    return entry


def offer(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    margin: Margin | None = None,
    force: bool = False,
    reason: str = "",
    dry_run: bool = False,
    study: str | None = None,
) -> tuple[Decision, H.Entry | None]:
    """Offer registered `version` of `name` the alias `champion`: gate, move (unless `dry_run`), history.

    The candidate's family is its run's grid point over seeds (`family_values`), ranked by the
    version's own validation metric (tags `medtl.metric_name`, `medtl.higher_is_better`).

    Raises:
        UserError: an unknown version, or `force` without `reason`.
    """
    try:
        candidate_version = client.get_model_version(name, version)
    except Exception:
        raise UserError(f"no version {version} of registered model {name!r}") from None
    side = version_side(client, candidate_version)
    metric_name = candidate_version.tags.get(S.METRIC_NAME_TAG, "")
    higher = candidate_version.tags.get(S.HIGHER_TAG, "True") == "True"
    try:
        run = client.get_run(side.run_id)
        family = family_values(client, run, metric_name)
    except Exception:  # the version's run is gone: no seeds to measure
        family = [side.metric]

    options = dict(metric_name=metric_name, higher_is_better=higher, family=family, margin=margin, force=force,
                   reason=reason)
    if dry_run:
        return against_champion(client, name, side, **options), None
    with promotion_lock(client, name):  # the holder read, the decision and the move as one step
        decision = against_champion(client, name, side, **options)
        return decision, apply(client, name, decision, study=study or candidate_version.tags.get(S.STUDY_TAG))


def against_champion(client: MlflowClient, name: str, candidate: Side, **gate: Any) -> Decision:
    """The gate's decision (`gate.decide`, keyword arguments `gate`) for `candidate` against `name`'s
    champion as it is now; under `promotion_lock` when the decision is to be carried out."""
    current = champion(client, name)
    return decide(candidate, None if current is None else version_side(client, current), alias=CHAMPION, **gate)


def primary_of(run: Any) -> tuple[str, bool]:
    """`(best_val_<primary>, higher_is_better)` of a fine-tuning run's task."""
    primary, higher = PRIMARY_METRIC[TASKS[RunSpec.from_params(run.data.params).task].type]
    return f"best_val_{primary}", higher
