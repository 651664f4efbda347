"""The tracking schema, defined once: stages, tag and experiment names, arm order, store location, param types.

Pure (no mlflow, no torch): the training recipes, the evaluation reader and mlops all import it, so
a name written to the tracking store and the name read back are the same constant.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterable
from enum import Enum, StrEnum
from pathlib import Path

from medtl.training.spec import RunSpec


class Stage(StrEnum):
    """The value of tag `medtl.stage`: what kind of run it is."""

    INGEST = "ingest"
    PSEUDOLABEL = "pseudolabel"
    PRETRAIN = "pretrain"
    SWEEP = "sweep"
    FINETUNE = "finetune"
    EVALUATION = "evaluation"
    GRADCAM = "gradcam"


# Tags medtl writes (and reads back).
TAG_PREFIX = "medtl."
STAGE_TAG = "medtl.stage"
RUN_KEY_TAG = "medtl.run_key"
FINGERPRINT_TAG = "medtl.fingerprint"
STUDY_TAG = "medtl.study"
ARM_TAG = "medtl.arm"
"""The arm of a run: its initialisation's display label (`random`, `imagenet`, `domain`, `domain-CR`)."""
LEGACY_ARM_TAG = "medtl.group"
"""The same, as runs logged before the glossary (docs/architecture.md) named it; read, never written."""
TASK_TAG = "medtl.task"
ARCH_TAG = "medtl.arch"
GIT_COMMIT_TAG = "medtl.git_commit"
FAILURE_TAG = "medtl.failure_reason"
STOP_REASON_TAG = "medtl.stop_reason"
RESUMED_FROM_TAG = "medtl.resumed_from_epoch"
REPORT_FOLDER_TAG = "medtl.report_folder"
"""On an evaluation run: the local folder its report was rendered into."""
DATA_TAG = "medtl.data"
"""On a pseudolabel run: the ingest folder it labelled."""
MODALITY_TAG = "medtl.modality"
OBJECTIVE_TAG = "medtl.objective"
REGISTERED_MODEL_TAG = "medtl.registered_model"
MODEL_VERSION_TAG = "medtl.model_version"
"""On a pretraining run: the registered version its best checkpoint became, `<name>/<version>`."""
# Tags of a registered model version (written at registration, read by promotion and Grad-CAM).
RUN_TAG = "medtl.run_id"
"""The run whose best checkpoint the version is."""
METRIC_NAME_TAG = "medtl.metric_name"
"""The validation metric the version was ranked by, e.g. `best_val_f1`."""
METRIC_TAG = "medtl.metric"
"""That metric's value (`repr` of a float): alias `champion` moves only to a better one."""
HIGHER_TAG = "medtl.higher_is_better"
"""`True` or `False`: the metric's direction."""
SPEC_TAG_PREFIX = "spec."
"""`spec.<field>`: the spec of the run the version came from, one tag per field."""
METRIC_TAG_PREFIX = "metric."
"""`metric.<name>`: a fine-tuned version's validation and test metrics (`repr` of a float)."""
OPTUNA_STUDY_TAG = "medtl.optuna_study"
OPTUNA_TRIAL_TAG = "medtl.optuna_trial"
SWEEP_ATTEMPTS_TAG = "medtl.sweep_attempts"
LRS_FROM_STUDY_TAG = "medtl.lrs_from_study"  # sweep parent run: the studies `lrs: {from_study}` read
LRS_FROM_FINGERPRINT_TAG = "medtl.lrs_from_fingerprint"  # … and the protocol fingerprints of their runs
INIT_PIN_TAG_PREFIX = "medtl.init_pin."
ENV_TAG_PREFIX = "medtl.env."  # + medtl, python, torch, torchvision, cuda, cudnn, device_name, …
EXPLAINS_TAG_PREFIX = "medtl.explains."  # + arm: on a Grad-CAM run, the run it explains for that arm
# MLflow's own tags, filled so its UI shows parent, description and kind.
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

INIT_RESOLVED_PARAM = "init_resolved"
"""Param (and tag) naming the registered version a domain arm trained from, `pretrained-<arch>/<version>`."""

CHECKPOINT_ARTIFACTS = "checkpoints"
"""The artifact folder of a run's checkpoints, each under the file name its recipe gave it (`best.pt`, `last.pt`)."""

EXPERIMENT_PREFIX = "medtl/"
PRETRAIN_EXPERIMENT = f"{EXPERIMENT_PREFIX}pretrain"

MAIN_ARMS = ("random", "imagenet", "domain")
"""The three arms of the study, in the order every table, plot and packet shows them."""

DEFAULT_DB = "mlflow.db"


def study_experiment(study: str) -> str:
    """The MLflow experiment that holds study `study`'s runs: `medtl/<study>`."""
    return f"{EXPERIMENT_PREFIX}{study}"


def study_of_experiment(name: str) -> str | None:
    """The study an experiment name belongs to, or None (the pretraining experiment, foreign experiments)."""
    if name == PRETRAIN_EXPERIMENT or not name.startswith(EXPERIMENT_PREFIX):
        return None
    return name[len(EXPERIMENT_PREFIX) :] or None


def arm_order(arms: Iterable[object], last_prefix: str | None = None) -> list[str]:
    """random, imagenet, domain first, then any other arm (domain-MR, …) alphabetically; no duplicates.

    Args:
        arms: arm names (anything `str` turns into one).
        last_prefix: arms starting with it go after every other arm (alphabetically among themselves).
    """
    names = {str(a) for a in arms}

    def key(a: str) -> tuple[int, str]:
        if a in MAIN_ARMS:
            return (MAIN_ARMS.index(a), a)
        late = last_prefix is not None and a.startswith(last_prefix)
        return (len(MAIN_ARMS) + int(late), a)

    return sorted(names, key=key)


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri`, else `$MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db` (absolute path)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def _param_type(annotation: object) -> type:
    kind = annotation if isinstance(annotation, type) else None
    if kind is not None and issubclass(kind, Enum):
        return str
    if kind in (int, float, bool):
        return kind
    return str


def param_dtypes() -> dict[str, type]:
    """Each RunSpec field's Python type as logged params read back: `int`, `float` or `str` (enums).

    Derived from RunSpec's own annotations, so a new field needs no second declaration.
    """
    hints = typing.get_type_hints(RunSpec)
    return {f.name: _param_type(hints[f.name]) for f in dataclasses.fields(RunSpec)}


SUBGROUP_PREFIX = "subgroup_"
"""`predictions/test.csv` columns named `subgroup_<name>` give each test sample's subgroup (sex, projection,
modality, ...): written by the recipe, read by evaluation's per-subgroup table."""
