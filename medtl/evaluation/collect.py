"""Read a study's fine-tuning runs from the MLflow tracking store into tidy DataFrames, in bulk.

Two readers (`medtl.evaluation.readers`, one `TrackingReader` interface) give the same frames:

- `sqlite:` / `postgresql:` stores are read directly with SQLAlchemy: six read-only SELECTs over
  MLflow's `experiments`, `runs`, `tags`, `params`, `latest_metrics` and `metrics` tables, whatever
  the number of runs. MLflow's own client would issue one `get_metric_history` request per run and
  metric (tens of thousands of round trips for a paper-sized study).
- `http(s):` servers go through the public REST API: `search_runs` paged (params, tags and final
  metrics come with each run) and `metrics/get-history-bulk-interval` for 100 runs per request per
  per-epoch metric (no sampling below its 2,500-step limit; epochs are capped far below that).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medtl.errors import UserError
from medtl.evaluation.readers import STUDY_NAME, TrackingReader, mask_uri, reader
from medtl.training import schema as S
from medtl.training.spec import (
    PRIMARY_METRIC,
    TASKS,
    TEST_METRICS,
    protocol_fields,
    protocol_fingerprint,
)

__all__ = [
    "FINAL_METRICS", "STUDY_NAME", "StudyData", "TrackingReader", "UnknownStudyError", "check_study_name",
    "collect", "fingerprint", "list_studies", "mask_uri", "reader",
]

_PROTOCOL_PARAMS = frozenset({*protocol_fields(), "init", "init_source", "pretrain_modality", "data_digest"})
INIT_RESOLVED = S.INIT_RESOLVED_PARAM
_SPEC_TYPES = S.param_dtypes()
SPEC_STR = tuple(k for k, t in _SPEC_TYPES.items() if t is str)
SPEC_FLOAT = tuple(k for k, t in _SPEC_TYPES.items() if t is float)
SPEC_INT = tuple(k for k, t in _SPEC_TYPES.items() if t in (int, bool))
TAG_COLUMNS = {
    S.RUN_KEY_TAG: "run_key",
    S.STUDY_TAG: "study",
    S.FAILURE_TAG: "failure_reason",
    S.STOP_REASON_TAG: "stop_reason",
    S.RESUMED_FROM_TAG: "resumed_from_epoch",
    S.PARENT_TAG: "parent_run_id",
}
_METRIC_NAMES = sorted({m for ms in TEST_METRICS.values() for m in ms})
FINAL_METRICS = (
    "epochs_to_convergence",
    "epochs_run",
    "best_val_loss",
    *sorted({f"best_val_{m}" for m, _ in PRIMARY_METRIC.values()}),
    *(f"test_{m}" for m in _METRIC_NAMES),
    "emissions_kg",
    "energy_kwh",
    "duration_s",
)
HISTORY_COLUMNS = ("run_id", "key", "step", "value")


class UnknownStudyError(UserError):
    """The study has no experiment in the tracking store; the message lists the known studies."""


@dataclass(frozen=True)
class StudyData:
    """One study's runs (one row a fine-tuning run) and per-epoch histories (long format)."""

    study: str
    tracking_uri: str
    experiment_id: str
    runs: pd.DataFrame
    histories: pd.DataFrame


def is_history_key(key: str) -> bool:
    """Whether a metric key is logged once per epoch (train_loss, val_*, epoch_time_s)."""
    return key in ("train_loss", "epoch_time_s") or key.startswith("val_")


def primary_history_keys(tasks: Iterable[str]) -> list[str]:
    """`val_<primary>` of each known task among `tasks` (unknown task names are skipped)."""
    known = {t.value: info for t, info in TASKS.items()}
    return sorted({f"val_{PRIMARY_METRIC[known[t].type][0]}" for t in tasks if t in known})


def check_study_name(study: str) -> str:
    """Return `study` if it is a plain name (letters, digits, `_`, `.`, `-`), else raise UserError."""
    if not isinstance(study, str) or not STUDY_NAME.fullmatch(study) or study in (".", ".."):
        raise UserError(f"invalid study name {study!r}: use letters, digits, '_', '.', '-' only")
    return study


def list_studies(tracking_uri: str | None = None) -> list[str]:
    """Names of the studies in a tracking store (experiments `medtl/<study>` but `medtl/pretrain`).

    Args:
        tracking_uri: MLflow tracking URI (default: the mlops rule, see `S.resolve_tracking_uri`).

    Returns:
        Sorted study names.

    Raises:
        UserError: if the store cannot be reached or a SQLite file does not exist.
    """
    return sorted(reader(S.resolve_tracking_uri(tracking_uri)).experiments())


