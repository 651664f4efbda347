"""Splitting helpers: deterministic, group-aware, stratified; balanced undersampling."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.training.data import DataError
from medtl.training.data.splits import balanced_undersample, env_flag, group_split, split_labels


def _random_groups(n=400, seed=0):
    rng = np.random.default_rng(seed)
    groups = [f"p{int(g)}" for g in rng.integers(0, 120, n)]
    labels = rng.integers(0, 2, n)
    return labels, groups


def test_group_split_never_shares_a_patient_and_covers_everything():
    labels, groups = _random_groups()
    parts = group_split(labels, groups, seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    owners = [{groups[i] for i in p} for p in parts]
    assert not owners[0] & owners[1] and not owners[0] & owners[2] and not owners[1] & owners[2]
    sizes = np.array([len(p) for p in parts]) / len(labels)
    np.testing.assert_allclose(sizes, [0.75, 0.125, 0.125], atol=0.06)


def test_group_split_is_deterministic_and_seeded():
    labels, groups = _random_groups()
    a, b, c = (group_split(labels, groups, seed=s) for s in (0, 0, 1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_stratified_without_groups():
    labels = np.array([0] * 80 + [1] * 16)
    train, val, test = group_split(labels, seed=0)
    assert np.bincount(labels[train]).tolist() == [60, 12]
    assert np.bincount(labels[val]).tolist() == [10, 2]
    assert np.bincount(labels[test]).tolist() == [10, 2]


def test_two_way_split_and_labels():
    parts = group_split(np.zeros(8), fractions=(0.75, 0.25, 0.0))
    assert [len(p) for p in parts] == [6, 2, 0]
    names = split_labels(8, parts)
    assert names.count("train") == 6 and names.count("val") == 2


def test_bad_fractions():
    with pytest.raises(DataError, match="fractions"):
        group_split([0, 1], fractions=(0.5, 0.5, 0.5))


def test_balanced_undersample_keeps_minority_and_is_seeded():
    labels = np.array([0] * 30 + [1] * 7 + [2] * 10)
    keep = balanced_undersample(labels, seed=0)
    assert np.bincount(labels[keep]).tolist() == [7, 7, 7]
    assert set(np.flatnonzero(labels == 1)) <= set(keep)
    assert np.array_equal(keep, balanced_undersample(labels, seed=0))
    assert not np.array_equal(keep, balanced_undersample(labels, seed=1))


def test_env_flag(monkeypatch):
    monkeypatch.setenv("X_FLAG", "off")
    assert env_flag("X_FLAG", True) is False
    monkeypatch.delenv("X_FLAG")
    assert env_flag("X_FLAG", True) is True
    monkeypatch.setenv("X_FLAG", "perhaps")
    with pytest.raises(DataError, match="X_FLAG"):
        env_flag("X_FLAG", True)
