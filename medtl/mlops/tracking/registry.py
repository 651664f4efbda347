"""The MLflow model registry: register checkpoints, move aliases, resolve model URIs to local files.

Every version is an MLflow PyTorch model (pickle format, so `mlflow.pytorch.load_model` returns a
medtl `Network`) with a signature and an input example, and it carries the plain `best.pt`
state_dict as an extra file: medtl itself only ever reads that file, with `weights_only=True`.
`mlflow.pytorch.load_model` instead unpickles the whole `Network` object (`torch.load` with
`weights_only=False`): that runs code named in the file, so load a model that way only from a
registry you trust. Its recorded requirements pin torch and the medtl version that wrote it
(`medtl==<installed version>`), since the pickle names medtl's classes.
Aliases, never the deprecated stages: `champion` and `previous-champion`, moved only through the
promotion gate (`champion.offer`), every decision kept in the model's alias history.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from medtl.errors import UserError
from medtl.mlops.retry import is_connection_error
from medtl.redact import mask_url
from medtl.training import schema as S

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous-champion"


def pip_requirements() -> list[str]:
    """What an MLflow model of this medtl needs: torch and medtl, each pinned to the installed version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        medtl = f"medtl=={version('medtl')}"
    except PackageNotFoundError:  # a source tree that was never installed: say so rather than guess
        medtl = "medtl"
        log.warning("medtl is not installed as a package; the model's requirement on medtl is unpinned")
    return [f"torch=={torch.__version__.split('+')[0]}", medtl]


class RegistryError(UserError):
    """A model URI or registered model that does not exist or cannot be used."""


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    champion: bool
    previous_champion: str | None


@dataclass(frozen=True)
class ResolvedWeights:
    uri: str
    name: str
    version: str
    path: Path


def register_version(
    client: MlflowClient,
    *,
    tracking_uri: str,
    experiment_id: str,
    name: str,
    network: torch.nn.Module,
    best_path: Path,
    image_size: int,
    run_id: str,
    metric_name: str,
    metric: float,
    higher_is_better: bool,
    tags: dict[str, str],
    extras: int = 0,
    description: str = "",
) -> str:
    """Log `network` as an MLflow model and register it as a new version of `name`; no alias moves.

    The version is tagged with the run, its validation metric and direction, its protocol
    fingerprint (recomputed from the run when `tags` do not name it) and `tags`. Returns the
    version number.
    """
    import mlflow
    from mlflow.models import infer_signature

    from medtl.mlops.tracking.champion import run_fingerprint

    mlflow.set_tracking_uri(tracking_uri)
    network = network.cpu().eval()
    example = np.random.default_rng(0).random((2, 1, image_size, image_size), dtype=np.float32)
    with torch.no_grad():
        output = network(torch.from_numpy(example)) if not extras else network(
            torch.from_numpy(example), torch.zeros(2, extras)
        )
    signature = infer_signature(example, output.numpy())
    experiment = client.get_experiment(experiment_id)
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    # Pickle keeps `load_model` returning a medtl Network; medtl itself reads only the extra
    # best.pt with weights_only=True, so MLflow's warning about unpickling does not apply to it.
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    info = mlflow.pytorch.log_model(
        network,
        name=re.sub(r"[^A-Za-z0-9_-]", "_", name),
        signature=signature,
        input_example=example,
        pip_requirements=pip_requirements(),
        serialization_format="pickle",
        extra_files=[str(best_path)],
    )
    ensure_registered_model(client, name)
    version_tags = {
        **{k: mask_url(str(v)) for k, v in tags.items()},
        S.RUN_TAG: run_id,
        S.METRIC_NAME_TAG: metric_name,
        S.METRIC_TAG: repr(float(metric)),
        S.HIGHER_TAG: str(higher_is_better),
    }
    if S.FINGERPRINT_TAG not in version_tags:
        version_tags[S.FINGERPRINT_TAG] = run_fingerprint(client.get_run(run_id))
    version = client.create_model_version(
        name, info.model_uri, run_id=run_id, tags=version_tags, model_id=info.model_id, description=description or None
    )
    return str(version.version)