def collect(
    study: str,
    tracking_uri: str | None = None,
    *,
    history_keys: Iterable[str] | None = None,
    max_step: int | None = None,
    primary_only: bool = False,
) -> StudyData:
    """Every fine-tuning run of a study with its params, tags, final metrics and histories.

    Failed, killed and diverged runs are kept: `status` holds MLflow's status, `failed` is True
    when it is not FINISHED and `diverged` is a bool. Sweep parents and evaluation runs are left
    out (only runs tagged `medtl.stage=finetune` count). Every column of FINAL_METRICS is present
    (NaN where a run lacks it); spec params are typed (floats, nullable integers, strings).

    Args:
        study: the study name (experiment `medtl/<study>`).
        tracking_uri: MLflow tracking URI (default: `S.resolve_tracking_uri`).
        history_keys: per-epoch metric keys to load (default: all of them).
        max_step: load epochs 1..max_step only (default: all).
        primary_only: load only `val_<primary>` of the study's tasks (what the report draws).

    Returns:
        StudyData with `runs` (one row a run) and `histories` (run_id, key, step, value).

    Raises:
        UnknownStudyError: if the study is not in the store (the message lists the known ones).
        UserError: if the study name is not a plain name or the store cannot be read.
    """
    check_study_name(study)
    uri = S.resolve_tracking_uri(tracking_uri)
    store = reader(uri)
    known = store.experiments()
    if study not in known:
        listed = ", ".join(sorted(known)) or "none"
        raise UnknownStudyError(
            f"unknown study {study!r} in {mask_uri(uri)}; known studies: {listed}"
        )
    experiment_id = known[study]
    runs, params, tags, latest = store.runs(experiment_id)
    frame = _tidy(runs, params, tags, latest)
    run_ids = frame["run_id"].tolist()
    if primary_only:
        keys = primary_history_keys(frame["task"].dropna().unique())
    elif history_keys is not None:
        keys = sorted(set(history_keys))
    else:
        keys = sorted({k for k in latest["key"].unique() if is_history_key(k)})
    histories = store.histories(experiment_id, run_ids, keys, max_step) if run_ids else None
    return StudyData(study, mask_uri(uri), experiment_id, frame, _tidy_histories(histories))


def fingerprint(study: str, tracking_uri: str | None = None) -> tuple[Any, ...]:
    """A cheap token that changes when the study's runs change (for caches).

    SQL stores: one query (active run count, latest start and end time, latest final-metric
    timestamp, sum of final-metric values, tag count, experiment update time). HTTP servers: two one-run searches (latest start and end time).

    Raises:
        UnknownStudyError: if the study is not in the store.
    """
    check_study_name(study)
    uri = S.resolve_tracking_uri(tracking_uri)
    token = reader(uri).fingerprint(S.study_experiment(study))
    if token is None:
        known = ", ".join(list_studies(uri)) or "none"
        raise UnknownStudyError(f"unknown study {study!r}; known studies: {known}")
    return token


# ---------------------------------------------------------------- tidy frames


