"""RSNA bone age: official splits, ages, and sex parsed from all three files."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.training.data import DataError, load_splits
from medtl.training.data.rsna_boneage import load, parse_male
from medtl.training.spec import Task


def test_official_splits_targets_and_sex(rsna_root):
    splits = load_splits(Task.RSNA_BONEAGE, str(rsna_root), image_size=32)
    assert splits.counts() == {"train": 12, "val": 6, "test": 6}
    assert splits.extra_names == ("male",)
    assert splits.train.ids[:2] == ("1377", "1378")
    assert splits.train.targets.dtype == np.float32
    np.testing.assert_allclose(splits.train.targets, [12.0 * (k + 1) for k in range(12)])
    np.testing.assert_allclose(splits.test.targets, [50.5 + k for k in range(6)])
    # bool column (train), "True"/"False" strings (validation), M/F (test xlsx)
    np.testing.assert_array_equal(splits.train.extras[:, 0], [float(k % 3 != 0) for k in range(12)])
    np.testing.assert_array_equal(splits.val.extras[:, 0], [float(k % 2) for k in range(6)])
    np.testing.assert_array_equal(splits.test.extras[:, 0], [1, 1, 0, 0, 0, 0])
    for _, part in splits.items():
        assert part.extras.dtype == np.float32 and len(np.unique(part.extras)) == 2
        assert part.images.shape[1:] == (32, 32) and part.images.dtype == np.uint8


def test_kaggle_training_csv_name(rsna_root):
    (rsna_root / "train.csv").rename(rsna_root / "boneage-training-dataset.csv")
    splits = load(rsna_root, image_size=16)
    assert len(splits.train) == 12


def test_parse_male_accepts_every_spelling_and_rejects_others():
    np.testing.assert_array_equal(
        parse_male([True, False, "True", "false", "M", "F", 1, 0], "x"), [1, 0, 1, 0, 1, 0, 1, 0]
    )
    with pytest.raises(DataError, match="sex value 'X'"):
        parse_male(["M", "X"], "x")


def test_missing_validation_csv_is_one_line_error(rsna_root):
    (rsna_root / "Bone Age Validation Set" / "Validation Dataset.csv").unlink()
    with pytest.raises(DataError) as err:
        load(rsna_root, image_size=16)
    assert "Validation Dataset.csv" in str(err.value) and "RSNA Bone Age layout" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_column_names_it(rsna_root):
    import pandas as pd

    frame = pd.read_csv(rsna_root / "train.csv").drop(columns=["male"])
    frame.to_csv(rsna_root / "train.csv", index=False)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['male'\]"):
        load(rsna_root, image_size=16)


def test_unreadable_image_is_skipped_and_counted(rsna_root):
    bad = rsna_root / "boneage-training-dataset" / "boneage-training-dataset" / "1380.png"
    bad.write_bytes(b"not a png")
    splits = load(rsna_root, image_size=16)
    assert len(splits.train) == 11 and "1380" not in splits.train.ids
    assert (
        splits.notes["skipped"].startswith("1 unreadable") and "1380.png" in splits.notes["skipped"]
    )


def test_sex_subgroup_follows_the_male_input_in_every_file(rsna_root):
    splits = load_splits(Task.RSNA_BONEAGE, str(rsna_root), image_size=16)
    assert splits.attribute_names == ("sex",)
    for _, part in splits.items():
        assert part.attributes["sex"] == tuple("male" if m else "female" for m in part.extras[:, 0])
    assert splits.test.attributes["sex"] == ("male", "male", "female", "female", "female", "female")  # M/F in the xlsx
    assert set(splits.train.attributes["sex"]) == {"male", "female"}
