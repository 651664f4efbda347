"""A user's own data: class folders, CSVs, image/mask pairs; shared resizing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtl.training.data import DataError
from medtl.training.data.generic import (
    fit,
    load_class_folders,
    load_csv_classification,
    load_csv_regression,
    load_image_mask_pairs,
)


def _png(path, value, shape=(20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


def test_fit_keeps_aspect_and_pads_with_zeros():
    out = fit(np.full((20, 40), 200, np.uint8), 16)
    assert out.shape == (16, 16) and out.dtype == np.uint8
    assert (out[:4] == 0).all() and (out[12:] == 0).all() and (out[4:12] == 200).all()
    mask = fit(np.eye(8, dtype=np.uint8), 16, nearest=True)
    assert set(np.unique(mask)) == {0, 1} and mask.sum() == 32


def test_class_folders(tmp_path):
    for c, name in enumerate(("cat", "dog")):
        for i in range(8):
            _png(tmp_path / name / f"{name}{i}.png", 50 + 100 * c)
    splits = load_class_folders(tmp_path, image_size=16)
    assert splits.counts() == {"train": 12, "val": 2, "test": 2}
    assert splits.notes["classes"] == "cat,dog"
    assert all(
        i.startswith(("cat/", "dog/")[t])
        for i, t in zip(splits.train.ids, splits.train.targets, strict=True)
    )


def test_csv_classification_by_patient(tmp_path):
    rows = []
    for i in range(32):
        _png(tmp_path / "img" / f"{i}.png", i)
        rows.append(
            {
                "path": f"img/{i}.png",
                "label": "yes" if i % 4 == 0 else "no",
                "patient_id": f"p{i // 2}",
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    splits = load_csv_classification(tmp_path / "labels.csv", image_size=16)
    groups = [set(p.groups) for _, p in splits.items()]
    assert not groups[0] & groups[1] and not groups[0] & groups[2] and not groups[1] & groups[2]
    assert sum(splits.counts().values()) == 32 and splits.notes["classes"] == "no,yes"
    with pytest.raises(DataError, match="lacks column"):
        pd.DataFrame({"file": ["a"], "label": [1]}).to_csv(tmp_path / "bad.csv", index=False)
        load_csv_classification(tmp_path / "bad.csv", image_size=16)


def test_csv_regression_with_extras(tmp_path):
    rows = []
    for i in range(16):
        _png(tmp_path / f"{i}.png", i * 10)
        rows.append({"path": f"{i}.png", "target": i * 1.5, "male": i % 2, "height": 100 + i})
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    splits = load_csv_regression(tmp_path / "t.csv", image_size=16)
    assert splits.extra_names == ("male", "height") and splits.train.extras.shape == (12, 2)
    for sample_id, target, extra in zip(
        splits.train.ids, splits.train.targets, splits.train.extras, strict=True
    ):
        i = int(sample_id.split(".")[0])
        assert target == pytest.approx(i * 1.5) and extra.tolist() == [i % 2, 100 + i]


def test_image_mask_pairs(tmp_path):
    for i in range(8):
        _png(tmp_path / "images" / f"s{i}.png", 90, (16, 16))
        mask = np.zeros((16, 16), np.uint8)
        mask[4:8, 4:8] = 255
        Image.fromarray(mask).save(
            (tmp_path / "masks").mkdir(exist_ok=True) or tmp_path / "masks" / f"s{i}.png"
        )
    _png(tmp_path / "images" / "lonely.png", 1, (16, 16))
    splits = load_image_mask_pairs(tmp_path, image_size=16)
    assert (
        sum(splits.counts().values()) == 8 and "1 images without a mask" in splits.notes["unpaired"]
    )
    assert splits.train.targets.dtype == np.uint8 and splits.train.targets[0].sum() == 16
    with pytest.raises(DataError, match="images/ and masks/"):
        load_image_mask_pairs(tmp_path / "images", image_size=16)


def test_deidentified_sample_ids_carry_no_file_name(tmp_path, monkeypatch):
    from medtl.training.archive.deid import KEY_ENV
    from medtl.training.data.sample_ids import sample_id_map, write_deid_marker

    monkeypatch.setenv("MEDTL_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "data"
    for c, name in enumerate(("normal", "fracture")):
        for i in range(8):
            _png(root / name / f"KOWALCZYK_MARGARETHE_{i}.png", 50 + 100 * c)
    plain = load_class_folders(root, image_size=16)
    assert any("KOWALCZYK" in i for i in plain.test.ids)
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(DataError, match=KEY_ENV):
        write_deid_marker(root)
    monkeypatch.setenv(KEY_ENV, "a" * 32)
    write_deid_marker(root)
    keyed = load_class_folders(root, image_size=16)
    ids = [i for part in (keyed.train, keyed.val, keyed.test) for i in part.ids]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and len(set(ids)) == 16
    assert keyed.counts() == plain.counts()  # the same samples, splits and labels, renamed
    np.testing.assert_array_equal(keyed.test.targets, plain.test.targets)
    assert [sample_id_map()[i] for i in keyed.test.ids] == list(plain.test.ids)
    assert load_class_folders(root, image_size=16).test.ids == keyed.test.ids  # stable: same key, same ids
    monkeypatch.setenv(KEY_ENV, "b" * 32)
    with pytest.raises(DataError, match="different key"):
        load_class_folders(root, image_size=16)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(DataError, match=KEY_ENV):  # never falls back to file names
        load_class_folders(root, image_size=16)


def _subgroup_csv(tmp_path, n=24, **columns):
    rows = []
    for i in range(n):
        _png(tmp_path / "img" / f"{i}.png", 5 * i)
        rows.append({"path": f"img/{i}.png", "label": "yes" if i % 2 else "no", "target": 2.0 * i,
                     "age": 10 + i, "patient_id": f"p{i // 2}", **{k: v(i) for k, v in columns.items()}})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path / "labels.csv"


def test_csv_subgroup_columns_become_attributes_as_written(tmp_path):
    csv = _subgroup_csv(tmp_path, subgroup_site=lambda i: "north" if i < 12 else "south",
                        subgroup_view=lambda i: "" if i == 3 else str(1 + i % 3))
    splits = load_csv_classification(csv, image_size=16)
    assert splits.attribute_names == ("site", "view")
    for _, part in splits.items():
        for k, sample_id in enumerate(part.ids):
            i = int(sample_id.removeprefix("img/").removesuffix(".png"))
            assert part.attributes["site"][k] == ("north" if i < 12 else "south")
            assert part.attributes["view"][k] == ("" if i == 3 else str(1 + i % 3))  # "2", never 2.0
    pd.read_csv(csv).drop(columns=["label"]).to_csv(tmp_path / "regression.csv", index=False)
    regression = load_csv_regression(tmp_path / "regression.csv", image_size=16)
    assert regression.extra_names == ("age",) and regression.train.extras.shape[1] == 1  # never an input
    assert regression.attribute_names == ("site", "view")


@pytest.mark.parametrize(
    ("column", "values", "match"),
    [
        ("subgroup_record", lambda i: f"r{i}", "24 distinct values in 24 rows"),
        ("subgroup_patient", lambda i: f"p{i // 2}", "repeats patient_id"),
        ("subgroup_Site", lambda i: "a", "lower-case letters"),
    ],
)
def test_csv_subgroup_that_could_identify_someone_is_refused(tmp_path, column, values, match):
    csv = _subgroup_csv(tmp_path, **{column: values})
    with pytest.raises(DataError, match=match):
        load_csv_classification(csv, image_size=16)
