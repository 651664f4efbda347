"""Read a study's fine-tuning runs from the MLflow tracking store into tidy DataFrames, in bulk.

Two readers give the same frames:

- `sqlite:` / `postgresql:` stores are read directly with SQLAlchemy: six read-only SELECTs over
  MLflow's `experiments`, `runs`, `tags`, `params`, `latest_metrics` and `metrics` tables, whatever
  the number of runs. MLflow's own client would issue one `get_metric_history` request per run and
  metric (tens of thousands of round trips for a paper-sized study).
- `http(s):` servers go through the public REST API: `search_runs` paged (params, tags and final
  metrics come with each run) and `metrics/get-history-bulk-interval` for 100 runs per request per
  per-epoch metric (no sampling below its 2,500-step limit; epochs are capped far below that).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from medtl.errors import UserError
from medtl.redact import mask_url
from medtl.training import schema as S
from medtl.training.schema import resolve_tracking_uri
from medtl.training.spec import (
    PRIMARY_METRIC,
    TASKS,
    TEST_METRICS,
    protocol_fields,
    protocol_fingerprint,
)

__all__ = [
    "FINAL_METRICS", "STUDY_NAME", "StudyData", "TrackingReader", "UnknownStudyError", "check_study_name",
    "collect", "fingerprint", "list_studies", "mask_uri", "reader", "resolve_tracking_uri",
]

STUDY_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
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
_HTTP_RUNS_PAGE = 5000
_HTTP_BULK_RUNS = 100
_HTTP_MAX_STEPS = 2500


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


def mask_uri(uri: str) -> str:
    """The URI with any password replaced by `***`."""
    return mask_url(uri)


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
        tracking_uri: MLflow tracking URI (default: the mlops rule, see `resolve_tracking_uri`).

    Returns:
        Sorted study names.

    Raises:
        UserError: if the store cannot be reached or a SQLite file does not exist.
    """
    return sorted(reader(resolve_tracking_uri(tracking_uri)).experiments())


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
        tracking_uri: MLflow tracking URI (default: `resolve_tracking_uri`).
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
    uri = resolve_tracking_uri(tracking_uri)
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
    uri = resolve_tracking_uri(tracking_uri)
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
    p = _wide(params, "run_id", "key", "value").reindex(out.index)
    t = stage.reindex(out.index)
    for name in SPEC_STR:
        out[name] = _col(p, name).astype("string")
    for name, tag in (("task", S.TASK_TAG), ("arch", S.ARCH_TAG)):
        out[name] = out[name].fillna(_col(t, tag).astype("string"))
    out["group"] = _col(t, S.GROUP_TAG).astype("string").fillna(_col(p, "group").astype("string"))
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
        memo: dict[tuple[tuple[str, str], ...], str | None] = {}
        out.loc[missing, "fingerprint"] = pd.Series(
            [_recomputed_fingerprint(row, memo) for row in p.loc[missing].to_dict("index").values()],
            index=missing,
            dtype="string",
        )
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
    return out.sort_values(["task", "arch", "group", "lr", "seed", "run_id"], na_position="last",
                           kind="stable").reset_index(drop=True)


def _recomputed_fingerprint(params: dict[str, Any], memo: dict) -> str | None:
    """The protocol fingerprint of a run from its logged params; None when they do not make a RunSpec.

    Learning rate and seed do not enter it, so they are dropped and the result is memoised per
    distinct remaining params (a study holds few protocols and many grid points).
    """
    logged = {k: v for k, v in params.items() if isinstance(v, str) and k not in ("lr", "seed")}
    if "task" not in logged or "arch" not in logged:
        return None
    key = tuple(sorted((k, v) for k, v in logged.items() if k in _PROTOCOL_PARAMS))
    if key not in memo:
        try:
            memo[key] = protocol_fingerprint(logged, logged.get("data_digest", ""))
        except (UserError, ValueError, TypeError):
            memo[key] = None
    return memo[key]


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


# ---------------------------------------------------------------- readers


