"""`medtl gradcam`: Grad-CAM of every arm's chosen run on one seeded test sample, logged as one MLflow run.

Per arm the run explained is the promoted one (the champion of `finetuned-<task>-<arch>`) when it
belongs to that arm, else the arm's FINISHED run with the best validation primary metric
(direction-aware; never the test set). Every arm sees the same images. Files are named by sample
number and arm only: no sample id (downstream ids are file stems) reaches a name or a file.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from medtl.errors import UserError
from medtl.mlops.tracking import client as T
from medtl.mlops.tracking.registry import champion
from medtl.provenance import git_commit
from medtl.training import schema as S
from medtl.training.spec import PRIMARY_METRIC, TASKS, Arch, RunSpec, Task, TaskType, parse_enum

log = logging.getLogger(__name__)

GRADCAM_STAGE = S.Stage.GRADCAM.value
_ARM_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class ArmChoice:
    arm: str
    run_id: str
    reason: str  # "champion" or "best validation <metric>"
    metric: float


@dataclass(frozen=True)
class GradcamOutcome:
    run_id: str
    arms: dict[str, ArmChoice]
    n_images: int
    feature_map: tuple[int, int]


def sample_name(number: int, total: int) -> str:
    """`sample-07`: 1-based, zero-padded to the width of `total` (at least two digits)."""
    return f"sample-{number:0{max(2, len(str(total)))}d}"


def choose_runs(client: MlflowClient, study: str, task: Task, arch: Arch) -> dict[str, ArmChoice]:
    """The run to explain for each arm of (task, arch) in `study`; UserError when fewer than two arms have one."""
    from medtl.mlops.tracking.promote import study_experiment, validation_rank

    experiment = study_experiment(client, study)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=(
            f"tags.`{S.STAGE_TAG}` = '{S.Stage.FINETUNE.value}' and tags.`{S.TASK_TAG}` = '{task.value}' "
            f"and tags.`{S.ARCH_TAG}` = '{arch.value}'"
        ),
        max_results=50_000,
    )
    primary, higher = PRIMARY_METRIC[TASKS[task].type]
    key = f"best_val_{primary}"
    implied: set[str] = set(S.MAIN_ARMS)
    finished: dict[str, list] = defaultdict(list)
    for run in runs:
        arm = _arm_of(run)
        if arm is None:
            continue
        implied.add(arm)
        if run.info.status != "FINISHED" or run.data.metrics.get("diverged", 0.0):
            continue
        if math.isfinite(run.data.metrics.get(key, math.nan)):
            finished[arm].append(run)
    where = f"study {study!r}, {task.value} {arch.value}"
    if not finished:
        raise UserError(f"{where}: no finished fine-tuning runs in any arm; run `medtl sweep` or `medtl run` first")
    if len(finished) < 2:
        missing = ", ".join(S.arm_order(implied - set(finished)))
        have = ", ".join(finished)
        raise UserError(f"{where}: Grad-CAM compares at least two arms; only {have} has finished runs, missing: {missing}")
    version = champion(client, f"finetuned-{task.value}-{arch.value}")
    promoted = version.tags.get(S.RUN_TAG) if version is not None else None
    chosen = {}
    for arm in S.arm_order(set(finished)):
        members = finished[arm]
        by_id = {r.info.run_id: r for r in members}
        if promoted in by_id:
            run = by_id[promoted]
            chosen[arm] = ArmChoice(arm, run.info.run_id, "champion", run.data.metrics[key])
            continue
        members.sort(key=validation_rank(key, higher))
        run = members[0]
        chosen[arm] = ArmChoice(arm, run.info.run_id, f"best validation {primary}", run.data.metrics[key])
    return chosen


def _arm_of(run: Any) -> str | None:
    arm = run.data.tags.get(S.ARM_TAG) or run.data.tags.get(S.LEGACY_ARM_TAG)
    if not arm:
        try:
            arm = RunSpec.from_params(run.data.params).arm
        except (UserError, TypeError):
            return None
    if not _ARM_NAME.match(arm):
        log.warning("run %s has arm label %r that cannot name files; skipped", run.info.run_id, arm)
        return None
    return arm


def gradcam_study(
    study: str,
    task: str,
    arch: str,
    *,
    n: int = 20,
    seed: int = 0,
    explain: str = "true",
    tracking_uri: str | None = None,
    device: str = "auto",
) -> GradcamOutcome:
    """Explain each arm's chosen run on the same `n` seeded test images; log it all as one run.

    Args:
        study: the study whose experiment `medtl/<study>` holds the fine-tuning runs.
        task: task name, e.g. `brain-tumor-mri`.
        arch: architecture name, e.g. `resnet50`.
        n: number of test images (fewer if the test split is smaller).
        seed: seed of the image sample.
        explain: multiclass only: explain the `true` or the `predicted` class.
        tracking_uri: MLflow store (default `$MLFLOW_TRACKING_URI`, else ./mlflow.db).
        device: `auto`, `cpu` or `cuda`.

    Returns:
        The new run's id, the run explained per arm, the number of images and the feature-map size.

    Raises:
        UserError: unknown study, task or architecture; fewer than two arms with finished runs;
            arms trained on different data or image sizes; data not readable here.
    """
    import torch

    from medtl.training.archs import arch_for_task
    from medtl.training.gradcam import Explain, gradcam_heatmaps, sample_indices

    task_ = parse_enum(Task, task, "task")
    arch_ = parse_enum(Arch, arch, "architecture")
    info = TASKS[task_]
    spec_arch = arch_for_task(arch_, info.type)
    explain_ = parse_enum(Explain, explain, "explain")
    if info.type is TaskType.SEGMENTATION or not spec_arch.gradcam_layer:
        raise UserError(f"Grad-CAM serves binary, multiclass and regression tasks; {task_.value} is {info.type.value}")
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    dev = _device(device, torch.cuda.is_available())
    uri = S.resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    choices = choose_runs(client, study, task_, arch_)
    with tempfile.TemporaryDirectory(prefix="medtl-gradcam-") as tmp:
        root = Path(tmp)
        predictors, data_key = _load_predictors(client, choices, root / "checkpoints")
        dataset, image_size = data_key
        from medtl.training.data import load_splits

        test = load_splits(task_, dataset, image_size=image_size).test
        index = sample_indices(len(test), n, seed)
        images = test.images[index]
        targets = test.targets[index]
        extras = None if test.extras is None else test.extras[index]
        out = root / "artifacts"
        results = {}
        for arm, predictor in predictors.items():
            log.info("Grad-CAM of %s (%s) on %d images", arm, choices[arm].run_id, len(index))
            results[arm] = gradcam_heatmaps(
                predictor.network, spec_arch, info, images, targets=targets, extras=extras, explain=explain_, device=dev
            )
        feature_map = next(iter(results.values())).feature_map
        if feature_map[0] * feature_map[1] <= 1:
            log.warning(
                "%s gives a %dx%d map at %d px: every heatmap is flat; train at a larger image size",
                spec_arch.gradcam_layer, *feature_map, image_size,
            )
        _write_files(out, images, targets, index, results, info)
        run_id = _log_run(
            client, uri, study, task_, arch_, choices, out,
            params={
                "n": n, "n_images": len(index), "seed": seed, "target_layer": spec_arch.gradcam_layer,
                "target": next(iter(results.values())).target, "method": "GradCAM", "library": _library(),
                "image_size": image_size, "dataset": dataset, "feature_map": f"{feature_map[0]}x{feature_map[1]}",
                "test_split_size": len(test),
                **{f"selection.{arm}": c.reason for arm, c in choices.items()},
            },
        )
    return GradcamOutcome(run_id, choices, len(index), feature_map)


def _device(device: str, cuda: bool) -> str:
    if device == "auto":
        return "cuda" if cuda else "cpu"
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise UserError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N")
    if device.startswith("cuda") and not cuda:
        raise UserError(f"device {device} asked for, but torch sees no CUDA device here; use --device cpu")
    return device


def _library() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"grad-cam=={version('grad-cam')}"
    except PackageNotFoundError:
        return "grad-cam"


def _load_predictors(client: MlflowClient, choices: dict[str, ArmChoice], dest: Path) -> tuple[dict, tuple[str, int]]:
    from medtl.training.inference import load_predictor

    predictors = {}
    keys = {}
    for arm, choice in choices.items():
        try:
            path = client.download_artifacts(choice.run_id, "checkpoints/best.pt", str(dest / arm))
        except Exception as exc:
            raise UserError(f"run {choice.run_id} ({arm}) has no checkpoints/best.pt artifact: {type(exc).__name__}") from None
        predictor = load_predictor(path)
        spec = RunSpec.from_params(predictor.meta["spec"])
        predictors[arm] = predictor
        keys[arm] = (spec.dataset, predictor.image_size)
    if len(set(keys.values())) > 1:
        shown = "; ".join(f"{arm}: {d} at {s} px" for arm, (d, s) in keys.items())
        raise UserError(f"the arms' runs were trained on different data or image sizes ({shown}); compare like with like")
    return predictors, next(iter(keys.values()))


def _write_files(out: Path, images, targets, index, results: dict, info) -> None:  # noqa: ANN001
    from medtl.training.gradcam import heatmap_to_uint8, overlay, save_png

    total = len(index)
    label = _labeller(info)
    with open(_mkparent(out / "samples.csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample", "test_index", "true_label"])
        for i, test_index in enumerate(index):
            writer.writerow([sample_name(i + 1, total), int(test_index), label(targets[i])])
            save_png(out / "images" / f"{sample_name(i + 1, total)}.png", images[i])
    with open(out / "explained.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample", "arm", "explained", "output"])
        for arm, heat in results.items():
            for i in range(total):
                name = sample_name(i + 1, total)
                explained = "" if heat.explained[i] < 0 else info.classes[int(heat.explained[i])]
                writer.writerow([name, arm, explained or heat.target, f"{float(heat.outputs[i]):.6g}"])
                save_png(out / "heatmaps" / arm / f"{name}.png", heatmap_to_uint8(heat.maps[i]))
                save_png(out / "overlays" / arm / f"{name}.png", overlay(images[i], heat.maps[i]))


def _labeller(info):  # noqa: ANN001, ANN202
    if info.type in (TaskType.BINARY, TaskType.MULTICLASS) and info.classes:
        return lambda t: info.classes[int(t)]
    return lambda t: f"{float(t):.6g}"


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _log_run(
    client: MlflowClient, uri: str, study: str, task: Task, arch: Arch, choices: dict[str, ArmChoice], out: Path,
    params: dict[str, Any],
) -> str:
    experiment_id = T.get_or_create_experiment(client, S.study_experiment(study), uri)
    tags = {
        S.STAGE_TAG: GRADCAM_STAGE,
        S.STUDY_TAG: study,
        S.TASK_TAG: task.value,
        S.ARCH_TAG: arch.value,
        S.GIT_COMMIT_TAG: git_commit(),
        **{f"{S.EXPLAINS_TAG_PREFIX}{arm}": c.run_id for arm, c in choices.items()},
    }
    name = f"gradcam {task.value} {arch.value}"
    run_id = client.create_run(experiment_id, tags={**tags, "mlflow.runName": name}, run_name=name).info.run_id
    try:
        T.log_params(client, run_id, params)
        client.log_artifacts(run_id, str(out))
    except BaseException as exc:
        T.end_run(client, run_id, "FAILED", f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise
    T.end_run(client, run_id, "FINISHED")
    return run_id
