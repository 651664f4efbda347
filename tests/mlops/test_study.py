"""Study files: validated on load; the shipped grids; enqueue is idempotent; --plan estimates."""

from __future__ import annotations

import json

import optuna
import pytest

from medtl.mlops import plan
from medtl.mlops.study import StudyError, load_study
from medtl.mlops.sweep import enqueue_missing, open_optuna_study, open_storage

BASE = """
name: s
tasks:
  demo-binary: {archs: [resnet18]}
lrs: [1.0e-3, 1.0e-4]
seeds: [0, 1]
"""


def _write(tmp_path, text):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (BASE + "learning_rate: [0.1]\n", "unknown key 'learning_rate' in the study; valid: arms, defaults"),
        (BASE.replace("resnet18", "resnet81"), "unknown architecture 'resnet81'; valid: resnet18"),
        (BASE.replace("demo-binary", "demo-binry"), "unknown task 'demo-binry' in tasks; valid: luna16"),
        (BASE.replace("seeds: [0, 1]", "seeds: []"), "study.seeds is empty"),
        (BASE.replace("{archs: [resnet18]}", "{archs: [resnet18], epochs: 3}"), "unknown key 'epochs' in tasks.demo-binary"),
        (BASE + "arms: [random, imagenett]\n", "unknown arm 'imagenett'; valid: random, imagenet, domain"),
        (BASE + "defaults: {max_epochs: 0}\n", "max-epochs must be at least 1"),
        (BASE.replace("lrs: [1.0e-3, 1.0e-4]", "lrs: [-1.0e-3]"), "lr must be a positive number"),
        (BASE.replace("lrs: [1.0e-3, 1.0e-4]", "lrs: [1.0e-3, 1.0e-3]"), "the same point twice"),
        ("tasks: [", "is not valid YAML"),
        (BASE.replace("{archs: [resnet18]}", "{archs: [unet]}") + "arms: [imagenet]\n", "cannot serve|no ImageNet weights"),
    ],
)
def test_bad_study_files_are_refused_with_file_key_and_choices(tmp_path, text, fragment):
    import re

    path = _write(tmp_path, text)
    with pytest.raises(StudyError) as info:
        load_study(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert re.search(fragment, message), message


def test_shipped_studies(request):
    root = request.config.rootpath
    paper = load_study(root / "configs" / "paper.yaml")
    # 4 tasks x 2 archs x 3 arms x 4 lrs x 5 seeds + LUNA16 (unet: 2 arms; 3 encoders: 3 arms) x 3 lrs x 5 seeds
    assert len(paper.specs) == 4 * 2 * 3 * 4 * 5 + (2 + 3 * 3) * 3 * 5
    assert {s.arch.value for s in paper.specs if s.task.value == "luna16"} == {"unet", "unet_resnet50", "unet_efficientnet_b4", "unet_vgg16"}
    limited = load_study(root / "configs" / "resource_limited.yaml")
    assert {s.data_fraction for s in limited.specs} == {0.05, 0.25, 0.5}
    assert {s.max_epochs for s in limited.specs} == {10}
    demo = load_study(root / "configs" / "demo.yaml")
    assert {s.group for s in demo.specs} == {"random", "imagenet", "domain"}
    assert demo.pretrain and demo.pretrain["data"]


def test_enqueue_is_idempotent_and_adds_only_new_points(tmp_path):
    study = load_study(_write(tmp_path, BASE))
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    optuna_study = open_optuna_study(study, storage)
    assert enqueue_missing(study.specs, optuna_study, done=set()) == 4
    assert enqueue_missing(study.specs, optuna_study, done=set()) == 0
    grown = load_study(_write(tmp_path, BASE.replace("seeds: [0, 1]", "seeds: [0, 1, 2]")))
    assert enqueue_missing(grown.specs, optuna_study, done=set()) == 2
    done = {grown.specs[0].run_key}
    fresh = open_optuna_study(load_study(_write(tmp_path, BASE.replace("name: s", "name: t"))), storage)
    assert enqueue_missing(grown.specs, fresh, done=done) == 5  # a FINISHED MLflow run counts as done
    waiting = optuna_study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len({t.user_attrs["run_key"] for t in waiting}) == len(waiting) == 6


def test_plan_estimates_from_the_throughput_table(tmp_path, monkeypatch, capsys):
    table = tmp_path / "throughput.json"
    table.write_text(json.dumps([{"arch": "resnet18", "size": 64, "images_per_s": 128.0}]))
    monkeypatch.setattr(plan, "THROUGHPUT", table)
    plan.print_plan(_write(tmp_path, BASE.replace("{archs: [resnet18]}", "{archs: [resnet18, vgg16]}")))
    out = capsys.readouterr().out
    # 4 points x 200 epochs x (256 + 96/3) images / (128 img/s x (64/224)^2) at 224 px
    expected = 4 * 200 * (256 + 32) / (128 * (64 / 224) ** 2) / 60
    assert f"≤{expected:.1f} min" in out
    assert "+4 points with neither finished runs nor a throughput measurement" in out
