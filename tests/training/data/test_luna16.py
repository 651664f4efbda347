"""LUNA16: slices with nodule masks where the annotations say, split by series."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.training.data import DataError, load_splits
from medtl.training.data.luna16 import load, series_split, sphere_mask
from medtl.training.spec import Task


def _sample(splits, sample_id):
    for _, part in splits.items():
        if sample_id in part.ids:
            i = part.ids.index(sample_id)
            return part.images[i], part.targets[i]
    raise KeyError(sample_id)


@pytest.mark.parametrize("mode", ["sphere", "threshold"])
def test_centre_voxel_in_mask_on_its_slice(luna, mode):
    splits = load(luna["root"], image_size=32, mask=mode)
    assert splits.notes["mask"] == mode
    for uid, z, y, x, _ in luna["nodules"]:
        image, mask = _sample(splits, f"{uid}_z{z:04d}")
        assert mask.dtype == np.uint8 and mask[y, x] == 1
        assert image[y, x] == 133  # 40 HU -> (40 + 1000) / 2000 * 255
        assert image[0, 0] <= 4  # about -1000 HU -> 0
        assert mask[0, 0] == 0


def test_masks_resized_with_nearest_neighbour(luna):
    splits = load_splits(Task.LUNA16, str(luna["root"]), image_size=64)
    for uid, z, y, x, _ in luna["nodules"]:
        _, mask = _sample(splits, f"{uid}_z{z:04d}")
        assert set(np.unique(mask)) <= {0, 1} and mask[2 * y, 2 * x] == 1


def test_split_by_series_every_tenth_to_validation(luna):
    splits = load(luna["root"], image_size=16)
    uids = sorted(n[0] for n in luna["nodules"])
    series = {name: set(part.groups) for name, part in splits.items()}
    assert series["val"] == {uids[0]} and series["test"] == {uids[5]}
    assert series["train"] == set(uids) - {uids[0], uids[5]}
    for _, part in splits.items():
        assert all(i.startswith(g) for i, g in zip(part.ids, part.groups, strict=True))
    assert [series_split(i) for i in range(11)].count("val") == 2
    rotated = load(luna["root"], image_size=16, seed=1)
    assert set(rotated.val.groups) == {uids[1]}


def test_sphere_respects_spacing():
    mask = sphere_mask((10, 40, 40), np.array([20.0, 20.0, 5.0]), 10.0, (0.5, 0.5, 2.5))
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    assert zs.tolist() == [3, 4, 5, 6, 7]  # radius 5 mm = 2 slices of 2.5 mm each way
    assert mask[5, 20, 10] and not mask[5, 20, 9]  # 10 voxels of 0.5 mm in-plane


def test_bad_layouts(tmp_path, luna):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no annotations.csv .*LUNA16 layout"):
        load(tmp_path / "empty", image_size=16)
    with pytest.raises(DataError, match="mask mode 'blob'"):
        load(luna["root"], image_size=16, mask="blob")


def test_unreadable_volume_is_skipped(luna):
    uid = luna["nodules"][3][0]
    raw = next(luna["root"].rglob(f"{uid}.raw"))
    raw.write_bytes(raw.read_bytes()[:100])
    splits = load(luna["root"], image_size=16)
    assert uid not in {g for _, p in splits.items() for g in p.groups}
    assert splits.notes["skipped"].startswith("1 unreadable volumes")
