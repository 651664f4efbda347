"""The benchmarks are scripts in benchmarks/, not a package: their tests import them by module name."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench_module():
    """`bench_module("gpu_check")`: the benchmark script as a module (benchmarks/ on sys.path meanwhile)."""
    sys.path.insert(0, str(BENCHMARKS))

    def load(name: str) -> ModuleType:
        return importlib.import_module(name)

    try:
        yield load
    finally:
        sys.path.remove(str(BENCHMARKS))
