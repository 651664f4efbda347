"""RunSpec → a complete, tracked MLflow run (stage `finetune`), FINISHED or FAILED, never left RUNNING."""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from medtl.knobs import infra_patience_s
from medtl.mlops.retry import is_connection_error
from medtl.mlops.signals import StopCheck, StopRequested
from medtl.mlops.tracking import client as T
from medtl.mlops.tracking.emissions import EmissionsCallback
from medtl.mlops.tracking.environment import environment_tags, source_tags
from medtl.mlops.tracking.epoch_logger import EpochLogger, upload_every_default
from medtl.mlops.tracking.system_metrics import SystemMetrics
from medtl.provenance import git_commit
from medtl.training import schema as S
from medtl.training.checkpoint import CheckpointError, load_checkpoint
from medtl.training.finetune import FinetuneRecipe
from medtl.training.loop import Callback, FitState
from medtl.training.recipe import Recipe, RecipeResult
from medtl.training.runtime import broadcast_resume
from medtl.training.spec import Init, RunSpec

log = logging.getLogger(__name__)


class ClaimLost(Exception):
    """This worker no longer owns its point: another worker took it over and now alone writes its run.

    Raised by `run_spec`/`run_recipe` when `owns_claim()` returns False; the run is left untouched
    (not logged to, not ended) and the last completed epoch's checkpoint is on disk.
    """

    def __init__(self, run_id: str, where: str) -> None:
        super().__init__(f"run {run_id}: claim lost {where}; the worker that took it over continues the run")
        self.run_id = run_id


@dataclass(frozen=True)
class RunOutcome:
    """A tracked run's id, status and final metrics, and the recipe's own result (rank 0 only).

    `result` holds the fit summary, the test metrics and the artifact paths in the recipe's work folder: `run_spec`
    removes that folder once the run is tracked (the files are the run's artifacts by then), so
    only a caller of `run_recipe` (`run_pretrain`, to register `best.pt`) may read the files.
    """

    run_id: str
    status: str
    metrics: dict[str, float]
    result: RecipeResult | None = None


def run_name(spec: RunSpec) -> str:
    fraction = "" if spec.data_fraction == 1 else f" frac={spec.data_fraction:g}"
    return f"{spec.task.value} {spec.arch.value} {spec.arm} lr={spec.lr:g} seed={spec.seed}{fraction}"


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
    init_pin: str | None = None,
    owns_claim: Callable[[], bool] | None = None,
) -> RunOutcome:
    """Train and test one grid point, logging everything the tracking schema names.

    Data and model are prepared before the MLflow run exists, so a bad dataset path creates no run.
    The domain arm's `models:/` source is resolved to the registered version's `best.pt` first;
    the version is recorded in param `init_resolved`. `init_pin` (`models:/name/version`, from the
    sweep's per-study pins) replaces the alias in `spec.init_source` for resolution only; run_key is
    unchanged.
    If an earlier attempt at the same point died or failed (its run is RUNNING, KILLED or FAILED)
    and left a `last.pt`, that run is continued from the next epoch; a RUNNING attempt without a
    checkpoint is marked KILLED and a new run starts. Any exception ends the run FAILED with the
    reason in `medtl.failure_reason`; a stop signal (`signals.StopRequested`) ends it KILLED.
    `owns_claim` (a sweep worker's check that the point is still its own) runs before each
    epoch's logging and before the run ends; when it returns False, `ClaimLost` is raised and the
    run is left to the worker that took it over.
    """
    uri = S.resolve_tracking_uri(tracking_uri)
    workdir = work_root() / spec.run_key
    init_path, extra_params = resolve_init(spec, uri, workdir, init_pin)
    recipe = FinetuneRecipe.prepare(spec, workdir, device=device, init_path=init_path)
    run_tags = {
        S.STAGE_TAG: S.Stage.FINETUNE.value,
        S.RUN_KEY_TAG: spec.run_key,
        S.STUDY_TAG: study,
        S.ARM_TAG: spec.arm,
        S.FINGERPRINT_TAG: spec.fingerprint(recipe.splits.digest),
        S.TASK_TAG: spec.task.value,
        S.ARCH_TAG: spec.arch.value,
        **({S.PARENT_TAG: parent_run_id} if parent_run_id else {}),
    }
    outcome = run_recipe(
        recipe,
        experiment=S.study_experiment(study),
        name=run_name(spec),
        tags=run_tags,
        extra_tags=tags,
        extra_params=extra_params,
        tracking_uri=uri,
        resume=resume,
        owns_claim=owns_claim,
        description=_describe(spec, study, extra_params.get("init_resolved")),
    )
    shutil.rmtree(workdir, ignore_errors=True)
    return outcome


