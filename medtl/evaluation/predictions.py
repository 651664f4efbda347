"""Each run's `predictions/test.csv`, read once for the runs a report uses: from disk when the artifact store
is a local folder (the embedded default), else through MLflow's client, a few runs at a time.

A predictions table is one row a test sample (`training/tasks.py` writes it): `id`, `target`,
`prediction`, then binary `prob_positive`, multiclass `prob_<class>` per class, segmentation
`target_pixels`, `predicted_pixels`, `dice`. Any column named `subgroup_<name>` (e.g. `subgroup_sex`,
`subgroup_projection`, `subgroup_modality`) names the subgroup each sample belongs to; evaluation
reports the primary metric per subgroup where one exists.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd

from medtl.training import schema as S
from medtl.training.spec import TASKS, Task, TaskType

PREDICTIONS_PATH = "predictions/test.csv"
REMOTE_THREADS = 8
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@dataclass(frozen=True)
class Predictions:
    """One run's test predictions as arrays.

    `probs`: binary `(N,)` p(positive), multiclass `(N, C)`, else None; `classes` the class names
    (probability columns' order); `dice` per-sample Dice for segmentation; `subgroups` maps a
    subgroup variable (the column name without `subgroup_`) to each sample's value.
    """

    task_type: TaskType
    targets: np.ndarray
    predictions: np.ndarray
    probs: np.ndarray | None = None
    classes: tuple[str, ...] = ()
    dice: np.ndarray | None = None
    subgroups: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.targets)


PredictionsSource = Callable[[pd.DataFrame], dict[str, "Predictions | str"]]
"""Given runs (run_id, task, artifact_uri), each run's predictions or why there are none."""


class PredictionsError(ValueError):
    """A predictions table that does not fit its task; the message names what is missing."""


Columns = Mapping[str, np.ndarray]
"""A table as column name → values (what `read_csv` gives; a DataFrame converts with `columns_of`)."""


def columns_of(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A DataFrame's columns as arrays (strings with None for missing values)."""
    return {str(c): frame[c].to_numpy() for c in frame.columns}


def parse(table: Columns, task: str) -> Predictions:
    """A predictions table (column name → one value a sample) as `Predictions` for `task`.

    Raises:
        PredictionsError: a needed column is missing or a probability lies outside [0, 1].
    """
    info = TASKS[Task(task)]
    columns = list(table)

    def need(*names: str) -> None:
        missing = [n for n in names if n not in columns]
        if missing:
            raise PredictionsError(f"{PREDICTIONS_PATH} lacks column(s) {', '.join(missing)}")

    subgroups = {c.removeprefix(S.SUBGROUP_PREFIX): _labels(table[c]) for c in columns if c.startswith(S.SUBGROUP_PREFIX)}
    if info.type is TaskType.SEGMENTATION:
        need("dice")
        dice = np.asarray(table["dice"], float)
        return Predictions(info.type, dice, dice, dice=dice, subgroups=subgroups)
    need("target", "prediction")
    targets = np.asarray(table["target"])
    predictions = np.asarray(table["prediction"])
    if info.type is TaskType.REGRESSION:
        return Predictions(info.type, targets.astype(float), predictions.astype(float), subgroups=subgroups)
    if info.type is TaskType.BINARY:
        need("prob_positive")
        probs = np.asarray(table["prob_positive"], float)
        classes = info.classes or ("negative", "positive")
    else:
        prob_columns = [c for c in columns if c.startswith("prob_")]
        if len(prob_columns) < 2:
            raise PredictionsError(f"{PREDICTIONS_PATH} has {len(prob_columns)} prob_<class> column(s); a multiclass task needs one per class")
        probs = np.stack([np.asarray(table[c], float) for c in prob_columns], axis=1)
        classes = tuple(c.removeprefix("prob_") for c in prob_columns)
    if probs.size and (not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1):
        raise PredictionsError(f"{PREDICTIONS_PATH} holds probabilities outside [0, 1]")
    return Predictions(info.type, targets.astype(np.int64), predictions.astype(np.int64), probs, classes,
                       subgroups=subgroups)


def _local_path(artifact_uri: object) -> Path | None:
    """The folder of a local artifact URI (`file:` or a plain path); None for any remote store."""
    if not isinstance(artifact_uri, str) or not artifact_uri:
        return None
    parts = urlsplit(artifact_uri)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "" or (len(parts.scheme) == 1 and artifact_uri[1:3] in (":\\", ":/")):  # a path, or C:\ on Windows
        return Path(artifact_uri)
    return None


def _labels(values: np.ndarray) -> np.ndarray:
    """Subgroup values as strings, "unknown" where missing."""
    return np.array(["unknown" if v is None or (isinstance(v, float) and v != v) else str(v) for v in values])


def read_csv(path: Path) -> dict[str, np.ndarray]:
    """A CSV file's columns as arrays (pyarrow's parser: several times faster than pandas' on small files)."""
    import pyarrow as pa
    import pyarrow.csv as pv

    with open(path, "rb") as handle:  # the header alone: which columns are subgroups
        header = handle.readline().decode("utf-8", "replace").strip().split(",")
    # subgroup values are labels, never numbers (projection "2", not 2.0) and an empty cell is unknown
    labels = {c: pa.string() for c in header if c.startswith(S.SUBGROUP_PREFIX)}
    options = pv.ConvertOptions(column_types=labels, strings_can_be_null=True, quoted_strings_can_be_null=False)
    table = pv.read_csv(path, convert_options=options)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


class PredictionsReader:
    """Reads `predictions/test.csv` of given runs: from disk for local artifact stores, else through
    MLflow's client (REMOTE_THREADS downloads at a time). Call it with the runs (run_id, task,
    artifact_uri); it answers each run's `Predictions` or the reason there are none."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri

    def __call__(self, runs: pd.DataFrame) -> dict[str, Predictions | str]:
        out: dict[str, Predictions | str] = {}
        remote = []
        for run_id, task, uri in runs[["run_id", "task", "artifact_uri"]].itertuples(index=False, name=None):
            folder = _local_path(uri)
            if folder is None and isinstance(uri, str) and uri:
                remote.append((run_id, task))
                continue
            out[run_id] = self._local(folder, task) if folder is not None else "the run has no artifact location"
        if remote:
            out.update(self._remote(remote))
        return out

    @staticmethod
    def _local(folder: Path, task: str) -> Predictions | str:
        path = folder / PREDICTIONS_PATH
        if not path.is_file():
            return f"no {PREDICTIONS_PATH} artifact"
        return _parsed(lambda: read_csv(path), task)

    def _remote(self, runs: list[tuple[str, str]]) -> dict[str, Predictions | str]:
        from mlflow.tracking import MlflowClient

        os.environ.setdefault(PROGRESS_BAR_ENV, "false")  # one bar a file would bury the command's output
        client = MlflowClient(self.tracking_uri)
        with tempfile.TemporaryDirectory(prefix="medtl-predictions-") as tmp:

            def one(item: tuple[str, str]) -> tuple[str, Predictions | str]:
                run_id, task = item
                try:
                    local = client.download_artifacts(run_id, PREDICTIONS_PATH, str(Path(tmp) / run_id))
                except Exception as exc:  # MLflow raises different types per store for a missing file
                    return run_id, f"no {PREDICTIONS_PATH} artifact ({type(exc).__name__})"
                return run_id, _parsed(lambda: read_csv(Path(local)), task)

            with ThreadPoolExecutor(REMOTE_THREADS) as pool:
                return dict(pool.map(one, runs))


def _parsed(read: Callable[[], Columns], task: str) -> Predictions | str:
    try:
        return parse(read(), task)
    except PredictionsError as exc:
        return str(exc)
    except (OSError, ValueError) as exc:  # unreadable or not a CSV
        return f"{PREDICTIONS_PATH} unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
