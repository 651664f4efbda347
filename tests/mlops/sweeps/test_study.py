"""Study files: validated on load; the shipped grids; enqueue is idempotent; --plan estimates."""

from __future__ import annotations

import json

import optuna
import pytest

from medtl.mlops.sweeps import plan
from medtl.mlops.sweeps.queue import enqueue_missing, open_optuna_study, open_storage
from medtl.mlops.sweeps.study import StudyError, load_study

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


def test_shipped_studies(request, tmp_path):
    root = request.config.rootpath
    paper = load_study(root / "configs" / "paper.yaml")
    # 4 tasks x 2 archs x 3 arms x 4 lrs x 5 seeds + LUNA16 (unet: 2 arms; 3 encoders: 3 arms) x 3 lrs x 5 seeds,
    # + single-modality arms at 3 lrs x 5 seeds: 8 archs (MR, CR) and LUNA16's unet_resnet50 (CT)
    assert len(paper.specs) == 4 * 2 * 3 * 4 * 5 + (2 + 3 * 3) * 3 * 5 + 9 * 3 * 5
    assert {s.arch.value for s in paper.specs if s.task.value == "luna16"} == {"unet", "unet_resnet50", "unet_efficientnet_b4", "unet_vgg16"}
    variants = {(s.task.value, s.arm) for s in paper.specs if s.arm.startswith("domain-")}
    assert variants == {("brain-tumor-mri", "domain-MR"), ("rsna-boneage", "domain-CR"), ("covid19", "domain-CR"),
                        ("grazpedwri-osteopenia", "domain-CR"), ("luna16", "domain-CT")}
    assert {s.lr for s in paper.specs if s.arm.startswith("domain-")} == {1e-3, 1e-4, 1e-5}
    # the published optimizer per task type
    assert {s.optimizer.value for s in paper.specs if s.task.value in ("rsna-boneage", "luna16")} == {"adam"}
    assert {s.optimizer.value for s in paper.specs if s.task.value == "covid19"} == {"adamw"}
    # the reduced-data study takes its learning rates from the finished full-data study
    from medtl.mlops.sweeps.lr_selection import resolve_study

    with pytest.raises(StudyError, match="lrs.from_study 'paper': unknown study 'paper'|no MLflow store"):
        resolve_study(root / "configs" / "resource_limited.yaml", f"sqlite:///{tmp_path / 'none.db'}")
    demo = load_study(root / "configs" / "demo.yaml")
    assert {s.arm for s in demo.specs} == {"random", "imagenet", "domain"}
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
    expected = 4 * 200 * (256 + 32) / (128 * (64 / 224) ** 2) / 3600
    assert f"≤{expected:.1f} h CPU" in out
    assert "4 points have neither finished runs nor a throughput measurement: run `make bench`" in out
    assert "for 4 of 8 points, the rest unknown" in out


def _paper_runs(specs, rng):
    """A finished run per grid point with made-up metrics (the statistics only need their shape)."""
    import pandas as pd

    from medtl.evaluation.stats import primary_metric

    rows = []
    for spec in specs:
        metric, _ = primary_metric(spec.task)
        value = float(rng.random())
        rows.append({"task": spec.task.value, "arch": spec.arch.value, "group": spec.arm, "lr": spec.lr,
                     "seed": spec.seed, "status": "FINISHED", "diverged": False, f"best_val_{metric}": value,
                     f"test_{metric}": value, "epochs_to_convergence": float(rng.integers(1, 50))})
    return pd.DataFrame(rows)


def test_paper_study_gives_the_27_single_modality_t_tests(request):
    import numpy as np

    from medtl.evaluation.stats import compare, primary_metric

    paper = load_study(request.config.rootpath / "configs" / "paper.yaml")
    records = compare(_paper_runs(paper.specs, np.random.default_rng(0)), "paper").records
    ttests = [r for r in records if r.test == "ttest" and r.metric == f"test_{primary_metric(r.task)[0]}"]
    # MR-only: 2 archs x 3 lrs; CR-only: 6 archs x 3 lrs; CT-only: unet_resnet50 x 3 lrs
    assert len(ttests) == 27
    assert all(r.group_a == "domain" and r.n_a == r.n_b == 5 and r.p_raw is not None for r in ttests)
    assert sum(r.group_b == "domain-MR" for r in ttests) == 6 and sum(r.group_b == "domain-CT" for r in ttests) == 3


def test_plan_says_unknown_never_zero_without_a_table_or_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plan, "THROUGHPUT", tmp_path / "missing.json")
    monkeypatch.delenv("MEDTL_THROUGHPUT", raising=False)
    plan.print_plan(_write(tmp_path, BASE), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = capsys.readouterr().out
    assert "estimated time unknown, CO2e unknown on one worker" in out
    assert "0.0 min" not in out and "0.00 g" not in out


def test_plan_of_the_paper_grid_uses_the_shipped_cpu_table(request, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MEDTL_THROUGHPUT", raising=False)
    shipped = request.config.rootpath / "benchmarks" / "throughput.json"
    rows = json.loads(shipped.read_text())["rows"]
    assert {r["kind"] for r in rows} >= {"cpu"} and all(r["images_per_s"] > 0 for r in rows)
    plan.print_plan(request.config.rootpath / "configs" / "paper.yaml", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("luna16", "rsna", "graz", "covid19", "brain"))]
    assert len(lines) == 44  # (task, arch, arm) rows: LUNA16 2 + 4 + 3 + 3, four tasks x 2 archs x 4 arms
    assert all(" CPU " in line and "unknown" in line.split("CPU")[1] for line in lines)  # time from the table, CO2e unknown
    assert "left: 780 points; estimated " in out and "estimated time unknown" not in out and "CO2e unknown" in out
    assert "CPU: throughput measured on a CPU" in out


def test_study_archs_reads_only_the_arch_axis(tmp_path):
    from medtl.mlops.sweeps.study import StudyError, study_archs

    path = tmp_path / "archs.yaml"
    path.write_text(
        "name: a\nlrs: {from_study: nowhere}\ntasks:\n"
        "  demo-binary: {archs: [resnet18, {name: densenet121, arms: [random]}]}\n"
        "  luna16: {archs: [unet, resnet18]}\n"
    )
    assert study_archs(path) == ["resnet18", "densenet121", "unet"]  # no tracking store read for from_study
    with pytest.raises(StudyError, match="does not exist"):
        study_archs(tmp_path / "absent.yaml")