def log_registered_version(client: MlflowClient, *, card_template: str | None = None, **registration: Any) -> Registered:
    """Register a version (`register_version`'s arguments), offer it `champion` through the gate, write its card.

    The gate (`champion.offer`, default margin) moves the alias only when the version's protocol
    fingerprint is the holder's and its validation metric beats the holder's by more than its
    seeds' interval; the decision is appended to the model's alias history either way. The model
    card (`model_card.write_card`) becomes the version's description and artifacts.
    """
    from medtl.mlops.tracking.champion import offer
    from medtl.mlops.tracking.model_card import write_card

    name = registration["name"]
    number = register_version(client, **registration)
    decision, _ = offer(client, name, number)
    write_card(client, name, number, template=card_template)
    previous = decision.holder_version if decision.moves else None
    return Registered(name, number, decision.moves, previous)


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create registered model `name` unless it exists (another process may create it at the same time)."""
    try:
        client.get_registered_model(name)
    except Exception:
        try:
            client.create_registered_model(name)
        except Exception:  # created concurrently by another process
            client.get_registered_model(name)


def champion(client: MlflowClient, name: str):
    """The model version holding alias `champion`, or None."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except Exception:
        return None


_WEIGHTS: dict[tuple[str, ...], Path] = {}
"""This process's copies of registered `best.pt` files, by the version's identity (see `resolve_weights`)."""
_weights_dir: Path | None = None


def _cache_dir() -> Path:
    """A folder of this process for cached weights, removed when the process exits."""
    global _weights_dir
    if _weights_dir is None:
        import atexit
        import shutil
        import tempfile

        _weights_dir = Path(tempfile.mkdtemp(prefix="medtl-weights-"))
        atexit.register(shutil.rmtree, _weights_dir, True)
    return _weights_dir


def resolve_weights(uri: str, tracking_uri: str, dest: Path) -> ResolvedWeights:
    """`models:/name@alias` or `models:/name/version` → the version's `best.pt` on local disk.

    The alias (or number) is looked up in the registry on every call, so a moved alias is followed
    at once. The file is downloaded (into `dest`) only the first time this process asks for that
    version, then kept in a per-process cache keyed by the version's identity (store, name, number,
    source and creation time: a deleted and re-created model's version 1 is another entry): a sweep
    worker's domain-arm points share one copy. Callers only read the returned file.
    """
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if not match:
        raise RegistryError(f"not a model URI: {uri!r}; expected models:/<name>@<alias> or models:/<name>/<version>")
    name, alias, number = match.groups()
    client = MlflowClient(tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    except Exception:
        known = sorted(m.name for m in client.search_registered_models(max_results=200))
        hint = f"; registered models: {', '.join(known)}" if known else "; no model is registered yet"
        raise RegistryError(f"model {uri} does not exist in {mask_url(tracking_uri)}{hint}") from None
    key = (tracking_uri, name, str(version.version), str(version.source), str(version.creation_timestamp))
    cached = _WEIGHTS.get(key)
    if cached is None or not cached.is_file():
        found = _download_best(tracking_uri, name, str(version.version), Path(dest))
        if found is None:
            raise RegistryError(f"model {uri} (version {version.version}) holds no extra_files/best.pt; not a medtl model")
        cached = _cache_dir() / f"{len(_WEIGHTS)}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-v{version.version}.pt"
        found.replace(cached)
        _WEIGHTS[key] = cached
    return ResolvedWeights(uri, name, str(version.version), cached)


def _download_best(tracking_uri: str, name: str, number: str, dest: Path) -> Path | None:
    """The version's `extra_files/best.pt` downloaded under `dest`: that file alone, else the whole model."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{number}/extra_files/best.pt", dst_path=str(dest)))
    except Exception as exc:  # a model laid out otherwise: fetch it whole and look for the file
        if is_connection_error(exc):
            raise
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{number}", dst_path=str(dest)))
    return next(iter(sorted(local.rglob("extra_files/best.pt"))), None)
