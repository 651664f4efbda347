"""The readers of MLflow's tracking store behind one interface (`TrackingReader`), used by `collect`.

- `sqlite:` / `postgresql:` stores: read-only bulk SELECTs over MLflow's own tables (the columns in
  `SQL_SCHEMA`, checked against the pinned MLflow by tests/evaluation/test_reader_contract.py).
- `http(s):` servers: the public REST API (paged `search_runs`, `get-history-bulk-interval`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from medtl.errors import UserError
from medtl.redact import mask_url
from medtl.training import schema as S

STUDY_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_HTTP_RUNS_PAGE = 5000
_HTTP_BULK_RUNS = 100
_HTTP_MAX_STEPS = 2500


def mask_uri(uri: str) -> str:
    """The URI with any password replaced by `***`."""
    return mask_url(uri)


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
    "runs": ("run_uuid", "name", "status", "start_time", "end_time", "artifact_uri", "experiment_id", "lifecycle_stage"),
    "tags": ("run_uuid", "key", "value"),
    "params": ("run_uuid", "key", "value"),
    "latest_metrics": ("run_uuid", "key", "value", "is_nan", "timestamp"),
    "metrics": ("run_uuid", "key", "step", "value", "is_nan", "timestamp"),
}
"""Every table and column of MLflow's schema the SQL reader selects (checked by a contract test
against the pinned MLflow's own schema)."""
RUN_COLUMNS = ("run_id", "run_name", "status", "start_time", "end_time", "artifact_uri")
"""The columns of the runs frame either reader returns."""


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
            f"SELECT r.run_uuid, r.name, r.status, r.start_time, r.end_time, r.artifact_uri FROM runs r WHERE {active}",
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
            pd.DataFrame(runs, columns=list(RUN_COLUMNS)),
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
        if not rows:
            return None
        experiment_id, *rest = rows[0]
        return (str(experiment_id), *rest)  # ids are strings in MLflow's API (and in the HTTP token)


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
                runs.append((rid, info.run_name, info.status, info.start_time, info.end_time, info.artifact_uri))
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
            pd.DataFrame(runs, columns=list(RUN_COLUMNS)),
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
