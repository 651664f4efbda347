"""One worker per GPU (`--workers auto`, `medtl worker --gpus`), the cores divided; a fake device list, no CUDA needed."""

from __future__ import annotations

import os

import pytest
import torch

from medtl.errors import UserError
from medtl.mlops.cli import main
from medtl.mlops.sweeps import local
from medtl.mlops.sweeps import placement as P
from medtl.mlops.sweeps.placement import Placement, parse_gpus, plan_workers


def _gpus(*ids: str):
    return lambda: list(ids)


def _cores(n: float):
    return lambda: n


def test_auto_gives_each_visible_gpu_a_worker_and_an_equal_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("MEDTL_TORCH_THREADS", raising=False)
    placements = plan_workers("auto", devices=_gpus("0", "1", "2", "3"), cpus=_cores(16))
    assert [p.gpu for p in placements] == ["0", "1", "2", "3"]
    assert {(p.threads, p.loader_workers) for p in placements} == {(1, 3)}  # 4 cores each: 3 loaders feed the GPU
    assert placements[0].env() == {"CUDA_VISIBLE_DEVICES": "0", "MEDTL_TORCH_THREADS": "1", "MEDTL_LOADER_WORKERS": "3"}
    wide = plan_workers("auto", devices=_gpus("0", "1"), cpus=_cores(64))
    assert {(p.threads, p.loader_workers) for p in wide} == {(28, 4)}  # at most 4 loaders, the rest threads
    crowded = plan_workers("auto", devices=_gpus(*map(str, range(8))), cpus=_cores(4))
    assert len(crowded) == 8 and {(p.threads, p.loader_workers) for p in crowded} == {(1, 0)}
    monkeypatch.setenv("MEDTL_TORCH_THREADS", "2")  # the user's choice wins
    assert {p.threads for p in plan_workers("auto", devices=_gpus("0", "1"), cpus=_cores(64))} == {2}