class TrackingReader(Protocol):
    """What evaluation reads from a tracking store; `_SqlReader` and `_HttpReader` give the same frames.

    `experiments()` maps study name to experiment id; `runs()` returns (runs, params, tags,
    final metrics) frames; `histories()` the long per-epoch frame (run_id, key, step, value,
    timestamp); `fingerprint()` a change token (None: no such experiment); `run_ids_tagged()` the
    runs of an experiment whose tag `key` equals `value`.
    """

    uri: str

    def experiments(self) -> dict[str, str]: ...

    def runs(self, experiment_id: str) -> tuple[pd.DataFrame, ...]: ...

    def histories(
        self, experiment_id: str, run_ids: Sequence[str], keys: Sequence[str], max_step: int | None
    ) -> pd.DataFrame: ...

    def fingerprint(self, name: str) -> tuple[Any, ...] | None: ...

    def run_ids_tagged(self, experiment_id: str, key: str, value: str) -> list[str]: ...


def reader(uri: str) -> TrackingReader:
    """The reader for a tracking URI: SQL (sqlite:, postgresql:) or REST (http(s):).

    Raises:
        UserError: for any other scheme, or a SQLite file that does not exist.
    """
    scheme = urlsplit(uri).scheme.split("+")[0].lower()
    if scheme in ("sqlite", "postgresql", "postgres"):
        return _SqlReader(uri)
    if scheme in ("http", "https"):
        return _HttpReader(uri)
    raise UserError(
        f"cannot read tracking store {mask_uri(uri)!r}: use a sqlite:, postgresql: or http(s): URI"
    )


SQL_SCHEMA = {
    "experiments": ("experiment_id", "name", "lifecycle_stage", "last_update_time"),
    "runs": ("run_uuid", "name", "status", "start_time", "end_time", "experiment_id", "lifecycle_stage"),
    "tags": ("run_uuid", "key", "value"),
    "params": ("run_uuid", "key", "value"),
    "latest_metrics": ("run_uuid", "key", "value", "is_nan", "timestamp"),
    "metrics": ("run_uuid", "key", "step", "value", "is_nan", "timestamp"),
}
"""Every table and column of MLflow's schema the SQL reader selects (checked by a contract test
against the pinned MLflow's own schema)."""


