"""GRAZPEDWRI-DX osteopenia: 16-bit wrist radiographs, balanced by undersampling, split by patient.

As in the study the majority class is undersampled (seeded) to the size of the minority class
before splitting 75/12.5/12.5 — here by `patient_id`, so no patient appears in two splits. Each
image carries the subgroup attributes `projection` (the file's `projection` value as written, e.g.
`1`, `2`) and `sex` (`male` / `female` from `gender`), empty where the file has none. Turn the
undersampling off with `BALANCE = False`, `MEDTL_GRAZPEDWRI_BALANCE=0` or `load(..., balance=False)`
(the argument wins over the variable, the variable over the module default).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtl.training.data import cache
from medtl.training.data.base import DataError, Splits
from medtl.training.data.generic import Record, assemble_balanced, index_images
from medtl.training.data.splits import env_flag
from medtl.training.data.subgroups import texts
from medtl.training.spec import TASKS, Task

BALANCE = True
BALANCE_ENV = "MEDTL_GRAZPEDWRI_BALANCE"
COLUMNS = (
    "filestem",
    "patient_id",
    "study_number",
    "timehash",
    "gender",
    "age",
    "laterality",
    "projection",
    "initial_exam",
    "ao_classification",
    "cast",
    "diagnosis_uncertain",
    "osteopenia",
    "fracture_visible",
    "metal",
    "pixel_spacing",
    "device_manufacturer",
)
REQUIRED = ("filestem", "patient_id", "osteopenia")
SEXES = {"m": "male", "f": "female"}


def _layout(root: Path) -> str:
    return f"expected the GRAZPEDWRI-DX layout: dataset.csv + images/<filestem>.png (16-bit PNG) in {root}"


def _find_csv(root: Path) -> Path:
    for candidate in (root / "dataset.csv", *sorted(root.glob("*/dataset.csv"))):
        if candidate.is_file():
            return candidate
    raise DataError(f"no dataset.csv in {root}; {_layout(root)}")


def read_flags(values) -> np.ndarray:
    """GRAZPEDWRI-DX flag column as int64: `1` means set, empty (NaN) or `0` means not set.

    Raises:
        DataError: a value is neither empty, 0 nor 1.
    """
    out = np.zeros(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        text = "" if value is None else str(value).strip().lower()
        if text in {"", "nan", "0", "0.0"}:
            continue
        if text in {"1", "1.0"}:
            out[i] = 1
        else:
            raise DataError(f"dataset.csv: osteopenia flag {value!r} is neither 1 nor empty")
    return out


def _subgroups(frame) -> dict[str, list[str]]:
    """`projection` as written in the file and `sex` (`male`/`female`, from `gender`), where the columns exist."""
    out = {}
    if "projection" in frame.columns:
        out["projection"] = texts(frame["projection"])
    if "gender" in frame.columns:
        out["sex"] = [SEXES.get(v.lower(), v.lower()) for v in texts(frame["gender"])]
    return out


def load(
    path: Path | None,
    *,
    task: Task = Task.GRAZPEDWRI_OSTEOPENIA,
    image_size: int,
    seed: int = 0,
    balance: bool | None = None,
) -> Splits:
    """Read GRAZPEDWRI-DX under `path`: osteopenia (1) vs none (0), split by patient.

    Args:
        path: folder holding `dataset.csv` (or one folder above it) and the PNGs anywhere below.
        task: the registry's task (grazpedwri-osteopenia).
        image_size: output side in pixels.
        seed: data seed for undersampling and splitting.
        balance: undersample the majority class; None reads `MEDTL_GRAZPEDWRI_BALANCE`, else `BALANCE`.

    Raises:
        DataError: dataset.csv, its columns or the images are missing.
    """
    import pandas as pd

    if path is None or not Path(path).is_dir():
        raise DataError(
            f"grazpedwri-osteopenia needs a folder, got {path}; expected dataset.csv + images/"
        )
    root = Path(path)
    csv = _find_csv(root)
    frame = pd.read_csv(
        csv, dtype={"filestem": str, "patient_id": str, "projection": str, "gender": str}
    )
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(f"dataset.csv lacks column(s) {missing}; {_layout(root)}")
    frame = (
        frame.dropna(subset=["filestem"])
        .sort_values("filestem", kind="stable")
        .reset_index(drop=True)
    )
    labels = read_flags(frame["osteopenia"].tolist())
    subgroups = _subgroups(frame)
    do_balance = balance if balance is not None else env_flag(BALANCE_ENV, BALANCE)
    index = index_images(csv.parent, (".png",))
    if not index:
        raise DataError(f"no PNG images under {csv.parent}; {_layout(root)}")
    every = []
    for i in range(len(frame)):
        stem = str(frame.at[i, "filestem"]).strip()
        found = index.get(stem)
        every.append(
            Record(
                id=stem,
                path=found[0] if found else csv.parent / "images" / f"{stem}.png",
                split="train",
                target=int(labels[i]),
                group=str(frame.at[i, "patient_id"]).strip(),
                attributes={name: values[i] for name, values in subgroups.items()},
            )
        )
    digest = cache.source_digest(root, [csv, *(r.path for r in every)])  # the whole download
    return assemble_balanced(every, seed, balance=do_balance, grouped=True, kind="grazpedwri", root=root,
                             task_type=TASKS[task].type, image_size=image_size, digest=digest)
