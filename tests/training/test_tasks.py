"""The predictions table: each task type's columns first, unchanged, then one `subgroup_<name>` column a subgroup."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from medtl.training.spec import TASKS, Task, TaskInfo, TaskType
from medtl.training.tasks import ReconstructionAdapter, make_adapter, with_subgroups

BEFORE = {  # the columns every reader relies on, in this order
    Task.DEMO_BINARY: ["id", "target", "prediction", "prob_positive"],
    Task.DEMO_MULTICLASS: ["id", "target", "prediction", "prob_disc", "prob_square", "prob_ring", "prob_stripes"],
    Task.DEMO_REGRESSION: ["id", "target", "prediction"],
    Task.DEMO_SEGMENTATION: ["id", "target_pixels", "predicted_pixels", "dice"],
}


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.mark.parametrize("task", list(BEFORE))
def test_subgroup_columns_come_after_the_task_types_columns(task, tmp_path):
    info = TASKS[task]
    adapter = make_adapter(info, np.array([1.0, 3.0]))
    shape = (16, 16) if info.type is TaskType.SEGMENTATION else ()
    predictions = adapter.postprocess(torch.zeros(3, info.num_outputs, *shape))
    targets = np.zeros((3, *shape), np.uint8 if shape else np.int64)
    ids = ("a", "b", "c")
    adapter.write_predictions(tmp_path / "plain.csv", ids, targets, predictions)
    plain = _read(tmp_path / "plain.csv")
    assert plain[0] == BEFORE[task]
    attributes = {"view": ("1", "", "2"), "sex": ("male", "female", "male")}
    adapter.write_predictions(tmp_path / "grouped.csv", ids, targets, predictions, attributes)
    grouped = _read(tmp_path / "grouped.csv")
    assert grouped[0] == [*plain[0], "subgroup_sex", "subgroup_view"]  # appended, names sorted
    assert [row[: len(plain[0])] for row in grouped] == plain  # nothing before them changed
    assert [row[-2:] for row in grouped[1:]] == [["male", "1"], ["female", ""], ["male", "2"]]  # unknown: empty


def test_reconstruction_rows_carry_subgroups_too(tmp_path):
    adapter = ReconstructionAdapter(TaskInfo(TaskType.SEGMENTATION))
    images = np.full((2, 4, 4), 255, np.uint8)
    adapter.write_predictions(tmp_path / "p.csv", ("x", "y"), images, np.ones((2, 4, 4), np.float32),
                              {"modality": ("CT", "MR"), "body_part": ("chest", "")})
    assert _read(tmp_path / "p.csv") == [
        ["id", "mse", "subgroup_body_part", "subgroup_modality"], ["x", "0.0", "chest", "CT"], ["y", "0.0", "", "MR"]
    ]


def test_subgroups_must_match_the_rows():
    header, rows = ["id"], [["a"], ["b"]]
    assert with_subgroups(header, rows, None) == (header, rows) and with_subgroups(header, rows, {}) == (header, rows)
    with pytest.raises(ValueError, match="subgroup 'sex' has 1 values for 2 rows"):
        with_subgroups(header, rows, {"sex": ("male",)})
