"""RSNA Pediatric Bone Age: official train/validation/test splits, age in months, sex as an extra input and a subgroup."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medtl.training.data import cache
from medtl.training.data.base import DataError, Splits
from medtl.training.data.generic import Record, assemble, index_images
from medtl.training.data.subgroups import sex_label
from medtl.training.spec import TASKS, Task

TRAIN_FILES = ("train.csv", "boneage-training-dataset.csv")
VAL_FILE = "Validation Dataset.csv"
TEST_FILE = "Bone age ground truth.xlsx"
LAYOUT = (
    "expected the RSNA Bone Age layout: train.csv (or boneage-training-dataset.csv) with id,boneage,male "
    "+ boneage-training-dataset/<id>.png, 'Validation Dataset.csv' with Image ID,male,Bone Age (months), "
    "'Bone age ground truth.xlsx' with Case ID,Sex,Ground truth bone age (months), and their <id>.png"
)
_MALE = {"true", "1", "1.0", "m", "male", "yes"}
_FEMALE = {"false", "0", "0.0", "f", "female", "no"}


def parse_male(values, where: str) -> np.ndarray:
    """1.0 for male, 0.0 for female from bools, `True`/`False` strings, 1/0 or `M`/`F`.

    Raises:
        DataError: a value is none of these (names the file and the value).
    """
    out = np.empty(len(values), dtype=np.float32)
    for i, value in enumerate(values):
        text = str(value).strip().lower()
        if text in _MALE:
            out[i] = 1.0
        elif text in _FEMALE:
            out[i] = 0.0
        else:
            raise DataError(f"{where}: sex value {value!r} is not one of True/False, 1/0, M/F")
    return out


def _find(root: Path, name: str) -> Path | None:
    """Shallowest file called `name` under `root` (ties broken by path)."""
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if name in filenames:
            hits.append(Path(dirpath) / name)
    return min(hits, key=lambda p: (len(p.parts), str(p))) if hits else None


def _table(path: Path, columns: dict[str, str]):
    import pandas as pd

    if path.suffix == ".xlsx":
        try:
            frame = pd.read_excel(path, engine="openpyxl")
        except ImportError as exc:
            raise DataError(
                f"reading {path.name} needs openpyxl: pip install openpyxl ({exc})"
            ) from None
    else:
        frame = pd.read_csv(path)
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path.name} lacks column(s) {missing}; {LAYOUT}")
    return frame.rename(columns=columns)[list(columns.values())].dropna(subset=["id"])


def _image_for(stem: str, index: dict[str, list[Path]], hint: str, root: Path) -> Path:
    candidates = index.get(stem, [])
    preferred = [p for p in candidates if hint in p.relative_to(root).as_posix().lower()]
    chosen = preferred or candidates
    return chosen[0] if chosen else root / f"{stem}.png"  # absent: counted as skipped


def _records(
    frame, split: str, index: dict[str, list[Path]], root: Path, where: str
) -> list[Record]:
    male = parse_male(frame["male"].tolist(), where)
    try:
        ages = frame["boneage"].astype(float).to_numpy()
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: bone age must be numeric ({exc})") from None
    hint = {"train": "train", "val": "valid", "test": "test"}[split]
    records = []
    for raw_id, age, sex in zip(frame["id"].tolist(), ages, male, strict=True):
        stem = (
            str(int(raw_id))
            if isinstance(raw_id, float) and raw_id.is_integer()
            else str(raw_id).strip()
        )
        path = _image_for(stem, index, hint, root)
        records.append(
            Record(
                id=stem, path=path, split=split, target=float(age), extras=(float(sex),),
                attributes={"sex": sex_label(float(sex))},
            )
        )
    return records


def load(
    path: Path | None, *, task: Task = Task.RSNA_BONEAGE, image_size: int, seed: int = 0
) -> Splits:
    """Read the RSNA bone-age download under `path` with its official splits.

    Images are found by `<id>.png` anywhere under `path` (preferring folders whose name says
    train / valid / test). `extras` holds `male` (1.0 / 0.0) from all three files, and the
    subgroup attribute `sex` the same as `male` / `female`. `seed` is unused: the splits are the
    challenge's.

    Raises:
        DataError: a file or column is missing, or a sex value cannot be parsed.
    """
    if path is None or not Path(path).is_dir():
        raise DataError(f"rsna-boneage needs a folder, got {path}; {LAYOUT}")
    root = Path(path)
    train_file = next((f for f in (_find(root, n) for n in TRAIN_FILES) if f is not None), None)
    val_file, test_file = _find(root, VAL_FILE), _find(root, TEST_FILE)
    for name, found in (
        ("/".join(TRAIN_FILES), train_file),
        (VAL_FILE, val_file),
        (TEST_FILE, test_file),
    ):
        if found is None:
            raise DataError(f"no {name} under {root}; {LAYOUT}")
    train = _table(train_file, {"id": "id", "boneage": "boneage", "male": "male"})
    val = _table(val_file, {"Image ID": "id", "Bone Age (months)": "boneage", "male": "male"})
    test = _table(
        test_file, {"Case ID": "id", "Ground truth bone age (months)": "boneage", "Sex": "male"}
    )
    index = index_images(root, (".png",))
    records = (
        _records(train, "train", index, root, train_file.name)
        + _records(val, "val", index, root, val_file.name)
        + _records(test, "test", index, root, test_file.name)
    )
    if not any(r.path.is_file() for r in records if r.split == "train"):
        raise DataError(f"no training image <id>.png found under {root}; {LAYOUT}")
    files = [train_file, val_file, test_file, *(r.path for r in records)]
    return assemble(
        records,
        kind="rsna-boneage",
        root=root,
        task_type=TASKS[task].type,
        image_size=image_size,
        digest=cache.source_digest(root, files),
        extra_names=("male",),
    )