def test_an_allocation_of_gpus_by_uuid_is_kept(monkeypatch):
    """A scheduler's CUDA_VISIBLE_DEVICES (indexes or UUIDs): each worker gets one of its entries."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa11,GPU-bb22")
    assert P.visible_gpus() == ["GPU-aa11", "GPU-bb22"]
    assert [p.gpu for p in plan_workers("auto", cpus=_cores(8))] == ["GPU-aa11", "GPU-bb22"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert [p.gpu for p in plan_workers("gpus", [1], cpus=_cores(8))] == ["5"]  # index 1 of what is visible
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert P.visible_gpus() == ["0", "1"]


def test_cpu_only_machines_keep_one_worker_on_every_core(monkeypatch):
    monkeypatch.delenv("MEDTL_TORCH_THREADS", raising=False)
    assert plan_workers("auto", devices=_gpus(), cpus=_cores(2)) == [Placement(None, 2, 0)]
    monkeypatch.setenv("MEDTL_TORCH_THREADS", "1")
    assert plan_workers("auto", devices=_gpus(), cpus=_cores(2)) == [Placement(None, 1, 0)]
    # a count is today's behaviour: that many processes, the cores divided, devices and loaders untouched,
    # and a thread count the user set is kept
    assert plan_workers(3, devices=_gpus("0"), cpus=_cores(7)) == [Placement(None, 1)] * 3
    monkeypatch.delenv("MEDTL_TORCH_THREADS")
    assert plan_workers(3, devices=_gpus("0"), cpus=_cores(7)) == [Placement(None, 2)] * 3
    assert "MEDTL_LOADER_WORKERS" not in Placement(None, 2).env()


@pytest.mark.parametrize(
    ("cores", "threads", "message"),
    [(0.5, None, "no GPU and no CPU to spare"), (2, "4", "MEDTL_TORCH_THREADS=4 but this process may use 2")],
)
def test_auto_with_no_gpu_and_no_cpu_to_spare_is_refused(monkeypatch, cores, threads, message):
    if threads:
        monkeypatch.setenv("MEDTL_TORCH_THREADS", threads)
    with pytest.raises(UserError, match=message):
        plan_workers("auto", devices=_gpus(), cpus=_cores(cores))


def test_a_gpu_list_naming_a_missing_device_is_refused():
    with pytest.raises(UserError, match=r"GPU 3 does not exist; visible: 0, 1$"):
        plan_workers("gpus", [0, 3], devices=_gpus("0", "1"), cpus=_cores(8))
    with pytest.raises(UserError, match="no visible GPU"):
        plan_workers("gpus", None, devices=_gpus(), cpus=_cores(8))
    assert parse_gpus("all") is None and parse_gpus("0,2") == [0, 2]
    for bad in ("0,0", "a,b", "-1", ""):
        with pytest.raises(UserError, match="--gpus"):
            parse_gpus(bad)


def test_the_cgroup_quota_caps_the_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert P._cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert P._cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert P._cgroup_quota(tmp_path) == 0.5
    assert 0 < P.usable_cpus() <= (os.cpu_count() or 1)


def test_a_worker_process_takes_its_share_before_it_works(monkeypatch):
    """`_worker_entry` (the spawned process's first code): its GPU, threads and loaders set before `work` runs."""
    for name in ("CUDA_VISIBLE_DEVICES", "MEDTL_TORCH_THREADS", "MEDTL_LOADER_WORKERS"):
        monkeypatch.setenv(name, "unset-by-test")  # restored afterwards
    seen = {}

    def fake_work(**kwargs):
        from medtl.training.runtime import resolve_runtime

        runtime = resolve_runtime("cpu")
        seen.update(cuda=os.environ["CUDA_VISIBLE_DEVICES"], threads=runtime.threads, loaders=runtime.num_workers, kwargs=kwargs)

    monkeypatch.setattr("medtl.mlops.sweeps.worker.work", fake_work)
    before = torch.get_num_threads()
    try:
        local._worker_entry({"study": "s"}, Placement("GPU-bb22", 1, 3))
    finally:
        torch.set_num_threads(before)
    assert seen == {"cuda": "GPU-bb22", "threads": 1, "loaders": 3, "kwargs": {"study": "s"}}


def test_bad_worker_settings_are_one_line_exit_2_and_enqueue_nothing(tmp_path, capsys, monkeypatch, tracking_uri):
    study = tmp_path / "s.yaml"
    from medtl.mlops.sweeps.study import study_text

    study.write_text(study_text("s", seeds=(0,), max_epochs=1, image_size=32))
    storage = tmp_path / "optuna.db"
    monkeypatch.setattr(P, "visible_gpus", _gpus())
    monkeypatch.setattr(P, "usable_cpus", _cores(0.5))
    for argv, message in (
        (["sweep", "--study", str(study), "--workers", "auto"], "no GPU and no CPU to spare"),
        (["sweep", "--study", str(study), "--workers", "many"], "--workers must be 'auto' or a whole number"),
        (["worker", "--study", "s", "--gpus", "0"], "no visible GPU"),
    ):
        assert main([*argv, "--storage", f"sqlite:///{storage}", "--tracking-uri", tracking_uri]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    monkeypatch.setattr(P, "visible_gpus", _gpus("0", "1"))
    assert main(["worker", "--study", "s", "--gpus", "0,2", "--storage", f"sqlite:///{storage}", "--tracking-uri", tracking_uri]) == 2
    assert "GPU 2 does not exist; visible: 0, 1" in capsys.readouterr().err
    assert not storage.exists() and not (tmp_path / "mlflow.db").exists()  # nothing enqueued, nothing claimed


@pytest.mark.slow
def test_a_sweep_on_two_fake_gpus_runs_a_worker_on_each_share(tmp_path, monkeypatch, capsys, tracking_uri):
    """The real spawned workers: each takes its placement, and its runs record the threads and loaders it got."""
    from mlflow.tracking import MlflowClient

    from medtl.mlops.sweeps.study import study_text

    study = tmp_path / "gpus.yaml"
    study.write_text(study_text("gpus", seeds=(0, 1), max_epochs=1, patience=1, batch_size=16, image_size=32))
    monkeypatch.setattr(P, "visible_gpus", _gpus("0", "1"))
    monkeypatch.setattr(P, "usable_cpus", _cores(4))  # 2 cores a worker: 1 loader, 1 thread
    monkeypatch.delenv("MEDTL_TORCH_THREADS", raising=False)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert main(["sweep", "--study", str(study), "--storage", storage, "--tracking-uri", tracking_uri, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "[sweep] worker 0: GPU 0, 1 thread(s), 1 loader worker(s)" in out and "[sweep] worker 1: GPU 1," in out
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("medtl/gpus").experiment_id], "tags.`medtl.stage` = 'finetune'")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert {(r.data.params["torch_threads"], r.data.params["num_workers"]) for r in runs} == {("1", "1")}
