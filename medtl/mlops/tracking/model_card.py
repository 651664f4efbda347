"""Model cards: what a registered version is, where it came from and how good it is, for a model inventory.

One card per registered version, written when the version is registered (by pretraining and by
`medtl promote`) and for a champion that has none: `model_card.md` and `model_card.json` as artifacts
of the version's run (`model_card/<name>/<version>/`), the Markdown as the version's description (a
summary when it exceeds MLflow's 5,000 characters) and tag `medtl.model_card` naming the artifact. A
card holds no path (dataset folder, pretraining folder, weights file: named by digest or withheld) and
no patient identifier: the de-identification is named by its key id (a keyed hash of a constant,
never the key), patients by their count. "Intended use and limitations" comes from a template the user
can replace (`medtl promote --card-template FILE`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import string
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from medtl.errors import UserError
from medtl.mlops.tracking.champion import run_fingerprint
from medtl.mlops.tracking.environment import medtl_version
from medtl.training import schema as S
from medtl.training.spec import TASKS, TEST_METRICS, RunSpec, TaskType

log = logging.getLogger(__name__)

SCHEMA = "medtl-model-card/1"
CARD_FOLDER = "model_card"
CARD_TAG = "medtl.model_card"
DEID_TAG_PREFIX = "medtl.deid."
DESCRIPTION_LIMIT = 5000
CALIBRATION = ("test_ece", "test_brier")
POLICY = (
    "medtl ingest: only an allow-list of technical header fields leaves the archive, free text reduced to "
    "vocabularies; patient, study, series and source keys are HMAC-SHA256 digests under the de-identification "
    "key (named here by its key id, never the key); no source path is written; images that may show burned-in "
    "text are refused (BurnedInAnnotation=YES, recognisable features, document classes, and the listed "
    "modalities unless --allow-modality and BurnedInAnnotation=NO). See docs/privacy.md."
)
DEFAULT_TEMPLATE = """\
**Intended use.** Research on transfer learning in medical imaging: $task with $arch ($arm initialisation),
compared with the other initialisations of study $study. It is not a medical device and has not been
validated for any clinical decision.

**Limitations.** Trained, validated and tested on one dataset and split; how it performs on other sites,
scanners, populations or acquisition protocols is unknown. The test metrics are one run's; the intervals
describe the spread over seeds, not over sites. Calibration was measured on the test split only.

