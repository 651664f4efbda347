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
study's validation selected. This module only parses: those rates come in as `LrSelection`s, read
from the tracking store once by `sweeps.lr_selection.resolve_study`. Every error names the file, the
key and the valid choices.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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
class LrSelection:
    """The learning rates a finished study's validation selected, and the runs they came from.

    `lrs` maps (task, arch, arm) to a learning rate; `fingerprints` are the protocol fingerprints of
    the full-data runs they were selected from (one per task and protocol).
    """

    study: str
    fingerprints: tuple[str, ...]
    lrs: Mapping[tuple[str, str, str], float] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: which study, which protocol fingerprints, how many cells."""
        prints = ", ".join(f[:12] for f in self.fingerprints) or "none"
        return f"learning rates from study {self.study!r} (protocol fingerprint {prints}; {len(self.lrs)} task/arch/arm cells)"


@dataclass(frozen=True)
class Study:
    """A validated study: its grid points and, optionally, how to pretrain what the domain arms need.

    `lr_selections` name the finished studies whose selected learning rates the grid took.
    """

    name: str
    path: Path
    description: str
    specs: tuple[RunSpec, ...]
    pretrain: dict[str, Any] | None = None
    lr_selections: tuple[LrSelection, ...] = ()

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


def _selected_lr(path: Path, where: str, selection: LrSelection, task: Task, arch: Any, arm: str) -> float:
    key = (task.value, str(arch), arm)
    source = selection.study
    if key not in selection.lrs:
        raise StudyError(
            f"{path}: {where}: study {source!r} has selected no learning rate for {task.value} {arch} {arm} "
            "(no finished full-data run of one protocol with a validation metric); finish it, or give lrs as a list"
        )
    return selection.lrs[key]


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


def study_name(path: str | Path) -> str:
    """The name a study file gives its study (`name:`, else the file's stem); parses only.

    Raises:
        StudyError: no such file, bad YAML, or a name with characters other than letters, digits, `_.-`.
    """
    path = Path(path)
    return _name(path, _read(path))


def _name(path: Path, data: dict[str, Any]) -> str:
    name = str(data.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise StudyError(f"{path}: name {name!r} may hold only letters, digits, '_', '.', '-'")
    return name


def lr_sources(path: str | Path) -> list[str]:
    """The studies a study file takes learning rates from (`lrs: {from_study: NAME}`), in order; parses only.

    Raises:
        StudyError: no such file, bad YAML, or a malformed `from_study` mapping.
    """
    path = Path(path)
    data = _read(path)
    tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
    names: list[str] = []
    for where, value in [("study", data.get("lrs")), *((f"tasks.{t}", (c or {}).get("lrs") if isinstance(c, dict) else None) for t, c in tasks.items())]:
        if value is None:
            continue
        source = _from_study(path, where, value if isinstance(value, list) else [value])
        if source is not None and source not in names:
            names.append(source)
    return names


def study_archs(path: str | Path) -> list[str]:
    """The architecture names a study file's tasks list, in order, without expanding the grid.

    Needs no learning rates (unlike `load_study` for `lrs: {from_study: ...}`), so `medtl weights
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


def load_study(path: str | Path, *, selections: Mapping[str, LrSelection] | None = None) -> Study:
    """Parse and validate a study file; every grid point is a valid RunSpec or this raises.

    Reads nothing but the file. A file that takes learning rates `from_study` needs them in
    `selections` (by study name): `sweeps.lr_selection.resolve_study` reads them once and calls this.

    Raises:
        StudyError: the file is invalid, or a `from_study` source is missing from `selections`.
    """
    path = Path(path)
    selections = selections or {}
    used: dict[str, LrSelection] = {}
    data = _read(path)
    _check_keys("the study", data, TOP_KEYS, path)
    name = _name(path, data)
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
        if source is not None:
            if not source:
                raise StudyError(f"{path}: {where}: lrs.from_study names no study; give the finished study's name")
            if source not in selections:
                raise StudyError(
                    f"{path}: lrs.from_study {source!r}: the study's selected learning rates were not read "
                    "(medtl sweep reads them from the tracking store; in code: sweeps.lr_selection.resolve_study)"
                )
            used[source] = selections[source]
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
                    lrs = [_selected_lr(path, where, used[source], task, arch_name, arm)]
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
        name=name,
        path=path,
        description=str(data.get("description", "")),
        specs=tuple(specs),
        pretrain=pretrain,
        lr_selections=tuple(used.values()),
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
        "lrs_from": [{"study": s.study, "fingerprints": list(s.fingerprints)} for s in study.lr_selections],
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
        # the record of where the learning rates came from; the rates themselves are in the specs
        lr_selections=tuple(LrSelection(str(s["study"]), tuple(s.get("fingerprints", ()))) for s in attrs.get("lrs_from", ())),
    )
