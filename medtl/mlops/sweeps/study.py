"""Study files: a grid as plain YAML values, validated on load, expanded into RunSpecs.

```yaml
name: demo                      # experiment medtl/<name>
defaults: {max_epochs: 6, patience: 3, batch_size: 16, image_size: 64}
tasks:
  demo-binary: {archs: [resnet18, mobilenet_v3_small]}
  luna16: {archs: [unet], data: /data/LUNA16, lrs: [1.0e-3, 1.0e-4, 1.0e-5]}
arms: [random, imagenet, domain]   # domain-MR / domain-CR / domain-CT: single-modality pretraining
lrs: [1.0e-2, 1.0e-3, 1.0e-4, 1.0e-5]
seeds: [0, 1, 2, 3, 4]
fractions: [1.0]
```
A task may override `lrs`, `seeds`, `fractions`, `arms` and any default (`optimizer` too: by default
each task type's, see `RunSpec`). An arm may carry its own learning rates,
`{arm: domain-CR, lrs: [1.0e-3, 1.0e-4, 1.0e-5]}` (the paper's single-modality arms). `lrs` may also be
`{from_study: paper}`: each (task, arch, arm) then trains at the learning rate the finished full-data
study's validation selected (read from the tracking store). Every error names the file, the key and
the valid choices.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medtl.errors import UserError
from medtl.training.spec import Arch, Init, Modality, RunSpec, SpecError, Task

TOP_KEYS = {"name", "description", "defaults", "tasks", "arms", "lrs", "seeds", "fractions", "pretrain"}
PRETRAIN_KEYS = {"data", "lr", "seed", "max_epochs", "patience", "batch_size", "image_size"}
DEFAULT_KEYS = {"max_epochs", "patience", "batch_size", "image_size", "normalization", "optimizer"}
TASK_KEYS = {"archs", "data", "arms", "lrs", "seeds", "fractions"} | DEFAULT_KEYS
ARMS = ["random", "imagenet", "domain", *(f"domain-{m.value}" for m in Modality if m is not Modality.ALL)]


class StudyError(UserError):
    """A study file that cannot be used; one line with the file, the key and the valid choices."""


@dataclass(frozen=True)
class Study:
    """A validated study: its grid points and, optionally, how to pretrain what the domain arms need."""

    name: str
    path: Path
    description: str
    specs: tuple[RunSpec, ...]
    pretrain: dict[str, Any] | None = None

    def tasks(self) -> list[str]:
        return sorted({s.task.value for s in self.specs})


def _arm(value: str) -> tuple[Init, Modality]:
    if value not in ARMS:
        raise SpecError(f"unknown arm {value!r}; valid: {', '.join(ARMS)}")
    if value.startswith("domain-"):
        return Init.DOMAIN, Modality(value.removeprefix("domain-"))
    return Init(value), Modality.ALL


def _check_keys(where: str, data: dict[str, Any], valid: set[str], path: Path) -> None:
    unknown = sorted(set(data) - valid)
    if unknown:
        raise StudyError(f"{path}: unknown key {unknown[0]!r} in {where}; valid: {', '.join(sorted(valid))}")


def _axis(path: Path, where: str, key: str, value: Any) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise StudyError(f"{path}: {where}.{key} is empty; give at least one value")
    return values


def _spec(
    path: Path, where: str, task: Task, arch: Any, arm: Any, lr: Any, seed: Any, fraction: Any, dataset: str, settings: dict
) -> RunSpec:
    try:
        init, modality = _arm(str(arm))
        spec = RunSpec(
            task=task,
            arch=arch,
            init=init,
            pretrain_modality=modality,
            lr=lr,
            seed=seed,
            data_fraction=fraction,
            dataset=dataset,
            **settings,
        )
    except SpecError as exc:
        raise StudyError(f"{path}: {where}: {exc}") from None
    if spec.init is Init.IMAGENET and spec.arch is Arch.UNET:
        raise StudyError(
            f"{path}: {where}: the vanilla unet has no ImageNet weights; give it its own arms: "
            "{name: unet, arms: [random, domain]}"
        )
    return spec


def _arm_entry(path: Path, where: str, entry: Any, lrs: list[Any]) -> tuple[str, list[Any]]:
    """An arm name, or `{arm: NAME, lrs: [...]}` giving that arm its own learning rates."""
    if isinstance(entry, dict):
        _check_keys(f"{where}.arms", entry, {"arm", "lrs"}, path)
        if "arm" not in entry:
            raise StudyError(f"{path}: {where}.arms: a mapping names its arm: {{arm: domain-CR, lrs: [...]}}")
        return str(entry["arm"]), _axis(path, f"{where}.arms.{entry['arm']}", "lrs", entry.get("lrs", lrs))
    return str(entry), lrs


def _from_study(path: Path, where: str, lrs: list[Any]) -> str | None:
    """The study named by `lrs: {from_study: NAME}`, or None for a plain list."""
    if len(lrs) == 1 and isinstance(lrs[0], dict):
        _check_keys(f"{where}.lrs", lrs[0], {"from_study"}, path)
        return str(lrs[0].get("from_study") or "")
    return None


def selected_lrs(study: str, tracking_uri: str | None, path: Path) -> dict[tuple[str, str, str], float]:
    """(task, arch, arm) → the learning rate a finished study's validation selected, at full data.

    The runs go through the evaluation's selection first (one run per grid point; a cell with
    several protocols is not used), then `stats.select_learning_rates`.
    """
    from medtl.evaluation.collect import collect
    from medtl.evaluation.selection import select_runs
    from medtl.evaluation.stats import select_learning_rates

    try:
        runs = select_runs(collect(study, tracking_uri).runs, allow_mixed_pretrained=True).runs
    except UserError as exc:
        raise StudyError(f"{path}: lrs.from_study {study!r}: {exc}") from None
    full = runs[(runs["data_fraction"] == 1.0) & (runs["protocol"] == "")]
    if full.empty:
        return {}
    chosen = select_learning_rates(full)
    return {(r.task, r.arch, r.group): float(r.lr) for r in chosen.itertuples() if r.lr == r.lr and r.lr is not None}


def _selected_lr(
    path: Path, where: str, selected: dict[tuple[str, str, str], float], source: str, task: Task, arch: Any, arm: str
) -> float:
    key = (task.value, str(arch), arm)
    if key not in selected:
        raise StudyError(
            f"{path}: {where}: study {source!r} has selected no learning rate for {task.value} {arch} {arm} "
            "(no finished full-data run of one protocol with a validation metric); finish it, or give lrs as a list"
        )
    return selected[key]


def _read(path: Path) -> dict[str, Any]:
    """The study file's top-level mapping, or StudyError naming the file (and the line for bad YAML)."""
    if not path.is_file():
        raise StudyError(f"study file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise StudyError(f"{path}:{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise StudyError(f"{path}: a study file is a mapping with keys {', '.join(sorted(TOP_KEYS))}")
    return data


def study_archs(path: str | Path) -> list[str]:
    """The architecture names a study file's tasks list, in order, without expanding the grid.

    Needs no tracking store (unlike `load_study` for `lrs: {from_study: ...}`), so `medtl weights
    fetch --study` works on a machine that only downloads. An entry `{name: ..., arms: [...]}` counts
    by its name.

    Raises:
        StudyError: no such file, bad YAML, or no `tasks: {task: {archs: [...]}}` mapping.
    """
    path = Path(path)
    data = _read(path)
    tasks = data.get("tasks")
    if not isinstance(tasks, dict):
        raise StudyError(f"study file {path} has no `tasks: {{task: {{archs: [...]}}}}` mapping")
    names: list[str] = []
    for task, entry in tasks.items():
        archs = entry.get("archs") if isinstance(entry, dict) else None
        if not isinstance(archs, list):
            raise StudyError(f"study file {path}: task {task!r} has no `archs` list")
        for arch in archs:
            name = str(arch.get("name")) if isinstance(arch, dict) else str(arch)
            if name not in names:
                names.append(name)
    return names


def load_study(path: str | Path, *, tracking_uri: str | None = None) -> Study:
    """Parse and validate a study file; every grid point is a valid RunSpec or this raises.

    `tracking_uri` is read only when the file takes learning rates `from_study`.
    """
    path = Path(path)
    selected: dict[str, dict[tuple[str, str, str], float]] = {}
    data = _read(path)
    _check_keys("the study", data, TOP_KEYS, path)
    name = str(data.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise StudyError(f"{path}: name {name!r} may hold only letters, digits, '_', '.', '-'")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise StudyError(f"{path}: defaults must be a mapping of {', '.join(sorted(DEFAULT_KEYS))}")
    _check_keys("defaults", defaults, DEFAULT_KEYS, path)
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise StudyError(f"{path}: tasks is empty; name at least one of {', '.join(t.value for t in Task)}")
    specs: list[RunSpec] = []
    for task_name, task_cfg in tasks.items():
        task_cfg = task_cfg or {}
        where = f"tasks.{task_name}"
        try:
            task = Task(task_name)
        except ValueError:
            raise StudyError(
                f"{path}: unknown task {task_name!r} in tasks; valid: {', '.join(t.value for t in Task)}"
            ) from None
        if not isinstance(task_cfg, dict):
            raise StudyError(f"{path}: {where} must be a mapping with keys {', '.join(sorted(TASK_KEYS))}")
        _check_keys(where, task_cfg, TASK_KEYS, path)
        if "archs" not in task_cfg:
            raise StudyError(f"{path}: {where}.archs is missing; valid: {', '.join(a.value for a in Arch)}")
        axes = {
            key: _axis(path, where if key in task_cfg else "study", key, task_cfg.get(key, data.get(key, default)))
            for key, default in (("archs", None), ("arms", ["random"]), ("lrs", None), ("seeds", [0]), ("fractions", [1.0]))
        }
        if axes["lrs"] == [None]:
            raise StudyError(f"{path}: lrs is missing (give it at the top or in {where})")
        source = _from_study(path, where, axes["lrs"])
        if source is not None and source not in selected:
            selected[source] = selected_lrs(source, tracking_uri, path)
        settings = {**defaults, **{k: v for k, v in task_cfg.items() if k in DEFAULT_KEYS}}
        dataset = str(task_cfg.get("data", ""))
        for entry in axes["archs"]:
            # An architecture is a name, or {name: ..., arms: [...]} to give it its own arms.
            if isinstance(entry, dict):
                _check_keys(f"{where}.archs", entry, {"name", "arms"}, path)
                arch_name = entry.get("name")
                arm_axis = _axis(path, f"{where}.archs.{arch_name}", "arms", entry.get("arms", axes["arms"]))
            else:
                arch_name, arm_axis = entry, axes["arms"]
            for arm_entry in arm_axis:
                arm, lrs = _arm_entry(path, where, arm_entry, axes["lrs"])
                if source is not None and _from_study(path, where, lrs) is not None:
                    lrs = [_selected_lr(path, where, selected[source], source, task, arch_name, arm)]
                for lr, seed, fraction in itertools.product(lrs, axes["seeds"], axes["fractions"]):
                    specs.append(_spec(path, where, task, arch_name, arm, lr, seed, fraction, dataset, settings))
    pretrain = data.get("pretrain")
    if pretrain is not None:
        if not isinstance(pretrain, dict) or "data" not in pretrain:
            raise StudyError(f"{path}: pretrain must be a mapping with at least 'data' (an ingest output folder)")
        _check_keys("pretrain", pretrain, PRETRAIN_KEYS, path)
    keys = [s.run_key for s in specs]
    if len(set(keys)) != len(keys):
        raise StudyError(f"{path}: the grid names the same point twice (a value repeated on an axis)")
    return Study(
        name=name, path=path, description=str(data.get("description", "")), specs=tuple(specs), pretrain=pretrain
    )



def study_text(
    name: str,
    *,
    seeds: Iterable[int],
    lrs: Iterable[float] = (1e-3,),
    task: str = "demo-binary",
    archs: Iterable[str] = ("mobilenet_v3_small",),
    **defaults: Any,
) -> str:
    """A study file's text for one task's grid, as `load_study` reads it: tests, benchmarks, a quick try.

    `defaults` are the study's `defaults:` (max_epochs, patience, batch_size, image_size ...).
    """
    data = {"name": name, "defaults": defaults, "tasks": {task: {"archs": list(archs)}}, "lrs": list(lrs), "seeds": list(seeds)}
    return yaml.safe_dump(data, sort_keys=False)


def study_attrs(study: Study) -> dict[str, Any]:
    """The study as JSON values, for the sweep queue's user attributes (see `study_from_attrs`).

    Workers rebuild the study from these, so `medtl worker --study NAME` needs no study file.
    """
    return {
        "study": study.name,
        "study_file": str(study.path),
        "description": study.description,
        "specs": [spec.to_params() for spec in study.specs],
        "pretrain": study.pretrain,
    }


def study_from_attrs(attrs: dict[str, Any]) -> Study:
    """The study `study_attrs` wrote, each grid point a validated RunSpec again.

    Raises:
        StudyError: the attributes lack the study (a queue written by an older medtl) or a spec is invalid.
    """
    missing = sorted({"study", "specs"} - set(attrs))
    if missing:
        raise StudyError(
            f"the sweep queue does not carry its study ({', '.join(missing)} missing; written by an older medtl?); "
            "give the study file instead: --study PATH"
        )
    try:
        specs = tuple(RunSpec.from_params(params) for params in attrs["specs"])
    except SpecError as exc:
        raise StudyError(f"study {attrs['study']!r} in the sweep queue: {exc}") from None
    return Study(
        name=str(attrs["study"]),
        path=Path(str(attrs.get("study_file", ""))),
        description=str(attrs.get("description", "")),
        specs=specs,
        pretrain=attrs.get("pretrain"),
    )