def _describe(spec: RunSpec, study: str, pretrained: str | None) -> str:
    """The run's one-line description (MLflow's `mlflow.note.content`)."""
    init = spec.arm if spec.init is Init.RANDOM else f"{spec.arm} init ({pretrained or spec.init_source})"
    fraction = "" if spec.data_fraction == 1 else f", {spec.data_fraction:g} of the training data"
    return (
        f"Fine-tuning of {spec.arch.value} on {spec.task.value} from {init}, lr {spec.lr:g}, seed {spec.seed}"
        f"{fraction}; study {study}; spec {spec.run_key}."
    )


def resolve_init(spec: RunSpec, uri: str, workdir: Path, pin: str | None = None) -> tuple[Path | None, dict[str, str]]:
    """For `init=domain` with a `models:/` source: the registered weights on local disk, and params.

    `pin`, when given, is the exact `models:/name/version` to load instead of the source's alias.
    """
    if spec.init is not Init.DOMAIN or not spec.init_source.startswith("models:/"):
        return None, {}
    from medtl.mlops.tracking.registry import RegistryError, resolve_weights

    try:
        resolved = resolve_weights(pin or spec.init_source, uri, workdir / "init")
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


def run_recipe(
    recipe: Recipe,
    *,
    experiment: str,
    name: str,
    tags: dict[str, str],
    tracking_uri: str,
    extra_tags: dict[str, str] | None = None,
    extra_params: dict[str, str] | None = None,
    resume: bool = True,
    owns_claim: Callable[[], bool] | None = None,
    description: str = "",
) -> RunOutcome:
    """Run a prepared recipe as one MLflow run (fine-tuning or pretraining alike); rank 0 only tracks.

    In a torchrun job every rank resumes from rank 0's last checkpoint. See `run_spec` for resumes,
    stop signals and `owns_claim`. Tracking calls retry connection errors with back-off
    (`client.retrying`); epochs are buffered while the store is away. What is logged at the end is
    what the recipe reports: its `FitSummary`, its test metrics and its artifacts.
    """
    from medtl.training.runtime import world

    if world()[0] != 0:
        # Other ranks of a torchrun job train; rank 0 logs, checkpoints, tests, and decides the resume.
        recipe.fit(resume=broadcast_resume(None))
        return RunOutcome("", "FINISHED", {})
    client = MlflowClient(tracking_uri)
    experiment_id = T.get_or_create_experiment(client, experiment, tracking_uri)
    previous = (
        T.retrying(lambda: _interrupted_attempt(client, experiment_id, recipe), "looking for an earlier attempt")
        if resume
        else None
    )
    context_tags = {**source_tags(), **environment_tags(recipe.runtime.device)}
    if description:
        context_tags[S.NOTE_TAG] = description
    if previous is not None:
        run_id, payload, logged = previous
        if owns_claim is not None and not T.retrying(owns_claim, "checking the claim"):
            raise ClaimLost(run_id, "before resuming")
        T.retrying(lambda: client.update_run(run_id, status="RUNNING"), "reopening the run")
        resumed = {S.RESUMED_FROM_TAG: str(payload["loop"]["epoch"]), **context_tags, **(extra_tags or {})}
        T.retrying(lambda: T.set_tags(client, run_id, resumed), "tagging the resumed run")
        log.info("resuming run %s at epoch %d", run_id, payload["loop"]["epoch"] + 1)
    else:
        run_tags = {
            **tags,
            S.RUN_KEY_TAG: recipe.spec.run_key,
            S.GIT_COMMIT_TAG: git_commit(),
            S.RUN_NAME_TAG: name,
            **context_tags,
            **(extra_tags or {}),
        }
        run_id = T.retrying(
            lambda: client.create_run(experiment_id, tags=run_tags, run_name=name).info.run_id, "creating the run"
        )
        payload, logged = None, 0
    system = SystemMetrics(run_id, tracking_uri, resume=previous is not None)
    try:
        metrics, result = _execute(client, run_id, recipe, tracking_uri, payload, logged, extra_params or {}, owns_claim)
        system.stop()
        if owns_claim is not None and not T.retrying(owns_claim, "checking the claim"):
            raise ClaimLost(run_id, "before the run ended")
    except ClaimLost:
        system.stop(flush=False)
        raise  # the run is the new owner's now: neither logged to nor ended here
    except BaseException as exc:
        system.stop()
        if isinstance(exc, StopRequested):
            status, reason = "KILLED", f"stopped by {exc.signal_name}; resumes from the last checkpoint"
        elif isinstance(exc, KeyboardInterrupt):
            status, reason = "KILLED", "KeyboardInterrupt: stopped by SIGINT"
        else:
            status, reason = "FAILED", f"{type(exc).__name__}: {exc}".splitlines()[0]
        if owns_claim is not None and not _still_owned(owns_claim):
            raise
        # A stopped worker has only the signal's lead time left: give the store less patience.
        budget = min(20.0, infra_patience_s()) if isinstance(exc, KeyboardInterrupt) else None
        try:
            T.retrying(lambda: T.end_run(client, run_id, status, reason), f"ending the run {status}", budget)
        except Exception as end_error:  # the original error is the one to report
            log.warning("could not end run %s as %s: %s", run_id, status, end_error)
        raise
    T.retrying(lambda: T.end_run(client, run_id, "FINISHED"), "ending the run FINISHED")
    return RunOutcome(run_id, "FINISHED", metrics, result)


