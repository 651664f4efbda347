"""RunSpec → a complete, tracked MLflow run (stage `finetune`), FINISHED or FAILED, never left RUNNING."""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from medtl.mlops import tracking as T
from medtl.training.checkpoint import CheckpointError, load_checkpoint
from medtl.training.finetune import FinetuneJob
from medtl.training.spec import Init, PretrainSpec, RunSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    status: str
    metrics: dict[str, float]


def experiment_name(study: str) -> str:
    return f"medtl/{study}"


def run_name(spec: RunSpec) -> str:
    fraction = "" if spec.data_fraction == 1 else f" frac={spec.data_fraction:g}"
    return f"{spec.task.value} {spec.arch.value} {spec.group} lr={spec.lr:g} seed={spec.seed}{fraction}"


def work_root() -> Path:
    return Path(".medtl") / "work"


def run_spec(
    spec: RunSpec,
    *,
    study: str = "default",
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    device: str = "auto",
    resume: bool = True,
) -> RunOutcome:
    """Train and test one grid point, logging everything the tracking schema names.

    Data and model are prepared before the MLflow run exists, so a bad dataset path creates no run.
    The domain arm's `models:/` source is resolved to the registered version's `best.pt` first;
    the version is recorded in param `init_resolved`.
    If an earlier attempt at the same point died (its run is RUNNING or KILLED) and left a `last.pt`,
    that run is continued from the next epoch; an attempt without a checkpoint is marked KILLED and
    a new run starts. Any exception ends the run FAILED with the reason in `medtl.failure_reason`.
    """
    uri = T.resolve_tracking_uri(tracking_uri)
    workdir = work_root() / spec.run_key
    init_path, extra_params = resolve_init(spec, uri, workdir)
    job = FinetuneJob.prepare(spec, workdir, device=device, init_path=init_path)
    run_tags = {
        T.STAGE_TAG: "finetune",
        T.RUN_KEY_TAG: spec.run_key,
        T.STUDY_TAG: study,
        T.GROUP_TAG: spec.group,
        "medtl.fingerprint": spec.fingerprint(job.splits.digest),
        "medtl.task": spec.task.value,
        "medtl.arch": spec.arch.value,
        **({T.PARENT_TAG: parent_run_id} if parent_run_id else {}),
    }
    outcome = run_job(
        job,
        experiment=experiment_name(study),
        name=run_name(spec),
        tags=run_tags,
        extra_tags=tags,
        extra_params=extra_params,
        tracking_uri=uri,
        resume=resume,
    )
    shutil.rmtree(workdir, ignore_errors=True)
    return outcome


def resolve_init(spec: RunSpec, uri: str, workdir: Path) -> tuple[Path | None, dict[str, str]]:
    """For `init=domain` with a `models:/` source: the registered weights on local disk, and params."""
    if spec.init is not Init.DOMAIN or not spec.init_source.startswith("models:/"):
        return None, {}
    from medtl.mlops.registry import RegistryError, resolve_weights

    try:
        resolved = resolve_weights(spec.init_source, uri, workdir / "init")
    except RegistryError as exc:
        name = spec.init_source.removeprefix("models:/").split("@")[0].split("/")[0]
        if name.startswith("pretrained-") and "does not exist" in str(exc):
            arch = name.removeprefix("pretrained-")
            modality = ""
            for suffix in ("-MR", "-CR", "-CT"):
                if arch.endswith(suffix):
                    arch, modality = arch.removesuffix(suffix), f" --modality {suffix[1:]}"
            raise RegistryError(
                f"nothing registered as {spec.init_source}: run `medtl pretrain --arch {arch} --data DIR{modality}` first"
            ) from None
        raise
    return resolved.path, {"init_resolved": f"{resolved.name}/{resolved.version}"}


def run_job(
    job: FinetuneJob,
    *,
    experiment: str,
    name: str,
    tags: dict[str, str],
    tracking_uri: str,
    extra_tags: dict[str, str] | None = None,
    extra_params: dict[str, str] | None = None,
    resume: bool = True,
) -> RunOutcome:
    """Run a prepared job as one MLflow run (fine-tuning or pretraining alike); rank 0 only tracks."""
    from medtl.training.loop import world

    if world()[0] != 0:
        job.fit()  # other ranks of a torchrun job train; rank 0 logs, checkpoints and tests
        return RunOutcome("", "FINISHED", {})
    client = MlflowClient(tracking_uri)
    experiment_id = T.get_or_create_experiment(client, experiment, tracking_uri)
    previous = _interrupted_attempt(client, experiment_id, job.spec, job.workdir) if resume else None
    if previous is not None:
        run_id, payload, logged = previous
        client.update_run(run_id, status="RUNNING")
        T.set_tags(client, run_id, {"medtl.resumed_from_epoch": str(payload["loop"]["epoch"]), **(extra_tags or {})})
        log.info("resuming run %s at epoch %d", run_id, payload["loop"]["epoch"] + 1)
    else:
        run_tags = {
            **tags,
            T.RUN_KEY_TAG: job.spec.run_key,
            "medtl.git_commit": T.git_commit(),
            "mlflow.runName": name,
            **(extra_tags or {}),
        }
        run_id = client.create_run(experiment_id, tags=run_tags, run_name=name).info.run_id
        payload, logged = None, 0
    try:
        metrics = _execute(client, run_id, job, tracking_uri, payload, logged, extra_params or {})
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        T.end_run(client, run_id, status, reason)
        raise
    T.end_run(client, run_id, "FINISHED")
    return RunOutcome(run_id, "FINISHED", metrics)