def _tidy(
    runs: pd.DataFrame, params: pd.DataFrame, tags: pd.DataFrame, latest: pd.DataFrame
) -> pd.DataFrame:
    stage = _wide(tags, "run_id", "key", "value")
    has_stage = S.STAGE_TAG in stage.columns
    keep = stage.index[stage[S.STAGE_TAG] == S.Stage.FINETUNE.value] if has_stage else pd.Index([])
    runs = runs[runs["run_id"].isin(keep)].set_index("run_id").sort_index()
    out = pd.DataFrame(index=runs.index)
    out["run_name"] = runs["run_name"].astype("string")
    out["status"] = runs["status"].astype(str)
    out["start_time"] = pd.to_datetime(runs["start_time"], unit="ms", utc=True)
    out["end_time"] = pd.to_datetime(runs["end_time"], unit="ms", utc=True)
    out["artifact_uri"] = runs["artifact_uri"].astype("string")
    p = _wide(params, "run_id", "key", "value").reindex(out.index)
    t = stage.reindex(out.index)
    for name in SPEC_STR:
        out[name] = _col(p, name).astype("string")
    for name, tag in (("task", S.TASK_TAG), ("arch", S.ARCH_TAG)):
        out[name] = out[name].fillna(_col(t, tag).astype("string"))
    out["arm"] = (  # stores logged before the glossary named it `group` (tag and param) are read too
        _col(t, S.ARM_TAG).astype("string")
        .fillna(_col(t, S.LEGACY_ARM_TAG).astype("string"))
        .fillna(_col(p, "arm").astype("string"))
        .fillna(_col(p, "group").astype("string"))
    )
    for name in SPEC_FLOAT:
        out[name] = pd.to_numeric(_col(p, name), errors="coerce").astype(float)
    for name in SPEC_INT:
        out[name] = pd.to_numeric(_col(p, name), errors="coerce").round().astype("Int64")
    for tag, name in TAG_COLUMNS.items():
        out[name] = _col(t, tag).astype("string")
    out["data_digest"] = _col(p, "data_digest").astype("string")
    out[INIT_RESOLVED] = _col(p, INIT_RESOLVED).astype("string").fillna(_col(t, f"medtl.{INIT_RESOLVED}").astype("string"))
    out["fingerprint"] = _col(t, S.FINGERPRINT_TAG).astype("string")
    missing = out.index[out["fingerprint"].isna()]
    if len(missing):  # stores written before the tag existed: recompute it from the logged params
        out.loc[missing, "fingerprint"] = _recomputed_fingerprints(p.loc[missing])
    m = _wide(latest, "run_id", "key", "value").reindex(out.index)
    for name in FINAL_METRICS:
        out[name] = pd.to_numeric(_col(m, name), errors="coerce").astype(float)
    extra = sorted(c for c in m.columns if c not in FINAL_METRICS and c != "diverged")
    for name in extra:
        if not is_history_key(name):
            out[name] = pd.to_numeric(m[name], errors="coerce").astype(float)
    out["diverged"] = (pd.to_numeric(_col(m, "diverged"), errors="coerce").fillna(0) > 0).astype(bool)
    out["failed"] = out["status"] != "FINISHED"
    out = out.reset_index().rename(columns={"index": "run_id"})
    return out.sort_values(["task", "arch", "arm", "lr", "seed", "run_id"], na_position="last",
                           kind="stable").reset_index(drop=True)


def _recomputed_fingerprints(params: pd.DataFrame) -> pd.Series:
    """Each run's protocol fingerprint from its logged params, computed once per distinct protocol (rows
    that agree on every protocol param share it: lr and seed do not enter it)."""
    keys = [c for c in params.columns if c in _PROTOCOL_PARAMS or c in ("task", "arch")]
    if not keys:
        return pd.Series(pd.NA, index=params.index, dtype="string")
    codes = params[keys].astype(object).groupby(keys, dropna=False, sort=False).ngroup().to_numpy()
    first = params.index[np.unique(codes, return_index=True)[1]]
    found = [_recomputed_fingerprint(row) for row in params.loc[first].to_dict("index").values()]
    return pd.Series(np.asarray(found, dtype=object)[codes], index=params.index, dtype="string")


def _recomputed_fingerprint(params: dict[str, Any]) -> str | None:
    """The protocol fingerprint of a run from its logged params; None when they do not make a RunSpec
    (learning rate and seed do not enter it; `_recomputed_fingerprints` calls this once per protocol)."""
    logged = {k: v for k, v in params.items() if isinstance(v, str) and k not in ("lr", "seed")}
    if "task" not in logged or "arch" not in logged:
        return None
    try:
        return protocol_fingerprint(logged, logged.get("data_digest", ""))
    except (UserError, ValueError, TypeError):
        return None


def _tidy_histories(frame: pd.DataFrame | None) -> pd.DataFrame:
    if frame is None or frame.empty:
        return pd.DataFrame(
            {"run_id": pd.Series(dtype=str), "key": pd.Series(dtype=str),
             "step": pd.Series(dtype="int64"), "value": pd.Series(dtype=float)}
        )
    frame = frame.sort_values(["run_id", "key", "step", "timestamp"], kind="stable")
    frame = frame.drop_duplicates(["run_id", "key", "step"], keep="last")
    out = frame.loc[:, list(HISTORY_COLUMNS)].reset_index(drop=True)
    out["step"] = out["step"].astype("int64")
    out["value"] = out["value"].astype(float)
    return out


def _wide(frame: pd.DataFrame, index: str, key: str, value: str) -> pd.DataFrame:
    if frame.empty:
        return pd.DataFrame(index=pd.Index([], name=index))
    return frame.drop_duplicates([index, key], keep="last").pivot(index=index, columns=key, values=value)


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    if name in frame.columns:
        return frame[name]
    return pd.Series(np.nan, index=frame.index, dtype=object)
