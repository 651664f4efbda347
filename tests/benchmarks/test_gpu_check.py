"""benchmarks/gpu_check.py runs first time on a GPU: every part exercised here on the CPU at tiny sizes."""

from __future__ import annotations

import re

import pytest
import torch


@pytest.fixture(scope="module")
def gpu_check(bench_module):
    return bench_module("gpu_check")


def test_without_cuda_it_says_so_in_one_line_and_exits_0(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr()
    assert out.out.strip().splitlines() == [gpu_check.NEEDS_CUDA] and out.err == ""
    assert gpu_check.section() is None  # `run.py --only gpu` keeps the section's previous text


def test_the_defaults_are_the_issues_measurement(gpu_check):
    settings = gpu_check.Settings("cuda")
    assert (settings.arch, settings.size, settings.batch) == ("resnet50", 224, 64)


@pytest.mark.slow
def test_every_part_runs_on_the_cpu_and_prints_the_table(gpu_check, capsys):
    assert gpu_check.main(["--device", "cpu", "--smoke"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| measure")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| bare PyTorch (bf16, channels-last, fused AdamW, batch resident)",
        "| medtl loop (train_epoch, data from the cache)",
        "| data pipeline alone (cache → device)",
    ]
    for row in rows:
        rate = float(row.split(" | ")[1])
        assert rate > 0, row  # each measured something
    assert "resnet50 at 32², batch 4" in out and "peak RSS MiB (CPU)" in out
    assert re.search(r"Pipeline / loop consumption: [\d.]+×", out)


def test_the_cached_dataset_is_read_from_the_cache(gpu_check, tmp_path):
    settings = gpu_check.Settings("cpu", **gpu_check.SMOKE)
    splits = gpu_check.cached_dataset(settings, tmp_path)
    assert isinstance(splits.train.images, __import__("numpy").memmap)  # memory-mapped cache entry, not decoded
    assert splits.train.images.shape[1:] == (32, 32) and len(splits.train) + len(splits.val) + len(splits.test) == 16
    assert any((tmp_path / "cache").rglob("*"))
