"""COVID-19 Radiography: doubled folders, COVID vs Normal only, balanced, stratified split."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medtl.training.data import DataError, load_splits
from medtl.training.data.covid19 import load
from medtl.training.spec import Task

from .conftest import make_covid


def test_counts_labels_and_balance(covid_root):
    splits = load_splits(Task.COVID19, str(covid_root), image_size=32)
    assert splits.counts() == {"train": 12, "val": 2, "test": 2}
    for _, part in splits.items():  # stratified: both classes in every split
        assert np.bincount(part.targets, minlength=2).tolist() == [len(part) // 2] * 2
        for sample_id, label in zip(part.ids, part.targets, strict=True):
            assert sample_id.startswith(("Normal-", "COVID-")[label])
    assert splits.notes["balanced"] == "True"


@pytest.mark.parametrize(
    "inner",
    [
        "",
        "COVID-19_Radiography_Dataset",
        "COVID-19_Radiography_Dataset/COVID-19_Radiography_Dataset",
    ],
)
def test_outer_inner_and_doubled_folder(covid_root, inner):
    splits = load(covid_root / inner if inner else covid_root, image_size=16)
    assert sum(splits.counts().values()) == 16


def test_single_top_folder_and_no_balance(tmp_path):
    root = make_covid(tmp_path / "c", doubled=False)
    splits = load(root, image_size=16, balance=False)
    assert sum(splits.counts().values()) == 28
    assert np.bincount(np.concatenate([p.targets for _, p in splits.items()])).tolist() == [20, 8]
    assert not any(i.startswith(("Lung", "Viral")) for _, p in splits.items() for i in p.ids)


def test_missing_class_folder(covid_root):
    shutil.rmtree(
        covid_root / "COVID-19_Radiography_Dataset" / "COVID-19_Radiography_Dataset" / "Normal"
    )
    with pytest.raises(DataError) as err:
        load(covid_root, image_size=16)
    assert "COVID-19 Radiography layout" in str(err.value) and "\n" not in str(err.value)
