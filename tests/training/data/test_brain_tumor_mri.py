"""Brain Tumor MRI: Training split 75/25 per class, Testing as test, class ids in task order."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medtl.training.data import DataError, load_splits
from medtl.training.data.brain_tumor_mri import load
from medtl.training.spec import TASKS, Task

TASK = Task.BRAIN_TUMOR_MRI


def test_counts_and_labels_per_split(brain_root):
    splits = load_splits(TASK, str(brain_root), image_size=32)
    assert splits.counts() == {"train": 24, "val": 8, "test": 12}
    assert np.bincount(splits.train.targets).tolist() == [6, 6, 6, 6]
    assert np.bincount(splits.val.targets).tolist() == [2, 2, 2, 2]
    assert np.bincount(splits.test.targets).tolist() == [3, 3, 3, 3]
    classes = TASKS[TASK].classes
    for name, part in splits.items():
        for sample_id, label in zip(part.ids, part.targets, strict=True):
            part_folder, class_folder, _ = sample_id.split("/")
            assert class_folder == classes[label]
            assert part_folder == ("Testing" if name == "test" else "Training")
    assert splits.train.images.shape == (24, 32, 32)


def test_gray_and_rgb_jpegs_decode_to_gray(brain_root):
    splits = load(brain_root, image_size=40)
    # 36x40 images: 2 padded rows top and bottom, content in between
    assert (splits.test.images[:, 0, :] == 0).all() and (splits.test.images[:, 20, :] > 0).any()


def test_found_one_level_down(tmp_path):
    from .conftest import make_brain

    make_brain(tmp_path / "archive" / "brain-tumor", n_train=4, n_test=1)
    assert load(tmp_path / "archive", image_size=16).counts() == {"train": 12, "val": 4, "test": 4}


def test_missing_class_folder_is_one_line_error(brain_root):
    shutil.rmtree(brain_root / "Testing" / "pituitary")
    with pytest.raises(DataError) as err:
        load(brain_root, image_size=16)
    assert "pituitary" in str(err.value) and "Brain Tumor MRI layout" in str(err.value)
    assert "\n" not in str(err.value)


def test_fractions_nested_stratified_train_only(brain_root):
    full = load_splits(TASK, str(brain_root), image_size=16)
    small = load_splits(TASK, str(brain_root), image_size=16, fraction=0.25)
    half = load_splits(TASK, str(brain_root), image_size=16, fraction=0.5)
    assert np.bincount(small.train.targets).tolist() == [2, 2, 2, 2]  # round(6 * 0.25) per class
    assert np.bincount(half.train.targets).tolist() == [3, 3, 3, 3]
    assert set(small.train.ids) < set(half.train.ids) < set(full.train.ids)
    assert small.val.ids == full.val.ids and small.test.ids == full.test.ids
