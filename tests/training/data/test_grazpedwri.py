"""GRAZPEDWRI-DX: 16-bit PNGs at full depth, balanced osteopenia labels, split by patient."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtl.training.data import DataError, load_splits
from medtl.training.data.generic import fit, read_gray
from medtl.training.data.grazpedwri import load, read_flags
from medtl.training.spec import Task

TASK = Task.GRAZPEDWRI_OSTEOPENIA


def _all(splits):
    return np.concatenate([p.targets for _, p in splits.items()])


def test_balanced_counts_and_patient_split(graz_root):
    splits = load_splits(TASK, str(graz_root), image_size=32)
    # 12 osteopenia images of 48: the 36 others are undersampled to 12
    assert splits.counts() == {"train": 18, "val": 3, "test": 3}
    assert np.bincount(_all(splits)).tolist() == [12, 12]
    assert splits.train.targets.dtype == np.int64
    groups = {name: set(part.groups) for name, part in splits.items()}
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    for _, part in splits.items():  # a patient's label is the csv's flag
        frame = pd.read_csv(graz_root / "dataset.csv", dtype={"filestem": str})
        flags = dict(zip(frame.filestem, frame.osteopenia.fillna(0).astype(int), strict=True))
        assert [flags[i] for i in part.ids] == part.targets.tolist()


def test_split_is_deterministic_and_seeded(graz_root):
    a = load(graz_root, image_size=16, seed=0)
    b = load(graz_root, image_size=16, seed=0)
    c = load(graz_root, image_size=16, seed=1)
    assert a.digest == b.digest and a.train.ids == b.train.ids
    assert a.digest != c.digest


def test_balance_switches(graz_root, monkeypatch):
    assert (
        len(
            np.concatenate(
                [p.targets for _, p in load(graz_root, image_size=16, balance=False).items()]
            )
        )
        == 48
    )
    monkeypatch.setenv("MEDTL_GRAZPEDWRI_BALANCE", "0")
    assert sum(load(graz_root, image_size=16).counts().values()) == 48
    assert sum(load(graz_root, image_size=16, balance=True).counts().values()) == 24
    monkeypatch.setenv("MEDTL_GRAZPEDWRI_BALANCE", "maybe")
    with pytest.raises(DataError, match="MEDTL_GRAZPEDWRI_BALANCE"):
        load(graz_root, image_size=16)


def test_flags_empty_means_zero():
    assert read_flags([1, "", None, float("nan"), "1", 0]).tolist() == [1, 0, 0, 0, 1, 0]
    with pytest.raises(DataError):
        read_flags(["yes"])


def test_16_bit_low_byte_detail_is_kept(tmp_path):
    # Same high byte (0x12), different low bytes: the high-byte shortcut makes them equal.
    values = np.full((8, 8), 0x1210, np.uint16)
    values[:, 4:] = 0x12F0
    Image.fromarray(values).save(tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").mode.startswith("I")
    image = fit(read_gray(tmp_path / "x.png"), 8)
    assert len(np.unique(values >> 8)) == 1
    assert image[0, 0] != image[0, 7] and (image[0, 0], image[0, 7]) == (0, 255)


def test_16_bit_detail_through_the_loader(graz_root):
    stem = pd.read_csv(graz_root / "dataset.csv").filestem[0]
    values = np.full((48, 36), 0x3400, np.uint16)
    values[:, 18:] = 0x3480
    Image.fromarray(values).save(graz_root / "images" / f"{stem}.png")
    splits = load(graz_root, image_size=36, balance=False)
    part = next(p for _, p in splits.items() if stem in p.ids)
    image = part.images[part.ids.index(stem)]
    assert image[24, 10] < 20 and image[24, 25] > 235


def test_fractions_are_stratified_nested_and_train_only(graz_root):
    full = load_splits(TASK, str(graz_root), image_size=16)
    half = load_splits(TASK, str(graz_root), image_size=16, fraction=0.5)
    quarter = load_splits(TASK, str(graz_root), image_size=16, fraction=0.25)
    assert set(quarter.train.ids) <= set(half.train.ids) <= set(full.train.ids)
    assert np.bincount(half.train.targets).tolist() == [
        round(n / 2) for n in np.bincount(full.train.targets)
    ]
    assert half.val.ids == full.val.ids and half.test.ids == full.test.ids
    assert half.notes["fraction"] == "0.5"


def test_missing_csv_and_columns(tmp_path, graz_root):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        load(tmp_path / "empty", image_size=16)
    message = str(err.value)
    assert (
        message.startswith("no dataset.csv in")
        and "GRAZPEDWRI-DX layout" in message
        and "\n" not in message
    )
    frame = pd.read_csv(graz_root / "dataset.csv").drop(columns=["osteopenia"])
    frame.to_csv(graz_root / "dataset.csv", index=False)
    with pytest.raises(DataError, match="osteopenia"):
        load(graz_root, image_size=16)


def test_unreadable_and_missing_images_are_counted(graz_root):
    files = sorted((graz_root / "images").glob("*.png"))
    files[0].write_bytes(files[0].read_bytes()[:60])  # truncated PNG
    files[1].unlink()
    splits = load(graz_root, image_size=16, balance=False)
    assert sum(splits.counts().values()) == 46
    assert splits.notes["skipped"].startswith("2 unreadable")


def _expected(stem: str) -> dict[str, str]:
    """The fixture's subgroups of an image: projection 1 or 2 by study (empty for patient 1005), sex by patient."""
    patient, study = int(stem.split("_")[0]) - 1000, int(stem.split("_")[2]) - 1
    return {"projection": "" if patient == 5 else str(1 + study % 2), "sex": "male" if patient % 2 else "female"}


def test_projection_and_sex_subgroups_as_written_in_the_file(graz_root):
    splits = load(graz_root, image_size=16, balance=False)
    assert splits.attribute_names == ("projection", "sex")
    for _, part in splits.items():
        assert [{n: part.attributes[n][k] for n in ("projection", "sex")} for k in range(len(part))] == [
            _expected(i) for i in part.ids
        ]
    values = {v for _, part in splits.items() for v in part.attributes["projection"]}
    assert values == {"1", "2", ""}  # as written: "2", not 2.0, though a cell is empty


def test_subgroups_survive_the_training_fraction(graz_root):
    part = load_splits(TASK, str(graz_root), image_size=16, fraction=0.5).train
    assert 0 < len(part) < 18
    assert [part.attributes["projection"][k] for k in range(len(part))] == [_expected(i)["projection"] for i in part.ids]


def test_subgroups_only_where_the_file_has_the_columns(graz_root):
    csv = graz_root / "dataset.csv"
    frame = pd.read_csv(csv, dtype=str)
    frame.drop(columns=["projection"]).to_csv(csv, index=False)
    assert load(graz_root, image_size=16).attribute_names == ("sex",)
    frame.drop(columns=["projection", "gender"]).to_csv(csv, index=False)
    splits = load(graz_root, image_size=16)
    assert splits.attribute_names == () and splits.test.attributes is None
