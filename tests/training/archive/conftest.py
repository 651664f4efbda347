"""The burned-in text set, generated and ingested once per test session (the OCR is the slow part)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from medtl.training.archive import text_set
from medtl.training.archive.deid import path_key
from medtl.training.archive.ingest import ingest

SCAN_KEY = b"scan-test-key-0123456789"


@dataclass(frozen=True)
class Ingested:
    """One ingest of the text set: each case's outcome, read back through the source keys."""

    cases: list[text_set.TextCase]
    out: Path
    reasons: dict[str, str]  # case name -> skip reason (refused or skipped cases)
    verdicts: dict[str, str]  # case name -> the manifest's pixel_scan (converted cases)


def _ingest(cases: list[text_set.TextCase], src: Path, out: Path, mode: str) -> Ingested:
    ingest(src, out, key=SCAN_KEY, workers=2, progress=False, burned_in=mode, source_map=out.parent / f"{out.name}-map.csv")
    names = {path_key(SCAN_KEY, f"{c.name}.dcm"): c.name for c in cases}
    skipped = pd.read_csv(out / "skipped.csv")
    manifest = pd.read_parquet(out / "manifest.parquet")
    return Ingested(cases, out, {names[k]: r for k, r in zip(skipped["source_key"], skipped["reason"])},
                    {names[k]: v for k, v in zip(manifest["source_key"], manifest["pixel_scan"])})


@pytest.fixture(scope="session")
def text_cases() -> list[text_set.TextCase]:
    """36 identifying cases (3 modalities x 4 categories x 3 spellings) and their 72 clean and marker twins."""
    cases = text_set.text_cases()
    return cases + text_set.twins(cases)


@pytest.fixture(scope="session")
def text_archive(tmp_path_factory, text_cases) -> Path:
    root = tmp_path_factory.mktemp("text-set") / "src"
    for case in text_cases:
        text_set.write_case(case, root)
    return root


@pytest.fixture(scope="session")
def refused(tmp_path_factory, text_cases, text_archive) -> Ingested:
    """The whole set through ingest with the default scan (refuse)."""
    return _ingest(text_cases, text_archive, tmp_path_factory.mktemp("refuse") / "out", "refuse")


@pytest.fixture(scope="session")
def masked(tmp_path_factory, text_cases) -> Ingested:
    """The identifying cases through ingest with --burned-in mask."""
    cases = [c for c in text_cases if c.identifying]
    root = tmp_path_factory.mktemp("mask-set") / "src"
    for case in cases:
        text_set.write_case(case, root)
    return _ingest(cases, root, tmp_path_factory.mktemp("mask") / "out", "mask")