*Replace this section with `medtl promote --card-template FILE` (Markdown; `$$name`, `$$version`, `$$task`,
`$$arch`, `$$arm` and `$$study` are filled in).*
"""


@dataclass(frozen=True)
class Card:
    """A built card: its JSON-ready content, the values it must never show, tags for the version."""

    content: dict[str, Any]
    run_id: str
    withheld: tuple[str, ...] = ()
    version_tags: dict[str, str] = field(default_factory=dict)


def read_template(path: str | Path | None) -> str | None:
    """The text of a `--card-template` file (None: the default); UserError when it cannot be used."""
    if path is None:
        return None
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--card-template {path}: cannot read it ({exc.__class__.__name__})") from None
    if not text.strip():
        raise UserError(f"--card-template {path} is empty")
    return text


def _num(metrics: dict[str, float], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None or not math.isfinite(value) else float(value)


def _safe_source(source: str) -> str:
    """A registry or torchvision source as is; a file is never named."""
    if not source or source.startswith(("models:/", "torchvision:")):
        return source
    return "a local weights file (path withheld)"


def deid_facts(folder: Path) -> dict[str, Any]:
    """The de-identification record of an ingest folder: key id, policy, images, patients, modalities, skipped."""
    import pandas as pd

    from medtl.training.archive.header import BURNED_IN_MODALITIES
    from medtl.training.archive.shards import MANIFEST, SKIPPED, STATE_FILE

    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {"status": "unknown: the pretraining folder is not readable here or holds no medtl ingest record"}
    facts: dict[str, Any] = {"status": "recorded at ingest", "key_id": str(state.get("key_check", "")),
                             "policy": POLICY, "burned_in_modalities_refused": sorted(BURNED_IN_MODALITIES),
                             "image_size": state.get("image_size")}
    try:
        manifest = pd.read_parquet(folder / MANIFEST, columns=["modality", "patient_key"])
        facts.update(images=len(manifest), patients=int(manifest["patient_key"].nunique()),
                     modalities=sorted(str(m) for m in manifest["modality"].dropna().unique()))
    except (OSError, ValueError, KeyError):
        pass
    with contextlib.suppress(OSError, ValueError):
        facts["skipped_at_ingest"] = len(pd.read_csv(folder / SKIPPED))
    return facts


def _deid_tags(facts: dict[str, Any]) -> dict[str, str]:
    keep = ("key_id", "images", "patients", "modalities", "skipped_at_ingest", "status")
    return {f"{DEID_TAG_PREFIX}{k}": ",".join(v) if isinstance(v, list) else str(v) for k, v in facts.items() if k in keep}


def _deid_of_version(client: MlflowClient, resolved: str) -> dict[str, Any]:
    """The de-identification record carried by pretrained version `name/number` (its tags, else its folder)."""
    name, _, number = resolved.rpartition("/")
    try:
        version = client.get_model_version(name, number)
    except Exception:
        return {"status": f"unknown: pretrained version {resolved} is not in this registry"}
    tags = {k.removeprefix(DEID_TAG_PREFIX): v for k, v in version.tags.items() if k.startswith(DEID_TAG_PREFIX)}
    if tags:
        if "modalities" in tags:
            tags["modalities"] = tags["modalities"].split(",")
        return {**tags, "policy": POLICY, "applies_to": f"the pretraining archive of {resolved}"}
    try:
        folder = client.get_run(version.run_id).data.params.get("data", "")
    except Exception:
        folder = ""
    return {**deid_facts(Path(folder)), "applies_to": f"the pretraining archive of {resolved}"}


def build_card(client: MlflowClient, name: str, version: str, *, template: str | None = None,
               tracking_uri: str | None = None) -> Card:
    """Gather a version's card from the registry and its run (and, fine-tuned, the study's evaluation)."""
    mv = client.get_model_version(name, version)
    run = client.get_run(mv.tags.get(S.RUN_TAG) or mv.run_id)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    pretrain = tags.get(S.STAGE_TAG) == S.Stage.PRETRAIN.value
    withheld = tuple(v for v in (params.get("dataset"), params.get("data"), params.get("init_source"))
                     if v and v != "synthetic" and not v.startswith(("models:/", "torchvision:")))
    card: dict[str, Any] = {
        "schema": SCHEMA,
        "generated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {"name": name, "version": str(version), "run_id": run.info.run_id, "stage": tags.get(S.STAGE_TAG),
                  "study": mv.tags.get(S.STUDY_TAG) or tags.get(S.STUDY_TAG),
                  "registered": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
    }
    for section in ("task", "architecture", "initialisation", "protocol", "data", "deidentification", "training",
                    "metrics", "calibration", "verdict", "intended_use", "software"):
        card[section] = None  # the order the sections appear in
    fingerprint = mv.tags.get(S.FINGERPRINT_TAG) or run_fingerprint(run)
    sizes = {k: int(params[f"n_{k}"]) for k in ("train", "val", "test") if params.get(f"n_{k}", "").isdigit()}
    card["architecture"] = {"name": params.get("arch"), "image_size": _int(params.get("resolved_image_size")),
                            "parameters": _int(params.get("num_parameters"))}
    version_tags: dict[str, str] = {}
    if pretrain:
        objective = params.get("objective", "classification")
        task_type = TaskType.MULTICLASS if objective == "classification" else TaskType.SEGMENTATION
        card["task"] = {"name": f"pretraining ({objective})", "type": "pretraining",
                        "description": (f"pseudo-label classification over {params.get('num_classes')} clusters"
                                        if objective == "classification" else "image reconstruction"),
                        "modality": params.get("modality")}
        card["initialisation"] = {"arm": "random", "init": "random", "source": "", "pretrained_version": None}
        deid = deid_facts(Path(params.get("data", "")))
        version_tags = _deid_tags(deid)
        card["data"] = {"dataset": "a de-identified pretraining set (path withheld)", "digest": params.get("data_digest"),
                        "training_fraction": 1.0, "split_sizes": sizes}
        card["deidentification"] = {**deid, "applies_to": "this model's pretraining archive"}
        fields = {"task": card["task"]["name"], "arm": "random", "study": "none (pretraining)"}
        verdict: dict[str, Any] = {"text": "not applicable: a pretrained version is compared through the fine-tuning "
                                           "studies that use it, not by itself"}
        intervals: dict[str, Any] = {"status": "unavailable: a pretrained version is one run (one seed)"}
    else:
        spec = RunSpec.from_params(params)
        info = TASKS[spec.task]
        task_type = info.type
        card["task"] = {"name": spec.task.value, "type": info.type.value, "description": info.description,
                        "classes": list(info.classes)}
        resolved = params.get(S.INIT_RESOLVED_PARAM) or None
        card["initialisation"] = {"arm": spec.arm, "init": spec.init.value, "source": _safe_source(spec.init_source),
                                  "pretrained_version": resolved,
                                  "pretraining_modality": spec.pretrain_modality.value if resolved else None}
        card["data"] = {"dataset": "synthetic (medtl's demo generator)" if spec.dataset == "synthetic"
                        else "the task's dataset folder (path withheld)", "digest": params.get("data_digest"),
                        "training_fraction": spec.data_fraction, "split_sizes": sizes}
        card["deidentification"] = (_deid_of_version(client, resolved) if resolved else
                                    {"status": f"not applicable: no archive data reached this model ({spec.arm} initialisation)"})
        card["deidentification"]["downstream_data"] = "read as published by the task's dataset; medtl's ingest de-identifies DICOM archives only"
        fields = {"task": spec.task.value, "arm": spec.arm, "study": card["model"]["study"] or "none"}
        verdict, intervals = _study_part(tracking_uri, card["model"]["study"], spec, fingerprint, task_type)
    card["protocol"] = {"fingerprint": fingerprint, "lr": _float(params.get("lr")), "seed": _int(params.get("seed")),
                        "optimizer": params.get("optimizer"), "weight_decay": _float(params.get("weight_decay")),
                        "normalization": params.get("resolved_normalization", params.get("normalization"))}
    card["training"] = {"max_epochs": _int(params.get("max_epochs")), "patience": _int(params.get("patience")),
                        "batch_size": _int(params.get("batch_size")), "device": params.get("device"),
                        **{k: _num(metrics, k) for k in ("epochs_run", "epochs_to_convergence", "duration_s",
                                                          "energy_kwh", "emissions_kg")}}
    card["metrics"] = {"validation": {k: _num(metrics, k) for k in sorted(metrics) if k.startswith("best_val_")},
                       "test": {k: _num(metrics, k) for k in sorted(metrics) if k.startswith("test_")},
                       "intervals": intervals}
    card["calibration"] = _calibration(metrics, task_type)
    card["verdict"] = verdict
    fields.update(name=name, version=str(version), arch=str(params.get("arch")))
    card["intended_use"] = string.Template(template or DEFAULT_TEMPLATE).safe_substitute(fields)
    card["software"] = {"medtl_card_writer": medtl_version(), "git_commit": tags.get(S.GIT_COMMIT_TAG),
                        **{k.removeprefix(S.ENV_TAG_PREFIX): v for k, v in sorted(tags.items())
                           if k.startswith(S.ENV_TAG_PREFIX)}}
    return Card(card, run.info.run_id, withheld, version_tags)


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().lstrip("-").isdigit() else None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _calibration(metrics: dict[str, float], task_type: TaskType) -> dict[str, Any]:
    if task_type not in (TaskType.BINARY, TaskType.MULTICLASS):
        return {"status": "not applicable (not a classification model)"}
    values = {k: _num(metrics, k) for k in CALIBRATION}
    if all(v is None for v in values.values()):
        return {"status": "unknown: the run predates calibration metrics (medtl evaluate recomputes them from "
                          "predictions/test.csv)"}
    return {"status": "measured on the test split", "bins": "10 equal-mass", **values}


def _study_part(tracking_uri: str | None, study: str | None, spec: RunSpec, fingerprint: str,
                task_type: TaskType) -> tuple[dict[str, Any], dict[str, Any]]:
    """The verdict and the intervals of the version's cell, from `card_results.study_results`."""
    from medtl.mlops.tracking.card_results import study_results

    if not study or tracking_uri is None:
        return {"text": "unavailable: the version names no study"}, {"status": "unavailable: no study"}
    wanted = [f"test_{m}" for m in TEST_METRICS[task_type]]
    if task_type in (TaskType.BINARY, TaskType.MULTICLASS):
        wanted += list(CALIBRATION)
    found = study_results(study, tracking_uri, task=spec.task.value, fingerprint=fingerprint,
                          fraction=spec.data_fraction, metrics=wanted)
    verdict = {"text": found.verdict, "best_arm": found.best_arm, "significant": found.significant}
    by_arm = {arm: {m: {"mean": _clean(iv.mean), "low": iv.low, "high": iv.high, "n": iv.n,
                        **({"reason": iv.reason} if iv.reason else {})} for m, iv in ivs.items()}
              for arm, ivs in found.intervals.items()}
    method = ("mean over seeds at the arm's selected learning rate, 95 % percentile bootstrap interval "
              "(2000 resamples, seed 0); fewer than 2 seeds: unavailable, never zero width")
    return verdict, {"this_arm": spec.arm, "lrs": found.lrs, "method": method, "by_arm": by_arm}