class _SqlReader:
    """Read-only bulk SELECTs over MLflow's SQLAlchemy schema (the columns in `SQL_SCHEMA`)."""

    def __init__(self, uri: str) -> None:
        import sqlalchemy

        self.uri = uri
        if uri.startswith("sqlite:"):
            path = uri.split(":///", 1)[-1] if ":///" in uri else ""
            if path and path != ":memory:" and not Path(path).is_file():
                raise UserError(
                    f"no MLflow store at {path}; give --tracking-uri or set MLFLOW_TRACKING_URI"
                )
            self.engine = sqlalchemy.create_engine(
                f"sqlite:///file:{path}?mode=ro&uri=true" if path else uri
            )
        else:
            self.engine = sqlalchemy.create_engine(uri)
        self.text = sqlalchemy.text

    def _query(self, sql: str, **bind: Any) -> list[tuple[Any, ...]]:
        """Run one SELECT through the DBAPI cursor (plain tuples, no per-row Python objects)."""
        from sqlalchemy.exc import SQLAlchemyError

        compiled = self.text(sql).compile(dialect=self.engine.dialect)
        values = compiled.construct_params(bind)
        order = compiled.positiontup
        args = tuple(values[k] for k in order) if order else values
        try:
            raw = self.engine.raw_connection()
        except SQLAlchemyError as exc:
            msg = str(exc).splitlines()[0]
            raise UserError(f"cannot read tracking store {mask_uri(self.uri)}: {msg}") from None
        try:
            cursor = raw.cursor()
            cursor.execute(compiled.string, args)
            return cursor.fetchall()
        except Exception as exc:  # the DBAPI's own error types differ per driver
            msg = str(exc).splitlines()[0]
            raise UserError(f"cannot read tracking store {mask_uri(self.uri)}: {msg}") from None
        finally:
            raw.close()

    def experiments(self) -> dict[str, str]:
        rows = self._query(
            "SELECT name, experiment_id FROM experiments "
            f"WHERE lifecycle_stage = 'active' AND name LIKE '{S.EXPERIMENT_PREFIX}%' ORDER BY experiment_id"
        )
        return _studies((name, str(eid)) for name, eid in rows)

    def runs(self, experiment_id: str) -> tuple[pd.DataFrame, ...]:
        eid = int(experiment_id)
        active = "r.experiment_id = :e AND r.lifecycle_stage = 'active'"
        runs = self._query(
            f"SELECT r.run_uuid, r.name, r.status, r.start_time, r.end_time FROM runs r WHERE {active}",
            e=eid,
        )
        tags = self._query(
            f"SELECT t.run_uuid, t.key, t.value FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid "
            f"WHERE {active} AND (t.key LIKE '{S.TAG_PREFIX}%' OR t.key = '{S.PARENT_TAG}')",
            e=eid,
        )
        params = self._query(
            f"SELECT p.run_uuid, p.key, p.value FROM params p JOIN runs r ON r.run_uuid = p.run_uuid "
            f"WHERE {active}",
            e=eid,
        )
        latest = self._query(
            f"SELECT m.run_uuid, m.key, m.value, m.is_nan FROM latest_metrics m "
            f"JOIN runs r ON r.run_uuid = m.run_uuid WHERE {active}",
            e=eid,
        )
        lm = pd.DataFrame(latest, columns=["run_id", "key", "value", "is_nan"])
        lm["value"] = np.where(lm["is_nan"].astype(bool), np.nan, lm["value"].astype(float))
        return (
            pd.DataFrame(runs, columns=["run_id", "run_name", "status", "start_time", "end_time"]),
            pd.DataFrame(params, columns=["run_id", "key", "value"]),
            pd.DataFrame(tags, columns=["run_id", "key", "value"]),
            lm.drop(columns="is_nan"),
        )

    def histories(
        self, experiment_id: str, run_ids: Sequence[str], keys: Sequence[str], max_step: int | None
    ) -> pd.DataFrame:
        if not keys:
            return pd.DataFrame(columns=["run_id", "key", "step", "value", "timestamp"])
        names = {f"k{i}": k for i, k in enumerate(keys)}
        in_keys = ", ".join(f":{n}" for n in names)
        upper = "" if max_step is None else " AND m.step <= :top"
        bind: dict[str, Any] = {"e": int(experiment_id), **names}
        if max_step is not None:
            bind["top"] = int(max_step)
        rows = self._query(
            "SELECT m.run_uuid, m.key, m.step, m.value, m.is_nan, m.timestamp FROM metrics m "
            "JOIN runs r ON r.run_uuid = m.run_uuid "
            "WHERE r.experiment_id = :e AND r.lifecycle_stage = 'active' "
            f"AND m.key IN ({in_keys}) AND m.step >= 1{upper}",
            **bind,
        )
        frame = pd.DataFrame(rows, columns=["run_id", "key", "step", "value", "is_nan", "timestamp"])
        frame = frame[frame["run_id"].isin(set(run_ids))]
        frame["value"] = np.where(frame["is_nan"].astype(bool), np.nan, frame["value"].astype(float))
        return frame.drop(columns="is_nan")

    def run_ids_tagged(self, experiment_id: str, key: str, value: str) -> list[str]:
        rows = self._query(
            "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE r.experiment_id = :e AND r.lifecycle_stage = 'active' AND t.key = :k AND t.value = :v "
            "ORDER BY r.start_time, r.run_uuid",
            e=int(experiment_id), k=key, v=value,
        )
        return [str(r[0]) for r in rows]

    def fingerprint(self, name: str) -> tuple[Any, ...] | None:
        rows = self._query(
            "SELECT e.experiment_id, e.last_update_time, "
            "(SELECT COUNT(*) FROM runs r WHERE r.experiment_id = e.experiment_id "
            " AND r.lifecycle_stage = 'active'), "
            "(SELECT MAX(r.start_time) FROM runs r WHERE r.experiment_id = e.experiment_id), "
            "(SELECT MAX(r.end_time) FROM runs r WHERE r.experiment_id = e.experiment_id), "
            "(SELECT MAX(m.timestamp) FROM latest_metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
            " WHERE r.experiment_id = e.experiment_id), "
            "(SELECT SUM(m.value) FROM latest_metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
            " WHERE r.experiment_id = e.experiment_id), "
            "(SELECT COUNT(*) FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid "
            " WHERE r.experiment_id = e.experiment_id) "
            "FROM experiments e WHERE e.name = :n AND e.lifecycle_stage = 'active'",
            n=name,
        )
        return tuple(rows[0]) if rows else None


