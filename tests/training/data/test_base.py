"""SampleSet's subgroup attributes: checked, carried through subsets and fractions, outside the data digest."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medtl.training.data import DataError, SampleSet, Splits, load_splits
from medtl.training.spec import Task


def _set(n: int = 4, **kw) -> SampleSet:
    return SampleSet(np.zeros((n, 2, 2), np.uint8), np.arange(n), tuple(f"s{i}" for i in range(n)), **kw)


def test_attributes_are_checked_and_follow_a_subset():
    part = _set(attributes={"sex": ["male", "female", "", "male"], "view": ("1", "2", "1", "2")})
    assert part.attributes == {"sex": ("male", "female", "", "male"), "view": ("1", "2", "1", "2")}
    sub = part.subset(np.array([3, 1]))
    assert sub.ids == ("s3", "s1") and sub.attributes == {"sex": ("male", "female"), "view": ("2", "2")}
    assert _set(attributes={}).attributes is None and _set().subset(np.array([0])).attributes is None
    with pytest.raises(DataError, match="3 values for 4 samples"):
        _set(attributes={"sex": ("male", "female", "male")})
    with pytest.raises(DataError, match="lower-case letters"):
        _set(attributes={"Sex": ("male",) * 4})
    with pytest.raises(DataError, match="must hold strings"):
        _set(attributes={"view": (1, 2, 1, 2)})


def test_attributes_stay_out_of_the_data_digest():
    plain = Splits(_set(), _set(), _set(), source="x")
    labelled = dataclasses.replace(plain, test=_set(attributes={"sex": ("male",) * 4}))
    assert plain.digest == labelled.digest and labelled.attribute_names == ("sex",)


def test_demo_regression_sex_subgroup_through_the_registry_and_a_fraction():
    splits = load_splits(Task.DEMO_REGRESSION, "synthetic", image_size=16, fraction=0.25)
    assert splits.attribute_names == ("sex",) and len(splits.train) == 64
    for _, part in splits.items():
        assert part.attributes["sex"] == tuple("male" if m else "female" for m in part.extras[:, 0])
    assert set(splits.test.attributes["sex"]) == {"male", "female"}
    # the other demo tasks have no subgroup: nothing is invented
    assert load_splits(Task.DEMO_BINARY, "synthetic", image_size=16).attribute_names == ()