def _clean(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _scrub(text: str, withheld: tuple[str, ...]) -> str:
    """Replace any withheld value (a folder or file path) that reached the text; the card is built without them."""
    for value in sorted(withheld, key=len, reverse=True):
        if len(value) >= 3 and value in text:
            log.warning("a path reached a model card and was withheld")
            text = text.replace(value, "[path withheld]")
    return text


def card_location(name: str, version: str) -> str:
    """The card's artifact folder inside the version's run: `model_card/<name>/<version>`."""
    return f"{CARD_FOLDER}/{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}/{version}"


def write_card(client: MlflowClient, name: str, version: str, *, template: str | None = None,
               tracking_uri: str | None = None) -> str:
    """Build, render and store the card of `name` version `version`; returns the Markdown's artifact URI.

    Writes `model_card.md` and `model_card.json` into the run's artifacts (`card_location`), the
    Markdown (or, past 5,000 characters, a summary) as the version's description, and tags
    `medtl.model_card` (plus `medtl.deid.*` on a pretrained version).
    """
    from medtl.mlops.tracking.card_markdown import render, summary

    card = build_card(client, name, version, template=template, tracking_uri=tracking_uri or client.tracking_uri)
    folder = card_location(name, version)
    where = f"runs:/{card.run_id}/{folder}/model_card.md"
    markdown = _scrub(render(card.content), card.withheld)
    as_json = _scrub(json.dumps(card.content, indent=2, allow_nan=False, default=str), card.withheld)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model_card.md").write_text(markdown, encoding="utf-8")
        (Path(tmp) / "model_card.json").write_text(as_json, encoding="utf-8")
        client.log_artifacts(card.run_id, tmp, artifact_path=folder)
    description = markdown if len(markdown) <= DESCRIPTION_LIMIT else _scrub(summary(card.content, where), card.withheld)
    client.update_model_version(name, version, description=description[:DESCRIPTION_LIMIT])
    for key, value in {**card.version_tags, CARD_TAG: where}.items():
        client.set_model_version_tag(name, version, key, value)
    return where


def has_card(version: Any) -> bool:
    """Whether a model version already names its card."""
    return bool(version.tags.get(CARD_TAG))