def _still_owned(owns_claim: Callable[[], bool]) -> bool:
    """`owns_claim()`, assuming ownership when the check itself fails (the database is away)."""
    try:
        return bool(owns_claim())
    except Exception as exc:
        log.warning("could not check the claim (%s); ending the run as its owner", exc)
        return True


def _interrupted_attempt(client: MlflowClient, experiment_id: str, recipe: Recipe) -> tuple[str, dict, int] | None:
    """The newest dead or failed attempt at this point with a usable last checkpoint: (run id, payload, last logged step).

    RUNNING (a dead worker), KILLED (stopped) and FAILED attempts all resume from their checkpoint:
    the recipe's own last checkpoint on this machine, else the run's artifact of that name (uploaded
    mid-run to a remote store), fetched with the best one into the recipe's checkpoint paths.
    A RUNNING attempt without one is marked KILLED, the others are left as they ended.
    """
    spec = recipe.spec
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{S.RUN_KEY_TAG}` = '{spec.run_key}'",
        order_by=["attributes.start_time DESC"],
    )
    checkpoints = recipe.checkpoints
    local = checkpoints.last
    for run in (r for r in runs if r.info.status in ("RUNNING", "KILLED", "FAILED")):
        run_id = run.info.run_id
        candidates = [local] if local.exists() else []
        if not candidates:
            try:
                names = {a.path for a in client.list_artifacts(run_id, S.CHECKPOINT_ARTIFACTS)}
                if _artifact(local) in names:
                    _fetch_checkpoints(client, run_id, names, (checkpoints.last, checkpoints.best))
                    candidates.append(local)
            except Exception as exc:
                if is_connection_error(exc):
                    raise
                log.warning("could not fetch %s of run %s: %s", local.name, run_id, exc)
        for path in candidates:
            try:
                payload = load_checkpoint(path)
            except CheckpointError as exc:
                log.warning("ignoring %s: %s", path, exc)
                continue
            if payload.get("meta", {}).get("run_key") == spec.run_key and "loop" in payload:
                history = client.get_metric_history(run_id, "val_loss")
                return run_id, payload, max((m.step for m in history), default=0)
        if run.info.status == "RUNNING":
            T.end_run(client, run_id, "KILLED", "worker died before a checkpoint was saved; point restarted")
    return None


def _artifact(checkpoint: Path) -> str:
    """The artifact path a checkpoint is uploaded to: `checkpoints/<its file name>`."""
    return f"{S.CHECKPOINT_ARTIFACTS}/{checkpoint.name}"


def _fetch_checkpoints(client: MlflowClient, run_id: str, names: set[str], paths: tuple[Path, ...]) -> None:
    """Download the run's checkpoint artifacts that exist onto `paths` (matched by file name)."""
    import tempfile

    for path in paths:
        if _artifact(path) not in names:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            fetched = client.download_artifacts(run_id, _artifact(path), tmp)
            Path(fetched).replace(path)


class _ClaimGuard(Callback):
    """Stops the fit (between batches or at the epoch's end) once the logger found the claim lost."""

    epoch_end_order = 200  # after the checkpointer has queued this epoch's last.pt

    def __init__(self, logger: EpochLogger) -> None:
        self.logger = logger

    def _check(self) -> None:
        if self.logger.claim_lost.is_set():
            raise ClaimLost(self.logger.run_id, "before logging an epoch")

    def on_batch_end(self, state: FitState) -> None:
        self._check()

    def on_epoch_end(self, state: FitState, metrics: dict[str, float]) -> None:
        self._check()


class _Totals(Callback):
    """Keeps duration and energy of this and every earlier attempt in the loop state (so in the last checkpoint)."""

    def __init__(self, emissions: EmissionsCallback, prior: dict[str, float]) -> None:
        self.emissions = emissions
        self.prior = {"duration_s": 0.0, "energy_kwh": 0.0, "emissions_kg": 0.0, **prior}
        self.started = time.perf_counter()

    def so_far(self, energy_kwh: float = math.nan, emissions_kg: float = math.nan) -> dict[str, float]:
        """Totals over all attempts; this attempt's energy/emissions as given, else as last measured."""
        if math.isnan(energy_kwh):
            energy_kwh = self.emissions.energy_so_far()
        if math.isnan(emissions_kg):
            emissions_kg = self.emissions.emissions_so_far()
        return {
            "duration_s": self.prior["duration_s"] + time.perf_counter() - self.started,
            "energy_kwh": self.prior["energy_kwh"] + (0.0 if math.isnan(energy_kwh) else energy_kwh),
            "emissions_kg": self.prior["emissions_kg"] + (0.0 if math.isnan(emissions_kg) else emissions_kg),
        }

    def on_epoch_end(self, state: FitState, metrics: dict[str, float]) -> None:
        state.callback_state["totals"] = self.so_far()


def _execute(
    client: MlflowClient,
    run_id: str,
    recipe: Recipe,
    uri: str,
    resume: dict | None,
    logged: int,
    extra_params: dict[str, str],
    owns_claim: Callable[[], bool] | None = None,
) -> tuple[dict[str, float], RecipeResult]:
    """Fit, test and log one run; its final metrics and the recipe's result.

    The final metrics are the recipe's fit summary and test metrics plus what this runner measured
    around the fit (emissions, energy, duration, over every attempt). Uploaded at the end:
    predictions, the best checkpoint, the transfer report. The last checkpoint only serves a resume,
    and a FINISHED run is never resumed, so it is not uploaded here; an interrupted or failed run keeps
    it in the work folder on this machine, and mid-run uploads (`EpochLogger`'s `upload_every`, on by
    default for a remote store) put it in the run's artifacts for another.
    """
    if resume is None:
        T.log_params(client, run_id, {**recipe.params(), **extra_params})
        _log_dataset(client, run_id, recipe)
    resume = broadcast_resume(resume)  # the other ranks of a torchrun job wait for it
    emissions = EmissionsCallback()
    prior = dict((resume or {}).get("loop", {}).get("callback_state", {}).get("totals", {}))
    totals = _Totals(emissions, prior)
    logger = EpochLogger(client, run_id, recipe.checkpoints, logged, upload_every_default(uri), owns_claim)
    try:
        recipe.fit(callbacks=[emissions, totals, _ClaimGuard(logger), StopCheck(), logger], resume=resume)
    except ClaimLost:
        logger.close(timeout_s=5.0, drop=True)
        raise
    except BaseException:
        with contextlib.suppress(Exception):  # keep what was trained; the original error is reported
            logger.close(timeout_s=min(30.0, infra_patience_s()))
        raise
    logger.close()
    if logger.claim_lost.is_set():
        raise ClaimLost(run_id, "before logging the last epoch")
    summary = recipe.fit_summary()
    grand = totals.so_far(emissions.energy_kwh, emissions.emissions_kg)
    final = {
        **summary.metrics(),
        "emissions_kg": grand["emissions_kg"] if not math.isnan(emissions.emissions_kg) else math.nan,
        "energy_kwh": grand["energy_kwh"] if not math.isnan(emissions.energy_kwh) else math.nan,
    }
    if owns_claim is not None and not T.retrying(owns_claim, "checking the claim"):
        raise ClaimLost(run_id, "before the test")
    T.retrying(lambda: client.set_tag(run_id, S.STOP_REASON_TAG, summary.stop_reason), "tagging the stop reason")
    result = recipe.test()
    final.update({f"test_{k}": v for k, v in result.metrics.items()})
    predictions = result.predictions_path
    if predictions is not None:
        T.retrying(lambda: client.log_artifact(run_id, str(predictions), "predictions"), "uploading predictions")
    final["duration_s"] = totals.so_far(0.0, 0.0)["duration_s"]
    T.log_metrics(client, run_id, final)
    best_checkpoint = result.best_checkpoint
    if best_checkpoint is not None:
        T.retrying(
            lambda: client.log_artifact(run_id, str(best_checkpoint), S.CHECKPOINT_ARTIFACTS),
            "uploading the best checkpoint",
        )
    transfer = result.transfer_report
    if transfer is not None:
        T.retrying(lambda: client.log_artifact(run_id, str(transfer)), "uploading the transfer report")
    return final, result


def _log_dataset(client: MlflowClient, run_id: str, recipe: Recipe) -> None:
    """Record the data as an MLflow dataset input: name, source and a digest of split membership."""
    try:
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        splits = recipe.splits
        source = CodeDatasetSource(
            {"source": splits.source, "source_digest": splits.source_digest, **{f"n_{k}": v for k, v in splits.counts().items()}}
        )
        task = getattr(recipe.spec, "task", None)
        name = task.value if task is not None else f"pretrain-{recipe.spec.modality.value}"
        dataset = MetaDataset(source=source, name=name, digest=splits.digest)
        inputs = [DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "train")])]
        _log_inputs(client, run_id, inputs)
    except Exception as exc:  # provenance is also in params (data_digest); never fail a run on it
        log.warning("could not log the dataset input: %s", exc)


DATASET_INPUT_TRIES = 3


def _log_inputs(client: MlflowClient, run_id: str, inputs: list, pause_s: float = 0.2) -> None:
    """`log_inputs`, tried again after a BAD_REQUEST: MLflow's SQL store looks a dataset up, then inserts it,
    so when two runs of one experiment log the same new dataset at once (workers starting points of one
    task together) the second insert hits the dataset's primary key and the request fails with 400; on the
    next try the lookup finds the dataset (seen once in 64 points with 32 workers, BENCHMARKS.md)."""
    from mlflow.exceptions import MlflowException

    for attempt in range(1, DATASET_INPUT_TRIES + 1):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as exc:
            if exc.error_code != "BAD_REQUEST" or attempt == DATASET_INPUT_TRIES:
                raise
            time.sleep(pause_s * attempt)
