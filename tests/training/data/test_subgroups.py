"""Subgroup values: sex labels, cells as written, and the refusal of a column that is an identifier."""

from __future__ import annotations

import math

import pytest

from medtl.training.data import DataError
from medtl.training.data.subgroups import (
    MAX_VALUES,
    check_subgroup,
    csv_subgroups,
    sex_label,
    texts,
)


def test_values_as_written_and_empty_cells_unknown():
    assert [sex_label(1.0), sex_label(0.0)] == ["male", "female"]
    assert texts(["2", " lateral ", None, math.nan, 3]) == ["2", "lateral", "", "", "3"]


def test_a_subgroup_has_few_repeated_values():
    check_subgroup("site", ["a", "b"] * 30, "x.csv")  # 2 values in 60 rows
    check_subgroup("view", ["1", "2", "3"], "x.csv")  # 3 rows: too few to call unique values an identifier
    with pytest.raises(DataError, match=f"{MAX_VALUES + 1} distinct values in {2 * (MAX_VALUES + 1)} rows"):
        check_subgroup("ward", [f"w{i}" for i in range(MAX_VALUES + 1)] * 2, "x.csv")
    with pytest.raises(DataError, match="x.csv: column 'subgroup_code' has 10 distinct values in 10 rows"):
        check_subgroup("code", [str(i) for i in range(10)], "x.csv")


def test_csv_columns_by_prefix_and_patient_ids_refused():
    columns = {"path": ["a", "b", "c", "d"], "patient_id": ["p1", "p1", "p2", "p2"], "subgroup_site": ["n", "n", "s", None]}
    assert csv_subgroups(columns, "x.csv") == {"site": ["n", "n", "s", ""]}
    with pytest.raises(DataError, match="repeats patient_id"):
        csv_subgroups({**columns, "subgroup_who": ["p1", "p1", "p2", "p2"]}, "x.csv")