def _interrupted_attempt(
    client: MlflowClient, experiment_id: str, spec: RunSpec | PretrainSpec, workdir: Path
) -> tuple[str, dict, int] | None:
    """The newest dead attempt at this point with a usable `last.pt`: (run id, payload, last logged step)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{T.RUN_KEY_TAG}` = '{spec.run_key}'",
        order_by=["attributes.start_time DESC"],
    )
    for run in (r for r in runs if r.info.status in ("RUNNING", "KILLED")):
        run_id = run.info.run_id
        local = workdir / "checkpoints" / "last.pt"
        candidates = [local] if local.exists() else []
        if not candidates:
            try:
                names = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
                if "checkpoints/last.pt" in names:
                    workdir.mkdir(parents=True, exist_ok=True)
                    for name in sorted(names & {"checkpoints/last.pt", "checkpoints/best.pt"}):
                        client.download_artifacts(run_id, name, str(workdir))  # → workdir/checkpoints/
                    candidates.append(local)
            except Exception as exc:
                log.warning("could not fetch last.pt of run %s: %s", run_id, exc)
        for path in candidates:
            try:
                payload = load_checkpoint(path)
            except CheckpointError as exc:
                log.warning("ignoring %s: %s", path, exc)
                continue
            if payload.get("meta", {}).get("run_key") == spec.run_key and "loop" in payload:
                history = client.get_metric_history(run_id, "val_loss")
                return run_id, payload, max((m.step for m in history), default=0)
        T.end_run(client, run_id, "KILLED", "worker died before a checkpoint was saved; point restarted")
    return None


def _execute(
    client: MlflowClient,
    run_id: str,
    job: FinetuneJob,
    uri: str,
    resume: dict | None,
    logged: int,
    extra_params: dict[str, str],
) -> dict[str, float]:
    started = time.perf_counter()
    if resume is None:
        T.log_params(client, run_id, {**job.params(), **extra_params})
        _log_dataset(client, run_id, job)
    emissions = T.EmissionsCallback()
    logger = T.EpochLogger(client, run_id, job.checkpoint_dir, logged, T.upload_every_default(uri))
    state = job.fit(callbacks=[emissions], resume=resume, on_saved=logger)
    primary = job.adapter.primary
    best = next((h for h in state.history if h["epoch"] == state.best_epoch), None)
    final = {
        "epochs_to_convergence": float(state.best_epoch),
        "epochs_run": float(state.epoch),
        "diverged": float(state.diverged),
        "best_val_loss": state.best_val_loss if best else math.nan,
        f"best_val_{primary}": best[f"val_{primary}"] if best else math.nan,
        "emissions_kg": emissions.emissions_kg,
        "energy_kwh": emissions.energy_kwh,
    }
    client.set_tag(run_id, "medtl.stop_reason", state.stop_reason)
    result = job.test()
    if result is not None:
        final.update({f"test_{k}": v for k, v in result.metrics.items()})
        client.log_artifact(run_id, str(result.predictions_path), "predictions")
    final["duration_s"] = time.perf_counter() - started
    T.log_metrics(client, run_id, final)
    for path in (job.checkpointer.best_path, job.checkpointer.last_path):
        if path.exists():
            client.log_artifact(run_id, str(path), "checkpoints")
    transfer = job.workdir / "transfer_report.json"
    if transfer.exists():
        client.log_artifact(run_id, str(transfer))
    return final


def _log_dataset(client: MlflowClient, run_id: str, job: FinetuneJob) -> None:
    """Record the data as an MLflow dataset input: name, source and a digest of split membership."""
    try:
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        splits = job.splits
        source = CodeDatasetSource(
            {"source": splits.source, "source_digest": splits.source_digest, **{f"n_{k}": v for k, v in splits.counts().items()}}
        )
        task = getattr(job.spec, "task", None)
        name = task.value if task is not None else f"pretrain-{job.spec.modality.value}"
        dataset = MetaDataset(source=source, name=name, digest=splits.digest)
        inputs = [DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "train")])]
        client.log_inputs(run_id, datasets=inputs)
    except Exception as exc:  # provenance is also in params (data_digest); never fail a run on it
        log.warning("could not log the dataset input: %s", exc)