class _HttpReader:
    """MLflow's REST API: paged search_runs and the bulk metric-history endpoint."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(uri)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except (MlflowException, OSError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"cannot read tracking store {mask_uri(self.uri)}: {msg}") from None

    def experiments(self) -> dict[str, str]:
        exps = self._call(self.client.search_experiments, filter_string=f"name LIKE '{S.EXPERIMENT_PREFIX}%'")
        return _studies((e.name, str(e.experiment_id)) for e in exps)

    def runs(self, experiment_id: str) -> tuple[pd.DataFrame, ...]:
        runs, params, tags, latest = [], [], [], []
        token = None
        while True:
            page = self._call(
                self.client.search_runs,
                [experiment_id],
                max_results=_HTTP_RUNS_PAGE,
                page_token=token,
            )
            for run in page:
                rid, info = run.info.run_id, run.info
                runs.append((rid, info.run_name, info.status, info.start_time, info.end_time))
                params += [(rid, k, v) for k, v in run.data.params.items()]
                tags += [
                    (rid, k, v)
                    for k, v in run.data.tags.items()
                    if k.startswith(S.TAG_PREFIX) or k == S.PARENT_TAG
                ]
                latest += [(rid, k, float(v)) for k, v in run.data.metrics.items()]
            token = page.token
            if not token:
                break
        return (
            pd.DataFrame(runs, columns=["run_id", "run_name", "status", "start_time", "end_time"]),
            pd.DataFrame(params, columns=["run_id", "key", "value"]),
            pd.DataFrame(tags, columns=["run_id", "key", "value"]),
            pd.DataFrame(latest, columns=["run_id", "key", "value"]),
        )

    def histories(
        self, experiment_id: str, run_ids: Sequence[str], keys: Sequence[str], max_step: int | None
    ) -> pd.DataFrame:
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        creds = get_default_host_creds(self.uri)
        end = _HTTP_MAX_STEPS if max_step is None else int(max_step)
        rows: list[tuple[Any, ...]] = []
        for key in keys:
            for start in range(0, len(run_ids), _HTTP_BULK_RUNS):
                chunk = list(run_ids[start : start + _HTTP_BULK_RUNS])
                response = self._call(
                    http_request,
                    creds,
                    "/api/2.0/mlflow/metrics/get-history-bulk-interval",
                    "GET",
                    params={
                        "run_ids": chunk,
                        "metric_key": key,
                        "start_step": 1,
                        "end_step": end,
                        "max_results": _HTTP_MAX_STEPS,
                    },
                )
                if response.status_code != 200:
                    raise UserError(
                        f"cannot read metric histories from {mask_uri(self.uri)}: "
                        f"HTTP {response.status_code}"
                    )
                for m in response.json().get("metrics", []):
                    rows.append(
                        (m["run_id"], m["key"], int(m.get("step", 0)), _float(m.get("value")),
                         int(m.get("timestamp", 0)))
                    )
        return pd.DataFrame(rows, columns=["run_id", "key", "step", "value", "timestamp"])

    def run_ids_tagged(self, experiment_id: str, key: str, value: str) -> list[str]:
        found: list[Any] = []
        token = None
        while True:
            page = self._call(
                self.client.search_runs, [experiment_id], filter_string=f"tags.`{key}` = '{value}'",
                max_results=_HTTP_RUNS_PAGE, page_token=token,
            )
            found += list(page)
            token = page.token
            if not token:
                break
        return [r.info.run_id for r in sorted(found, key=lambda r: (r.info.start_time or 0, r.info.run_id))]

    def fingerprint(self, name: str) -> tuple[Any, ...] | None:
        exp = self._call(self.client.get_experiment_by_name, name)
        if exp is None or exp.lifecycle_stage != "active":
            return None
        token: list[Any] = [exp.experiment_id, exp.last_update_time]
        for order in ("attributes.start_time DESC", "attributes.end_time DESC"):
            page = self._call(
                self.client.search_runs, [exp.experiment_id], max_results=1, order_by=[order]
            )
            token += [(r.info.run_id, r.info.start_time, r.info.end_time, r.info.status) for r in page]
        return tuple(token)


def _studies(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, eid in pairs:
        study = S.study_of_experiment(name)
        if study is not None and STUDY_NAME.fullmatch(study):
            out.setdefault(study, eid)
    return out


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
